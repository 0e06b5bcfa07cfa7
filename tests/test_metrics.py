import json

import pytest
import torch
from sklearn.metrics import roc_auc_score
from torchmetrics.classification import BinaryAUROC

from anogan.metrics.detection import auroc, operating_point
from anogan.runtime.io import write_json_atomic


def test_auroc_ranks_raw_scores_far_outside_unit_interval():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 2, (400,), generator=g)
    scores = 1e4 + 500 * labels + 800 * torch.rand(400, generator=g)  # residual-like magnitudes
    expected = roc_auc_score(labels.numpy(), scores.numpy())
    assert 0.6 < expected < 0.95
    assert auroc(scores, labels) == pytest.approx(expected, abs=1e-6)
    # the pitfall it avoids: torchmetrics' default sigmoid saturates such scores to ties at 0.5
    assert float(BinaryAUROC()(scores, labels)) == pytest.approx(0.5)


def test_youden_operating_point_on_a_hand_made_example():
    # anomalous: 5, 7, 9, 3; normal: 1, 2, 4, 6, 8 (scores -> higher is more anomalous)
    scores = torch.tensor([5.0, 7.0, 9.0, 3.0, 1.0, 2.0, 4.0, 6.0, 8.0]) * 100
    labels = torch.tensor([1, 1, 1, 1, 0, 0, 0, 0, 0])
    row = operating_point(scores, labels)
    # thresholds 300..900: TPR - FPR is largest (4/4 - 2/5 = 0.6) at 300: 4 TP, 3 FP, 2 TN, 0 FN;
    # at 500 it is 3/4 - 2/5 = 0.35, at 900 1/4 - 0 = 0.25
    assert row["threshold"] == 300.0
    assert row["sensitivity"] == row["recall"] == 1.0
    assert row["specificity"] == pytest.approx(2 / 5)
    assert row["precision"] == pytest.approx(4 / 7)
    assert row["auroc"] == pytest.approx(roc_auc_score(labels, scores))


def test_metrics_json_is_written_atomically(tmp_path):
    path = write_json_atomic({"a": 1}, tmp_path / "metrics.json")
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def _epoch(callback, batches: list[dict]) -> dict:
    """Runs an AnomalyMetrics callback over ``batches`` (test-step outputs) with a one-process stand-in for
    the Trainer and the module, and returns what it wrote."""
    from types import SimpleNamespace

    trainer = SimpleNamespace(world_size=1, is_global_zero=True, global_rank=0)
    module = SimpleNamespace(trainer=trainer, hparams=SimpleNamespace(lam=0.1, steps=3), log=lambda *a, **k: None)
    callback.on_test_epoch_start(trainer, module)
    for k, out in enumerate(batches):
        callback.on_test_batch_end(trainer, module, out, None, k)
    callback.on_test_epoch_end(trainer, module)
    return json.loads(callback.path.read_text())


def _outputs(split: int, labels, scores: dict, seed: int, start: int) -> dict:
    n = len(labels)
    g = torch.Generator().manual_seed(seed)
    return {"split": torch.full((n,), split), "label": torch.as_tensor(labels), "index": torch.arange(start, start + n),
            "scores": scores, "recorded": {}, "residual_map": torch.rand(n, 12, 12, generator=g)}


