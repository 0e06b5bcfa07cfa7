"""The Fashion-MNIST one-class benchmark: each class in turn is normal, the models train on its
training images and score the test set (all ten classes; the other nine are anomalous).

Per class it runs ``train.py``'s job with ``experiment=fashion_mnist encoder=izif acae=dcgan`` (GAN,
f-AnoGAN encoder, aCAE, then the evaluation) in ``<out>/class_<c>/``, and two baselines on the same
test images: PCA reconstruction error and the distance to the nearest training image (1-NN, pixels).
It writes ``<out>/auroc.csv`` and ``<out>/auroc.md`` (per-class AUROC and the mean) after every class;
a class whose ``metrics.json`` exists is not run again, so an interrupted benchmark continues.

    python benchmarks/fashion_mnist_oneclass.py --out logs/benchmark [--classes 0 1 ...] \
        [--test-subset 2000] [hydra overrides for train.py, e.g. trainer.max_epochs=5]
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from anogan.callbacks.metrics import auroc  # noqa: E402

CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
# column -> score name in metrics.json (None: a baseline computed here)
MODELS = {
    "AnoGAN": "anomaly",
    "GAN_R": "reference_anomaly",
    "f-AnoGAN": "fanogan",
    "aCAE": "acae_anomaly",
    "PCA": None,
    "1-NN": None,
}
log = logging.getLogger("benchmark")


def compose(overrides: list[str], output_dir: Path):
    """train.py's config with ``overrides``, writing into ``output_dir``."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import open_dict

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = hydra_compose(config_name="train", overrides=overrides, return_hydra_config=True)
    GlobalHydra.instance().clear()
    output_dir.mkdir(parents=True, exist_ok=True)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        del cfg["hydra"]
    return cfg


def pca_scores(train: torch.Tensor, test: torch.Tensor, components: int) -> torch.Tensor:
    """Squared reconstruction error of each test image from the top principal components of train."""
    from sklearn.decomposition import PCA

    pca = PCA(n_components=components, random_state=0).fit(train.numpy())
    recon = pca.inverse_transform(pca.transform(test.numpy()))
    return torch.from_numpy(((test.numpy() - recon) ** 2).sum(1))


def nearest_neighbour_scores(train: torch.Tensor, test: torch.Tensor, chunk: int = 1000) -> torch.Tensor:
    """Euclidean distance of each test image to its nearest training image, in pixels."""
    return torch.cat([torch.cdist(test[i:i + chunk], train).min(1).values for i in range(0, len(test), chunk)])


def baselines(cfg, components: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """PCA and 1-NN scores of the evaluation's test images, and their labels."""
    from hydra.utils import instantiate

    dm = instantiate(cfg.data)
    dm.setup("test")
    train = torch.stack([dm.train_set[i]["image"] for i in range(len(dm.train_set))]).flatten(1)
    items = [dm.test_set[i] for i in range(len(dm.test_set))]
    test = torch.stack([it["image"] for it in items]).flatten(1)
    labels = torch.stack([it["label"] for it in items])
    return {"PCA": pca_scores(train, test, components), "1-NN": nearest_neighbour_scores(train, test)}, labels


def run_class(c: int, args, extra: list[str]) -> dict[str, float]:
    """AUROC of every model with class ``c`` normal; the run lands in ``<out>/class_<c>``."""
    from anogan.pipeline import train

    out = args.out / f"class_{c}"
    overrides = ["experiment=fashion_mnist", "encoder=izif", "acae=dcgan", f"data.normal_classes=[{c}]",
                 f"data.test_subset={args.test_subset if args.test_subset else 'null'}", "logger=none",
                 "trainer.enable_progress_bar=false", *extra]
    cfg = compose(overrides, out)
    metrics_path, baseline_path = out / "metrics.json", out / "baselines.json"
    if not metrics_path.exists():
        t0 = time.time()
        train(cfg)
        log.info("class %d: trained and evaluated in %.0f s", c, time.time() - t0)
    if not baseline_path.exists():
        scores, labels = baselines(cfg, args.pca_components)
        n_test = json.loads(metrics_path.read_text())
        n_test = n_test["n_normal"] + n_test["n_anomalous"]
        if len(labels) != n_test:
            raise RuntimeError(f"class {c}: baselines saw {len(labels)} test images, the evaluation {n_test}")
        baseline_path.write_text(json.dumps({k: auroc(v, labels) for k, v in scores.items()}))
    scores = json.loads(metrics_path.read_text())["scores"]
    base = json.loads(baseline_path.read_text())
    return {m: (scores[s]["auroc"] if s else base[m]) for m, s in MODELS.items()}


def write_tables(rows: dict[int, dict[str, float]], out: Path, note: str) -> tuple[Path, Path]:
    """``auroc.csv`` and ``auroc.md``: one row per class, then the mean over the classes run."""
    mean = {m: float(np.mean([r[m] for r in rows.values()])) for m in MODELS}
    with open(out / "auroc.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["class", "name", *MODELS])
        for c, r in sorted(rows.items()):
            w.writerow([c, CLASSES[c], *(f"{r[m]:.4f}" for m in MODELS)])
        w.writerow(["mean", f"{len(rows)} classes", *(f"{mean[m]:.4f}" for m in MODELS)])
    lines = [f"| class | {' | '.join(MODELS)} |", "| --- |" + " ---: |" * len(MODELS)]
    for c, r in sorted(rows.items()):
        best = max(r.values())
        lines.append(f"| {c} {CLASSES[c]} | " + " | ".join(
            f"**{r[m]:.3f}**" if r[m] == best else f"{r[m]:.3f}" for m in MODELS) + " |")
    lines.append(f"| mean ({len(rows)} classes) | " + " | ".join(f"{mean[m]:.3f}" for m in MODELS) + " |")
    (out / "auroc.md").write_text("\n".join(lines) + f"\n\n{note}\n")
    return out / "auroc.csv", out / "auroc.md"


def main(argv: list[str] | None = None) -> dict[int, dict[str, float]]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("logs/benchmark/fashion_mnist_oneclass"))
    p.add_argument("--classes", type=int, nargs="+", default=list(range(10)))
    p.add_argument("--test-subset", type=int, default=0, help="score this many test images (0: all 10000)")
    p.add_argument("--pca-components", type=int, default=30)
    args, extra = p.parse_known_args(argv)
    bad = [c for c in args.classes if not 0 <= c < 10]
    if bad:
        p.error(f"--classes {bad}: Fashion-MNIST classes are 0-9")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    subset = f"a fixed random subset of {args.test_subset}" if args.test_subset else "all 10000"
    note = (f"AUROC, {subset} test images per class; overrides: `{' '.join(extra) or '(none)'}`; "
            f"PCA with {args.pca_components} components.")
    rows: dict[int, dict[str, float]] = {}
    for c in args.classes:
        rows[c] = run_class(c, args, extra)
        csv_path, md_path = write_tables(rows, args.out, note)
        log.info("class %d %s: %s -> %s", c, CLASSES[c], {m: round(v, 3) for m, v in rows[c].items()}, md_path)
    print(md_path.read_text())
    return rows


if __name__ == "__main__":
    main()
