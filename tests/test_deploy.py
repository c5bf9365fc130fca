"""Deployment artefacts (issue 5): Docker images, docker compose, Kubernetes, monitoring.

There is no Docker engine and no cluster here, so everything is checked statically with the
real tools (all from the `test` extra of pyproject.toml) and, for the image, by running its
exact entrypoint on the host:

- ``hadolint`` lints docker/Dockerfile; a small Dockerfile reader (below) checks what the
  image promises: two targets, no compiler in them, non-root, torch pinned before the
  package, health check, entrypoint.
- ``docker-compose config`` (the real Compose v2 binary, which needs no daemon for this)
  validates docker-compose.yml alone and with the CPU override, against the Compose schema.
- ``kubectl kustomize`` renders every overlay; ``kubernetes-validate`` checks the output
  against the Kubernetes OpenAPI schemas (strict: unknown fields are errors) for the oldest
  and newest versions we support; then the semantics (probes, drain timing, selectors...).
- Prometheus and Grafana files are parsed and cross-checked against the metric contract;
  ``promtool`` (Debian package ``prometheus``) also checks them where it is installed.
- ``test_image_entrypoint_serves_round_trip`` runs the image's ENTRYPOINT + CMD with the
  image's ENV on the host against a store holding the conformance checkpoint. It is the
  only test that needs the service code (``tcm serve``, issue 3).

Everything but that test is independent of the service code. Loopback networking only.
"""

from __future__ import annotations

import io
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import pytest
import yaml  # the test extra installs it; a missing one must fail, not skip the whole file

from tcm_serve.api.logs import CODEC_ROUTES
from tcm_serve.cli.local import free_port
from tcm_serve.codec.effort import EFFORT_BYTES_PER_PIXEL, MAX_EFFORT_PIXELS
from tcm_serve.codec.geometry import DEFAULT_HALO, DEFAULT_TILE, NO_TILING, padded_pixel_limit
from tcm_serve.config import Settings

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "docker" / "Dockerfile"
COMPOSE = ROOT / "docker-compose.yml"
COMPOSE_CPU = ROOT / "docker-compose.cpu.yml"
DEPLOY = ROOT / "deploy"
OVERLAYS = ("gpu", "cpu")
MONITORING = DEPLOY / "monitoring"
DASHBOARD = MONITORING / "grafana" / "dashboards" / "tcm-serve.json"
ADAPTER_VALUES = MONITORING / "prometheus-adapter" / "values.yaml"
DOCS = ROOT / "docs" / "deploy.md"
#: Kubernetes versions the manifests are validated against: the oldest we support and the
#: newest schema set kubernetes-validate ships.
K8S_VERSIONS = ("1.30.0", "1.37.0")

#: The service's metric contract (issue 3): name -> Prometheus type.
CONTRACT_METRICS = {
    "tcm_requests_total": "counter",
    "tcm_request_duration_seconds": "histogram",
    "tcm_stage_duration_seconds": "histogram",
    "tcm_batch_size": "histogram",
    "tcm_queue_depth": "gauge",
    "tcm_bits_per_pixel": "histogram",
    "tcm_models_loaded": "gauge",
    "tcm_device_memory_bytes": "gauge",  # CUDA only
    "tcm_requests_in_flight": "gauge",
    "tcm_request_bytes_total": "counter",
    "tcm_queue_reserved": "gauge",
    "tcm_queue_capacity": "gauge",
    "tcm_worker_restarts_total": "counter",
}
#: The service's settings (pydantic-settings, prefix TCM_: every field of Settings, the CLI's
#: TCM_MODEL_STORE among them, so a new setting must be documented in docs/deploy.md).
CONTRACT_SETTINGS = tuple(f"TCM_{name.upper()}" for name in Settings.model_fields)


def _series_names(metric: str, kind: str) -> set[str]:
    if kind == "histogram":
        return {f"{metric}_bucket", f"{metric}_sum", f"{metric}_count"}
    return {metric}


KNOWN_SERIES = set().union(*(_series_names(m, k) for m, k in CONTRACT_METRICS.items()))
METRIC_RE = re.compile(r"\btcm_[a-z0-9_]+")


# -- tools (the `test` extra installs them into the virtualenv) -----------------------------
def tool(name: str) -> str:
    """Path of a command-line tool: the virtualenv's bin first, then PATH; a missing tool fails."""
    venv_bin = Path(sys.executable).parent
    found = shutil.which(name, path=f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}")
    if not found:
        pytest.fail(f"{name} not found: install the test extra (pip install -e '.[test]'; see pyproject.toml)")
    return found


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT, **kw)


# -- a Dockerfile reader: just what the checks need ------------------------------------------
@dataclass
class Stage:
    name: str
    base: str  # image reference or the name of an earlier stage
    parent: Stage | None
    instructions: list[tuple[str, str]] = field(default_factory=list)
    args: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)  # this stage's ENV only

    def chain(self) -> list[Stage]:
        """This stage and the stages it is built FROM, nearest first."""
        out, s = [], self
        while s is not None:
            out.append(s)
            s = s.parent
        return out

    def image_env(self) -> dict[str, str]:
        """ENV as the final image has it (inherited from parent stages; base-image ENV unknown)."""
        env: dict[str, str] = {}
        for s in reversed(self.chain()):
            env.update(s.env)
        return env

    def last(self, keyword: str) -> str | None:
        """The effective value of an instruction that the last occurrence wins (CMD, USER...)."""
        for s in self.chain():
            for k, v in reversed(s.instructions):
                if k == keyword:
                    return v
        return None

    def all(self, keyword: str) -> list[str]:
        return [v for s in self.chain() for k, v in s.instructions if k == keyword]


_VAR = re.compile(r"\$(?:\{(\w+)(?::?-([^}]*))?\}|(\w+))")


def _expand(text: str, scope: dict[str, str]) -> str:
    def sub(m: re.Match) -> str:
        name = m.group(1) or m.group(3)
        if name in scope:
            return scope[name]
        return m.group(2) if m.group(2) is not None else m.group(0)  # unknown: leave as written

    return _VAR.sub(sub, text)


def _logical_lines(text: str) -> list[str]:
    lines, buf = [], ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and buf):
            continue  # comments (also inside continuations) and blank continuation lines
        if raw.rstrip().endswith("\\"):
            buf += raw.rstrip()[:-1] + " "
            continue
        buf += raw
        if buf.strip():
            lines.append(buf.strip())
        buf = ""
    if buf.strip():
        lines.append(buf.strip())
    return lines


@cache
def parse_dockerfile(path: Path = DOCKERFILE) -> dict[str, Stage]:
    """Stages by name (unnamed ones by index), in order; the last one is the default target."""
    global_args: dict[str, str] = {}
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for line in _logical_lines(path.read_text()):
        keyword, _, rest = line.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "FROM":
            words = rest.split()
            words = [w for w in words if not w.startswith("--platform")]
            base = _expand(words[0], global_args)
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else str(len(stages))
            current = Stage(name=name, base=base, parent=stages.get(base))
            stages[name] = current
            continue
        if keyword == "ARG":
            name, eq, default = rest.partition("=")
            target = global_args if current is None else current.args
            # a stage's ARG without default re-imports the global one
            target[name] = default if eq else global_args.get(name, "")
            continue
        assert current is not None, f"{keyword} before the first FROM"
        if keyword == "ENV":
            scope = {**global_args, **current.args, **current.image_env()}
            words = shlex.split(rest, posix=True)
            if words and "=" not in words[0]:  # legacy `ENV KEY value`
                words = [f"{words[0]}={' '.join(words[1:])}"]
            for w in words:
                k, _, v = w.partition("=")
                current.env[k] = _expand(v, {**scope, **current.env})
            continue
        current.instructions.append((keyword, rest))
    return stages


