"""Achieved GFLOP/s of the mapping against this machine's measured fp32 matmul GFLOP/s, side by side.

The floating-point operations of a whole ``Inversion.map_batch`` call (forward passes and the input
gradients of every step, counted per aten op with PyTorch's own flop formulas) divided by its best wall
time, for the module at its defaults and with channels_last, and for the bare loop; the matmul rate is
the best of square fp32 products. Usage::

    OMP_NUM_THREADS=2 python benchmarks/flops.py [--sizes 32 64] [--steps 10]
"""

from __future__ import annotations

import copy

import torch
from _common import bare_map, environment, networks, parser, queries, result_line, side_by_side
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from anogan.models.inversion import Inversion
from anogan.nets.prior import initial_z


class CountFlops(TorchDispatchMode):
    """Sums the flops of every op that PyTorch's flop counter has a formula for (convolutions, their
    backward, matmuls); unlike ``FlopCounterMode`` it does not hook modules."""

    def __init__(self):
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            self.total += formula(*args, **(kwargs or {}), out_val=out)
        return out


def counted(fn) -> int:
    with CountFlops() as count:
        fn()
    return count.total


def measure(size: int, args) -> dict[str, float]:
    """Flops per image-step, the matmul rate and each variant's achieved rate at one size."""
    dev, n_mm = args.device, args.matmul or (8192 if args.device.startswith("cuda") else 1024)
    G, D = networks(size, args.width, args.z_dim, dev)
    x, index = queries(args.batch, size, dev), torch.arange(args.batch)
    z1 = initial_z("uniform", 0, index, args.z_dim).to(dev)
    kw = dict(steps=args.steps, lam=0.1, lr=0.05)
    module, module_cl = Inversion(G, D, **kw), Inversion(*copy.deepcopy((G, D)), channels_last=True, **kw)
    variants = {
        "module": lambda: module.map_batch(x, index),
        "module_cl": lambda: module_cl.map_batch(x, index),
        "bare": lambda: bare_map(G, D, x, z1, args.steps),
    }
    flops = counted(variants["bare"])  # the same maths in every variant: count it once
    one = [counted(lambda s=s: bare_map(G, D, x[:1], z1[:1], s)) for s in (1, 2)]
    a, b = torch.randn(n_mm, n_mm, device=dev), torch.randn(n_mm, n_mm, device=dev)
    # matmul runs as long as a mapping run, timed in the same rounds: both see the same load
    reps = max(3, round(side_by_side({"m": variants["module"]}, 1, dev)["m"]
                        / side_by_side({"mm": lambda: a @ b}, 3, dev)["mm"]))
    variants["matmul"] = lambda: [a @ b for _ in range(reps)]
    best = side_by_side(variants, args.rounds, dev)
    mm = reps * 2 * n_mm**3 / best.pop("matmul") / 1e9
    out = {f"s{size}_mflop_per_image_step": (one[1] - one[0]) / 1e6, f"s{size}_matmul_gflops": mm}
    for name, t in best.items():
        rate = flops / t / 1e9
        print(f"{size}px batch {args.batch} {name:10s} {rate:7.1f} GFLOP/s = {rate / mm:.0%} of matmul {mm:.1f}")
        out[f"s{size}_{name}_gflops"] = rate
        out[f"s{size}_{name}_of_matmul"] = rate / mm
    return out


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--sizes", type=int, nargs="+", default=[32, 64])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--matmul", type=int, default=None, help="side of the square matmul (1024 CPU, 8192 GPU)")
    args = p.parse_args()
    line: dict[str, object] = {}
    for size in args.sizes:
        line.update(measure(size, args))
    result_line({**line, **environment()})


if __name__ == "__main__":
    main()
