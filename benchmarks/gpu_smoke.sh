#!/usr/bin/env bash
# GPU smoke check: every --device cuda path of the torch half, plus the analytic half on JAX's
# devices, on scikit-learn's digits (offline), with seconds and peak GPU memory per command.
# Runs in a few minutes on one GPU; with 2 or more GPUs it also trains under torchrun.
#
#     bash benchmarks/gpu_smoke.sh [OUT]        (default OUT: runs/gpu-smoke)
#
# Python is $PYTHON (default python3). Installed as the README says, everything runs. On a GPU
# box whose image already holds torch but not this package (no network to install it), the
# script runs the checkout it sits in; the commands that need what is missing there (the
# analytic half: neural-tangents with the pinned JAX; AutoAttack: pyautoattack) are reported as
# SKIPPED with the reason, never silently dropped.
#
# The analytic half runs on JAX's GPU and is compared with the CPU (benchmarks/analytic_devices.py)
# when JAX has a GPU backend (the cuda extra); otherwise that comparison is SKIPPED.
#
# GPU_SMOKE_DEVICE=cpu runs the same commands on the CPU (slowly): a check of the script itself;
# GPU_SMOKE_TORCHRUN=1 runs the torchrun block there too (2 gloo processes); on GPUs it needs 2.
# Each command must exit 0; the script stops at the first failure. Timings are this machine's;
# the peak memory is what torch held (``peak_gpu_memory_mib`` of each record).
set -euo pipefail
OUT=${1:-runs/gpu-smoke}
DEVICE=${GPU_SMOKE_DEVICE:-cuda}
PY=${PYTHON:-python3}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if ! "$PY" -c "import ntkrobust" 2>/dev/null; then
  # the repository root is the package (pyproject's package-dir), so a link to it named
  # ntkrobust makes the checkout importable without installing anything
  LINKS=$(mktemp -d)
  ln -s "$ROOT" "$LINKS/ntkrobust"
  export PYTHONPATH="$LINKS${PYTHONPATH:+:$PYTHONPATH}"
  echo "ntkrobust is not installed for $PY: running the checkout $ROOT"
fi
N=("$PY" -m ntkrobust)
missing() {  # the last line of the error importing module $1, or nothing when it imports
  local error
  error=$("$PY" -c "import $1" 2>&1) && return 0
  tail -n 1 <<<"$error"
}
ANALYTIC_MISSING=$(missing ntkrobust.kernels._jax)  # JAX and neural-tangents, as the package loads them
AUTOATTACK_MISSING=$(missing pyautoattack)
DEVICE=$DEVICE "$PY" - <<'PY'
import os, sys, torch
if os.environ["DEVICE"] == "cuda" and not torch.cuda.is_available():
    sys.exit("gpu_smoke: no CUDA device visible to torch")
gpus = torch.cuda.device_count()
print(f"torch {torch.__version__}, {gpus} GPU(s)" + (f": {torch.cuda.get_device_name(0)}" if gpus else ""))
# float32 convolutions in TF32 (PyTorch's default where the GPU has TF32 units, compute capability
# 8.0 and up, unless NVIDIA_TF32_OVERRIDE=0): ~1e-3 relative, not rounding (as the records say it)
if gpus:
    capability = torch.cuda.get_device_capability(0)
    units = capability >= (8, 0) and os.environ.get("NVIDIA_TF32_OVERRIDE") != "0"
    print(f"TF32 (compute capability {capability[0]}.{capability[1]}): "
          f"convolutions {units and torch.backends.cudnn.allow_tf32}, matmul {units and torch.backends.cuda.matmul.allow_tf32}")
try:
    import jax
    print(f"jax {jax.__version__}: devices {jax.devices()}")
except Exception as error:  # reported below as the analytic half's reason to skip
    print(f"jax: {type(error).__name__}: {error}")
