#!/usr/bin/env bash
# Regenerate requirements.lock: resolve the runtime dependencies (server and eval extras) in a fresh venv
# (beside torch, as scripts/setup.sh installs it) and pin what got installed. Run it when a
# dependency in pyproject.toml changes, then run the tests and commit the lock.
#   ONNXRUNTIME_VERSION: the CPU onnxruntime to pin, the same as the GPU image's
#   onnxruntime-gpu (docker/Dockerfile, ONNXRUNTIME_GPU_VERSION)
set -euo pipefail
cd "$(dirname "$0")/.."
ORT="${ONNXRUNTIME_VERSION:-$(sed -n 's/^ARG ONNXRUNTIME_GPU_VERSION=//p' docker/Dockerfile)}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
python3 -m venv "$tmp/venv"
"$tmp/venv/bin/pip" install -q --disable-pip-version-check "${TORCH_SPEC:-torch==2.13.0}"
echo "onnxruntime==$ORT" > "$tmp/ort.txt"
"$tmp/venv/bin/pip" install -q --disable-pip-version-check -c "$tmp/ort.txt" ".[server,eval]"
{
  sed -n '1,/^# Regenerate/p' requirements.lock
  "$tmp/venv/bin/pip" freeze | grep -viE '^(torch|tcm-serve|tcm_serve)(==| @)'
} > "$tmp/lock"
mv "$tmp/lock" requirements.lock
echo "requirements.lock: $(grep -c '==' requirements.lock) pins (onnxruntime==$ORT)"
