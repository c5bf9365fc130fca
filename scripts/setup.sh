#!/usr/bin/env bash
# Create (or refresh) the virtual environment at .venv and install tcm-serve into it.
#
# torch is installed first and pinned: a plain `pip install torch` (or any dependency
# asking for an unpinned torch) pulls a multi-GB CUDA build even on a CPU-only machine.
# torch==2.13.0 is the CPU build on our dev/CI machines (a local wheel); elsewhere set
# TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu to get the CPU build from PyTorch's
# index, or leave it unset on a GPU machine to get the CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
stamp=.venv/.tcm-setup-stamp

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
# Re-run the install only when the project's dependency declarations changed.
want="$(cat pyproject.toml setup.py scripts/setup.sh tcm_serve/codec/_rans.c requirements.lock | sha256sum | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
pip_install() { .venv/bin/python -m pip install --disable-pip-version-check -q "$@"; }
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  echo "setup: installing $TORCH_SPEC"
  if [ -n "${TORCH_INDEX_URL:-}" ]; then
    pip_install "$TORCH_SPEC" --index-url "$TORCH_INDEX_URL"
  else
    pip_install "$TORCH_SPEC"
  fi
fi
echo "setup: installing tcm-serve (editable, with the server, test and eval extras; builds the C range coder)"
# Runtime dependencies at the versions of requirements.lock (the images install the same).
pip_install --constraint requirements.lock -e ".[server,test,eval]"
echo "$want" > "$stamp"
echo "setup: done ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
