#!/usr/bin/env bash
# GPU check (under 5 minutes): the `quick` matrix on the GPU with PyTorch and
# JAX, then sanity checks of device memory peaks and synced step times, and a
# short table last. Meant for a lent GPU machine whose image has PyTorch and
# JAX but no TensorFlow and no package index: kdbench itself and its missing
# pure-Python dependencies travel as wheels in .whl/ (make them here first
# with benchmarks/gpu_wheels.sh). Writes under $OUT when set, else /tmp.
set -euo pipefail
cd "$(dirname "$0")/.."
compgen -G ".whl/kdbench-*.whl" > /dev/null || { echo "no .whl/kdbench-*.whl: run benchmarks/gpu_wheels.sh first" >&2; exit 2; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/kdbench-site .whl/*.whl
# Installed, not the source tree: backends/ is importable only as kdbench.backends.
cd /tmp
export PYTHONPATH="/tmp/kdbench-site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
out="${OUT:-/tmp}/gpu-quick"
rm -rf "$out"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
set +e
timeout 270 python3 -m kdbench run --matrix quick --backend pytorch,jax --device gpu \
  --seeds 2 --out "$out"
status=$?
set -e
echo "kdbench run exited with $status"
python3 -m kdbench.tools.gpu_check "$out"
