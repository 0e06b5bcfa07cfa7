"""f-AnoGAN scoring (one forward pass of E, G and D) vs the iterative mapping, side by side.

Images per second of ``anogan.models.encoder.FAnoGAN`` and of ``Inversion.map_batch`` with the paper's 500
steps (AnoGAN and reference mapping, the config's channels_last), at the default DCGAN (width 32,
z_dim 100), batch 64, and their ratio. Timing does not depend on the weights, so the networks are
untrained. Usage::

    OMP_NUM_THREADS=1 python benchmarks/fanogan_vs_mapping.py [--sizes 32 64] [--steps 500]
"""

from __future__ import annotations

import torch
from _common import environment, networks, parser, queries, result_line, side_by_side

from anogan.models.encoder import FAnoGAN
from anogan.models.inversion import Inversion
from anogan.nets import Encoder


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--sizes", type=int, nargs="+", default=[32, 64])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=500, help="mapping steps (Gamma; the paper: 500)")
    args = p.parse_args()
    args.rounds = min(args.rounds, 2) if args.steps >= 100 else args.rounds
    values: dict[str, object] = environment()
    for size in args.sizes:
        G, D = networks(size, args.width, args.z_dim, args.device)
        E = Encoder(size, 1, z_dim=args.z_dim, width=args.width).to(args.device).eval().requires_grad_(False)
        fanogan = FAnoGAN(E, G, D)
        inversion = Inversion(G, D, steps=args.steps, channels_last=True)
        x, index = queries(args.batch, size, args.device), torch.arange(args.batch)
        best = side_by_side(
            {"fanogan": lambda f=fanogan, x=x: f(x),
             "mapping": lambda inv=inversion, x=x, i=index: inv.map_batch(x, i)},
            args.rounds, args.device,
        )
        rate = {name: args.batch / seconds for name, seconds in best.items()}
        print(f"{size}px batch {args.batch}: f-AnoGAN {rate['fanogan']:.1f} images/s, "
              f"{args.steps}-step mapping {rate['mapping']:.3f} images/s", flush=True)
        values.update({
            f"fanogan_{size}px_img_s": rate["fanogan"],
            f"mapping{args.steps}_{size}px_img_s": rate["mapping"],
            f"ratio_{size}px": rate["fanogan"] / rate["mapping"],
        })
    result_line(values)


if __name__ == "__main__":
    main()
