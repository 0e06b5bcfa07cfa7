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