PY
mkdir -p "$OUT"
SKIPPED=()
skip() {  # name, reason
  SKIPPED+=("$1")
  printf '%-28s SKIPPED: %s\n' "$1" "$2"
}
seconds_since() { "$PY" -c "print(f'{$(date +%s.%N) - $1:.1f}')"; }
run() {  # name, then the command's arguments; prints seconds and the record's peak GPU memory
  local name=$1; shift
  local start; start=$(date +%s.%N)
  "${N[@]}" "$@" --out "$OUT/$name" --force --quiet > "$OUT/$name.log" 2>&1 || { cat "$OUT/$name.log"; exit 1; }
  local seconds; seconds=$(seconds_since "$start")
  local record
  for record in "$OUT/$name"/{results,metrics,history}.json; do [ -f "$record" ] && break; done
  local peak; peak=$("$PY" -c "import json; print(json.load(open('$record')).get('peak_gpu_memory_mib', 'n/a'))")
  printf '%-28s %8s s   peak GPU memory %s MiB\n' "$name" "$seconds" "$peak"
}
D=(--data digits --device "$DEVICE")
run entk-mnist-cnn entk "${D[@]}" --model mnist-cnn --points 300 --kind class-blocks
run entk-resnet18 entk "${D[@]}" --model resnet18 --points 100 --kind trace
run entk-rademacher entk "${D[@]}" --model resnet18 --points 100 --kind rademacher:2
# the eNTK's plan-time check of its structured route, in float32 with TF32 as torch leaves it: a
# sound layer it sent to the generic groups would cost time on every kernel (ResNet-18: all kept)
"$PY" - "$DEVICE" <<'PY'
import sys, torch
from ntkrobust.bridge.jacobians import JacobianEngine
from ntkrobust.bridge.models import build_model, model_config
net = build_model(model_config("resnet18", (3, 32, 32), num_classes=10)).to(sys.argv[1]).eval()
engine = JacobianEngine(net, None, torch.rand(1, 3, 32, 32, device=sys.argv[1]))
convs = sum(type(m) is torch.nn.Conv2d for m in net.modules())
print(f"{'structured-route check':<28} kept {len(engine.convs)} of {convs} convolutions, {len(engine.dense)} of 1 dense")
sys.exit(0 if (len(engine.convs), len(engine.dense)) == (convs, 1) else "the check sent sound layers to the groups")
PY
# lr 0.1 in batches of 32: at train's defaults (0.01, 128: 30 steps in 3 epochs) the CNN stays at
# chance on digits (test clean 0.097), and every attack of transfer and evaluate below would read
# 0.100 on either device, a comparison that cannot fail; so it learns (0.54 clean, PGD-40 0.32)
LEARNS=(--lr 0.1 --batch-size 32)
run train-pgd train "${D[@]}" --model mnist-cnn --mode pgd --eps 0.1 --epochs 3 --track-kernel 100 "${LEARNS[@]}"
run dynamics dynamics "$OUT/train-pgd" --eigenvectors 2 --eigenvector-steps 100 --device "$DEVICE"
run train-resnet-bn train "${D[@]}" --model resnet18 --width 16 --mode pgd --eps 0.1 --epochs 2 --batchnorm both --track-kernel 50
if [ -z "$ANALYTIC_MISSING" ]; then
  run two-layer two-layer "${D[@]}" --width 10000 --epochs 300
else
  skip two-layer "its NTK machine needs the analytic half ($ANALYTIC_MISSING)"
fi
run transfer transfer "${D[@]}" --target "$OUT/train-pgd/checkpoints/epoch_003.pt" --surrogate mnist-cnn --surrogate-n 300
# an exported program as a target: its weights sit outside the module tree, moved to the GPU apart
"$PY" - "$OUT/train-pgd/checkpoints/epoch_003.pt" "$OUT/net.pt2" <<'PY'
import sys, torch
from ntkrobust.bridge.checkpoint import load_checkpoint
model = load_checkpoint(sys.argv[1])[0].eval()
example = torch.zeros(2, 1, 8, 8)
torch.export.save(torch.export.export(model, (example,), dynamic_shapes=({0: torch.export.Dim("batch")},)), sys.argv[2])
PY
# two random starts per point: the restarts' loop on the device
run evaluate-pt2 evaluate "$OUT/net.pt2" --trust-model-code "${D[@]}" --eps 0.1 --n-test 200 --attacks pgd-20 --restarts 2
if [ -z "$AUTOATTACK_MISSING" ]; then
  run evaluate evaluate "$OUT/train-pgd/checkpoints/epoch_003.pt" "${D[@]}" --eps 0.1 --n-test 200
