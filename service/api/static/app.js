// The tcm-serve page: compress an image and compare it with the classic codecs at the same
// size (POST /compare), or decode a .tcm file (POST /decompress). Plain JavaScript, no build
// step, nothing loaded from elsewhere. Every API error is shown as the API's one-line message.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { file: null, images: {}, order: [], urls: [] };

// -- talking to the API ---------------------------------------------------------------------
class ApiError extends Error {}

async function call(path, options) {
  let response;
  try {
    response = await fetch(path, options);
  } catch (err) {
    throw new ApiError(`cannot reach the service (${err.message})`);
  }
  if (!response.ok) {
    let detail = `${response.status} ${response.statusText}`;
    try {
      const body = await response.json();
      if (body && body.detail) detail = body.detail;
    } catch (_) { /* not JSON: keep the status line */ }
    throw new ApiError(detail);
  }
  return response;
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

function setBusy(on) {
  $("busy").hidden = !on;
  $("go").disabled = on || !state.file || isTcm(state.file);
}

// -- service status and quality levels --------------------------------------------------------
async function watchStatus() {
  const el = $("status");
  try {
    const r = await fetch("/readyz", { cache: "no-store" });
    if (r.ok) {
      el.textContent = "service ready";
      el.className = "status ready";
      return;
    }
    const body = await r.json().catch(() => ({}));
    el.textContent = body.detail || `not ready (${r.status})`;
    el.className = "status down";
  } catch (err) {
    el.textContent = "service unreachable";
    el.className = "status down";
  }
  setTimeout(watchStatus, 2000);
}

async function loadQualities() {
  try {
    const models = await (await call("/v1/models")).json();
    const select = $("quality");
    select.innerHTML = "";
    for (const m of models.models) {
      const option = new Option(`q${m.quality}` + (m.lambda ? ` (lambda ${m.lambda})` : ""), m.quality);
      option.selected = m.quality === models.default_quality;
      select.add(option);
    }
  } catch (err) {
    showError(err.message);
  }
}

// -- input ----------------------------------------------------------------------------------
function isTcm(file) {
  return /\.tcm$/i.test(file.name) || file.type === "application/x-tcm";
}

function choose(file) {
  if (!file) return;
  state.file = file;
  showError("");
  setBusy(false);
  (isTcm(file) ? decompress : compare)();
}

function wireInput() {
  $("file").addEventListener("change", (e) => choose(e.target.files[0]));
  const drop = $("drop");
  for (const ev of ["dragenter", "dragover"]) {
    drop.addEventListener(ev, (e) => { e.preventDefault(); drop.classList.add("over"); });
  }
  for (const ev of ["dragleave", "drop"]) {
    drop.addEventListener(ev, (e) => { e.preventDefault(); drop.classList.remove("over"); });
  }
  drop.addEventListener("drop", (e) => choose(e.dataTransfer.files[0]));
  $("go").addEventListener("click", () => state.file && compare());
}

// -- results ----------------------------------------------------------------------------------
function objectUrl(blob) {
  const url = URL.createObjectURL(blob);
  state.urls.push(url);
  return url;
}

function resetUrls() {
  for (const url of state.urls) URL.revokeObjectURL(url);
  state.urls = [];
}

function bytesOf(base64) {
  const raw = atob(base64);
  const out = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i++) out[i] = raw.charCodeAt(i);
  return out;
}

const fmt = {
  bytes: (n) => `${n.toLocaleString("en-US")} B`,
  num: (x, digits) => (x === null || x === undefined ? "n/a" : x.toFixed(digits)),
};

function row(kind, label, s, setting) {
  const tr = document.createElement("tr");
  tr.className = kind;
  tr.dataset.codec = kind === "tcm" ? "tcm" : label;
  tr.dataset.bytes = s.bytes;
  const cells = [label, fmt.bytes(s.bytes), fmt.num(s.bpp, 4), `${fmt.num(s.ratio, 1)}:1`,
                 `${fmt.num(s.psnr, 2)} dB`, fmt.num(s.ms_ssim, 4), setting];
  for (const text of cells) {
    const td = document.createElement("td");
    td.textContent = text;
    tr.appendChild(td);
  }
  return tr;
}

function baseName() {
  return state.file.name.replace(/\.[^.]*$/, "") || "image";
}