def image_uid(stage: Stage) -> int:
    """The numeric uid of the image's USER (expanded with the ARGs of the stage that sets it)."""
    for s in stage.chain():
        users = [v for k, v in s.instructions if k == "USER"]
        if users:
            uid = _expand(users[-1].split(":")[0], s.args)
            assert uid.isdigit(), f"USER {users[-1]} must be numeric (Kubernetes' runAsNonRoot checks it)"
            return int(uid)
    raise AssertionError(f"{stage.name}: no USER")


def exec_form(value: str | None) -> list[str]:
    assert value is not None
    parsed = json.loads(value)  # the exec (JSON) form; shell form would put sh -c in front of PID 1
    assert isinstance(parsed, list) and all(isinstance(x, str) for x in parsed), value
    return parsed


def final_targets() -> dict[str, Stage]:
    stages = parse_dockerfile()
    return {"gpu": list(stages.values())[-1], "cpu": stages["cpu"]}


def image_command(stage: Stage) -> list[str]:
    return exec_form(stage.last("ENTRYPOINT")) + exec_form(stage.last("CMD"))


def copies(stage: Stage) -> list[tuple[str, str]]:
    """(source, destination) of the COPY instructions that read the build context."""
    out = []
    for value in stage.all("COPY"):
        if any(w.startswith("--from") for w in value.split()):
            continue
        *sources, dest = [w for w in value.split() if not w.startswith("--")]
        out += [(src, dest) for src in sources]
    return out


# -- Dockerfile ------------------------------------------------------------------------------
def test_dockerfile_lints_clean():
    res = run([tool("hadolint"), "--no-color", str(DOCKERFILE.relative_to(ROOT))])
    assert res.returncode == 0, res.stdout + res.stderr


def test_dockerfile_targets_are_non_root_compiler_free_and_serve():
    stages = parse_dockerfile()
    targets = final_targets()
    assert targets["gpu"].name == "gpu", "the GPU image must be the default (last) stage"
    compiler = re.compile(r"\b(gcc|g\+\+|clang|build-essential|make)\b")
    for name, stage in targets.items():
        chain = stage.chain()
        # no stage that ends up in the image installs a compiler (only `build` does)
        for s in chain:
            for k, v in s.instructions:
                assert not (k == "RUN" and compiler.search(v)), f"{name}: {s.name} installs a compiler: {v}"
        # what comes from other stages: only a virtualenv, never a toolchain
        for value in stage.all("COPY"):
            m = re.search(r"--from=(\S+)", value)
            if m:
                src_stage = stages[m.group(1)]
                assert src_stage.name.startswith("venv-"), f"{name} copies from {src_stage.name}: {value}"
                assert value.split()[-1] == "/opt/venv", value
        assert image_uid(stage) != 0, f"{name}: runs as root"
        env = stage.image_env()
        assert image_command(stage) == ["tcm", "serve"], image_command(stage)
        assert env["TCM_HOST"] == "0.0.0.0"
        assert stage.last("EXPOSE") == env["TCM_PORT"] == "8000"
        assert stage.last("STOPSIGNAL") in (None, "SIGTERM")
        health = stage.last("HEALTHCHECK")
        assert health and "/healthz" in health and "CMD [" in health, health
        assert re.search(r"--start-period=\d+", health), "the health check needs a start period for the model load"
        # the bundled store is baked in where TCM_MODEL_STORE points (and the CLI and the server agree)
        assert ("model_store/", env["TCM_MODEL_STORE"].rstrip("/") + "/") in copies(stage)
    assert targets["cpu"].image_env()["TCM_DEVICES"] == "cpu"
    assert targets["gpu"].image_env()["TCM_DEVICES"] == "cuda"  # no silent fall-back to the CPU
    # the two images differ only in the virtualenv, the device settings and the CPU image's
    # limits for large photos (tiled, one at a time: docs/deploy.md "Sizing")
    photo_limits = {"TCM_MAX_PIXELS", "TCM_MAX_BODY_BYTES", "TCM_MAX_QUEUE", "TCM_REQUEST_TIMEOUT_S"}
    strip = {"TCM_DEVICES", "NVIDIA_VISIBLE_DEVICES", "NVIDIA_DRIVER_CAPABILITIES"} | photo_limits
    gpu_env = {k: v for k, v in targets["gpu"].image_env().items() if k not in strip}
    cpu_env = {k: v for k, v in targets["cpu"].image_env().items() if k not in strip}
    assert gpu_env == cpu_env
    cpu_limits = targets["cpu"].image_env()
    assert int(cpu_limits["TCM_MAX_PIXELS"]) >= 48 * 10**6, "the CPU image takes a 48 MP camera photo"


