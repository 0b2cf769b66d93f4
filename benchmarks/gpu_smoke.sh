#!/usr/bin/env bash
# GPU smoke check: every --device cuda path of the torch half, plus the analytic half on JAX's
# devices, on scikit-learn's digits (offline), with seconds and peak GPU memory per command.
# Runs in a few minutes on one GPU; with 2 or more GPUs it also trains under torchrun.
#
#     bash benchmarks/gpu_smoke.sh [OUT]        (default OUT: runs/gpu-smoke; run in the venv)
#
# GPU_SMOKE_DEVICE=cpu runs the same commands on the CPU (slowly): a check of the script itself.
# Each command must exit 0; the script stops at the first failure. Timings are this machine's;
# the peak memory is what torch held (``peak_gpu_memory_mib`` of each record).
set -euo pipefail
OUT=${1:-runs/gpu-smoke}
DEVICE=${GPU_SMOKE_DEVICE:-cuda}
N=(python -m ntkrobust)
DEVICE=$DEVICE python - <<'PY'
import os, sys, torch
if os.environ["DEVICE"] == "cuda" and not torch.cuda.is_available():
    sys.exit("gpu_smoke: no CUDA device visible to torch")
gpus = torch.cuda.device_count()
print(f"torch {torch.__version__}, {gpus} GPU(s)" + (f": {torch.cuda.get_device_name(0)}" if gpus else ""))
import jax
print(f"jax {jax.__version__}: devices {jax.devices()}")
PY
mkdir -p "$OUT"
run() {  # name, then the command's arguments; prints seconds and the record's peak GPU memory
  local name=$1; shift
  local start; start=$(date +%s.%N)
  "${N[@]}" "$@" --out "$OUT/$name" --force --quiet > "$OUT/$name.log" 2>&1 || { cat "$OUT/$name.log"; exit 1; }
  local seconds; seconds=$(python -c "print(f'{$(date +%s.%N) - $start:.1f}')")
  local record
  for record in "$OUT/$name"/{results,metrics,history}.json; do [ -f "$record" ] && break; done
  local peak; peak=$(python -c "import json; print(json.load(open('$record')).get('peak_gpu_memory_mib', 'n/a'))")
  printf '%-28s %8s s   peak GPU memory %s MiB\n' "$name" "$seconds" "$peak"
}
D=(--data digits --device "$DEVICE")
run entk-mnist-cnn entk "${D[@]}" --model mnist-cnn --points 300 --kind class-blocks
run entk-resnet18 entk "${D[@]}" --model resnet18 --points 100 --kind trace
run entk-rademacher entk "${D[@]}" --model resnet18 --points 100 --kind rademacher:2
run train-pgd train "${D[@]}" --model mnist-cnn --mode pgd --eps 0.1 --epochs 3 --track-kernel 100
run train-resnet-bn train "${D[@]}" --model resnet18 --width 16 --mode pgd --eps 0.1 --epochs 2 --batchnorm both --track-kernel 50
run two-layer two-layer "${D[@]}" --width 10000 --epochs 300
run transfer transfer "${D[@]}" --target "$OUT/train-pgd/checkpoints/epoch_003.pt" --surrogate mnist-cnn --surrogate-n 300
run evaluate evaluate "$OUT/train-pgd/checkpoints/epoch_003.pt" "${D[@]}" --eps 0.1 --n-test 200
run attack-analytic attack --data digits --arch fc2 --method pgd
if [ "$(python -c 'import torch; print(torch.cuda.device_count())')" -ge 2 ]; then
  start=$(date +%s.%N)
  python -m torch.distributed.run --nproc-per-node 2 -m ntkrobust train "${D[@]}" --model mnist-cnn --mode pgd \
    --eps 0.1 --epochs 3 --track-kernel 100 --out "$OUT/train-pgd-2gpu" --force --quiet > "$OUT/train-pgd-2gpu.log" 2>&1 \
    || { cat "$OUT/train-pgd-2gpu.log"; exit 1; }
  printf '%-28s %8s s   (torchrun, 2 GPUs; compare with train-pgd)\n' train-pgd-2gpu \
    "$(python -c "print(f'{$(date +%s.%N) - $start:.1f}')")"
fi
echo "gpu_smoke: every command passed; records in $OUT"
