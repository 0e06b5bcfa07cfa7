"""``python -m anogan.export ckpt_path=<run>/checkpoints/last.ckpt [out=<file>.onnx]``: the one-pass
scorers of a run (f-AnoGAN's E, G and D; the aCAE where trained) as one ONNX file, with the image size,
the normalisation, the calibrated thresholds and the normal validation scores as metadata (docs/deploy.md).

Settings, written key=value like train.py's: ``ckpt_path`` (required), ``out`` (default
``<run>/detector.onnx``), ``evaluation`` (the run directory whose metrics.json and scores.h5 hold the
thresholds and normal scores; default the checkpoint's run directory), ``encoder_ckpt_path`` and
``acae_ckpt_path`` (default: beside ``ckpt_path``). The library is ``anogan.engine.export``; the file is
scored without torch by ``python -m anogan.score_onnx``.
"""

from __future__ import annotations

import sys
import warnings

KEYS = ("ckpt_path", "out", "evaluation", "encoder_ckpt_path", "acae_ckpt_path")
USAGE = "usage: python -m anogan.export ckpt_path=<run>/checkpoints/last.ckpt [out=<file>.onnx] [evaluation=<run dir>]"


def parse(argv: list[str]) -> dict[str, str]:
    """{key: value} of ``key=value`` words; InputError for another word, an unknown key or no ckpt_path."""
    from anogan.errors import InputError

    settings = {}
    for word in argv:
        key, eq, value = word.partition("=")
        if not eq or key not in KEYS:
            raise InputError(f"{word!r} is not a setting of python -m anogan.export; the settings are "
                             f"{', '.join(k + '=' for k in KEYS)} ({USAGE})")
        settings[key] = value
    if not settings.get("ckpt_path"):
        raise InputError(f"ckpt_path is missing: {USAGE}")
    return settings


def summary(path, meta: dict, diff: float) -> str:
    """What was written, its thresholds and normal scores, and the command that scores a folder."""
    lines = [f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB): {meta['image_size']}x{meta['image_size']} pixels, "
             f"{meta['channels']} channel(s); map: residual_map ({meta['residual_map']['of']})"]
    normal = meta["normal_scores"]
    for name in meta["scores"]:
        t = meta["thresholds"][name]
        shown = (f"threshold {t['threshold']:.6g} (target FPR {t.get('target_fpr')}, {t.get('calibrated_on')})"
                 if t.get("threshold") is not None else f"no threshold: {t.get('reason')}")
        lines.append(f"  {name}: {shown}")
    lines.append(f"  p-values from {normal['of']}" if normal.get("n") else f"  no p-values: {normal.get('reason')}")
    lines.append(f"  onnxruntime vs PyTorch on 3 random images: largest difference {diff:.2g} of the output's scale")
    lines.append(f"  not exported: {meta['not_exported']}")
    lines.append(f"Score a folder of PNG / JPEG / TIFF images without torch:\n  python -m anogan.score_onnx {path} "
                 "<images> <out dir>")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from anogan.errors import InputError, full_error_asked, report

    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__.strip())
        return 0
    # torch.export's pytree walks Lightning's LeafSpec and warns about it: nothing a user can act on
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                            category=FutureWarning)
    try:
        settings = parse(argv)
        from anogan.engine.export import export_run

        path, meta, diff = export_run(**settings)
    except InputError as e:
        if full_error_asked():
            raise
        return report(e)
    print(summary(path, meta, diff), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
