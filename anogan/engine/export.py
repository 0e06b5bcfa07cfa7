"""The one-pass scorers of a run as one ONNX file, with what scoring new images needs as metadata
(``python -m anogan.export ckpt_path=<run>/checkpoints/last.ckpt``; the command is ``anogan/export.py``).

What is exported: the modules the evaluation scores with in one forward pass, found as ``evaluate.py``
finds them (``anogan.engine.stages.stage_scorers``): f-AnoGAN (``anogan.models.encoder.FAnoGAN``: E, G and
D's features; scores ``fanogan``, the izi_f score of Schlegl et al., MedIA 2019, and ``fanogan_latent``)
where ``encoder.ckpt`` was trained, and the aCAE (``anogan.models.acae.ACAEScores``: ``acae_residual``,
``acae_discrimination``, ``acae_anomaly``) where ``acae.ckpt`` was; their ``scores_and_map`` is traced, so
the file computes the evaluation's numbers. Input ``images`` (batch, C, S, S) float32 in [-1, 1] (the
batch axis dynamic); outputs every score (batch,) and ``residual_map`` (batch, S, S): |x - G(E(x))|
summed over channels (the aCAE's |x - Dec(E(x))| for a run with an aCAE only).

Not exported: AnoGAN's mapping (Schlegl et al., IPMI 2017, sec. 2.2), whose scores (residual,
discrimination, anomaly, the reference scores) take gradient steps on z per image; nor the kNN / PCA
baselines, which need the training images.

Metadata (``metadata_props``, each a JSON string; ``anogan.engine.onnx_detector.META_KEYS``): the image size
and channels; the normalisation of the training data (``anogan.data.scans.training_recipe``); the scores;
the thresholds the evaluation calibrated without labels (``metrics.json``: each score's ``calibrated``
entry, ``pixel_calibration``, ``region_calibration``); the normal validation scores of that evaluation
(``scores.h5``, split ``val``) for p-values; the GAN's identity (``anogan.runtime.checkpoints.gan_identity``),
the anogan version, the files it came from and what is not exported. The exporter is ``torch.onnx.export``
(``dynamo=True``); the written file is run once by onnxruntime against PyTorch before it is kept.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from anogan.engine.onnx_detector import EXTRA, FLAG_RULE, FORMAT, INPUT, MAP, OnnxDetector
from anogan.errors import InputError
from anogan.runtime.io import atomic_path

log = logging.getLogger(__name__)

DEFAULT_NAME = "detector.onnx"  # written into the run directory unless out= is given
NOT_EXPORTED = ("AnoGAN's mapping (residual, discrimination, anomaly and the reference scores: gradient steps on z "
                "for every image, Schlegl et al. 2017 sec. 2.2) and the kNN / PCA baselines (they need the training "
                "images) are not exported; score with python evaluate.py for those")
DECISION = {"flag": f"{FLAG_RULE} (the evaluation's rule at its calibrated thresholds)",
            "p_value": "(1 + #{normal scores >= s}) / (n + 1) over normal_scores (anogan.metrics.conformal.p_values)",
            "direction": "higher scores are more anomalous"}
VERIFY_TOLERANCE = 1e-3  # largest |onnxruntime - PyTorch| at export, relative to the output's largest value:
# a check for exporter faults on random images (the tests hold 1e-4 element-wise on real ones)


class OnePassScorer(nn.Module):
    """The exported graph: images (B, C, S, S) in [-1, 1] -> (each score of each scorer (B,), in order,
    then the residual map (B, S, S) of the first scorer). ``scorers``: modules with ``scores_and_map``
    (``FAnoGAN``, ``ACAEScores``), frozen."""

    def __init__(self, scorers: Sequence[nn.Module]):
        super().__init__()
        self.scorers = nn.ModuleList(scorers)
        self.eval()

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        scores, maps = [], []
        for scorer in self.scorers:
            values, residual_map = scorer.scores_and_map(images)
            scores += list(values.values())
            maps.append(residual_map)
        return (*scores, maps[0])

    def names(self, images: torch.Tensor) -> list[str]:
        """The score names, in output order (from one pass over ``images``)."""
        return [name for scorer in self.scorers for name in scorer.scores_and_map(images)[0]]


def _check_exporter() -> None:
    try:
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401  (torch.onnx.export(dynamo=True) needs it)
    except ImportError as e:
        raise InputError(f"python -m anogan.export needs {e.name}: {EXTRA}") from None


def export_scorers(scorers: Sequence[nn.Module], image_size: int, channels: int, out: str | os.PathLike,
                   metadata: dict | None = None) -> tuple[Path, float]:
    """Write ``scorers`` (``FAnoGAN`` and / or ``ACAEScores``) as one ONNX file ``out`` (atomically) with
    ``metadata`` (JSON-encoded into ``metadata_props``; ``anogan_format``, ``image_size``, ``channels`` and
    ``scores`` are added), after checking the written file with onnxruntime against PyTorch on 3 random
    images in [-1, 1]. Returns (out, the largest difference found, relative to each output's largest
    value). Raises RuntimeError when it exceeds ``VERIFY_TOLERANCE`` (an exporter fault; nothing is written)."""
    _check_exporter()
    module = OnePassScorer(scorers)
    probe = torch.rand(3, channels, image_size, image_size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    names = module.names(probe)
    meta = {**(metadata or {}), "anogan_format": FORMAT, "image_size": int(image_size), "channels": int(channels),
            "scores": names}
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)  # torchvision ops
    program = torch.onnx.export(
        module, (probe,), dynamo=True, verbose=False, input_names=[INPUT], output_names=[*names, MAP],
        dynamic_shapes={"images": {0: torch.export.Dim("batch")}},
    )
    program.model.metadata_props.update({k: json.dumps(v) for k, v in meta.items()})
    out = Path(out)
    with atomic_path(out) as tmp:
        program.save(tmp)
        got = OnnxDetector(tmp)(probe.numpy())
        with torch.no_grad():
            want = dict(zip([*names, MAP], (t.numpy() for t in module(probe))))
        diff = max(float(np.abs(got[k] - want[k]).max() / max(np.abs(want[k]).max(), 1e-30)) for k in want)
        if not diff <= VERIFY_TOLERANCE:
            raise RuntimeError(f"the exported graph computes other numbers than PyTorch (relative difference {diff:.3g}"
                               f" > {VERIFY_TOLERANCE}): a fault of the exporter (torch {torch.__version__}); "
                               f"nothing written to {out}")
    return out, diff


# -- a run's scorers and metadata -------------------------------------------------------------------
def run_scorers(ckpt_path: str | os.PathLike, lam: float, encoder_ckpt_path: str | None = None,
                acae_ckpt_path: str | None = None, ckpt: dict | None = None
                ) -> tuple[list[nn.Module], nn.Module, nn.Module]:
    """(the one-pass scorers the evaluation of ``ckpt_path`` uses, G, D): ``FAnoGAN`` for an encoder
    checkpoint, ``ACAEScores`` (weight ``lam``) for an aCAE checkpoint, found beside ``ckpt_path`` unless
    named (``anogan.engine.stages.stage_scorers``); ``ckpt``: the GAN checkpoint already read, if it was.
    InputError, saying how to train one, when there is none."""
    from omegaconf import OmegaConf

    from anogan.engine.stages import stage_scorers
    from anogan.models.inversion import load_gan
    from anogan.runtime.checkpoints import STAGE_GROUPS

    G, D, _, _ = load_gan(ckpt if ckpt is not None else ckpt_path)
    cfg = OmegaConf.create({"encoder_ckpt_path": encoder_ckpt_path, "acae_ckpt_path": acae_ckpt_path,
                            "inversion": {"lam": float(lam)}})
    _, scorers = stage_scorers(cfg, ckpt_path, G, D)
    if not scorers:
        run = Path(ckpt_path).resolve().parent.parent
        raise InputError(
            f"{ckpt_path}: no encoder.ckpt or acae.ckpt beside it, so nothing scores in one pass (AnoGAN's mapping "
            f"takes gradient steps and is not exported); train f-AnoGAN's encoder (or the aCAE: "
            f"{STAGE_GROUPS['acae']}) for this GAN, then export: python train.py {STAGE_GROUPS['encoder']} "
            f"ckpt_path=auto hydra.run.dir={run}")
    return scorers, G, D


def _read_evaluation(evaluation: Path, names: list[str], identities: dict[str, str]) -> tuple[dict, dict, str | None]:
    """(metrics.json, {what scores.h5 holds of ``names``: val rows, attributes}, reason) of the evaluation in
    ``evaluation``; ({}, {}, reason) when it has no metrics.json and scores.h5. InputError when its
    scores.h5 was written with other weights than ``identities`` ({"gan": .., "scorers": [..]})."""
    import h5py

    from anogan.data import SPLITS

    metrics_path, scores_path = evaluation / "metrics.json", evaluation / "scores.h5"
    if not (metrics_path.is_file() and scores_path.is_file()):
        return {}, {}, (f"no metrics.json and scores.h5 of an evaluation in {evaluation}: evaluate the checkpoint "
                        "(python evaluate.py ckpt_path=...) and pass evaluation=<its run directory>")
    with h5py.File(scores_path, "r") as f:
        attrs = {k: f.attrs[k] for k in ("gan", "scorers", "init", "steps") if k in f.attrs}
        fix = ("pass evaluation=<the run directory of an evaluation of this checkpoint> (python evaluate.py "
               "ckpt_path=...)")
        if attrs.get("gan") != identities["gan"]:
            raise InputError(f"{scores_path} was written with other GAN weights than the checkpoint's, so its "
                             f"thresholds and normal scores are not this detector's; {fix}")
        missing = [s for s in identities["scorers"] if s not in str(attrs.get("scorers", "")).split(",")]
        if missing:
            raise InputError(f"{scores_path} holds no scores of the exported {missing[0].split(':')[0]} weights "
                             f"(evaluated before they were trained, or with others); evaluate the checkpoint again "
                             f"and export, or {fix.removeprefix('pass ')}")
        normal = (f["split"][()] == SPLITS["val"]) & (f["label"][()] == 0)
        values = {k: f[f"scores/{k}"][()][normal] for k in names if f"scores/{k}" in f}
    return json.loads(metrics_path.read_text()), {"normal": values, "attrs": attrs, "n": int(normal.sum())}, None


def run_metadata(ckpt: dict, ckpt_path: str | os.PathLike, names: list[str], metrics: dict, scores: dict,
                 reason: str | None, identities: dict[str, str], map_of: str) -> dict:
    """The metadata of a run's export (see the module docstring); undefined values are null with a
    ``reason``."""
    import anogan
    from anogan.data.scans import training_recipe

    recipe = training_recipe(ckpt)
    if not recipe.get("normalisation"):
        recipe = {**recipe, "normalisation": None, "reason": (
            "the normalisation of the training data is not recorded in the checkpoint and its HDF5 file "
            f"{recipe.get('source_path', '')} is not readable here")}
    recipe["to_model_range"] = "x = 2 * unit - 1, clipped to [-1, 1] (anogan.data.pixels.model_range)"
    table = metrics.get("scores", {})
    thresholds = {}
    for name in names:
        calibrated = (table.get(name) or {}).get("calibrated")
        thresholds[name] = dict(calibrated) if calibrated else {
            "threshold": None, "reason": reason or f"metrics.json holds no calibrated threshold of {name}"}
    normal = scores.get("normal", {})
    n = scores.get("n", 0)
    normal_scores = {name: [float(v) for v in normal[name]] for name in names if name in normal and n}
    attrs = scores.get("attrs", {})
    one_pass = (str(attrs.get("init")) == "encoder" and int(attrs.get("steps", -1)) == 0
                and map_of.startswith("f-AnoGAN"))
    applies = {"applies_to_residual_map": bool(one_pass) if metrics else None,
               "note": ("calibrated on the residual maps of this exported pass (the evaluation ran with "
                        "inversion.init=encoder inversion.steps=0)") if one_pass else (
                   "calibrated on the residual maps of AnoGAN's mapping (inversion.init="
                   f"{attrs.get('init')}, steps={attrs.get('steps')}), not on the exported map: do not apply "
                   "it to residual_map; evaluate with inversion.init=encoder inversion.steps=0 and export "
                   "again for a threshold of the exported map") if metrics else reason}
    return {
        "anogan_version": anogan.__version__,
        "normalisation": recipe,
        "residual_map": {"of": map_of, "range": [0.0, 2.0 * ckpt["anogan_nets"]["generator"]["channels"]],
                         "shape": ["batch", "image_size", "image_size"]},
        "thresholds": thresholds,
        "pixel_calibration": {**(metrics.get("pixel_calibration") or {}), **applies},
        "region_calibration": {**(metrics.get("region_calibration") or {}), **applies},
        "normal_scores": {"reason": reason} if reason else {
            **normal_scores, "n": n, "of": f"the {n} normal validation images (split val) of the evaluation",
            **({"reason": "the evaluation holds no normal validation image"} if not n else {})},
        "gan_identity": identities["gan"],
        "source": {"checkpoint": str(Path(ckpt_path).resolve()), "family": ckpt["anogan_nets"].get("family", "dcgan"),
                   "prior": ckpt["anogan_nets"].get("prior", "uniform"), "scorer_identities": identities["scorers"],
                   "evaluation": None if reason else str(Path(scores["path"]).resolve()),
                   "lam": metrics.get("lam")},
        "decision": DECISION,
        "not_exported": NOT_EXPORTED,
    }


def export_run(ckpt_path: str | os.PathLike, out: str | os.PathLike | None = None,
               evaluation: str | os.PathLike | None = None, encoder_ckpt_path: str | None = None,
               acae_ckpt_path: str | None = None) -> tuple[Path, dict, float]:
    """Export the one-pass scorers of the GAN checkpoint ``ckpt_path`` (``python -m anogan.export``).

    ``out``: the ONNX file (default ``<run>/detector.onnx``, run = the checkpoint's run directory);
    ``evaluation``: the run directory whose ``metrics.json`` and ``scores.h5`` hold the calibrated
    thresholds and normal validation scores (default: the checkpoint's run directory; without them the
    thresholds and p-values are null with the reason); ``encoder_ckpt_path`` / ``acae_ckpt_path``: stage
    checkpoints other than those beside ``ckpt_path``. The aCAE's ``lam`` is the evaluation's.
    Returns (the file, its metadata, the export check's relative difference).

    Raises InputError (no encoder or aCAE, a scores.h5 of other weights, onnx packages missing),
    MissingInputError / CheckpointError for a missing or unusable checkpoint."""
    from anogan.models.acae import ACAEScores
    from anogan.runtime.checkpoints import gan_identity, read_checkpoint, weights_identity

    _check_exporter()
    ckpt_path = Path(ckpt_path)
    ckpt = read_checkpoint(ckpt_path)
    run = ckpt_path.resolve().parent.parent
    evaluation = Path(evaluation) if evaluation else run
    metrics_file = evaluation / "metrics.json"
    lam = json.loads(metrics_file.read_text()).get("lam", 0.1) if metrics_file.is_file() else (
        (ckpt.get("anogan_config") or {}).get("inversion", {}).get("lam", 0.1))
    scorers, G, D = run_scorers(ckpt_path, lam, encoder_ckpt_path, acae_ckpt_path, ckpt)
    identities = {"gan": gan_identity(G, D),
                  "scorers": [f"{type(m).__name__}:{weights_identity(m)}" for m in scorers]}
    size, channels = G.config["image_size"], G.config["channels"]
    probe = torch.zeros(1, channels, size, size)
    names = OnePassScorer(scorers).names(probe)
    metrics, scores, reason = _read_evaluation(evaluation, names, identities)
    scores["path"] = evaluation / "scores.h5"
    map_of = ("aCAE: |x - Dec(E(x))|" if isinstance(scorers[0], ACAEScores) else "f-AnoGAN: |x - G(E(x))|") + \
        ", summed over channels"
    meta = run_metadata(ckpt, ckpt_path, names, metrics, scores, reason, identities, map_of)
    path, diff = export_scorers(scorers, size, channels, out or run / DEFAULT_NAME, meta)
    return path, {**meta, "image_size": size, "channels": channels, "scores": names}, diff