def test_a_constant_score_is_named_degenerate_and_thresholds_are_conformal(tmp_path, caplog):
    """An encoder whose tanh saturated gives fanogan_latent 0 for every image: metrics.json marks the score
    degenerate with the reason and the log names it; the calibrated thresholds are conformal (19 normal
    validation images at target_fpr 0.05: the 19th smallest, their largest; flagged above it)."""
    from anogan.callbacks.metrics import AnomalyMetrics
    from anogan.data import SPLITS

    g = torch.Generator().manual_seed(1)
    labels = torch.tensor([0] * 10 + [1] * 10)
    test_scores = torch.rand(20, generator=g, dtype=torch.float64) + 0.5 * labels
    val_scores = torch.rand(19, generator=g, dtype=torch.float64)
    batches = [_outputs(SPLITS["test"], labels, {"anomaly": test_scores, "fanogan_latent": torch.zeros(20)}, 0, 0),
               _outputs(SPLITS["val"], [0] * 19, {"anomaly": val_scores, "fanogan_latent": torch.zeros(19)}, 1, 100)]
    with caplog.at_level("WARNING"):
        metrics = _epoch(AnomalyMetrics(tmp_path / "metrics.json"), batches)
    latent, anomaly = metrics["scores"]["fanogan_latent"], metrics["scores"]["anomaly"]
    assert latent["degenerate"] is True and "constant: every one of the 20 test images scores 0" in \
        latent["degenerate_reason"]
    assert "score fanogan_latent is degenerate" in caplog.text and "anomaly is degenerate" not in caplog.text
    assert anomaly["degenerate"] is False and "degenerate_reason" not in anomaly
    cal = anomaly["calibrated"]
    assert cal["threshold"] == float(val_scores.max()) and (cal["rank"], cal["n_calibration"]) == (19, 19)
    called = test_scores > cal["threshold"]
    assert cal["specificity"] == pytest.approx(1 - called[:10].double().mean().item())
    assert cal["sensitivity"] == pytest.approx(called[10:].double().mean().item())
    # the constant score's threshold is its value, and above it nothing is flagged (not everything)
    assert latent["calibrated"]["threshold"] == 0.0 and latent["calibrated"]["specificity"] == 1.0
    assert metrics["pixel_calibration"]["n_calibration"] == 19 * 12 * 12


def test_too_few_normal_validation_images_leave_the_threshold_null_with_the_count_needed(tmp_path, caplog):
    from anogan.callbacks.metrics import AnomalyMetrics
    from anogan.data import SPLITS

    labels = torch.tensor([0, 1] * 5)
    batches = [_outputs(SPLITS["test"], labels, {"anomaly": torch.arange(10.0)}, 0, 0),
               _outputs(SPLITS["val"], [0] * 12, {"anomaly": torch.arange(12.0)}, 1, 100)]
    with caplog.at_level("WARNING"):
        metrics = _epoch(AnomalyMetrics(tmp_path / "metrics.json"), batches)
    cal = metrics["scores"]["anomaly"]["calibrated"]
    assert cal["threshold"] is None and "12 normal validation images are too few" in cal["reason"]
    assert "at least 19" in cal["reason"] and "sensitivity" not in cal
    assert "no calibrated threshold for anomaly" in caplog.text and "no region threshold: 12 normal" in caplog.text
    assert metrics["region_calibration"]["threshold"] is None and metrics["pixel_calibration"]["threshold"] is not None


def test_scan_metrics_use_the_float_scores_and_count_the_scans_left_out(tmp_path):
    """Image scores that differ in the 7th digit (the CSV keeps 6): the scan AUROC ranks the floats; a
    scan without a scan score is left out of its AUROC with the count and reason; a constant score over the
    scans is degenerate."""
    import numpy as np

    from anogan.callbacks.maps import ScanMaps, ScanResult

    maps = ScanMaps(tmp_path / "maps", tmp_path / "p.csv", tmp_path / "m.json")
    maps.min_votes = 3

    def scan(k: int, image: float, scan_score: float | None, abnormal: bool) -> ScanResult:
        mask = np.zeros((8, 8), bool)
        mask[2, 2] = abnormal
        return ScanResult(f"s{k}", (8, 8), False, np.array([image]), np.zeros((1, 2), int), image, scan_score,
                          None if scan_score is None else (4, 4), mask=mask,
                          map=np.random.default_rng(k).random((8, 8)))

    measured = [scan(0, 1.0000001, 0.1, False), scan(1, 1.0000004, 0.9, True), scan(2, 1.0000002, None, False),
                scan(3, 1.0000003, 0.8, True)]
    out = maps._map_metrics(measured, {}, None)["scan"]
    assert out["image_score_auroc"] == 1.0 and out["image_score_n_left_out"] == 0  # strings "1": 0.5
    assert out["scan_score_auroc"] == 1.0 and out["scan_score_n_left_out"] == 1
    assert "no scan_score" in out["scan_score_left_out_reason"] and (out["n_abnormal"], out["n_normal"]) == (2, 2)
    assert not out["scan_score_degenerate"] and "at_flag" not in out
    flat = [scan(k, 2.0, 0.5, k % 2 == 1) for k in range(4)]
    out = maps._map_metrics(flat, {}, None)["scan"]
    assert out["image_score_degenerate"] and "constant: every one of the 4 scored scans" in \
        out["image_score_degenerate_reason"]
