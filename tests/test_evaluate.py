import json

import lightning as L
import numpy as np
import pytest
from conftest import ROOT, compose_cfg, run_script
from sklearn.metrics import average_precision_score, roc_auc_score

from anogan.callbacks import read_scores
from anogan.data import SPLITS
from anogan.engine.pipeline import evaluate
from anogan.nets.scores import SCORE_NAMES
from anogan.errors import MissingInputError

FIGURES = ("roc_models", "roc_scores", "pr_models", "pr_scores", "score_distributions", "anomaly_grid")


def test_evaluate_script_end_to_end(tiny_ckpt, tmp_path):
    out = tmp_path / "eval"
    # data.<field>= without +: fields of the checkpoint's data config
    proc = run_script(["evaluate.py", f"ckpt_path={tiny_ckpt}", "inversion.steps=4", "inversion.lam=0.3",
                       "inversion.record_steps=[2]", "data.eval_train_samples=8", "data.eval_batch_size=64",
                       "trainer.enable_progress_bar=false", f"hydra.run.dir={out}"], cwd=ROOT, env={"COLUMNS": "80"})
    lines = proc.stdout.splitlines()
    assert "Test metric" not in proc.stdout  # one table: ours, not Lightning's too
    assert all(any(line.startswith(f" {name} ") for line in lines) for name in SCORE_NAMES)  # in full
    summary = lines[lines.index(f"Run directory: {out}"):]
    assert summary[1:3] == ["  metrics.json  the table above, as JSON",
                            "  scores.h5     per image: label, every score and its p-value, z, residual map"]
    assert "data.eval_train_samples=8" in " ".join(summary)  # evaluate again: the overrides as typed
    assert "litlogger" not in proc.stdout + proc.stderr and "litmodels" not in proc.stdout + proc.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["lam"] == 0.3 and metrics["steps"] == 4
    assert set(SCORE_NAMES) <= set(metrics["scores"])
    rows = read_scores(out / "scores.h5")
    test = rows["split"] == SPLITS["test"]
    val = rows["split"] == SPLITS["val"]  # the normal validation images the thresholds are calibrated on
    assert val.sum() > 5 and (rows["label"][val] == 0).all()
    y = rows["label"][test]
    for name, row in metrics["scores"].items():
        assert set(row) == {"auroc", "threshold", "precision", "recall", "sensitivity", "specificity", "auprc",
                            "f1_max", "f1_max_threshold", "threshold_chosen_on", "calibrated", "degenerate"}
        assert "test labels" in row["threshold_chosen_on"]
        # the AUROC and AUPRC of the raw scores of the file's test rows (scikit-learn, independent of torchmetrics)
        s = rows[f"scores/{name}"]
        assert row["auroc"] == pytest.approx(roc_auc_score(y, s[test]), abs=1e-6), name
        assert row["auprc"] == pytest.approx(average_precision_score(y, s[test]), abs=1e-6), name
        # the conformal threshold: the ceil((n + 1) * 0.95)-th smallest of the n validation scores (none for n < 19)
        cal, k = row["calibrated"], int(np.ceil((val.sum() + 1) * 0.95 - 1e-9))
        assert cal["target_fpr"] == 0.05 and cal["n_calibration"] == val.sum()
        if k > val.sum():
            assert cal["threshold"] is None and f"{val.sum()} normal validation images are too few" in cal["reason"]
            continue
        assert cal["threshold"] == pytest.approx(np.sort(s[val])[k - 1]) and cal["rank"] == k
        called = s[test] > cal["threshold"]
        assert cal["sensitivity"] == pytest.approx(called[y == 1].mean())
        assert cal["specificity"] == pytest.approx(1 - called[y == 0].mean())
        # the p-values of scores.h5 against the same scores: flagged exactly when p <= 0.05
        np.testing.assert_array_equal(rows[f"p_value/{name}"][test] <= 0.05, called)
    pixels = np.sort(rows["residual_map"][val].ravel())
    k = int(np.ceil((pixels.size + 1) * 0.99))
    assert metrics["pixel_calibration"]["threshold"] == pytest.approx(pixels[k - 1])
    assert metrics["scores"]["anomaly"]["auroc"] > 0.6  # the tiny GAN separates digits, even at 4 steps
    assert set(metrics["recorded"]["2"]) == set(SCORE_NAMES)
    n_test = metrics["n_normal"] + metrics["n_anomalous"]
    assert n_test == round(0.2 * 1797)  # digits' test split, from the checkpoint's data config
    split = rows["split"]
    assert int((split == SPLITS["test"]).sum()) == n_test and int((split == SPLITS["train"]).sum()) == 8
    assert len(np.unique(rows["index"][split == SPLITS["test"]])) == n_test
    n = n_test + 8 + int(val.sum())
    assert rows["z"].shape == (n, 100) and rows["residual_map"].shape == (n, 32, 32)
    test = split == SPLITS["test"]
    assert int(rows["label"][test].sum()) == metrics["n_anomalous"]
    for name in FIGURES:
        assert (out / "figures" / f"{name}.png").stat().st_size > 5000
    assert not (out / "scores.h5.partial").exists()


