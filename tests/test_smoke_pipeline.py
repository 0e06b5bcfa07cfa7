import json

from anogan.callbacks import read_scores
from anogan.scores import SCORE_NAMES


def test_tiny_run_writes_checkpoint_metrics_scores_and_figures(tiny_run):
    assert (tiny_run / "checkpoints" / "last.ckpt").is_file()
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    assert set(SCORE_NAMES) <= set(metrics["scores"])
    rows = read_scores(tiny_run / "scores.h5")
    assert len(rows["index"]) == metrics["n_normal"] + metrics["n_anomalous"] + 16
    for name in ("roc_models", "roc_scores", "score_distributions", "anomaly_grid"):
        assert (tiny_run / "figures" / f"{name}.png").stat().st_size > 1000
