"""Validation AUROC of candidate nearest-neighbour scores in the spaces of a trained GAN, for choosing a
score on development runs before any test run (docs/benchmark.md, "A GAN-based score at GEOM's level").

Each job directory is a ``train.py`` run trained with ``data.evaluate_on=val`` (its labelled validation
split is its test split; the test images are never read) and f-AnoGAN's encoder
(``checkpoints/encoder.ckpt``). Every candidate is a distance from a query image's embedding to the k-th
nearest embedding of the normal training images (``anogan.models.baselines.knn_distance``); higher = more
anomalous. The candidates, fixed before any was computed:

- ``pixel`` (the pixels), ``latent`` (E(x), G's latent space), ``feature`` (D's feature layer, its last
  block), ``d_block0`` (D's first block), ``e_block`` (E's last block before its head), for k in ``KS``;
- ``latent_flip``: ``latent`` with the horizontally flipped training images added to the reference;
- ``a+b``: the sum of two of them, each divided by its scale: the mean over the training images of their
  leave-one-out distance to the k-th nearest other training image (label-free, fitted on training images).

  python benchmarks/score_candidates.py JOB_DIR [JOB_DIR ...] --out benchmarks/results/NAME/validation.csv

Writes one row per job and candidate (class, seed, candidate, AUROC on the validation split) and prints
the table of candidates x classes with the mean. Raises SystemExit naming a job that was not evaluated on
its validation split or has no encoder.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from sklearn.metrics import roc_auc_score

from anogan.models.baselines import knn_distance, training_images
from anogan.models.encoder import load_encoder
from anogan.models.inversion import load_gan
from anogan.runtime.checkpoints import read_stage_checkpoint
from anogan.runtime.io import write_csv_atomic

KS = (1, 5, 10, 20)
SPACES = ("pixel", "latent", "feature", "d_block0", "e_block")
SUMS = (("latent", 10, "pixel", 1), ("latent", 10, "pixel", 10), ("latent", 10, "d_block0", 1),
        ("latent", 10, "e_block", 10), ("latent", 10, "feature", 10))


def block_features(net, x: torch.Tensor, upto: int | None) -> torch.Tensor:
    """The flattened output of block ``upto`` of a DCGAN D or E (None: the last block)."""
    h = net.stem(x)
    for i, block in enumerate(net.blocks):
        h = block(h)
        if upto is not None and i == upto:
            break
    return h.flatten(1)


def embedders(G, D, E) -> dict:
    return {"pixel": lambda x: x.flatten(1), "latent": lambda x: E(x).flatten(1), "feature": D.features,
            "d_block0": lambda x: block_features(D, x, 0), "e_block": lambda x: block_features(E, x, None)}


@torch.no_grad()
def embed(fn, images: torch.Tensor, batch: int = 500) -> torch.Tensor:
    return torch.cat([fn(images[i:i + batch]).float() for i in range(0, len(images), batch)])


def job_candidates(job: Path) -> tuple[dict, dict[str, float]]:
    """({class, seed}, {candidate: validation AUROC}) of one job directory."""
    cfg = OmegaConf.load(job / ".hydra" / "config.yaml")
    if cfg.data.get("evaluate_on") != "val":
        raise SystemExit(f"{job}: trained without data.evaluate_on=val; candidates are chosen on validation images")
    encoder_ckpt = job / "checkpoints" / "encoder.ckpt"
    if not encoder_ckpt.is_file():
        raise SystemExit(f"{job}: no checkpoints/encoder.ckpt (train with an encoder, e.g. encoder=izif)")
    G, D, _, _ = load_gan(job / "checkpoints" / "last.ckpt")
    E, _ = load_encoder(read_stage_checkpoint(encoder_ckpt, "anogan_encoder", "encoder"))
    for net in (G, D, E):
        net.eval()
    datamodule = instantiate(cfg.data)
    datamodule.setup("test")
    train = training_images(datamodule.train_set)
    batches = list(datamodule.test_dataloader())
    images = torch.cat([b["image"] for b in batches])
    labels = torch.cat([torch.as_tensor(b["label"]) for b in batches]).numpy()
    scores, scale = {}, {}
    for space, fn in embedders(G, D, E).items():
        ref, query = embed(fn, train), embed(fn, images)
        d = knn_distance(query, ref, list(KS))
        loo = knn_distance(ref, ref, [k + 1 for k in KS])  # the k-th nearest other training image
        for j, k in enumerate(KS):
            scores[(space, k)], scale[(space, k)] = d[:, j], loo[:, j].mean()
        if space == "latent":
            flipped = torch.cat([ref, embed(fn, train.flip(-1))])
            scores[("latent_flip", 10)] = knn_distance(query, flipped, 10)
    aurocs = {f"{s} k={k}": roc_auc_score(labels, v.numpy()) for (s, k), v in scores.items()}
    for a, ka, b, kb in SUMS:
        total = scores[(a, ka)] / scale[(a, ka)] + scores[(b, kb)] / scale[(b, kb)]
        aurocs[f"{a} k={ka} + {b} k={kb}"] = roc_auc_score(labels, total.numpy())
    key = {"class": str(OmegaConf.to_container(cfg.data.normal_classes)), "seed": int(cfg.seed),
           "n_normal": int((labels == 0).sum()), "n_anomalous": int((labels == 1).sum())}
    return key, aurocs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("jobs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    rows = []
    for job in args.jobs:
        key, aurocs = job_candidates(job)
        rows += [{**key, "candidate": c, "auroc": round(a, 4)} for c, a in aurocs.items()]
        print(job, key, flush=True)
    write_csv_atomic(rows, args.out)
    classes = sorted({r["class"] for r in rows})
    print("| candidate | " + " | ".join(classes) + " | mean |")
    for c in dict.fromkeys(r["candidate"] for r in rows):
        vals = [next(r["auroc"] for r in rows if r["class"] == k and r["candidate"] == c) for k in classes]
        print(f"| {c} | " + " | ".join(f"{v:.3f}" for v in vals) + f" | {sum(vals) / len(vals):.3f} |")


if __name__ == "__main__":
    main()
