"""The paper's figures from an evaluation: Fig. 3a, 3b (ROC curves), 3c, d (score distributions) and
Fig. 2 (query, G(z), residual overlay and annotation for train-normal, test-normal, test-anomalous);
beside the ROC figures the precision-recall curves of the same scores (``pr_models.png``,
``pr_scores.png``) and, where masks exist, of the residual pixels (``pr_pixels.png``)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torchmetrics.classification import BinaryPrecisionRecallCurve, BinaryROC

from anogan.callbacks.metrics import OutputCollector
from anogan.metrics.detection import auroc
from anogan.runtime.distributed import padded_duplicates
from anogan.metrics.localization import average_precision
from anogan.data import SPLITS
from anogan.runtime.io import atomic_path
from anogan.callbacks.viz import log_image, to_unit

GROUPS = ("train-normal", "test-normal", "test-anomalous")
ROC_FIGURES = {
    # Fig. 3a: the models; Fig. 3b: the scores of the AnoGAN mapping against the reference
    "roc_models": ("anomaly", "reference_anomaly", "discriminator", "fanogan", "acae_anomaly"),
    "roc_scores": ("residual", "discrimination", "reference_discrimination"),
}
LABELS = {
    "anomaly": "AnoGAN",
    "reference_anomaly": "GAN_R",
    "discriminator": "P_D",
    "fanogan": "f-AnoGAN",
    "acae_anomaly": "aCAE",
    "residual": "residual score",
    "discrimination": "discrimination score",
    "reference_discrimination": "reference discrimination score",
}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return path


def group_of(split: torch.Tensor, label: torch.Tensor) -> list[str | None]:
    """Each image's Fig. 2/3 group: train-normal, test-normal, test-anomalous (else None)."""
    out = []
    for s, y in zip(split.tolist(), label.tolist()):
        if s == SPLITS["train"]:
            out.append("train-normal")
        elif s == SPLITS["test"]:
            out.append("test-anomalous" if y else "test-normal")
        else:
            out.append(None)
    return out


