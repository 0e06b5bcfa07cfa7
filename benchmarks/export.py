"""onnxruntime vs PyTorch eager for the exported one-pass scorer (f-AnoGAN: E, G and D's features), side by side.

Images per second of the ONNX file that ``anogan.engine.export.export_scorers`` writes, run by onnxruntime
on the CPU (``anogan.engine.onnx_detector.OnnxDetector``, as ``python -m anogan.score_onnx`` runs it), and
of the same modules in PyTorch eager (``anogan.engine.export.OnePassScorer``, no_grad), at the default
DCGAN (width 32, z_dim 100), batch 64, and their ratio. onnxruntime gets as many intra-op threads as torch
(``OMP_NUM_THREADS``). Timing does not depend on the weights, so the networks are untrained. Usage::

    OMP_NUM_THREADS=2 python benchmarks/export.py [--sizes 32 64] [--batch 64]
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from _common import environment, networks, parser, queries, result_line, side_by_side

from anogan.engine.export import OnePassScorer, export_scorers
from anogan.engine.onnx_detector import OnnxDetector
from anogan.models.encoder import FAnoGAN
from anogan.nets import Encoder


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--sizes", type=int, nargs="+", default=[32, 64])
    p.add_argument("--batch", type=int, default=64)
    args = p.parse_args()
    if args.device != "cpu":
        raise SystemExit("onnxruntime runs on the CPU here: pass --device cpu")
    values: dict[str, object] = environment()
    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            G, D = networks(size, args.width, args.z_dim)
            E = Encoder(size, 1, z_dim=args.z_dim, width=args.width).eval().requires_grad_(False)
            scorer = OnePassScorer([FAnoGAN(E, G, D)])
            path, _ = export_scorers(scorer.scorers, size, 1, Path(tmp) / f"fanogan_{size}.onnx")
            detector = OnnxDetector(path, threads=threads)
            x = queries(args.batch, size)
            xn = x.numpy()

            def eager(m=scorer, x=x):
                with torch.no_grad():
                    return m(x)

            best = side_by_side({"onnxruntime": lambda d=detector, x=xn: d(x, len(x)), "pytorch": eager},
                                args.rounds)
            rate = {name: args.batch / seconds for name, seconds in best.items()}
            print(f"{size}px batch {args.batch}, {threads} thread(s): onnxruntime {rate['onnxruntime']:.1f} images/s, "
                  f"PyTorch eager {rate['pytorch']:.1f} images/s, ratio {rate['onnxruntime'] / rate['pytorch']:.2f}",
                  flush=True)
            values.update({f"onnxruntime_{size}px_img_s": rate["onnxruntime"],
                           f"pytorch_{size}px_img_s": rate["pytorch"],
                           f"ratio_{size}px": rate["onnxruntime"] / rate["pytorch"]})
    result_line(values)


if __name__ == "__main__":
    main()
