#!/usr/bin/env bash
# Every GPU figure of docs/performance.md and the `gpu` tests, as one script, on a 1-GPU machine with the
# README's set-up plus a CUDA build of torch:
#     bash benchmarks/gpu.sh 2>&1 | tee gpu.log        # from anywhere; about 15 minutes
# Each benchmark measures its variants side by side in the same process and prints its ratios against
# the baseline of the same run; the closing summary repeats every ratio (name=value), then the tests.
# Exits non-zero when a benchmark or a test failed (after running all of them).
set -uo pipefail
cd "$(dirname "$0")"
LOG=$(mktemp -d)/results.txt
status=0

run() {  # run one benchmark; keep its closing result line
    echo "== $*" >&2
    if python "$@" | tee -a "$LOG.all"; then
        tail -n 1 "$LOG.all" >> "$LOG"
    else
        echo "FAILED: $*" | tee -a "$LOG"
        status=1
    fi
}

python - <<'EOF' || exit 1
import torch
assert torch.cuda.is_available(), f"no CUDA device (torch {torch.__version__}, CUDA build {torch.version.cuda})"
print(f"{torch.cuda.get_device_name()} | torch {torch.__version__} | CUDA {torch.version.cuda} | "
      f"cuDNN {torch.backends.cudnn.version()} | TF32 convolutions {torch.backends.cudnn.allow_tf32}")
EOF

# mapping at 64x64, batch 64 to 1024: module vs bare batched loop vs per-image loop; channels_last,
# torch.compile, the fast copies vs plain nets, bf16 vs fp32 (scores asserted equal, bf16's difference printed)
run mapping.py --device cuda --sizes 64 --batches 64 256 1024 --steps 50 --per-image 4 --compile --fast-nets --bf16
# the same at 32x32, batch 1024: the fast copies and channels_last where the nets are smallest
run mapping.py --device cuda --sizes 32 --batches 1024 --steps 50 --per-image 4 --fast-nets --bf16
# achieved GFLOP/s of the mapping vs the measured fp32 matmul rate, at batch 1024
run flops.py --device cuda --sizes 64 --batch 1024 --steps 50
# peak memory per image of the mapping
run memory.py --device cuda --sizes 64 --batches 64 1024
# training under Lightning vs a bare loop, and Lightning in bf16-mixed vs fp32
run training.py --device cuda --size 64 --batches 40 --bf16
# f-AnoGAN's WGAN-GP (ResNet G and critic, DIM 64, z 128) under Lightning vs a bare loop, bf16 vs fp32
run training.py --device cuda --size 64 --batches 40 --objective wgangp --width 64 --z-dim 128 --bf16
# f-AnoGAN's one pass vs the 500-step mapping
run fanogan_vs_mapping.py --device cuda --sizes 64 --batch 1024
# whole scans: the evaluation's path (Trainer.test, files) vs the mapping alone
run scans.py --device cuda --scans 8 --steps 100 --batch 1024

echo
echo "== ratios (each against its baseline in the same run)"
grep -o '[A-Za-z0-9_]*_\(over\|diff\)[A-Za-z0-9_]*=[^ ]*' "$LOG" || true
grep '^FAILED' "$LOG" || true

echo
echo "== the gpu tests (tests/test_gpu.py)"
(cd .. && python -m pytest -q -m gpu -rs tests/) || status=1
exit $status
