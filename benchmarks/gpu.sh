#!/usr/bin/env bash
# The GPU rows of the Performance table (docs/performance.md), as one script: run from anywhere on a CUDA machine
# with the project's environment active (`bash benchmarks/gpu.sh | tee gpu.log`). About 10 minutes.
set -euo pipefail
cd "$(dirname "$0")"
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name())"
# mapping: 64x64, batch 64 to 1024, module vs bare loop vs per-image loop, and torch.compile
python mapping.py --device cuda --sizes 64 --batches 64 256 1024 --steps 50 --per-image 4 --compile
# achieved GFLOP/s of the mapping vs the measured fp32 matmul rate, at batch 1024
python flops.py --device cuda --sizes 64 --batch 1024 --steps 50
# peak memory per image of the mapping
python memory.py --device cuda --sizes 64 --batches 64 1024
# training under Lightning vs a bare loop
python training.py --device cuda --size 64 --batches 40
# f-AnoGAN's WGAN-GP (ResNet G and critic, DIM 64, z 128) under Lightning vs a bare loop
python training.py --device cuda --size 64 --batches 40 --objective wgangp --width 64 --z-dim 128
