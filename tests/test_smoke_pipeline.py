import json

from anogan.callbacks import read_scores
from anogan.data import SPLITS
from anogan.nets.scores import SCORE_NAMES


def test_tiny_run_writes_checkpoint_metrics_scores_and_figures(tiny_run):
    assert (tiny_run / "checkpoints" / "last.ckpt").is_file()
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    assert set(SCORE_NAMES) <= set(metrics["scores"])
    rows = read_scores(tiny_run / "scores.h5")
    split = {name: rows["split"] == code for name, code in SPLITS.items()}
    assert split["test"].sum() == metrics["n_normal"] + metrics["n_anomalous"]
    assert split["train"].sum() == 16  # the training sample of Fig. 3c, d
    # the normal validation images that calibrate the label-free thresholds, all of them (fewer than 256)
    n_val = int(split["val"].sum())
    assert n_val > 0 and (rows["label"][split["val"]] == 0).all()
    assert metrics["scores"]["anomaly"]["calibrated"]["calibrated_on"].startswith(f"{n_val} ")
    assert len(rows["index"]) == metrics["n_normal"] + metrics["n_anomalous"] + 16 + n_val
    for name in ("roc_models", "roc_scores", "score_distributions", "anomaly_grid"):
        assert (tiny_run / "figures" / f"{name}.png").stat().st_size > 1000
