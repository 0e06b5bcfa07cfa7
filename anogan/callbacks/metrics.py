"""The paper's evaluation: AUROC per score and the table at the ROC's maximal Youden index; beside it
AUPRC and F1-max per score, the pixel-level AUPRC, best Dice and AUPRO, and operating points calibrated
on normal validation images, without test labels (``anogan.metrics.localization``).

Scores are unbounded (a residual is a sum over pixels), and torchmetrics' binary curves squash any
input outside [0, 1] with a sigmoid by default, which saturates to 1.0 and turns the AUROC into 0.5.
Every metric here is built with ``normalization=None`` so that it ranks the raw scores.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import lightning as L
import numpy as np
import torch

from anogan.data import SPLITS
from anogan.data.datamodule import calibration_rows
from anogan.metrics import localization as LZ
from anogan.metrics.conformal import calibrate
from anogan.metrics.restarts import failure_line, failure_summary
from anogan.metrics.detection import auroc, calibrated_point, operating_point, pixel_auroc_metric
from anogan.runtime.distributed import gather_rows, padded_duplicates
from anogan.runtime.io import write_json_atomic
from anogan.nets.scores import SCORE_NAMES
from anogan.errors import InputError

log = logging.getLogger(__name__)


class OutputCollector(L.Callback):
    """Keeps the per-image fields of every test step's output (on CPU) for the epoch-end callbacks.

    ``results`` after the test epoch: split, label, index (N,), scores {name: (N,)} and recorded
    {step: {name: (N,)}}; ``maps``: residual maps and masks of the test split (for pixel AUROC)."""

    def on_test_epoch_start(self, trainer, pl_module) -> None:
        self._rows: list[dict] = []
        self._module = pl_module

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        keep = {k: outputs[k].detach().cpu() for k in ("split", "label", "index")}
        keep["scores"] = {k: v.detach().cpu() for k, v in outputs["scores"].items()}
        keep["recorded"] = {
            t: {k: v.detach().cpu() for k, v in d.items()} for t, d in outputs["recorded"].items()
        }
        self.collect_extra(outputs, keep)
        self._rows.append(keep)

    def collect_extra(self, outputs: dict, keep: dict) -> None:
        """Subclasses add more per-batch fields to ``keep``."""

    def gathered(self) -> dict:
        rows = self._rows
        out = {k: torch.cat([r[k] for r in rows]) for k in ("split", "label", "index")}
        out["scores"] = {k: torch.cat([r["scores"][k] for r in rows]) for k in rows[0]["scores"]}
        out["recorded"] = {
            t: {k: torch.cat([r["recorded"][t][k] for r in rows]) for k in rows[0]["recorded"][t]}
            for t in rows[0]["recorded"]
        }
        # from collect_extra; sorted: every process must gather the same tensors in the same order (DDP)
        for k in sorted(set(rows[0]) - {"split", "label", "index", "scores", "recorded"}):
            out[k] = torch.cat([r[k] for r in rows])
        if self._module.trainer.world_size > 1:  # every process calls this: all_gather is collective
            out = gather_rows(self._module, out)
        return out


class AnomalyMetrics(OutputCollector):
    """AUROC per score (logged as ``test/auroc/<score>``), the paper's table (printed, and written to
    ``metrics.json``), pixel-level AUROC of the residual maps where masks exist, and the AUROC after
    each recorded step count; AUPRC and F1-max per score; where masks exist pixel AUPRC, best Dice and
    AUPRO (up to FPR ``aupro_fpr_limit``); and label-free operating points, each the conformal threshold
    (``anogan.metrics.conformal``: the ceil((n + 1)(1 - alpha))-th smallest of n normal values, flagging
    value > it) of what the normal validation images the DataModule adds (split = val) give: per score at
    ``target_fpr``; a pixel threshold at ``pixel_target_fpr`` over their residual pixels; a region threshold
    at ``target_fpr`` over their region scores (the largest mean of the residual map over a ``region_window``
    square, ``anogan.metrics.localization.window_max``, a patch-level region score); with the test's rates
    (and pixel Dice) at them. A threshold is null with its reason when the normal values are too few for its
    rate (fewer than 1 / rate - 1). (``data=scans`` calibrates its scan flag on whole normal scans instead,
    ``anogan.callbacks.ScanMaps``.) A score that is constant over the test images is marked ``degenerate``
    in metrics.json and named in the log (``anogan.metrics.detection.degenerate``).

    The residual maps of every mapped image are kept until the epoch ends (N x H x W float32) for the
    pixel metrics; ``pixel_thresholds`` bins the pixel curves (see ``anogan.metrics.localization``)."""

    def __init__(self, path: str | os.PathLike, pixel_thresholds: int | None = None, target_fpr: float = 0.05,
                 pixel_target_fpr: float = 0.01, aupro_fpr_limit: float = LZ.FPR_LIMIT, region_window: int = 7):
        if pixel_thresholds is not None and (int(pixel_thresholds) != pixel_thresholds or pixel_thresholds < 2):
            raise InputError(f"pixel_thresholds={pixel_thresholds} must be null (exact) or an integer >= 2")
        for key, value in (("target_fpr", target_fpr), ("pixel_target_fpr", pixel_target_fpr)):
            if not 0 < value < 1:
                raise InputError(f"evaluation_callbacks.metrics.{key}={value} must lie in (0, 1), e.g. 0.05")
        if int(region_window) != region_window or region_window < 1:
            raise InputError(f"evaluation_callbacks.metrics.region_window={region_window} must be an integer >= 1 "
                             "(pixels), e.g. 7")
        if not 0 < aupro_fpr_limit <= 1:
            raise InputError(f"evaluation_callbacks.metrics.aupro_fpr_limit={aupro_fpr_limit} must lie in (0, 1]")
        self.path = Path(path)
        self.pixel_thresholds = pixel_thresholds
        self.target_fpr, self.pixel_target_fpr, self.aupro_fpr_limit = target_fpr, pixel_target_fpr, aupro_fpr_limit
        self.region_window = int(region_window)

    def on_test_epoch_start(self, trainer, pl_module) -> None:
        super().on_test_epoch_start(trainer, pl_module)
        # binned over the residual maps' range [0, 2C], C the channels of the GAN's images
        channels = int(getattr(getattr(pl_module, "generator", None), "config", {}).get("channels", 1))
        self.pixel = pixel_auroc_metric(channels, self.pixel_thresholds)
        if trainer.world_size > 1:  # compute() gathers the processes' pixels: on their device (NCCL)
            self.pixel = self.pixel.to(pl_module.device)
        self.pixel_counts = torch.zeros(2, dtype=torch.long)  # test pixels: normal, anomalous
        self.has_masks = False
        self._seen = 0
        self.channels = channels

    def collect_extra(self, outputs: dict, keep: dict) -> None:
        keep["map"] = outputs["residual_map"].detach().float().cpu()
        if outputs.get("restart_losses") is not None:
            keep["restart_losses"] = outputs["restart_losses"].detach().float().cpu()
        if "mask" in outputs:
            keep["mask"] = outputs["mask"].detach().cpu().bool()
        n = len(outputs["index"])
        duplicate = padded_duplicates(self._module.trainer, self._seen, n)  # counted once (DDP)
        self._seen += n
        if "mask" in outputs:
            test = (outputs["split"].cpu() == SPLITS["test"]) & ~duplicate
            if test.any():
                self.has_masks = True
                masks = outputs["mask"].detach().cpu()[test].flatten().long()
                self.pixel_counts += torch.bincount(masks, minlength=2)[:2]
                self.pixel.update(
                    outputs["residual_map"].detach().cpu()[test].flatten().double().to(self.pixel.device),
                    masks.to(self.pixel.device),
                )

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        data = self.data = self.gathered()
        test = data["split"] == SPLITS["test"]
        labels = data["label"][test]
        n_anomalous = int(labels.sum())
        n_normal = int(len(labels) - n_anomalous)
        if n_normal == 0 or n_anomalous == 0:
            raise InputError(
                f"AUROC is undefined: the test split holds {n_normal} normal and {n_anomalous} anomalous "
                "images, and AUROC needs both; the per-image scores are in scores.h5, metrics.json is not "
                "written (check data.normal_classes and data.test_subset)"
            )
        table = {
            name: operating_point(data["scores"][name][test], labels)
            for name in SCORE_NAMES + tuple(sorted(set(data["scores"]) - set(SCORE_NAMES)))
            if name in data["scores"]
        }
        val = torch.from_numpy(calibration_rows(data["split"].numpy(), data["label"].numpy()))
        for name, row in table.items():
            row["calibrated"] = calibrated_point(data["scores"][name][test], labels, data["scores"][name][val],
                                                 self.target_fpr, "normal validation images")
            if row["degenerate"] and trainer.is_global_zero:
                log.warning("score %s is degenerate: %s (metrics.json marks it \"degenerate\")", name,
                            row["degenerate_reason"])
            reason = row["calibrated"].get("reason")
            if reason and trainer.is_global_zero:
                log.warning("no calibrated threshold for %s: %s (data.eval_val_samples)", name, reason)
        hp = pl_module.hparams
        result = {
            "lam": float(hp.lam),
            "steps": int(hp.steps),
            # the split scored: test, or val (data.evaluate_on=val: a development run's labelled validation images)
            "evaluated_on": str(getattr(getattr(trainer, "datamodule", None), "evaluate_on", "test")),
            "n_normal": n_normal,
            "n_anomalous": n_anomalous,
            "scores": table,
        }
        if self.has_masks:
            result.update(self._pixel_auroc(trainer))
        result["pixel_calibration"] = self._pixel_calibration(data, val)
        result["region_calibration"] = self._region_calibration(data, val, test, labels)
        for key in ("pixel_calibration", "region_calibration"):
            if result[key].get("reason") and trainer.is_global_zero:
                log.warning("no %s threshold: %s (data.eval_val_samples)", key.split("_")[0], result[key]["reason"])
        if self.has_masks:
            result.update(LZ.pixel_metrics(
                list(data["map"][test].numpy()), list(data["mask"][test].numpy()), self.pixel_thresholds,
                0.0, 2.0 * self.channels, self.aupro_fpr_limit, result["pixel_calibration"]["threshold"]))
        result["mapping_failures"] = self._mapping_failures(data, test, val, trainer)
        if data["recorded"]:
            result["recorded"] = {
                str(t): {name: auroc(v[test], labels) for name, v in d.items()}
                for t, d in sorted(data["recorded"].items())
            }
        self.result = result
        for name, row in table.items():
            pl_module.log(f"test/auroc/{name}", row["auroc"])
        if result.get("pixel_auroc") is not None:
            pl_module.log("test/pixel_auroc", result["pixel_auroc"])
        if trainer.is_global_zero:
            write_json_atomic(result, self.path)
            print_table(result)

    @staticmethod
    def _mapping_failures(data: dict, test: torch.Tensor, val: torch.Tensor, trainer) -> dict:
        """How often the first of ``inversion.restarts`` starts ended clearly above the best one, per
        group (``anogan.metrics.restarts``); logged when there are several starts."""
        losses = data.get("restart_losses")
        label = data["label"]
        out = failure_summary(None if losses is None else losses.numpy(), {
            "test_normal": (test & (label == 0)).numpy(), "test_anomalous": (test & (label == 1)).numpy(),
            "normal_validation": val.numpy()})
        if out["groups"] is not None and trainer.is_global_zero:
            log.info(failure_line(out))
        return out

    def _pixel_calibration(self, data: dict, val: torch.Tensor) -> dict:
        """The pixel threshold calibrated without test labels: the conformal threshold at pixel_target_fpr of
        the residual pixels of the normal validation images (``data=scans`` uses it without normal scans)."""
        return calibrate(data["map"][val].numpy(), self.pixel_target_fpr,
                         f"residual pixels of {int(val.sum())} normal validation images")

    def _region_calibration(self, data: dict, val: torch.Tensor, test: torch.Tensor, labels: torch.Tensor) -> dict:
        """The region threshold calibrated without test labels: the conformal threshold at target_fpr of the
        region scores (``window_max``) of the normal validation images, and the test images' rates when an
        image is called anomalous at region score > it."""
        def region(maps: torch.Tensor) -> torch.Tensor:
            values = [LZ.window_max(m, self.region_window) for m in maps.numpy()]
            return torch.tensor([np.nan if v is None else v for v in values], dtype=torch.float64)

        out = calibrated_point(region(data["map"][test]), labels, region(data["map"][val]), self.target_fpr,
                               f"normal validation images: the largest mean of each residual map over a "
                               f"{self.region_window}x{self.region_window} square")
        return {"window": self.region_window, **out}

    def _pixel_auroc(self, trainer) -> dict:
        """``{"pixel_auroc": value}``, or ``{"pixel_auroc": None, "pixel_auroc_reason": ...}`` when the
        masked test pixels are all of one class (torchmetrics would only warn and give 0)."""
        counts = self.pixel_counts
        if trainer.world_size > 1:
            counts = self._module.all_gather(counts.to(self._module.device)).reshape(-1, 2).sum(0).cpu()
        normal, anomalous = (int(c) for c in counts)
        if normal == 0 or anomalous == 0:
            # every process calls compute() (collective in DDP) only when it is defined: counts agree
            return {"pixel_auroc": None, "pixel_auroc_reason": (
                f"undefined: the test masks hold {anomalous} anomalous and {normal} normal pixels, and "
                "AUROC needs both")}
        return {"pixel_auroc": float(self.pixel.compute())}


def print_table(result: dict, console=None) -> None:
    """The paper's table of one evaluation, printed with rich: one row per score, named in full, and
    short metric headers (explained in the caption), so that it fits 80 columns. An undefined value
    (``None``) prints as ``null``. ``console``: a ``rich.console.Console`` (default: stdout)."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    cols = {"auroc": "AUROC", "precision": "prec.", "recall": "recall", "sensitivity": "sens.",
            "specificity": "spec.", "threshold": "threshold"}
    t = Table(title=f"AnoGAN evaluation (lam={result['lam']}, steps={result['steps']}, "
              f"{result['n_normal']} normal / {result['n_anomalous']} anomalous"
              f"{' validation images' if result.get('evaluated_on') == 'val' else ''})",
              caption="at the threshold of maximal Youden index; prec. = precision, sens. = sensitivity, "
              "spec. = specificity", box=box.SIMPLE_HEAD, show_edge=False, collapse_padding=True)
    t.add_column("score", no_wrap=True)
    for c in cols.values():
        t.add_column(c, justify="right", no_wrap=True)

    def shown(value, fmt: str = ".4f") -> str:
        return "null" if value is None else f"{value:{fmt}}"

    for name, row in result["scores"].items():
        shown_name = f"{name} (constant)" if row.get("degenerate") else name
        t.add_row(shown_name, *(shown(row.get(c), ".4g" if c == "threshold" else ".4f") for c in cols))
    console = console or Console()
    console.print(t)
    if any("auprc" in row or "calibrated" in row for row in result["scores"].values()):
        console.print(_calibrated_table(result, shown))
    if "pixel_auroc" in result:
        reason = result.get("pixel_auroc_reason")
        console.print(f"pixel-level AUROC of the residual maps: {shown(result['pixel_auroc'])}"
                      + (f" ({reason})" if reason else ""))
    if "pixel_auprc" in result:
        at = result.get("pixel_at_calibrated") or {}
        console.print(f"pixel AUPRC {shown(result['pixel_auprc'])}, best Dice {shown(result['pixel_best_dice'])}, "
                      f"AUPRO (FPR <= {result['pixel_aupro_fpr_limit']:g}) {shown(result['pixel_aupro'])}; at the "
                      f"calibrated pixel threshold {shown(at.get('threshold'), '.4g')}: Dice {shown(at.get('dice'))}")


def _calibrated_table(result: dict, shown):
    """The second table of ``print_table``: AUPRC, F1-max and the rates at the calibrated thresholds."""
    from rich import box
    from rich.table import Table

    c = Table(title="beside it: rates at thresholds calibrated on normal validation images",
              caption="F1max = F1-max; FPR = the target false-positive rate of the calibrated threshold thr.; "
              "sens., spec., prec. on the test set at thr. (no test label chose it)",
              box=box.SIMPLE_HEAD, show_edge=False, collapse_padding=True)
    for col in ("score", "AUPRC", "F1max", "FPR", "thr.", "sens.", "spec.", "prec."):
        c.add_column(col, justify="left" if col == "score" else "right", no_wrap=True)
    for name, row in result["scores"].items():
        cal = row.get("calibrated") or {}
        c.add_row(name, *(shown(v, ".3f") for v in (row.get("auprc"), row.get("f1_max"))),
                  shown(cal.get("target_fpr"), ".3g"), shown(cal.get("threshold"), ".4g"),
                  *(shown(cal.get(k), ".3f") for k in ("sensitivity", "specificity", "precision")))
    return c