class PaperFigures(OutputCollector):
    """Writes ``roc_models.png``, ``roc_scores.png``, ``pr_models.png``, ``pr_scores.png``,
    ``score_distributions.png``, ``anomaly_grid.png`` (``n_examples`` images per group) and, where masks
    exist, ``pr_pixels.png`` into ``dirpath``; sends them to the logger. The pixel curve is drawn at
    ``pixel_curve_points`` thresholds evenly spaced over the residual maps' range [0, 2C] (constant memory;
    the exact pixel AUPRC is in metrics.json)."""

    def __init__(self, dirpath: str | os.PathLike, n_examples: int = 6, bins: int = 30,
                 pixel_curve_points: int = 201):
        self.dirpath, self.n_examples, self.bins = Path(dirpath), n_examples, bins
        self.pixel_curve_points = int(pixel_curve_points)

    def on_test_epoch_start(self, trainer, pl_module) -> None:
        super().on_test_epoch_start(trainer, pl_module)
        self.examples: dict[str, list[dict]] = {g: [] for g in GROUPS}
        channels = int(getattr(getattr(pl_module, "generator", None), "config", {}).get("channels", 1))
        grid = torch.linspace(0, 2 * channels, self.pixel_curve_points, dtype=torch.float64)
        self.pixel_curve = BinaryPrecisionRecallCurve(thresholds=grid, normalization=None).to(pl_module.device)
        self.has_masks, self._seen = False, 0

    def collect_extra(self, outputs: dict, keep: dict) -> None:
        n = len(outputs["index"])
        duplicate = padded_duplicates(self._module.trainer, self._seen, n)  # counted once (DDP)
        self._seen += n
        test = (outputs["split"].cpu() == SPLITS["test"]) & ~duplicate
        if "mask" in outputs and test.any():
            self.has_masks = True
            self.pixel_curve.update(outputs["residual_map"].detach()[test.to(outputs["residual_map"].device)]
                                    .flatten().double().to(self.pixel_curve.device),
                                    outputs["mask"].detach()[test.to(outputs["mask"].device)].flatten().long()
                                    .to(self.pixel_curve.device))
        groups = group_of(outputs["split"], outputs["label"])
        for i, g in enumerate(groups):
            if g is not None and len(self.examples[g]) < self.n_examples:
                ex = {k: outputs[k][i].detach().cpu() for k in ("image", "generated", "residual_map")}
                if "mask" in outputs:
                    ex["mask"] = outputs["mask"][i].detach().cpu()
                self.examples[g].append(ex)

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        data = self.gathered()  # in every process: gathering is collective under DDP
        pixel = self.pixel_curve.compute() if self.has_masks else None  # collective too
        if not trainer.is_global_zero:
            return
        paths = [self.roc(data, name, names) for name, names in ROC_FIGURES.items()]
        paths += [self.precision_recall(data, name, names) for name, names in ROC_FIGURES.items()]
        if pixel is not None:
            paths.append(self.pixel_precision_recall(*pixel))
        paths.append(self.distributions(data))
        paths.append(self.anomaly_grid())
        self.paths = [p for p in paths if p is not None]
        from matplotlib.image import imread

        for p in self.paths:
            log_image(trainer.loggers, f"test/{p.stem}", imread(p), trainer.global_step)

    def roc(self, data: dict, name: str, names: tuple[str, ...]) -> Path:
        """``roc_models.png`` / ``roc_scores.png``: Fig. 3a, b, the ROC curves of the scores of ``names``."""
        return self._curves(data, name, names, "roc")

    def precision_recall(self, data: dict, name: str, names: tuple[str, ...]) -> Path:
        """``pr_models.png`` / ``pr_scores.png``: precision against recall of the scores of ``names`` on
        the test split, the AUPRC (average precision) in the legend, chance (the anomalous fraction) dotted."""
        return self._curves(data, name, names, "pr")

    def _curves(self, data: dict, name: str, names: tuple[str, ...], kind: str) -> Path:
        plt = _pyplot()
        test = data["split"] == SPLITS["test"]
        labels = data["label"][test]
        fig, ax = plt.subplots(figsize=(4.5, 4.5))
        for s in names:
            if s not in data["scores"]:
                continue
            scores = data["scores"][s][test].double()
            if kind == "roc":
                fpr, tpr, _ = BinaryROC(normalization=None)(scores, labels.long())
                ax.plot(fpr, tpr, label=f"{LABELS.get(s, s)} (AUC {auroc(scores, labels):.3f})")
            else:
                precision, recall, _ = BinaryPrecisionRecallCurve(normalization=None)(scores, labels.long())
                ap, _ = average_precision(scores.numpy(), labels.numpy())
                ax.step(recall, precision, where="post", label=f"{LABELS.get(s, s)} (AP {ap:.3f})")
        models = name == "roc_models"
        if kind == "roc":
            ax.plot([0, 1], [0, 1], ls=":", c="grey", lw=1)
            ax.set(xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1.01))
            ax.set_title("Fig. 3a: models" if models else "Fig. 3b: scores")
        else:
            ax.axhline(float(labels.float().mean()), ls=":", c="grey", lw=1)
            ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.01))
            ax.set_title("precision-recall: models" if models else "precision-recall: scores")
        ax.legend(loc="lower right" if kind == "roc" else "lower left", fontsize=8)
        return _save(fig, self.dirpath / f"{name.replace('roc', kind)}.png")

    def pixel_precision_recall(self, precision: torch.Tensor, recall: torch.Tensor,
                               thresholds: torch.Tensor) -> Path:
        """``pr_pixels.png``: precision against recall of the residual pixels against the test masks, at
        ``pixel_curve_points`` thresholds over [0, 2C], the best Dice (F1) of the curve marked."""
        plt = _pyplot()
        p, r = precision[:-1].double(), recall[:-1].double()
        f1 = torch.where(p + r > 0, 2 * p * r / (p + r), torch.zeros(()))
        best = int(torch.argmax(f1))
        fig, ax = plt.subplots(figsize=(4.5, 4.5))
        ax.plot(recall, precision, label="residual |x - G(z)|")
        ax.plot(r[best], p[best], "o", c="C3",
                label=f"best Dice {float(f1[best]):.3f} at {float(thresholds[best]):.3g}")
        ax.set(xlabel="recall (pixels)", ylabel="precision (pixels)", xlim=(0, 1), ylim=(0, 1.01),
               title="precision-recall: pixels")
        ax.legend(loc="upper right", fontsize=8)
        return _save(fig, self.dirpath / "pr_pixels.png")

    def distributions(self, data: dict) -> Path:
        plt = _pyplot()
        groups = group_of(data["split"], data["label"])
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
        for ax, s, panel in zip(axes, ("residual", "discrimination"), "cd"):
            values = data["scores"][s]
            edges = np.histogram_bin_edges(values.numpy(), bins=self.bins)  # shared by all groups
            for g in GROUPS:
                sel = torch.tensor([gg == g for gg in groups], dtype=torch.bool)
                if sel.any():
                    ax.hist(values[sel].numpy(), bins=edges, density=True, alpha=0.5,
                            label=f"{g} ({int(sel.sum())})")
            ax.set(xlabel=f"{s} score", ylabel="density", title=f"Fig. 3{panel}: {s} score")
            ax.legend(fontsize=8)
        return _save(fig, self.dirpath / "score_distributions.png")

    def anomaly_grid(self) -> Path:
        """Fig. 2: per group a block of columns; rows query, G(z), residual overlay, annotation."""
        plt = _pyplot()
        has_mask = any("mask" in ex for exs in self.examples.values() for ex in exs)
        rows = ["query", "generated G(z)", "residual overlay"] + (["annotation"] if has_mask else [])
        cols = [(g, ex) for g in GROUPS for ex in self.examples[g]]
        if not cols:
            return None
        vmax = max(float(ex["residual_map"].max()) for _, ex in cols) or 1.0
        fig, axes = plt.subplots(len(rows), len(cols), figsize=(1.1 * len(cols), 1.15 * len(rows)),
                                 squeeze=False)
        for j, (g, ex) in enumerate(cols):
            query = to_unit(ex["image"][None])[0].mean(0)
            panels = [query, to_unit(ex["generated"][None])[0].mean(0), query]
            for i, img in enumerate(panels):
                axes[i, j].imshow(img, cmap="gray", vmin=0, vmax=1)
            axes[2, j].imshow(ex["residual_map"], cmap="jet", alpha=0.5, vmin=0, vmax=vmax)
            if has_mask:
                axes[3, j].imshow(query, cmap="gray", vmin=0, vmax=1)
                if "mask" in ex:
                    axes[3, j].imshow(ex["mask"].float(), cmap="Reds", alpha=0.5, vmin=0, vmax=1)
            if j == 0 or cols[j - 1][0] != g:
                axes[0, j].set_title(g, fontsize=8, loc="left")
        for i, r in enumerate(rows):
            axes[i, 0].set_ylabel(r, fontsize=7)
        for ax in axes.flat:
            ax.set_xticks([])
            ax.set_yticks([])
        return _save(fig, self.dirpath / "anomaly_grid.png")