else
  skip evaluate-autoattack "pyautoattack does not import ($AUTOATTACK_MISSING); PGD and CW only"
  run evaluate evaluate "$OUT/train-pgd/checkpoints/epoch_003.pt" "${D[@]}" --eps 0.1 --n-test 200 \
    --attacks pgd-20,pgd-100,cw-100
fi
if [ -z "$ANALYTIC_MISSING" ]; then
  run attack-analytic attack --data digits --arch fc2 --method pgd
  # the analytic half on JAX's GPU against the CPU: seconds and the largest differences
  PLATFORMS=cpu
  if [ "$DEVICE" = cuda ]; then
    if [ "$("$PY" -c 'import jax; print(jax.default_backend())' 2>/dev/null)" = gpu ]; then
      PLATFORMS=cpu,cuda
    else
      skip analytic-on-gpu "JAX has no GPU backend here (the cuda extra installs it); compared on the CPU only"
    fi
  fi
  start=$(date +%s.%N)
  "$PY" "$ROOT/benchmarks/analytic_devices.py" --platforms "$PLATFORMS" > "$OUT/analytic-devices.log" 2>&1 \
    || { cat "$OUT/analytic-devices.log"; exit 1; }
  printf '%-28s %8s s   (JAX platforms %s)\n' analytic-devices "$(seconds_since "$start")" "$PLATFORMS"
  sed -n "/^${PLATFORMS##*,}: devices/,\$p" "$OUT/analytic-devices.log"
else
  skip attack-analytic "the analytic half does not import ($ANALYTIC_MISSING)"
fi
GPUS=$("$PY" -c 'import torch; print(torch.cuda.device_count())')
if { [ "$DEVICE" = cuda ] && [ "$GPUS" -ge 2 ]; } || { [ "$DEVICE" = cpu ] && [ "${GPU_SMOKE_TORCHRUN:-0}" = 1 ]; }; then
  # the same training under torchrun on 2 GPUs (NCCL), set beside one GPU's. The ResNet's
  # BatchNorm takes the statistics of both processes' rows (bridge.global_batchnorm). Judge by
  # the loss. The ResNet trains two steps of the global batch of 128 (256 images): over a whole
  # epoch (10 steps) rounding grows in this net until it hides what the comparison is for. Measured
  # on CPUs in float32 (2026-12-04, AMD EPYC): after two steps 2 processes are 2.5e-6 from one
  # (global BatchNorm combines the moments by another formula than torch's), with AVX2 kernels as
  # with AVX-512; one process on 1 or 2 threads, AVX2 or AVX-512, gives the same loss to the bit;
  # BatchNorm per process puts it 5.2e-3 off. After the whole epoch the same 2 processes were
  # 3.3e-4 apart with AVX-512 and 6.6e-3 with AVX2, one process 9.4e-4 between 1 and 2 threads and
  # 5.1e-3 between AVX2 and AVX-512 (on another machine 1.5e-8: luck of its summation order).
  # So near 1e-6 is rounding, near 5e-3 is BatchNorm that is not global. (One GPU and two need not
  # reduce in the same order either.) PGD's sign steps turn rounding into whole steps: the
  # PGD-trained CNN's 3 epochs on CPUs, one thread each, end with losses 3.7e-4 apart and clean
  # accuracies 0.536 and 0.544, where in float64 the tests find one process's weights to 1e-10.
  # TF32 is off for the runs compared here (one GPU's twins included): its 1e-3 per convolution
  # would blur that line after an epoch. The records say so (gpu.tf32_*: false).
  export NVIDIA_TF32_OVERRIDE=0
  RESNET=(--model resnet18 --width 16 --mode standard --epochs 1 --n-train 256 --batchnorm both --track-kernel 50)
  PGD=(--model mnist-cnn --mode pgd --eps 0.1 --epochs 3 --track-kernel 100 "${LEARNS[@]}")
  ENTK=(--model resnet18 --points 100 --kind trace)
  # the one-process twins take one thread, as torchrun gives each of its processes: on CPUs a
  # thread count of its own rounds differently (the CNN's PGD steps, the ResNet over an epoch)
  OMP_NUM_THREADS=1 run train-resnet-bn-standard train "${D[@]}" "${RESNET[@]}"
  OMP_NUM_THREADS=1 run train-pgd-float32 train "${D[@]}" "${PGD[@]}"
  OMP_NUM_THREADS=1 run entk-resnet18-float32 entk "${D[@]}" "${ENTK[@]}"
  # RobustBench's attacks with AutoAttack's runs of 50 points shared by 2 processes, against one
  # (one thread, as above: the same arithmetic, so on CPUs the same verdicts; an attack's sign
  # steps can turn a rounding difference into a point won or lost)
  EVALUATE=("$OUT/train-pgd/checkpoints/epoch_003.pt" "${D[@]}" --eps 0.1 --n-test 200 --batch-size 50)
  EVALUATE+=(--attacks "pgd-20,$([ -z "$AUTOATTACK_MISSING" ] && echo autoattack || echo cw-100)")
  OMP_NUM_THREADS=1 run evaluate-float32 evaluate "${EVALUATE[@]}"
  N=("$PY" -m torch.distributed.run --nproc-per-node 2 -m ntkrobust)
  run train-pgd-float32-2gpu train "${D[@]}" "${PGD[@]}"
  run train-resnet-bn-standard-2gpu train "${D[@]}" "${RESNET[@]}"
  run evaluate-float32-2gpu evaluate "${EVALUATE[@]}"
  "$PY" - "$OUT/evaluate-float32/results.json" "$OUT/evaluate-float32-2gpu/results.json" <<'PY'
