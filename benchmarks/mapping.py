"""Mapping speed: the Inversion module vs a bare PyTorch batched loop vs a per-image loop, side by side.

Image-steps per second (one image-step = one Adam step of an image's AnoGAN and reference mappings)
and their ratios, for each image size, at the default DCGAN (width 32, z_dim 100), batch 64. The scores
of every variant are asserted equal (to 2e-3), except bf16's, whose largest relative change of the
residual score is reported. Usage::

    OMP_NUM_THREADS=2 python benchmarks/mapping.py                      # 32 and 64 px, CPU
    python benchmarks/mapping.py --sizes 64 --batches 64 256 1024 --steps 50 --per-image 0   # GPU
    ... --fast-nets --bf16     # also the fast copies vs plain nets, and bf16 vs fp32
"""

from __future__ import annotations

import argparse
import copy

import torch
from _common import bare_map, environment, networks, parser, per_image_map, queries, result_line, side_by_side

from anogan.models.inversion import Inversion
from anogan.nets.prior import initial_z

NAMES = ("residual", "discrimination", "reference_discrimination")


def assert_equal(name: str, got: dict, want: dict, n: int | None = None) -> None:
    for key in NAMES:
        a, b = got[key][:n].float().cpu(), want[key][:n].float().cpu()
        torch.testing.assert_close(a, b, rtol=2e-3, atol=2e-3, msg=lambda m, k=key: f"{name} {k}: {m}")


def measure(size: int, batch: int, G, D, args) -> dict[str, float]:
    """Image-steps per second of every variant at one size and batch, their scores asserted equal."""
    dev = args.device
    x, index = queries(batch, size, dev), torch.arange(batch)
    z1 = initial_z("uniform", 0, index, args.z_dim).to(dev)
    kw = dict(lam=0.1, steps=args.steps, lr=0.05, reference=True, seed=0)
    modules = {"module": Inversion(G, D, **kw)}
    if args.channels_last:
        modules["module_cl"] = Inversion(*copy.deepcopy((G, D)), channels_last=True, **kw)
    if args.fast_nets:  # the fast copies of anogan/nets/mapping.py against plain copies of G and D
        modules["module_fast"] = Inversion(*copy.deepcopy((G, D)), fast_nets=True, **kw)
        modules["module_plain"] = Inversion(*copy.deepcopy((G, D)), fast_nets=False, **kw)
    if args.bf16:  # G and D under bfloat16 autocast (inversion.precision=bf16-mixed): other scores
        modules["module_bf16"] = Inversion(*copy.deepcopy((G, D)), precision="bf16-mixed", **kw)
    if args.compile:
        modules["module_compile"] = Inversion(*copy.deepcopy((G, D)), channels_last=args.channels_last,
                                              compile=True, **kw)
    results: dict[str, dict] = {}

    def timed(name, fn):
        return lambda: results.__setitem__(name, fn())

    variants = {n: timed(n, lambda m=m: m.map_batch(x, index)["scores"]) for n, m in modules.items()}
    variants["bare"] = timed("bare", lambda: bare_map(G, D, x, z1, args.steps))
    k = min(args.per_image, batch)
    if k:
        variants["per_image"] = timed("per_image", lambda: per_image_map(G, D, x[:k], z1[:k], args.steps))
    best = side_by_side(variants, args.rounds, dev)
    for name in variants:
        if name not in ("module", "module_bf16"):
            assert_equal(name, results[name], results["module"], k if name == "per_image" else None)
    rates = {n: (k if n == "per_image" else batch) * args.steps / t for n, t in best.items()}
    if "module_bf16" in results:  # not equal: how far bfloat16 moves the residual score
        a, b = results["module_bf16"]["residual"].float(), results["module"]["residual"].float()
        rates["bf16_residual_max_rel_diff"] = float(((a - b).abs() / b.abs()).max())
    return rates


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--sizes", type=int, nargs="+", default=[32, 64])
    p.add_argument("--batches", type=int, nargs="+", default=[64])
    p.add_argument("--steps", type=int, default=10, help="steps per timed mapping (rates do not depend on it)")
    p.add_argument("--per-image", type=int, default=8, help="images in the per-image loop (0: skip it)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                   help="also time inversion.channels_last=true")
    p.add_argument("--compile", action="store_true", help="also time inversion.compile=true")
    p.add_argument("--fast-nets", action="store_true", help="also time fast_nets=true against fast_nets=false")
    p.add_argument("--bf16", action="store_true", help="also time inversion.precision=bf16-mixed")
    args = p.parse_args()
    line: dict[str, object] = {}
    for size in args.sizes:
        G, D = networks(size, args.width, args.z_dim, args.device)
        for batch in args.batches:
            rate = measure(size, batch, G, D, args)
            tag = f"s{size}" if args.batches == [64] else f"s{size}_b{batch}"
            diff = rate.pop("bf16_residual_max_rel_diff", None)
            for name, r in rate.items():
                line[f"{tag}_{name}"] = r
                print(f"{size}px batch {batch} {name:16s} {r:10.1f} image-steps/s", flush=True)
            line[f"{tag}_module_over_bare"] = rate["module"] / rate["bare"]
            for name in ("module_cl", "module_compile", "module_bf16"):
                if name in rate:
                    line[f"{tag}_{name[7:]}_over_module"] = rate[name] / rate["module"]
            if "module_fast" in rate:
                line[f"{tag}_fast_over_plain"] = rate["module_fast"] / rate["module_plain"]
            if diff is not None:
                line[f"{tag}_bf16_residual_max_rel_diff"] = diff
            if "per_image" in rate:
                for name in [n for n in rate if n.startswith("module")]:
                    line[f"{tag}_{name}_over_per_image"] = rate[name] / rate["per_image"]
    result_line({**line, "equal_scores": True, **environment()})


if __name__ == "__main__":
    main()