def test_dockerfile_pins_torch_before_the_package():
    stages = parse_dockerfile()
    for venv, want_index in (("venv-cpu", True), ("venv-gpu", False)):
        s = stages[venv]
        runs = [v for k, v in s.instructions if k == "RUN"]
        torch_at = next(i for i, v in enumerate(runs) if re.search(r'pip install "?torch==\$\{TORCH_VERSION\}', v))
        wheel_at = next(i for i, v in enumerate(runs) if "/wheels/" in v)
        assert torch_at < wheel_at, f"{venv}: torch must be installed (pinned) before tcm-serve"
        assert "--constraint" in runs[wheel_at], f"{venv}: installing the wheel must keep the pinned torch"
        assert s.args["TORCH_VERSION"] == "2.13.0"
        uses_cpu_index = "TORCH_CPU_INDEX_URL" in runs[torch_at]
        assert uses_cpu_index == want_index, venv
    assert stages["venv-cpu"].args["TORCH_CPU_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    gpu_runs = " ".join(v for k, v in stages["venv-gpu"].instructions if k == "RUN")
    assert "onnxruntime-gpu" in gpu_runs
    cpu_runs = " ".join(v for k, v in stages["venv-cpu"].instructions if k == "RUN")
    assert "onnxruntime" not in cpu_runs
    build_runs = " ".join(v for k, v in stages["build"].instructions if k == "RUN")
    assert "gcc" in build_runs and "pip wheel" in build_runs


def test_gpu_image_ends_with_onnxruntime_gpu_only():
    """The service's wheel depends on the CPU onnxruntime, which ships the same module as
    onnxruntime-gpu: the GPU stage must remove it after the wheel and install the GPU build
    after that, or the two overwrite each other's files."""
    runs = " && ".join(v for k, v in parse_dockerfile()["venv-gpu"].instructions if k == "RUN")
    steps = [c.strip() for c in runs.split("&&")]
    wheel = next(i for i, c in enumerate(steps) if "/wheels/" in c)
    removal = next(i for i, c in enumerate(steps) if re.fullmatch(r"pip uninstall -y onnxruntime", c))
    gpu = next(i for i, c in enumerate(steps) if "pip install" in c and "onnxruntime-gpu" in c)
    assert wheel < removal < gpu, steps
    assert any("CUDAExecutionProvider" in c for c in steps[gpu:]), "the build should prove the CUDA provider is there"


def _dockerignore_excludes(patterns: list[tuple[bool, re.Pattern]], rel: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = rel.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for negate, rx in patterns:
        if any(rx.fullmatch(c) for c in candidates):
            excluded = not negate
    return excluded


def _dockerignore_patterns() -> list[tuple[bool, re.Pattern]]:
    out = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pat = line[1:] if negate else line
        pat = pat.strip("/")
        rx = ""
        i = 0
        while i < len(pat):
            if pat.startswith("**/", i):
                rx += "(?:.*/)?"
                i += 3
            elif pat.startswith("**", i):
                rx += ".*"
                i += 2
            elif pat[i] == "*":
                rx += "[^/]*"
                i += 1
            elif pat[i] == "?":
                rx += "[^/]"
                i += 1
            elif pat[i] == "[":
                j = pat.index("]", i)
                rx += pat[i : j + 1]
                i = j + 1
            else:
                rx += re.escape(pat[i])
                i += 1
        out.append((negate, re.compile(rx)))
    return out


def test_dockerignore_sends_what_the_build_copies_and_nothing_heavy():
    patterns = _dockerignore_patterns()
    sources = set()
    for stage in parse_dockerfile().values():
        sources.update(src for src, _ in copies(stage))
    assert {"pyproject.toml", "setup.py", "README.md", "tcm_serve/", "model_store/"} <= sources
    for src in sources:
        for path in (
            [src]
            if (ROOT / src).is_file()
            else [str(p.relative_to(ROOT)) for p in (ROOT / src).rglob("*.py")]
            + [str(p.relative_to(ROOT)) for p in (ROOT / src).glob("*.json")]
            + [str(p.relative_to(ROOT)) for p in (ROOT / src).glob("*.c")]
        ):
            if "__pycache__" in path:
                continue
            assert not _dockerignore_excludes(patterns, path), f"{path} is COPYed but .dockerignore drops it"
    for heavy in (
        ".venv/bin/python",
        ".git/HEAD",
        "build/lib/x.so",
        "tests/test_deploy.py",
        "benchmarks/bench_rans.py",
        "tcm_serve/codec/_rans.cpython-311-x86_64-linux-gnu.so",
        "tcm_serve/__pycache__/x.pyc",
        "docs/deploy.md",
        "deploy/base/deployment.yaml",
        ".pytest_cache/v",
        "tcm.env",
    ):
        assert _dockerignore_excludes(patterns, heavy), f"{heavy} would be sent to the build context"


# -- docker compose --------------------------------------------------------------------------
#: What a user must set before `docker compose up` (no default on purpose).
COMPOSE_REQUIRED = {"GRAFANA_ADMIN_PASSWORD": "test-only-password"}


def compose_config(*files: Path, required: dict[str, str] = COMPOSE_REQUIRED) -> dict:
    """`docker-compose config` as JSON, with the defaults of the files (no TCM_/compose env)
    and the variables a user must set (``required``)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("TCM_", "COMPOSE_", "DOCKER_", "GRAFANA_", "PROMETHEUS_"))
    }
    env.update(required)
    cmd = [tool("docker-compose")]
    for f in files:
        cmd += ["-f", str(f)]
    res = run(cmd + ["config", "-q"], env=env)
    assert res.returncode == 0, res.stderr
    res = run(cmd + ["config", "--format", "json"], env=env)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def _seconds(text: str) -> float:
    total = 0.0
    for num, unit in re.findall(r"([\d.]+)(h|ms|m|s)", str(text)):
        total += float(num) * {"h": 3600, "m": 60, "s": 1, "ms": 0.001}[unit]
    return total


def _memory_bytes(text: str) -> int:
    """Compose ("12g", "512m") and Kubernetes ("10Gi", "512Mi") memory quantities."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([kmgt]i?)?b?", str(text).strip().lower())
    assert m, f"unparsed memory quantity {text!r}"
    scale = {None: 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}[m.group(2)[0] if m.group(2) else None]
    return int(float(m.group(1)) * scale)


#: The sizing rule of docs/deploy.md ("Sizing"), for the largest supported model
#: (official-large): four served levels loaded (0.85 GiB ready with one, ~0.3 per extra
#: level), rounded up, ...
MODEL_BYTES = 2 << 30
#: ... whole-image coding (TCM_TILE=0) at ~4 KiB per padded pixel, or with tiled transforms the
#: same per pixel of one window (tile + 2 halos a side) plus the whole-image state that does
#: not tile (latents, slice chain, symbols: bytes per padded pixel, measured with the
#: official-small layout at 48 MP, whose latent width official-large shares), ...
PEAK_BYTES_PER_PIXEL = 4 * 1024
STATE_BYTES_PER_PIXEL = 100
#: ... and every queue place holding a request body and its decoded pixels (uint8 RGB).
PIXEL_BYTES = 3
#: Bodies must take any 8-bit RGB encoding of the largest image (an uncompressed one is
#: 3 bytes per pixel); more than an uncompressed 16-bit RGBA image's 8 is never needed.
RAW_BYTES_PER_PIXEL = 8
#: /compare holds its candidates decoded and scores them with MS-SSIM (~110 MB per megapixel
#: at its peak, docs/evaluation.md): 200 bytes per pixel of the largest image it takes.
COMPARE_BYTES_PER_PIXEL = 200


def coding_bytes(padded: int, tile: int) -> int:
    """Peak bytes of coding one image of ``padded`` pixels with transforms tiled by ``tile``."""
    whole = padded * PEAK_BYTES_PER_PIXEL
    if tile == NO_TILING:
        return whole
    window = (tile + 2 * DEFAULT_HALO) ** 2
    return min(whole, window * PEAK_BYTES_PER_PIXEL + padded * STATE_BYTES_PER_PIXEL)


def assert_limits_fit(env: dict[str, str], memory_limit: str, where: str) -> None:
    """The image-size, body-size and queue limits agree with the memory limit: the service
    default of 40 MP with untiled transforms would need ~150 GiB for one image of the large
    model, and 64 queued 50 MiB bodies 3 GiB, so a deployment without its own limits is
    OOM-killed by ordinary input."""
    assert "TCM_MAX_PIXELS" in env and "TCM_MAX_BODY_BYTES" in env, f"{where}: set both limits"
    defaults = Settings.model_fields
    pixels, body = int(env["TCM_MAX_PIXELS"]), int(env["TCM_MAX_BODY_BYTES"])
    tile = int(env.get("TCM_TILE", defaults["tile"].default))
    queue = int(env.get("TCM_MAX_QUEUE", defaults["max_queue"].default))
    compare = min(pixels, int(env.get("TCM_COMPARE_MAX_PIXELS", defaults["compare_max_pixels"].default)))
    # the largest padded tensor the image guard lets through (a thin strip pads to more)
    padded = padded_pixel_limit(pixels)
    # a worker runs one job at a time: an effort search takes a window's place, not a share beside it
    effort = int(env.get("TCM_MAX_EFFORT", defaults["max_effort"].default))
    search = EFFORT_BYTES_PER_PIXEL * min(MAX_EFFORT_PIXELS, padded) if effort else 0
    parts = {
        "models": MODEL_BYTES,
        "coding": max(coding_bytes(padded, tile), search),
        "queue": queue * (body + PIXEL_BYTES * pixels),
        "compare": compare * COMPARE_BYTES_PER_PIXEL,
    }
    gib = {k: round(v / 2**30, 2) for k, v in parts.items()}
    assert sum(parts.values()) <= _memory_bytes(memory_limit), (where, pixels, memory_limit, gib)
    # any 8-bit encoding of the largest allowed image fits the body limit, and not much more does
    assert PIXEL_BYTES * pixels <= body <= 2 * RAW_BYTES_PER_PIXEL * pixels, (where, pixels, body)


def test_effort_search_fits_in_one_window():
    """The effort cap keeps a search inside the window term of the sizing rule, so enabling
    effort (the default, TCM_MAX_EFFORT=1) needs no memory beyond what tiling budgets."""
    window = (DEFAULT_TILE + 2 * DEFAULT_HALO) ** 2 * PEAK_BYTES_PER_PIXEL
    assert EFFORT_BYTES_PER_PIXEL * MAX_EFFORT_PIXELS <= window


def test_sizing_rule_bounds_a_large_photo_by_the_tile_not_the_image():
    """Tiling is what lets a 48 MP photo fit: whole, it would need ~200 GiB."""
    padded = padded_pixel_limit(48 << 20)
    assert coding_bytes(padded, NO_TILING) > 190 << 30
    assert coding_bytes(padded, 1024) < 16 << 30
    small = 768 * 512  # below one window, tiling changes nothing
    assert coding_bytes(small, 1024) == coding_bytes(small, NO_TILING)


def test_compose_gpu_stack_is_valid_and_consistent_with_the_image():
    cfg = compose_config(COMPOSE)
    svc = cfg["services"]["tcm"]
    gpu = final_targets()["gpu"]
    env = gpu.image_env()
    assert svc["build"]["target"] == "gpu"
    assert Path(svc["build"]["dockerfile"]).name == "Dockerfile"
    devices = svc["deploy"]["resources"]["reservations"]["devices"]
    assert devices and devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert svc["healthcheck"]["test"][-1] == "/healthz"
    assert _seconds(svc["healthcheck"]["start_period"]) >= 60
    assert _seconds(svc["stop_grace_period"]) > float(env["TCM_SHUTDOWN_GRACE_S"]), "SIGKILL would cut the drain short"
    assert svc["init"] is True
    assert svc["restart"] in ("unless-stopped", "always")
    assert any(v["target"] == env["TCM_MODEL_STORE"] and v["type"] == "volume" for v in svc["volumes"])
    published = {(p["host_ip"], int(p["target"])) for p in svc["ports"]}
    assert ("127.0.0.1", int(env["TCM_PORT"])) in published, "publish on loopback by default (no auth)"
    assert_limits_fit({**env, **svc.get("environment", {})}, svc["deploy"]["resources"]["limits"]["memory"], "compose")
    # Prometheus scrapes the service by its compose name; Grafana gets its provisioning
    prom = cfg["services"]["prometheus"]
    mounts = {v["target"]: Path(v["source"]) for v in prom["volumes"] if v["type"] == "bind"}
    prom_cfg = yaml.safe_load(mounts["/etc/prometheus/prometheus.yml"].read_text())
    targets = [
        t
        for job in prom_cfg["scrape_configs"]
        if job["job_name"] == "tcm-serve"
        for sc in job["static_configs"]
        for t in sc["targets"]
    ]
    assert targets == [f"tcm:{env['TCM_PORT']}"]
    for rule_file in prom_cfg["rule_files"]:
        assert rule_file in mounts, f"{rule_file} is not mounted into the Prometheus container"
    graf = cfg["services"]["grafana"]
    gmounts = {v["target"]: Path(v["source"]) for v in graf["volumes"] if v["type"] == "bind"}
    for target, source in gmounts.items():
        assert source.exists(), f"{source} (mounted at {target}) does not exist"
    provider = yaml.safe_load((gmounts["/etc/grafana/provisioning"] / "dashboards" / "tcm-serve.yml").read_text())
    dash_dir = provider["providers"][0]["options"]["path"]
    assert (gmounts[dash_dir] / DASHBOARD.name).exists()
    ds = yaml.safe_load((gmounts["/etc/grafana/provisioning"] / "datasources" / "prometheus.yml").read_text())
    assert ds["datasources"][0]["url"] == "${PROMETHEUS_URL}"
    assert graf["environment"]["PROMETHEUS_URL"] == "http://prometheus:9090"


def test_compose_stack_requires_api_keys():
    tcm = compose_config(COMPOSE)["services"]["tcm"]
    secret = next(s for s in tcm["secrets"] if s["source"] == "api_keys")
    assert tcm["environment"]["TCM_API_KEYS_FILE"] == secret.get("target", "/run/secrets/api_keys")
    ignored = (ROOT / ".gitignore").read_text().split()
    assert "/api-keys" in ignored  # the keys file never lands in git


def test_compose_has_no_default_grafana_password():
    with pytest.raises(AssertionError, match="GRAFANA_ADMIN_PASSWORD"):
        compose_config(COMPOSE, required={})
    env = compose_config(COMPOSE)["services"]["grafana"]["environment"]
    assert env["GF_SECURITY_ADMIN_PASSWORD"] == COMPOSE_REQUIRED["GRAFANA_ADMIN_PASSWORD"]


def test_compose_cpu_override_drops_the_gpu():
    cfg = compose_config(COMPOSE, COMPOSE_CPU)
    svc = cfg["services"]["tcm"]
    assert svc["build"]["target"] == "cpu"
    assert svc["image"].endswith(":cpu")
    assert not svc["deploy"]["resources"].get("reservations", {}).get("devices")
    limits = svc["deploy"]["resources"]["limits"]
    assert float(limits["cpus"]) == float(svc["environment"]["OMP_NUM_THREADS"])
    cpu_env = {**final_targets()["cpu"].image_env(), **svc["environment"]}
    assert_limits_fit(cpu_env, limits["memory"], "compose cpu")
    assert int(cpu_env["TCM_MAX_PIXELS"]) >= 48 * 10**6, "the CPU stack takes a 48 MP camera photo"
    assert set(cfg["services"]) == {"tcm", "prometheus", "alertmanager", "alert-log", "grafana"}


# -- Kubernetes ------------------------------------------------------------------------------
@cache
def render(overlay: str) -> tuple[dict, ...]:
    res = run([tool("kubectl"), "kustomize", str(DEPLOY / "overlays" / overlay)])
    assert res.returncode == 0, res.stderr
    return tuple(d for d in yaml.safe_load_all(res.stdout) if d)


def by_kind(docs, kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def one(docs, kind: str) -> dict:
    found = by_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_and_validates_against_kubernetes_schemas(overlay):
    import kubernetes_validate

    docs = render(overlay)
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == sorted(
        [
            "ConfigMap",
            "ConfigMap",
            "Deployment",
            "HorizontalPodAutoscaler",
            "NetworkPolicy",
            "PodDisruptionBudget",
            "Service",
            "ServiceAccount",
        ]
    ), kinds
    for version in K8S_VERSIONS:
        for doc in docs:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(
                    f"{overlay}: {doc['kind']}/{doc['metadata']['name']} invalid for Kubernetes {version}: "
                    f"{'.'.join(map(str, exc.path))}: {exc.message}"
                )


def _container(pod_spec: dict, name: str, init: bool = False) -> dict:
    key = "initContainers" if init else "containers"
    return next(c for c in pod_spec.get(key, []) if c["name"] == name)


def _env_of(docs, container: dict) -> dict[str, str]:
    env: dict[str, str] = {}
    maps = {d["metadata"]["name"]: d for d in by_kind(docs, "ConfigMap")}
    for src in container.get("envFrom", []):
        if "configMapRef" in src:
            ref = src["configMapRef"]["name"]
            assert ref in maps, f"envFrom names ConfigMap {ref}, which the overlay does not render"
            env.update(maps[ref]["data"])
    for e in container.get("env", []):
        env[e["name"]] = e["value"]
    return env


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_deployment_probes_drain_and_wiring(overlay):
    docs = render(overlay)
    dep = one(docs, "Deployment")
    pod = dep["spec"]["template"]
    spec = pod["spec"]
    tcm = _container(spec, "tcm")
    env = _env_of(docs, tcm)
    image = final_targets()[overlay]

    assert "replicas" not in dep["spec"], "the HPA owns the replica count"
    assert tcm["image"].endswith(f"-{overlay}"), tcm["image"]
    assert tcm.get("args", image_command(image)[1:]) == image_command(image)[1:]
    # the port the probes use is the one the service listens on
    port = next(p for p in tcm["ports"] if p["name"] == "http")
    assert str(port["containerPort"]) == env["TCM_PORT"]
    assert env["TCM_HOST"] == "0.0.0.0"
    assert tcm["startupProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert tcm["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert tcm["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    startup = tcm["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300, "model load + warm-up needs minutes on CPU"
    # drain: preStop sleep, then SIGTERM and TCM_SHUTDOWN_GRACE_S, all inside the grace period
    pre_stop = tcm["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    budget = float(pre_stop[1]) + float(env["TCM_SHUTDOWN_GRACE_S"])
    assert spec["terminationGracePeriodSeconds"] > budget, (spec["terminationGracePeriodSeconds"], budget)
    # security: the image's non-root user, read-only root
    assert spec["securityContext"]["runAsUser"] == image_uid(image)
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert tcm["securityContext"]["readOnlyRootFilesystem"] is True
    # the model store: fetched or seeded by init containers into the volume the server reads
    # (what their commands do: test_init_containers_fill_the_store_both_ways)
    store = env["TCM_MODEL_STORE"]
    fetch = _container(spec, "fetch-checkpoints", init=True)
    seed = _container(spec, "seed-models", init=True)
    verify = _container(spec, "verify-store", init=True)
    assert [c["name"] for c in spec["initContainers"]] == ["fetch-checkpoints", "seed-models", "verify-store"]
    mounts = {m["mountPath"]: m["name"] for m in tcm["volumeMounts"]}
    assert mounts[store] == {m["mountPath"]: m["name"] for m in fetch["volumeMounts"]}[store]
    assert {m["mountPath"]: m["name"] for m in seed["volumeMounts"]} == {"/seed": mounts[store]}
    assert seed["image"] == tcm["image"]
    assert verify["image"] == tcm["image"] and verify["args"] == ["models", "list"]
    assert _env_of(docs, verify)["TCM_MODEL_STORE"] == store
    fetch_env = _env_of(docs, fetch)
    assert fetch_env["CHECKPOINTS_SOURCE"] == "bundled"  # as shipped: the image's bundled store
    assert _env_of(docs, seed)["CHECKPOINTS_SOURCE"] == "bundled"
    assert fetch_env["RCLONE_CONFIG_MODELS_TYPE"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert "emptyDir" in volumes[mounts[store]]
    # the store is read-only in the server: the onnx backend's graphs go to a writable emptyDir
    onnx_dir = env["TCM_ONNX_DIR"]
    writable = [m for m in tcm["volumeMounts"] if onnx_dir.startswith(m["mountPath"] + "/") and not m.get("readOnly")]
    assert writable and "emptyDir" in volumes[writable[0]["name"]]
    # ephemeral storage requested by the containers that fill the emptyDirs, and bounded
    for c in (fetch, seed, tcm):
        assert "ephemeral-storage" in c["resources"]["requests"], c["name"]
    assert _memory_bytes(tcm["resources"]["limits"]["ephemeral-storage"]) >= sum(
        _memory_bytes(v["emptyDir"]["sizeLimit"]) for v in volumes.values() if "emptyDir" in v
    )
    # the Service, PDB and HPA point at these pods
    labels = pod["metadata"]["labels"]
    svc = one(docs, "Service")
    assert svc["spec"]["selector"].items() <= labels.items()
    assert next(p for p in svc["spec"]["ports"] if p["name"] == "http")["targetPort"] == "http"
    pdb = one(docs, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()
    hpa = one(docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": dep["metadata"]["name"],
    }
    assert 2 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    assert pdb["spec"].get("maxUnavailable", 0) < hpa["spec"]["minReplicas"]
    # API keys on, from a Secret mounted where TCM_API_KEYS_FILE points; probes and metrics open
    keys_dir = os.path.dirname(env["TCM_API_KEYS_FILE"])
    keys_mount = next(m for m in tcm["volumeMounts"] if m["mountPath"] == keys_dir)
    assert keys_mount["readOnly"] and volumes[keys_mount["name"]]["secret"]["secretName"] == "tcm-serve-api-keys"
    assert "TCM_OPEN_PATHS" not in env  # the default: /healthz, /readyz, /metrics
    # ingress only to the service port
    policy = one(docs, "NetworkPolicy")
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    (rule,) = policy["spec"]["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": "http"}]
    # Prometheus can find the pods
    ann = pod["metadata"]["annotations"]
    assert ann["prometheus.io/scrape"] == "true" and ann["prometheus.io/port"] == env["TCM_PORT"]


def _init_script(container: dict, paths: dict[str, str]) -> str:
    """An init container's shell script with its container paths moved to host paths."""
    assert container["command"] == ["/bin/sh", "-c"], container["command"]
    script = container["args"][0]
    for inside, outside in sorted(paths.items(), key=lambda kv: -len(kv[0])):
        script = script.replace(inside, outside)
    return script


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_init_containers_fill_the_store_both_ways(overlay, tmp_path):
    """The rendered init containers' own commands, run on the host: without a remote the pod
    gets the image's bundled store; with one, the fetched store (rclone stood in for by a
    script that copies a local folder) and not the bundled one. Then verify-store's command
    accepts either."""
    docs = render(overlay)
    spec = one(docs, "Deployment")["spec"]["template"]["spec"]
    fetch, seed = _container(spec, "fetch-checkpoints", init=True), _container(spec, "seed-models", init=True)
    image_store = tmp_path / "image-models"  # what the image holds at /models
    shutil.copytree(ROOT / "model_store", image_store, ignore=shutil.ignore_patterns("*.onnx", "q*-g[0-9]*.json"))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    remote = tmp_path / "bucket"
    (bin_dir / "rclone").write_text(  # `rclone copy SRC DST ...` -> copy the local stand-in of SRC
        f'#!/bin/sh\n[ "$1" = copy ] || exit 2\ncp -R {remote}/. "$3"/\n'
    )
    (bin_dir / "rclone").chmod(0o755)
    env_base = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}

    def init(container: dict, paths: dict[str, str], source: str) -> subprocess.CompletedProcess:
        env = {**env_base, **_env_of(docs, container), "CHECKPOINTS_SOURCE": source}
        return subprocess.run(
            ["/bin/sh", "-c", _init_script(container, paths)], env=env, capture_output=True, text=True, timeout=60
        )

    def fill(volume, source: str) -> None:
        volume.mkdir()
        for container, paths in (
            (fetch, {"/models": str(volume)}),
            (seed, {"/seed": str(volume), "/models": str(image_store)}),
        ):
            r = init(container, paths, source)
            assert r.returncode == 0, (container["name"], r.stdout, r.stderr)
        listed = subprocess.run(
            [sys.executable, "-m", "tcm_serve.cli.main", "models", "list", "--store", str(volume)],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=ROOT,
        )
        assert listed.returncode == 0, listed.stderr

    # a lost value fails the pod's start with the reason, rather than serve the demo models
    empty = init(fetch, {"/models": str(tmp_path / "nowhere")}, "")
    assert empty.returncode == 1 and "CHECKPOINTS_SOURCE is empty" in empty.stderr
    bundled = tmp_path / "volume-bundled"
    fill(bundled, "bundled")  # as shipped
    assert sorted(p.name for p in bundled.iterdir()) == sorted(p.name for p in image_store.iterdir())

    other = tmp_path / "other-store"  # a store with one level of the bundled one, as uploaded
    entry = json.loads((image_store / "manifest.json").read_text())["models"][0]
    other.mkdir()
    shutil.copy(image_store / entry["file"], other / entry["file"])
    (other / "manifest.json").write_text(json.dumps({"format": 1, "models": [entry]}))
    shutil.copytree(other, remote)
    fetched = tmp_path / "volume-fetched"
    fill(fetched, "models:tcm-checkpoints/store-v1")
    assert sorted(p.name for p in fetched.iterdir()) == sorted(p.name for p in other.iterdir())


def test_overlays_differ_where_the_hardware_does():
    gpu, cpu = render("gpu"), render("cpu")
    gpu_tcm = _container(one(gpu, "Deployment")["spec"]["template"]["spec"], "tcm")
    cpu_tcm = _container(one(cpu, "Deployment")["spec"]["template"]["spec"], "tcm")
    gres = gpu_tcm["resources"]
    assert str(gres["limits"]["nvidia.com/gpu"]) == str(gres["requests"]["nvidia.com/gpu"]) == "1"
    assert any(t["key"] == "nvidia.com/gpu" for t in one(gpu, "Deployment")["spec"]["template"]["spec"]["tolerations"])
    assert "nvidia.com/gpu" not in json.dumps(cpu_tcm["resources"])
    genv, cenv = _env_of(gpu, gpu_tcm), _env_of(cpu, cpu_tcm)
    assert genv["TCM_DEVICES"] == "cuda" and cenv["TCM_DEVICES"] == "cpu"
    assert int(cenv["TCM_MAX_BATCH_SIZE"]) == 1 < int(genv["TCM_MAX_BATCH_SIZE"])
    assert int(cenv["TCM_MAX_PIXELS"]) >= 48 * 10**6, "the CPU overlay takes a 48 MP camera photo"
    for env, tcm in ((genv, gpu_tcm), (cenv, cpu_tcm)):
        # torch's threads follow the cores the pod requests, not the node's core count
        assert int(env["OMP_NUM_THREADS"]) == int(str(tcm["resources"]["requests"]["cpu"]))
        assert_limits_fit(env, tcm["resources"]["limits"]["memory"], "kubernetes")
    for env in (genv, cenv):
        assert set(env) & set(CONTRACT_SETTINGS), env
        unknown = {k for k in env if k.startswith("TCM_")} - set(CONTRACT_SETTINGS)
        assert not unknown, f"settings the service does not have: {unknown}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_hpa_metric_is_served_by_the_adapter_rules(overlay):
    hpa = one(render(overlay), "HorizontalPodAutoscaler")
    values = yaml.safe_load(ADAPTER_VALUES.read_text())
    exposed = {}
    for rule in values["rules"]["custom"]:
        series = rule["seriesQuery"].split("{")[0]
        assert series in CONTRACT_METRICS, series
        assert rule["resources"]["overrides"]["pod"] == {"resource": "pod"}
        assert rule["resources"]["overrides"]["namespace"] == {"resource": "namespace"}
        exposed[rule["name"]["as"]] = rule
    for metric in hpa["spec"]["metrics"]:
        assert metric["type"] == "Pods"
        assert metric["pods"]["metric"]["name"] in exposed
        assert float(metric["pods"]["target"]["averageValue"]) > 0


# -- Prometheus and Grafana ------------------------------------------------------------------
def _all_promql() -> dict[str, str]:
    """Every PromQL expression we ship, by where it lives."""
    out = {}
    dash = json.loads(DASHBOARD.read_text())
    for p in dash["panels"]:
        for t in p.get("targets", []):
            out[f"dashboard panel {p['id']} ({p['title']}) {t['refId']}"] = t["expr"]
    for v in dash["templating"]["list"]:
        if v["type"] == "query":
            out[f"dashboard variable {v['name']}"] = v["definition"]
    alerts = yaml.safe_load((MONITORING / "prometheus" / "alerts.yml").read_text())
    for g in alerts["groups"]:
        for r in g["rules"]:
            out[f"alert {r['alert']}"] = r["expr"]
    for i, r in enumerate(yaml.safe_load(ADAPTER_VALUES.read_text())["rules"]["custom"]):
        out[f"adapter rule {i}"] = r["metricsQuery"].replace("<<.Series>>", r["seriesQuery"].split("{")[0])
    return out


def test_error_alert_counts_codec_requests_on_both_sides_of_the_ratio():
    """Probes answer 503 while models load: counted above the line but not below it, they
    fired the alert on an idle service (and x/0 = +Inf with no codec traffic)."""
    alerts = yaml.safe_load((MONITORING / "prometheus" / "alerts.yml").read_text())
    (expr,) = [r["expr"] for g in alerts["groups"] for r in g["rules"] if r.get("alert") == "TcmServeErrors"]
    # the dashboard's error-ratio panel too (it counted probe 503s above the line)
    panel = json.loads(DASHBOARD.read_text())
    ratios = [
        t["expr"]
        for p in panel["panels"]
        for t in p.get("targets", [])
        if 'code=~"5.."' in t["expr"] and "/" in t["expr"]
    ]
    assert ratios, "no error-ratio panel"
    for text in (expr, *ratios):
        selectors = re.findall(r"tcm_requests_total\{([^}]*)\}", text)
        assert len(selectors) == 2, text
        for sel in selectors:
            (routes,) = re.findall(r'endpoint=~"([^"]+)"', sel)
            assert set(routes.split("|")) == CODEC_ROUTES, sel


def test_every_query_uses_only_contract_metrics():
    for where, expr in _all_promql().items():
        names = set(METRIC_RE.findall(expr))
        assert names or re.fullmatch(r'up\{job="tcm-serve"\} == 0', expr), f"{where}: no tcm_ metric in {expr!r}"
        unknown = names - KNOWN_SERIES
        assert not unknown, f"{where}: {sorted(unknown)} are not metrics the service exports"
        assert expr.count("(") == expr.count(")"), f"{where}: unbalanced parentheses"


def test_promtool_accepts_configs_and_queries(tmp_path):
    """promtool is not on PyPI (Debian: apt-get install prometheus); without it the static
    checks above still run, and this one only says that it was not run."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (apt-get install prometheus); PromQL checked statically only")
    prom_dir = MONITORING / "prometheus"
    cfg = yaml.safe_load((prom_dir / "prometheus.yml").read_text())
    cfg["rule_files"] = [str(prom_dir / "alerts.yml")]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(cfg))
    res = run([promtool, "check", "config", str(tmp_path / "prometheus.yml")])
    assert res.returncode == 0, res.stdout + res.stderr
    rules = [
        {
            "record": f"check:{i}",
            "expr": expr.replace("$__rate_interval", "1m")
            .replace("$instance", ".*")
            .replace("<<.LabelMatchers>>", 'namespace="tcm"')
            .replace("<<.GroupBy>>", "pod"),
        }
        for i, expr in enumerate(_all_promql().values())
        if not expr.startswith("label_values")
    ]
    (tmp_path / "queries.yml").write_text(yaml.safe_dump({"groups": [{"name": "queries", "rules": rules}]}))
    res = run([promtool, "check", "rules", str(tmp_path / "queries.yml")])
    assert res.returncode == 0, res.stdout + res.stderr


def test_amtool_accepts_the_alertmanager_config():
    """amtool is not on PyPI (Debian: apt-get install prometheus-alertmanager)."""
    amtool = shutil.which("amtool")
    if amtool is None:
        pytest.skip(
            "amtool not installed (apt-get install prometheus-alertmanager); alertmanager.yml checked statically only"
        )
    res = run([amtool, "check-config", str(MONITORING / "alertmanager" / "alertmanager.yml")])
    assert res.returncode == 0, res.stdout + res.stderr


def test_kubernetes_scrape_job_labels_what_the_adapter_maps():
    cfg = yaml.safe_load((MONITORING / "prometheus" / "prometheus-kubernetes.yml").read_text())
    job = next(j for j in cfg["scrape_configs"] if j["job_name"] == "tcm-serve")
    targets = {r.get("target_label") for r in job["relabel_configs"]}
    assert {"namespace", "pod"} <= targets
    keep = [r for r in job["relabel_configs"] if r.get("action") == "keep"]
    assert any(r["regex"] == "http" for r in keep), "scrape only the http port"
    base = yaml.safe_load((DEPLOY / "base" / "kustomization.yaml").read_text())
    assert job["kubernetes_sd_configs"][0]["namespaces"]["names"] == [base["namespace"]]
    alerts_jobs = set(re.findall(r'job="([^"]+)"', (MONITORING / "prometheus" / "alerts.yml").read_text()))
    assert alerts_jobs <= {"tcm-serve"}


def test_dashboard_covers_the_issue_and_is_well_formed():
    dash = json.loads(DASHBOARD.read_text())
    panels = [p for p in dash["panels"] if p["type"] != "row"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for p in panels:
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24 and g["h"] > 0, p["title"]
        for t in p["targets"]:
            assert "$instance" in t["expr"], f"{p['title']}: ignores the instance filter"
    # no two panels overlap
    cells = set()
    for p in dash["panels"]:
        g = p["gridPos"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not (cells & mine), f"{p['title']} overlaps another panel"
        cells |= mine
    exprs = {p["title"]: " ".join(t["expr"] for t in p["targets"]) for p in panels}
    needs = {
        "request rate": lambda e: "rate(tcm_requests_total" in e,
        "latency percentiles": lambda e: (
            "histogram_quantile(0.95" in e
            and "tcm_request_duration_seconds_bucket" in e
            and "histogram_quantile(0.99" in e
        ),
        "batch size": lambda e: "tcm_batch_size" in e,
        "queue depth": lambda e: "tcm_queue_depth" in e,
        "bits per pixel": lambda e: "tcm_bits_per_pixel" in e,
        "errors": lambda e: 'code=~"5..' in e or 'code=~"4..|5..' in e,
        "GPU memory": lambda e: "tcm_device_memory_bytes" in e,
        "worker restarts": lambda e: "tcm_worker_restarts_total" in e,
        "why 429 comes below max_queue": lambda e: "tcm_queue_reserved" in e and "tcm_queue_capacity" in e,
    }
    for topic, ok in needs.items():
        assert any(ok(e) for e in exprs.values()), f"no panel shows {topic}"
    provider = yaml.safe_load((MONITORING / "grafana" / "provisioning" / "dashboards" / "tcm-serve.yml").read_text())
    assert provider["apiVersion"] == 1 and provider["providers"][0]["type"] == "file"
    ds = yaml.safe_load((MONITORING / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    assert ds["datasources"][0]["type"] == "prometheus"


# -- docs ------------------------------------------------------------------------------------
def test_deploy_doc_covers_settings_metrics_and_files():
    text = DOCS.read_text()
    for name in CONTRACT_SETTINGS:
        assert name in text, f"docs/deploy.md does not mention {name}"
    for metric in CONTRACT_METRICS:
        assert metric in text, f"docs/deploy.md does not explain {metric}"
    for rel in re.findall(r"\]\(((?:\.\./)?[\w./-]+)\)", text):
        target = (DOCS.parent / rel).resolve()
        assert target.exists(), f"docs/deploy.md links to {rel}, which does not exist"
    for topic in ("docker compose", "kubectl apply -k", "tcm models import", "Prometheus adapter", "Sizing"):
        assert topic in text, topic


# -- the image's entrypoint, run on the host ---------------------------------------------------
def _png(width: int, height: int) -> bytes:
    import numpy as np
    from PIL import Image

    yy, xx = np.mgrid[0:height, 0:width]
    rng = np.random.default_rng(5)
    px = np.stack([xx * 255 // width, yy * 255 // height, (xx + yy) % 256], axis=-1) + rng.integers(
        -16, 17, (height, width, 3)
    )
    buf = io.BytesIO()
    Image.fromarray(np.clip(px, 0, 255).astype(np.uint8), "RGB").save(buf, format="PNG")
    return buf.getvalue()


def test_image_entrypoint_serves_round_trip(kit_store, tmp_path):
    """The CPU image's ENTRYPOINT + CMD with its ENV, on the host: ready, round trip, metrics,
    the image's HEALTHCHECK command, and a clean exit 0 on SIGTERM.

    Host-specific overrides only: the store (the conformance checkpoint instead of the
    bundled one), a free port on 127.0.0.1 (loopback only here; the image binds 0.0.0.0),
    HOME, and PATH (the image's /opt/venv is this virtualenv)."""
    import httpx
    from PIL import Image

    stage = final_targets()["cpu"]
    command = image_command(stage)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TCM_")}
    env.update(stage.image_env())
    port = free_port()
    venv_bin = Path(sys.executable).parent
    env.update(
        TCM_MODEL_STORE=str(kit_store),
        TCM_PORT=str(port),
        TCM_HOST="127.0.0.1",
        HOME=str(tmp_path),
        PATH=f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    exe = shutil.which(command[0], path=env["PATH"])
    assert exe, f"{command[0]} (the image's entrypoint) is not installed: pip install -e ."
    log = open(tmp_path / "serve.log", "wb")
    proc = subprocess.Popen([exe, *command[1:]], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    url = f"http://127.0.0.1:{port}"

    def server_log() -> str:
        return (tmp_path / "serve.log").read_text(errors="replace")[-4000:]

    try:
        deadline = time.monotonic() + 90
        statuses = []
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"`{' '.join(command)}` exited with {proc.returncode}:\n{server_log()}"
            try:
                r = httpx.get(url + "/readyz", timeout=5)
            except httpx.TransportError:
                time.sleep(0.1)
                continue
            statuses.append(r.status_code)
            if r.status_code == 200:
                break
            assert r.status_code == 503, r.text
            time.sleep(0.1)
        else:
            pytest.fail(f"not ready within 90 s ({statuses[-5:]}):\n{server_log()}")
        assert httpx.get(url + "/healthz", timeout=5).status_code == 200

        # the image's HEALTHCHECK command, mapped to the file the Dockerfile copies there
        health = exec_form(re.search(r"CMD (\[.*\])", stage.last("HEALTHCHECK")).group(1))
        copied = {Path(dst).name: src for src, dst in copies(stage)}
        script = ROOT / copied[health[0]]
        res = subprocess.run(
            [sys.executable, str(script), *health[1:]], env=env, capture_output=True, text=True, timeout=30
        )
        assert res.returncode == 0, res.stderr
        res = subprocess.run(
            [sys.executable, str(script), "/readyz"], env=env, capture_output=True, text=True, timeout=30
        )
        assert res.returncode == 0, res.stderr

        png = _png(200, 136)
        r = httpx.post(url + "/compress", content=png, headers={"content-type": "image/png"}, timeout=60)
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("application/x-tcm")
        d = httpx.post(
            url + "/decompress", content=r.content, headers={"content-type": "application/x-tcm"}, timeout=60
        )
        assert d.status_code == 200, d.text
        out = Image.open(io.BytesIO(d.content))
        assert out.size == (200, 136) and out.mode == "RGB"

        # every metric the dashboard, alerts and HPA use is exported (device memory: CUDA only)
        exposition = httpx.get(url + "/metrics", timeout=5).text
        exported = set(re.findall(r"^(tcm_[a-z0-9_]+)", exposition, flags=re.M))
        used = set().union(*(METRIC_RE.findall(e) for e in _all_promql().values()))
        missing = used - exported - _series_names("tcm_device_memory_bytes", "gauge")
        assert not missing, f"used by deploy/monitoring but not exported: {sorted(missing)}"
        counted = [
            line for line in exposition.splitlines() if line.startswith("tcm_requests_total{") and 'code="200"' in line
        ]
        for endpoint in ("/compress", "/decompress"):
            assert any(f'endpoint="{endpoint}"' in line for line in counted), f"no 200 counted for {endpoint}"

        # docker stop / Kubernetes: SIGTERM, drain, exit 0 within TCM_SHUTDOWN_GRACE_S
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=float(env["TCM_SHUTDOWN_GRACE_S"]) + 15)
        assert rc == 0, f"exit {rc} on SIGTERM:\n{server_log()}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


# -- monitoring under the Prometheus Operator; alerts in compose --------------------------------
def render_with_operator_component(overlay: str, tmp_path: Path) -> tuple[dict, ...]:
    """An overlay with deploy/components/prometheus-operator, as a user's kustomization has it."""
    here = tmp_path / "with-operator"
    here.mkdir()
    rel = lambda p: os.path.relpath(p, here)  # noqa: E731
    (here / "kustomization.yaml").write_text(
        f"resources: [{rel(DEPLOY / 'overlays' / overlay)}]\ncomponents: [{rel(DEPLOY / 'components' / 'prometheus-operator')}]\n"
    )
    res = run([tool("kubectl"), "kustomize", "--load-restrictor", "LoadRestrictionsNone", str(here)])
    assert res.returncode == 0, res.stderr
    return tuple(d for d in yaml.safe_load_all(res.stdout) if d)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_operator_component_scrapes_the_service_and_carries_the_alerts(overlay, tmp_path):
    docs = render_with_operator_component(overlay, tmp_path)
    svc, monitor, rule = one(docs, "Service"), one(docs, "ServiceMonitor"), one(docs, "PrometheusRule")
    assert monitor["metadata"]["namespace"] == svc["metadata"]["namespace"] == rule["metadata"]["namespace"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in svc["spec"]["ports"]} and endpoint["path"] == "/metrics"
    assert monitor["metadata"]["labels"]["release"] == rule["metadata"]["labels"]["release"]
    alerts = yaml.safe_load((MONITORING / "prometheus" / "alerts.yml").read_text())
    assert rule["spec"]["groups"] == alerts["groups"], "prometheusrule.yaml differs from alerts.yml: copy its groups"
    # under the Operator the job label is the Service's name, which the alerts select on
    assert any('job="tcm-serve"' in r["expr"] for g in alerts["groups"] for r in g["rules"])
    assert svc["metadata"]["name"] == "tcm-serve"


def test_compose_alerts_reach_alertmanager_and_its_log_receiver():
    cfg = compose_config(COMPOSE)["services"]
    prom = yaml.safe_load((MONITORING / "prometheus" / "prometheus.yml").read_text())
    (target,) = prom["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    host, port = target.split(":")
    assert host in cfg and any(str(p["target"]) == port for p in cfg[host]["ports"])
    am = yaml.safe_load((MONITORING / "alertmanager" / "alertmanager.yml").read_text())
    receivers = {r["name"]: r for r in am["receivers"]}
    url = receivers[am["route"]["receiver"]]["webhook_configs"][0]["url"]
    log_host, log_port = url.split("//")[1].rstrip("/").split(":")
    assert log_host in cfg and cfg[log_host]["command"][-1] == log_port


def test_the_log_receiver_prints_each_alert(tmp_path):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(MONITORING / "alertmanager" / "log_receiver.py"), str(port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        note = {
            "alerts": [
                {
                    "status": "firing",
                    "labels": {"alertname": "TcmServeDown"},
                    "annotations": {"summary": "down"},
                    "startsAt": "2026-12-02T00:00:00Z",
                }
            ]
        }
        end = time.monotonic() + 30
        while True:
            try:
                import httpx

                r = httpx.post(f"http://127.0.0.1:{port}/", json=note, timeout=5)
                break
            except httpx.TransportError:
                assert time.monotonic() < end, "the receiver did not start"
                time.sleep(0.1)
        assert r.status_code == 200
        line = json.loads(proc.stdout.readline())
        assert line == {
            "labels": {"alertname": "TcmServeDown"},
            "startsAt": "2026-12-02T00:00:00Z",
            "status": "firing",
            "summary": "down",
        }
    finally:
        proc.terminate()
        proc.wait(10)


# -- reproducible builds -------------------------------------------------------------------------
def _lock() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"requirements.lock: {line!r} is not pinned with =="
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    return pins


def test_every_runtime_dependency_is_locked_and_installed_from_the_lock():
    import tomllib

    pins = _lock()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    deps = project["dependencies"] + extras["server"] + extras["eval"]  # eval: tcm eval's BD-rate package
    for dep in deps:
        name = re.sub(r"[-_.]+", "-", re.split(r"[<>=!~\[ ;]", dep, maxsplit=1)[0]).lower()
        assert name == "torch" or name in pins, f"{name} is a dependency but not in requirements.lock"
    # the GPU image's onnxruntime-gpu is the locked onnxruntime's version
    gpu_ort = re.search(r"^ARG ONNXRUNTIME_GPU_VERSION=(\S+)", DOCKERFILE.read_text(), re.M).group(1)
    assert pins["onnxruntime"] == gpu_ort
    # both images' venvs and the set-up command install with it
    stages = parse_dockerfile()
    for name in ("venv-cpu", "venv-gpu"):
        assert "--constraint /opt/venv/requirements.lock" in " ".join(stages[name].all("RUN")), name
        assert ("requirements.lock", "/opt/venv/requirements.lock") in copies(stages[name]), name
    assert "--constraint requirements.lock" in (ROOT / "scripts" / "setup.sh").read_text()