function showComparison(report) {
  resetUrls();
  const tcm = report.tcm;
  $("result-title").textContent =
    `${report.width} x ${report.height}, quality ${report.quality}: ` +
    `compressed in ${tcm.compress_seconds.toFixed(2)} s, decoded in ${tcm.decompress_seconds.toFixed(2)} s`;
  const body = $("stats").tBodies[0];
  body.innerHTML = "";
  body.appendChild(row("tcm", "TCM (.tcm)", tcm, `format v${tcm.format_version}`));
  const unreached = [];
  for (const c of report.codecs) {
    const tr = row(c.reachable ? "classic" : "classic unreached", c.label, c, `quality ${fmt.num(c.quality, 1)}`);
    tr.dataset.codec = c.name;
    body.appendChild(tr);
    if (!c.reachable) unreached.push(c.label);
  }
  const missing = Object.entries(report.unavailable).map(([, why]) => why);
  $("note").textContent =
    "JPEG, WebP and AVIF are encoded by the service at the file size closest to the .tcm's; PSNR and MS-SSIM " +
    "against the original." +
    (unreached.length ? ` Cannot get within 3% of that size: ${unreached.join(", ")}.` : "") +
    (missing.length ? ` ${missing.join(" ")}` : "");

  const tcmLink = $("download-tcm");
  tcmLink.href = objectUrl(new Blob([bytesOf(tcm.blob_base64)], { type: "application/x-tcm" }));
  tcmLink.download = `${baseName()}.tcm`;
  tcmLink.hidden = false;
  const pngLink = $("download-png");
  pngLink.href = `data:image/png;base64,${tcm.png_base64}`;
  pngLink.download = `${baseName()}.tcm.png`;
  pngLink.hidden = false;
  $("result").hidden = false;

  state.images = { original: { label: "Original", src: `data:image/png;base64,${report.original_png_base64}` },
                   tcm: { label: "TCM", src: `data:image/png;base64,${tcm.png_base64}` } };
  for (const c of report.codecs) state.images[c.name] = { label: c.label, src: `data:image/png;base64,${c.png_base64}` };
  showViewer("original", "tcm");
}

async function compare() {
  const file = state.file;
  setBusy(true);
  showError("");
  try {
    const q = $("quality").value;
    const response = await call(`/compare${q ? `?quality=${encodeURIComponent(q)}` : ""}`, {
      method: "POST", body: file, headers: { "Content-Type": file.type || "application/octet-stream" },
    });
    showComparison(await response.json());
  } catch (err) {
    showError(err.message);
  } finally {
    setBusy(false);
  }
}

async function decompress() {
  const file = state.file;
  setBusy(true);
  showError("");
  try {
    const response = await call("/decompress", {
      method: "POST", body: file, headers: { "Content-Type": "application/x-tcm" },
    });
    const png = await response.blob();
    resetUrls();
    const url = objectUrl(png);
    const w = response.headers.get("X-TCM-Width"), h = response.headers.get("X-TCM-Height");
    $("result-title").textContent = `Decoded ${file.name}: ${w} x ${h}, quality ${response.headers.get("X-TCM-Quality")}`;
    const body = $("stats").tBodies[0];
    body.innerHTML = "";
    const bpp = (8 * file.size) / (Number(w) * Number(h));
    body.appendChild(row("tcm", "TCM (.tcm)", { bytes: file.size, bpp, ratio: (3 * w * h) / file.size, psnr: null, ms_ssim: null }, "decoded"));
    $("note").textContent = "PSNR needs the original: compress an image to see it.";
    $("download-tcm").hidden = true;
    const pngLink = $("download-png");
    pngLink.href = url;
    pngLink.download = `${baseName()}.png`;
    pngLink.hidden = false;
    $("result").hidden = false;
    state.images = { decoded: { label: "Decoded", src: url } };
    showViewer("decoded", "decoded");
  } catch (err) {
    showError(err.message);
  } finally {
    setBusy(false);
  }
}

// -- the before / after view ----------------------------------------------------------------------
function fillSelect(select, chosen) {
  select.innerHTML = "";
  for (const [key, img] of Object.entries(state.images)) {
    const option = new Option(img.label, key);
    option.selected = key === chosen;
    select.add(option);
  }
}

function showViewer(left, right) {
  fillSelect($("left"), left);
  fillSelect($("right"), right);
  $("viewer").hidden = false;
  render();
}

function render() {
  const left = state.images[$("left").value], right = state.images[$("right").value];
  if (!left || !right) return;
  $("img-left").src = left.src;
  $("img-right").src = right.src;
  $("tag-left").textContent = left.label;
  $("tag-right").textContent = right.label;
  wipe();
}

function wipe() {
  const x = Number($("wipe").value);
  $("img-right").style.clipPath = `inset(0 0 0 ${x}%)`;
  $("divider").style.left = `${x}%`;
}

function zoom(actual) {
  const frame = $("frame");
  frame.classList.toggle("actual", actual);
  frame.classList.toggle("fit", !actual);
  $("fit").setAttribute("aria-pressed", String(!actual));
  $("actual").setAttribute("aria-pressed", String(actual));
}

function wireViewer() {
  $("left").addEventListener("change", render);
  $("right").addEventListener("change", render);
  $("wipe").addEventListener("input", wipe);
  $("fit").addEventListener("click", () => zoom(false));
  $("actual").addEventListener("click", () => zoom(true));
  // Drag to pan at 100%: both images sit in one scrolling frame, so they move together.
  const frame = $("frame");
  let drag = null;
  frame.addEventListener("pointerdown", (e) => {
    if (!frame.classList.contains("actual")) return;
    drag = { x: e.clientX, y: e.clientY, left: frame.scrollLeft, top: frame.scrollTop };
    frame.classList.add("dragging");
    frame.setPointerCapture(e.pointerId);
  });
  frame.addEventListener("pointermove", (e) => {
    if (!drag) return;
    frame.scrollLeft = drag.left - (e.clientX - drag.x);
    frame.scrollTop = drag.top - (e.clientY - drag.y);
  });
  const end = () => { drag = null; frame.classList.remove("dragging"); };
  frame.addEventListener("pointerup", end);
  frame.addEventListener("pointercancel", end);
}

wireInput();
wireViewer();
loadQualities();
watchStatus();
