#!/usr/bin/env bash
# GPU check (under 8 minutes): the `quick` matrix on the GPU with PyTorch and
# JAX, then sanity checks of device memory peaks and synced step times, and a
# short table last; then a few hundred steps of a CIFAR reference pair
# (resnet56 -> resnet20 at full width, batch norm, residuals, crop and flip,
# 100 steps per phase) on CIFAR-format random pixels written here. Meant for a lent GPU machine whose image has PyTorch and
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
# A CIFAR pair for a few hundred steps: random pixels in the CIFAR-100 format
# (the speed and the code paths are what is checked, not the accuracy).
cifar="${OUT:-/tmp}/gpu-cifar"
rm -rf "$cifar" && mkdir -p "$cifar/data/cifar-100-python"
python3 - "$cifar/data/cifar-100-python" <<'PY'
import pickle, sys
import numpy as np
rng = np.random.default_rng(0)
for name, n in (("train", 7200), ("test", 1000)):
    batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
             b"fine_labels": [int(v) for v in rng.integers(0, 100, n)]}
    with open(f"{sys.argv[1]}/{name}", "wb") as f:
        pickle.dump(batch, f, protocol=2)
PY
cat > "$cifar/matrix.toml" <<'TOML'
name = "gpu-cifar"
specs = ["cifar100-resnet56-resnet20"]
seeds = 1
cell_timeout_s = 200
[overrides]
"teacher.epochs" = 1
"student.epochs" = 1
"data.train_limit" = 6400
"measure.best_epoch" = false
TOML
set +e
timeout 420 python3 -m kdbench run --matrix "$cifar/matrix.toml" --backend pytorch,jax --device gpu \
  --data-dir "$cifar/data" --out "$cifar/run"
echo "cifar run exited with $?"
set -e

