"""The evaluation on a wandb dashboard: ROC curves, the paper's table as a ``wandb.Table`` and the
score histograms per group (the figures' PNGs, Fig. 2's anomaly grid among them, are sent by
``PaperFigures``). Does nothing unless one of the trainer's loggers is a ``WandbLogger``."""

from __future__ import annotations

import lightning as L
import numpy as np
import torch
from torchmetrics.classification import BinaryROC

from anogan.callbacks.figures import GROUPS, LABELS, group_of
from anogan.callbacks.metrics import AnomalyMetrics
from anogan.data import SPLITS

TABLE_COLUMNS = ("score", "auroc", "precision", "recall", "sensitivity", "specificity", "threshold")


class WandbEvaluation(L.Callback):
    """After the test loop, logs to every ``WandbLogger``: ``test/table`` (one row per score),
    ``test/roc`` (a table of (score, fpr, tpr), drawn as one line per score, at most ``roc_points``
    points each) and ``test/hist/<score>/<group>`` (``wandb.Histogram``). Reads the results of the
    trainer's ``AnomalyMetrics`` callback."""

    def __init__(self, roc_points: int = 200, bins: int = 30):
        self.roc_points, self.bins = roc_points, bins

    def on_test_end(self, trainer, pl_module) -> None:
        from lightning.pytorch.loggers import WandbLogger

        loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        metrics = next((cb for cb in trainer.callbacks if isinstance(cb, AnomalyMetrics)), None)
        if not loggers or metrics is None or not trainer.is_global_zero:
            return
        import wandb

        result, data = metrics.result, metrics.data
        rows = [[name] + [row[c] for c in TABLE_COLUMNS[1:]] for name, row in result["scores"].items()]
        table = wandb.Table(columns=list(TABLE_COLUMNS), data=rows)
        roc = wandb.Table(columns=["score", "fpr", "tpr"], data=self.roc_rows(data))
        log = {
            "test/table": table,
            "test/roc": wandb.plot.line(roc, "fpr", "tpr", stroke="score", title="ROC (Fig. 3a, b)"),
        }
        groups = np.array(group_of(data["split"], data["label"]), dtype=object)
        for name, values in data["scores"].items():
            for g in GROUPS:
                sel = groups == g
                if sel.any():
                    log[f"test/hist/{name}/{g}"] = wandb.Histogram(np_histogram=self.histogram(values.numpy()[sel]))
        for lg in loggers:
            lg.experiment.log(log)

    def histogram(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        values = values.astype(np.float64)
        try:
            return np.histogram(values, bins=self.bins)
        except ValueError:  # (nearly) constant scores: no room for self.bins finite bins
            return np.histogram(values, bins=1, range=(values.min() - 0.5, values.max() + 0.5))

    def roc_rows(self, data: dict) -> list[list]:
        test = data["split"] == SPLITS["test"]
        labels = data["label"][test].long()
        rows = []
        for name, values in data["scores"].items():
            fpr, tpr, _ = BinaryROC(normalization=None)(values[test].double(), labels)
            keep = torch.linspace(0, len(fpr) - 1, min(len(fpr), self.roc_points)).round().long().unique()
            label = LABELS.get(name, name)
            rows += [[label, float(f), float(t)] for f, t in zip(fpr[keep], tpr[keep])]
        return rows
