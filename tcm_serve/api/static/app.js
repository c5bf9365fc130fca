// The tcm-serve page: compress an image and compare it with the classic codecs at the same
// size (POST /compare), or decode a .tcm file (POST /decompress). Plain JavaScript, no build
// step, nothing loaded from elsewhere. Every API error is shown as the API's one-line message.
"use strict";

const $ = (id) => document.getElementById(id);
// seq: the number of the latest request; an older one's answer is ignored when it arrives.
const state = { file: null, images: {}, urls: [], seq: 0, abort: null,
                key: sessionStorage.getItem("tcm-api-key") || "" };

// -- talking to the API ---------------------------------------------------------------------
class ApiError extends Error {
  constructor(message, code) {
    super(message);
    this.code = code;
  }
}

async function call(path, options = {}) {
  let response;
  const headers = { ...(options.headers || {}) };
  if (state.key) headers.Authorization = `Bearer ${state.key}`;
  try {
    response = await fetch(path, { ...options, headers });
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(`cannot reach the service (${err.message})`);
  }
  if (!response.ok) {
    let detail = `the service answered ${response.status}${response.statusText ? ` ${response.statusText}` : ""}`;
    let code = null;
    try {
      const body = await response.json();
      if (body && body.detail) detail = body.detail;
      if (body && body.error) code = body.error;
    } catch (_) { /* not JSON: keep the status line */ }
    if (response.status === 401) askForKey();
    throw new ApiError(detail, code);
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

// A new request: the previous one is cancelled, and its answer, if it still comes, ignored.
function begin() {
  if (state.abort) state.abort.abort();
  state.abort = new AbortController();
  state.seq += 1;
  setBusy(true);
  showError("");
  return { seq: state.seq, signal: state.abort.signal };
}

const current = (req) => req.seq === state.seq;

function finish(req, err) {
  if (!current(req)) return;
  if (err && err.name !== "AbortError") showError(err.message);
  setBusy(false);
}

// -- API keys (services that need one answer 401 until the page has it) -----------------------
function askForKey() {
  $("auth").hidden = false;
  $("api-key").focus();
}

function wireKey() {
  $("auth").addEventListener("submit", (e) => {
    e.preventDefault();
    state.key = $("api-key").value.trim();
    sessionStorage.setItem("tcm-api-key", state.key);  // this tab only
    $("auth").hidden = true;
    showError("");
    loadQualities();
    if (state.file) choose(state.file);
  });
}

// -- service status and quality levels --------------------------------------------------------
async function watchStatus() {
  const el = $("status");
  try {
    const r = await fetch("/readyz", { cache: "no-store" });
    if (r.ok) {
      el.textContent = "service ready";
      el.className = "status ready";
      setTimeout(watchStatus, 10000);
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
    showEfforts(models.max_effort || 0);
  } catch (err) {
    if (err.code === "unauthorized") return showError(err.message);  // the key prompt retries
    showError(`${err.message} (quality levels: retrying)`);
    setTimeout(loadQualities, 3000);
  }
}

// Encoder effort 0..the service's limit; no control at all when the service takes none.
function showEfforts(maxEffort) {
  const select = $("effort");
  const chosen = select.value;
  select.innerHTML = "";
  for (let e = 0; e <= maxEffort; e++) {
    const option = new Option(e === 0 ? "0 (fastest)" : String(e), e);
    option.selected = String(e) === chosen;
    select.add(option);
  }
  select.hidden = $("effort-label").hidden = maxEffort === 0;
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
  $("file").addEventListener("change", (e) => {
    choose(e.target.files[0]);
    e.target.value = "";  // choosing the same file again is a change too
  });
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

// Blob URLs, not data: URLs: a large photo's PNG is past what browsers take in a data: URL.
const pngUrl = (base64) => objectUrl(new Blob([bytesOf(base64)], { type: "image/png" }));

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
    `${report.width} x ${report.height}, quality ${report.quality}` +
    (report.effort ? `, effort ${report.effort}` : "") + ": " +
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
    "JPEG, WebP and AVIF are encoded by the service at the largest size not over the .tcm's (within 3%); " +
    "PSNR and MS-SSIM against the original." +
    (unreached.length ? ` Cannot get within 3% of that size: ${unreached.join(", ")}.` : "") +
    (missing.length ? ` ${missing.join(" ")}` : "");

  const tcmLink = $("download-tcm");
  tcmLink.href = objectUrl(new Blob([bytesOf(tcm.blob_base64)], { type: "application/x-tcm" }));
  tcmLink.download = `${baseName()}.tcm`;
  tcmLink.hidden = false;
  const decodedUrl = pngUrl(tcm.png_base64);
  const pngLink = $("download-png");
  pngLink.href = decodedUrl;
  pngLink.download = `${baseName()}.tcm.png`;
  pngLink.hidden = false;
  $("result").hidden = false;

  state.images = { original: { label: "Original", src: pngUrl(report.original_png_base64) },
                   tcm: { label: "TCM", src: decodedUrl } };
  for (const c of report.codecs) state.images[c.name] = { label: c.label, src: pngUrl(c.png_base64) };
  showViewer("original", "tcm");
}

async function compare() {
  const file = state.file;
  const req = begin();
  try {
    const params = new URLSearchParams();
    if ($("quality").value) params.set("quality", $("quality").value);
    if (Number($("effort").value) > 0) params.set("effort", $("effort").value);
    if ($("drop-alpha").checked) params.set("drop_alpha", "true");
    const response = await call(`/compare?${params}`, {
      method: "POST", body: file, signal: req.signal,
      headers: { "Content-Type": file.type || "application/octet-stream" },
    });
    const report = await response.json().catch(() => { throw new ApiError("the service's answer is not JSON"); });
    if (current(req)) showComparison(report);
    finish(req);
  } catch (err) {
    finish(req, err);
  }
}

async function decompress() {
  const file = state.file;
  const req = begin();
  try {
    const response = await call("/decompress", {
      method: "POST", body: file, signal: req.signal, headers: { "Content-Type": "application/x-tcm" },
    });
    const png = await response.blob();
    if (!current(req)) return;
    resetUrls();
    const url = objectUrl(png);
    const w = Number(response.headers.get("X-TCM-Width")), h = Number(response.headers.get("X-TCM-Height"));
    $("result-title").textContent = `Decoded ${file.name}: ${w} x ${h}, quality ${response.headers.get("X-TCM-Quality")}`;
    const body = $("stats").tBodies[0];
    body.innerHTML = "";
    const stats = { bytes: file.size, bpp: (8 * file.size) / (w * h), ratio: (3 * w * h) / file.size, psnr: null, ms_ssim: null };
    body.appendChild(row("tcm", "TCM (.tcm)", stats, "decoded"));
    $("note").textContent = "PSNR needs the original: compress an image to see it. The ratio assumes 8-bit RGB.";
    $("download-tcm").hidden = true;
    const pngLink = $("download-png");
    pngLink.href = url;
    pngLink.download = `${baseName()}.png`;
    pngLink.hidden = false;
    $("result").hidden = false;
    state.images = { decoded: { label: "Decoded", src: url } };
    showViewer("decoded", "decoded");
    finish(req);
  } catch (err) {
    finish(req, err);
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
wireKey();
loadQualities();
watchStatus();
