"""The layering of docs/architecture.md, checked on the code's imports.

model <- codec <- runtime <- api <- cli: a layer imports only the layers below it (and
the shared modules errors, files, devices, config, imageio as listed). A new import that
breaks this fails here, so the picture in the docs stays true. Modules that must load
without torch (the client, the container, the configuration, ...) are checked by
importing them in a fresh interpreter.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "tcm_serve"

#: The parts above the codec (what neither the codec nor the model may import).
ABOVE_CODEC = (
    "tcm_serve.runtime",
    "tcm_serve.api",
    "tcm_serve.cli",
    "tcm_serve.config",
    "tcm_serve.evaluation",
    "tcm_serve.training",
)

#: What each part of the package may not import (prefixes of tcm_serve module names).
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "tcm_serve.errors": ("tcm_serve.",),
    "tcm_serve.files": ("tcm_serve.",),
    "tcm_serve.model": ("tcm_serve.codec", "tcm_serve.store", *ABOVE_CODEC),
    "tcm_serve.codec": ABOVE_CODEC,
    # the store keeps coder tables with the weights: it may use the codec's table builder only
    "tcm_serve.store": (
        "tcm_serve.runtime",
        "tcm_serve.api",
        "tcm_serve.cli",
        "tcm_serve.config",
        "tcm_serve.codec.engine",
        "tcm_serve.codec.pipeline",
        "tcm_serve.codec.backends",
    ),
    "tcm_serve.devices": ("tcm_serve.codec", "tcm_serve.model", "tcm_serve.runtime", "tcm_serve.api", "tcm_serve.cli"),
    "tcm_serve.runtime": ("tcm_serve.api", "tcm_serve.cli", "tcm_serve.training"),
    "tcm_serve.api": ("tcm_serve.cli", "tcm_serve.training"),
    "tcm_serve.client": (
        "tcm_serve.codec",
        "tcm_serve.model",
        "tcm_serve.runtime.pool",
        "tcm_serve.runtime.worker",
        "tcm_serve.api.app",
        "tcm_serve.api.routes",
        "tcm_serve.cli",
    ),
}

#: Modules that import without torch (and the client without fastapi either).
LIGHT = (
    "tcm_serve.client",
    "tcm_serve.cpu",
    "tcm_serve.config",
    "tcm_serve.devices",
    "tcm_serve.codec.container",
    "tcm_serve.codec.geometry",
    "tcm_serve.codec.effort",
    "tcm_serve.api.exceptions",
    "tcm_serve.runtime.errors",
)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Absolute names of the tcm_serve modules ``path`` imports (relative imports resolved)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.add(mod)
            found.update(f"{mod}.{a.name}" for a in node.names)
    return {m for m in found if m.startswith("tcm_serve")}


def _rules_for(module: str) -> tuple[str, ...]:
    return tuple(
        bad for part, bads in FORBIDDEN.items() if module == part or module.startswith(part + ".") for bad in bads
    )


def _forbidden(module: str, imported: str) -> bool:
    """Whether ``module`` may not import ``imported`` (a prefix ending in "." matches any
    module under it; otherwise the module itself and its submodules)."""
    for bad in _rules_for(module):
        if imported.startswith(bad) if bad.endswith(".") else imported == bad or imported.startswith(bad + "."):
            return True
    return False


def test_layers():
    broken = [
        f"{_module_name(path)} imports {imported}"
        for path in sorted(PACKAGE.rglob("*.py"))
        for imported in sorted(_imports(path))
        if _forbidden(_module_name(path), imported)
    ]
    assert not broken, "layering broken (docs/architecture.md):\n" + "\n".join(broken)


def test_the_check_can_fail():
    """The checker finds relative and absolute imports and flags a layer going upwards."""
    imports = _imports(PACKAGE / "runtime" / "pool.py")
    assert "tcm_serve.codec.pipeline" in imports and "tcm_serve.store" in imports
    assert any(m.startswith("tcm_serve.runtime.worker") for m in imports)
    assert _forbidden("tcm_serve.model.entropy", "tcm_serve.codec.tables")
    assert _forbidden("tcm_serve.errors", "tcm_serve.files")
    assert _forbidden("tcm_serve.store", "tcm_serve.codec.engine")
    assert not _forbidden("tcm_serve.store", "tcm_serve.codec.tables")
    assert not _forbidden("tcm_serve.api.routes.codec", "tcm_serve.runtime.pool")


@pytest.mark.parametrize("module", LIGHT)
def test_light_modules_import_without_torch(module):
    heavy = ["torch", "onnxruntime"] + (["fastapi", "numpy"] if module == "tcm_serve.client" else [])
    code = f"import sys, {module}; print([m for m in {heavy!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", f"{module} pulls in {out.stdout.strip()}"


def test_a_bare_install_is_the_client():
    """`pip install tcm-serve` needs httpx only (the client); the rest is the server extra,
    which the set-up command and both images install."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {dep.split(">")[0].split("=")[0].split("[")[0].strip().lower() for dep in project["dependencies"]}
    assert names == {"httpx"}
    server = " ".join(project["optional-dependencies"]["server"])
    for heavy in ("torch", "numpy", "fastapi", "onnxruntime"):
        assert heavy in server
    assert '.[server,test,eval]"' in (ROOT / "scripts" / "setup.sh").read_text()
    assert project["scripts"]["tcm"] == "tcm_serve.cli:run"
    # tcm eval's BD-rate package (it imports matplotlib) is its own extra, not the server's
    assert "bjontegaard" not in server and "bjontegaard" in " ".join(project["optional-dependencies"]["eval"])


def test_the_service_does_not_import_the_eval_extra():
    """The service image installs the server extra only: building the app (and /compare's
    scoring, MS-SSIM included) must not import bjontegaard or the matplotlib it pulls in."""
    code = (
        "import sys, numpy as np; from tcm_serve.api.app import create_app; from tcm_serve.config import Settings; "
        "from tcm_serve.evaluation.metrics import ms_ssim; create_app(Settings()); "
        "a = np.zeros((161, 161, 3), np.uint8); ms_ssim(a, a); "
        "print([m for m in ('bjontegaard', 'matplotlib', 'scipy') if m in sys.modules])"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("TCM_")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout


def test_tcm_without_the_server_extra_says_what_to_install():
    """On a client-only install the `tcm` command answers one line, not a traceback."""
    code = "import sys; sys.modules['numpy'] = None; from tcm_serve.cli import run; sys.exit(run())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install 'tcm-serve[server]'" in lines[0] and "numpy" in lines[0], out.stderr
