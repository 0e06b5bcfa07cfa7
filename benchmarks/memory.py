"""Peak memory per image of the mapping (one ``Inversion.map_batch``, AnoGAN and reference mappings).

On CUDA: ``torch.cuda.max_memory_allocated`` during a batch. On CPU, where PyTorch keeps no such
counter, each batch size runs in a fresh subprocess and reports its peak resident set size; the
per-image figure is the slope between batch sizes (what one more image costs), the intercept is the
fixed cost (Python, PyTorch, the networks). Usage::

    OMP_NUM_THREADS=2 python benchmarks/memory.py [--sizes 32 64] [--batches 16 64 256]
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys

import torch
from _common import environment, networks, parser, queries, result_line

from anogan.models.inversion import Inversion


def peak_bytes(size: int, batch: int, args) -> int:
    """Peak memory of mapping one batch (CUDA: allocated bytes; CPU: this process's max RSS)."""
    G, D = networks(size, args.width, args.z_dim, args.device)
    inv = Inversion(G, D, steps=args.steps, channels_last=args.channels_last)
    x, index = queries(batch, size, args.device), torch.arange(batch)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        inv.map_batch(x, index)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    inv.map_batch(x, index)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--sizes", type=int, nargs="+", default=[32, 64])
    p.add_argument("--batches", type=int, nargs="+", default=[16, 64, 256])
    p.add_argument("--steps", type=int, default=2, help="the peak is reached in the first step")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--child", type=int, nargs=2, metavar=("SIZE", "BATCH"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(peak_bytes(*args.child, args))
        return
    line: dict[str, object] = {}
    for size in args.sizes:
        peaks = {}
        for batch in args.batches:
            if args.device.startswith("cuda"):
                peaks[batch] = peak_bytes(size, batch, args)
            else:
                cmd = [sys.executable, __file__, "--child", str(size), str(batch), "--steps", str(args.steps),
                       "--width", str(args.width), "--z-dim", str(args.z_dim), "--device", args.device]
                cmd += ["--channels-last"] if args.channels_last else []
                out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
                peaks[batch] = int(out.split()[-1])
            print(f"{size}px batch {batch:5d}: peak {peaks[batch] / 2**20:8.1f} MiB", flush=True)
        lo, hi = min(peaks), max(peaks)
        per_image = (peaks[hi] - peaks[lo]) / (hi - lo)
        line[f"s{size}_mib_per_image"] = per_image / 2**20
        line[f"s{size}_fixed_mib"] = (peaks[lo] - per_image * lo) / 2**20
        line[f"s{size}_max_batch_per_gib"] = int(2**30 // per_image)
    result_line({**line, "device": args.device, **environment()})


if __name__ == "__main__":
    main()