def test_evaluate_on_val_scores_the_validation_images_and_says_so(tiny_ckpt, tmp_path):
    """data.evaluate_on=val: metrics.json describes the labelled validation images (evaluated_on: val), and
    no threshold is calibrated, with its reason (they would be calibrated on the images scored)."""
    out = tmp_path / "eval_val"
    cfg = compose_cfg("evaluate", [f"ckpt_path={tiny_ckpt}", "inversion.steps=1", "++data.evaluate_on=val",
                                   "++data.eval_train_samples=0", "trainer.enable_progress_bar=false"], out)
    evaluate(cfg)
    metrics = json.loads((out / "metrics.json").read_text())
    rows = read_scores(out / "scores.h5")
    assert metrics["evaluated_on"] == "val" and not (rows["split"] == SPLITS["val"]).any()
    from anogan.data import DigitsDataModule

    ref = DigitsDataModule(normal_classes=[0], image_size=32, seed=0)
    ref.setup()
    assert sorted(rows["index"].tolist()) == sorted(ref.val_set.rows.tolist())
    assert (metrics["n_normal"], metrics["n_anomalous"]) == (int((ref.val_set.labels == 0).sum()),
                                                            int(ref.val_set.labels.sum()))
    cal = metrics["scores"]["anomaly"]["calibrated"]
    assert cal["threshold"] is None and cal["n_calibration"] == 0 and cal["reason"]


class _Crash(L.Callback):
    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if batch_idx == 1:
            raise RuntimeError("killed")


def _eval_cfg(tiny_ckpt, out):
    cfg = compose_cfg("evaluate", [f"ckpt_path={tiny_ckpt}", "inversion.steps=3", "logger=none",
                                   "+data.eval_batch_size=64", "+data.eval_train_samples=0",
                                   "trainer.enable_progress_bar=false"], out)
    return cfg


def test_a_killed_evaluation_resumes_with_identical_results(tiny_ckpt, tmp_path, monkeypatch):
    clean = tmp_path / "clean"
    evaluate(_eval_cfg(tiny_ckpt, clean))
    resumed = tmp_path / "resumed"
    cfg = _eval_cfg(tiny_ckpt, resumed)
    from anogan.engine import pipeline

    real = pipeline.instantiate_list
    def with_crash(c):  # the evaluation's callbacks get one that dies after two batches
        return real(c) + ([_Crash()] if c is cfg.evaluation_callbacks else [])

    monkeypatch.setattr(pipeline, "instantiate_list", with_crash)
    with pytest.raises(RuntimeError, match="killed"):
        evaluate(cfg)
    partial = read_scores(resumed / "scores.h5.partial")
    assert len(partial["index"]) == 128  # two batches of 64 kept
    assert not (resumed / "scores.h5").exists() and not (resumed / "metrics.json").exists()
    monkeypatch.setattr(pipeline, "instantiate_list", real)
    mapped = []
    from anogan.models.inversion import Inversion

    original = Inversion.map_batch
    monkeypatch.setattr(Inversion, "map_batch", lambda self, x, i: mapped.append(len(x)) or original(self, x, i))
    evaluate(_eval_cfg(tiny_ckpt, resumed))
    a, b = read_scores(clean / "scores.h5"), read_scores(resumed / "scores.h5")
    assert sum(mapped) == len(a["index"]) - 128  # the first two batches came from the partial file
    np.testing.assert_array_equal(a["index"], b["index"])
    for name in SCORE_NAMES:
        np.testing.assert_allclose(a[f"scores/{name}"], b[f"scores/{name}"], rtol=1e-6)
    assert json.loads((clean / "metrics.json").read_text()) == json.loads((resumed / "metrics.json").read_text())


def test_evaluate_uses_the_checkpoint_data_config_with_overrides(tiny_ckpt, tmp_path):
    cfg = compose_cfg("evaluate", [f"ckpt_path={tiny_ckpt}", "inversion.steps=2", "logger=none",
                                   "+data.test_subset=50", "+data.eval_train_samples=0",
                                   "trainer.enable_progress_bar=false"], tmp_path)
    result = evaluate(cfg)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["n_normal"] + metrics["n_anomalous"] == 50
    assert result["test/auroc/anomaly"] == pytest.approx(metrics["scores"]["anomaly"]["auroc"])


def test_missing_checkpoint_is_named(tmp_path):
    cfg = compose_cfg("evaluate", [f"ckpt_path={tmp_path}/nope.ckpt"], tmp_path)
    with pytest.raises(MissingInputError, match="nope.ckpt does not exist"):
        evaluate(cfg)


@pytest.mark.slow
def test_default_main_job_detects_anomalous_digits(tmp_path):
    """`python train.py` exactly as the README runs it (only the run directory moved)."""
    out = tmp_path / "main"
    run_script(["train.py", f"hydra.run.dir={out}", "trainer.enable_progress_bar=false"], cwd=ROOT, timeout=900)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["scores"]["anomaly"]["auroc"] > 0.9
    assert metrics["scores"]["residual"]["auroc"] > 0.9
    assert (out / "checkpoints" / "last.ckpt").is_file() and (out / "samples" / "last.png").is_file()
    for name in FIGURES:
        assert (out / "figures" / f"{name}.png").is_file()