import json, sys
one, two = (json.load(open(path))["nets"][0]["accuracy"] for path in sys.argv[1:])
print("  evaluate-float32-2gpu: " + ", ".join(f"{name} 1 GPU {one[name]:.3f}, 2 GPUs {two[name]:.3f}" for name in one)
      + " (equal on CPUs; on GPUs a point or so apart where rounding moved an attack's step)")
PY
  # the eNTK shared by 2 processes (one all-reduce over NCCL) against one GPU's kernel
  run entk-resnet18-float32-2gpu entk "${D[@]}" "${ENTK[@]}"
  "$PY" - "$OUT/entk-resnet18-float32/kernel.npz" "$OUT/entk-resnet18-float32-2gpu/kernel.npz" <<'PY'
import sys, numpy as np
one, two = (np.load(path)["kernel"] for path in sys.argv[1:])
print(f"  entk-resnet18-float32-2gpu: largest difference {np.abs(one - two).max() / np.abs(one).max():.2e} "
      "of the largest entry (float32; near 1e-6 is rounding, near 1 a missing or doubled share)")
PY
  for name in train-pgd-float32 train-resnet-bn-standard; do
    "$PY" - "$OUT/$name" "$OUT/$name-2gpu" <<'PY'
import json, sys
one, two = (json.load(open(f"{folder}/history.json"))["epochs"][-1] for folder in sys.argv[1:])
pairs = [("train_loss", one["train_loss"], two["train_loss"])]
pairs += [(f"{mode} test_clean", one["accuracy"][mode]["test_clean"], two["accuracy"][mode]["test_clean"])
          for mode in one["accuracy"]]
for key, a, b in pairs:
    print(f"  {sys.argv[2].rsplit('/', 1)[-1]} {key}: 1 GPU {a:.6g}, 2 GPUs {b:.6g} "
          f"(relative difference {abs(a - b) / max(abs(a), 1e-12):.2e})")
PY
  done
  unset NVIDIA_TF32_OVERRIDE
elif [ "$DEVICE" = cuda ]; then
  skip torchrun-2gpu "needs 2 GPUs, this machine has $GPUS (NCCL takes one GPU per process)"
fi
if [ ${#SKIPPED[@]} -eq 0 ]; then
  echo "gpu_smoke: every command passed; records in $OUT"
else
  echo "gpu_smoke: every command run passed, but ${#SKIPPED[@]} SKIPPED (${SKIPPED[*]}); records in $OUT"
fi
