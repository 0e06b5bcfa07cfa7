"""Several starts per image (``inversion.restarts``): batched as extra rows, the lowest final loss kept,
and the failed first starts counted in scores.h5, metrics.json, predictions.csv and map_metrics.json."""

import csv
import json

import numpy as np
import pytest
import torch

import anogan.models.inversion as inversion_module
from anogan.callbacks.score_file import read_scores
from anogan.engine.pipeline import evaluate
from anogan.errors import InputError
from anogan.metrics.restarts import FAILURE_TOL, failure_summary, first_start_failed
from anogan.nets.prior import initial_z
from conftest import compose_cfg
from test_inversion import make_inversion
from test_predict import _save


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(1)
    return torch.rand(5, 1, 32, 32, generator=g) * 2 - 1, torch.tensor([4, 17, 0, 9, 123])


def test_start_0_is_the_single_start_whatever_the_number_of_starts():
    index = torch.tensor([5, 9, 2])
    one, three = initial_z("uniform", 3, index, 16), initial_z("uniform", 3, index, 16, restarts=3)
    assert three.shape == (9, 16)
    assert torch.equal(three[:3], one)  # start-major: rows [0, B) are start 0
    assert not torch.equal(three[3:6], one) and not torch.equal(three[6:], three[3:6])
    # an image's starts do not depend on the other images of the batch
    assert torch.equal(initial_z("uniform", 3, index[1:], 16, restarts=3)[2:4], three[4:6])


def test_the_kept_start_is_the_lowest_and_start_0_is_the_one_start_mapping(batch):
    x, index = batch
    one = make_inversion().map_batch(x, index)
    three = make_inversion(restarts=3).map_batch(x, index)
    losses, kept = three["restart_losses"], three["restart"]
    assert losses.shape == (5, 3) and kept.shape == (5,)
    # start 0 of the batched run is the single-start mapping (same rows of z; the batch is larger)
    torch.testing.assert_close(losses[:, 0], one["mapping_loss"][:, 1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(three["mapping_loss"][:, 1], losses.min(1).values)
    assert torch.equal(kept, losses.argmin(1))
    # the kept start's outputs travel together: its anomaly score is its final loss
    torch.testing.assert_close(three["scores"]["anomaly"], losses.min(1).values, atol=1e-5, rtol=1e-5)
    assert (three["scores"]["anomaly"] <= one["scores"]["anomaly"] + 1e-5).all()
    assert (three["scores"]["reference_anomaly"] <= one["scores"]["reference_anomaly"] + 1e-5).all()
    # one-pass scores do not depend on the start
    torch.testing.assert_close(three["scores"]["discriminator"], one["scores"]["discriminator"])
    assert three["z"].shape == one["z"].shape and three["residual_map"].shape == one["residual_map"].shape
    assert "restart_losses" not in one


def test_a_mapping_from_an_injected_bad_start_is_recovered_by_a_second_start(monkeypatch):
    """x = G(z*) is drawn exactly by z*; start 0 is injected at -z* (the far corner of the uniform prior's
    box) and start 1 near z*. From -z* the mapping ends far above the loss z* reaches: the single-start
    mapping fails, and with 2 starts the second one is kept and the failure counted."""
    inv = make_inversion(steps=30, lam=0.0, lr=0.01, reference=False)
    g = torch.Generator().manual_seed(5)
    z_star = (torch.rand(1, 16, generator=g) * 1.6 - 0.8)
    with torch.no_grad():
        x = inv.generator(z_star)
    starts = torch.cat([-z_star.sign(), z_star + 0.02])  # start-major rows: start 0, start 1

    monkeypatch.setattr(inversion_module, "initial_z", lambda prior, seed, index, z_dim, restarts=1: starts[:restarts])
    single = inv.map_batch(x, torch.tensor([0]))
    inv2 = make_inversion(steps=30, lam=0.0, lr=0.01, reference=False, restarts=2)
    both = inv2.map_batch(x, torch.tensor([0]))

    bad, good = both["restart_losses"][0].tolist()
    assert bad == pytest.approx(single["mapping_loss"][0, 1].item(), rel=1e-4)
    assert good < 0.2 * bad  # the bad start ended in a poor place
    assert both["restart"].item() == 1 and both["scores"]["residual"].item() == pytest.approx(good, rel=1e-4)
    assert (both["z"] - z_star).abs().max() < (single["z"] - z_star).abs().max()
    assert first_start_failed(both["restart_losses"].numpy()).tolist() == [True]
    summary = failure_summary(both["restart_losses"].numpy(), {"all": np.array([True])})
    assert summary["groups"]["all"] == {"n": 1, "first_start_failed": 1, "fraction": 1.0,
                                        "median_spread": pytest.approx((bad - good) / good, rel=1e-5)}


def test_failure_counts_follow_the_tolerance_and_are_null_with_one_start():
    losses = np.array([[1.0, 1.0], [1.2, 1.0], [1.05, 1.0], [0.5, 2.0]])
    assert first_start_failed(losses).tolist() == [False, True, False, False]
    assert first_start_failed(losses, tol=0.01).tolist() == [False, True, True, False]
    out = failure_summary(losses, {"a": np.array([1, 1, 0, 0], bool), "empty": np.zeros(4, bool)})
    assert out["restarts"] == 2 and out["tol"] == FAILURE_TOL
    assert out["groups"]["a"]["first_start_failed"] == 1 and out["groups"]["a"]["fraction"] == 0.5
    assert out["groups"]["empty"]["fraction"] is None and "no image" in out["groups"]["empty"]["reason"]
    single = failure_summary(None, {"a": np.ones(4, bool)})
    assert single["groups"] is None and "inversion.restarts" in single["reason"]


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_a_bad_number_of_starts_is_refused_with_the_key(bad):
    with pytest.raises(InputError, match="inversion.restarts"):
        make_inversion(restarts=bad)


def test_evaluate_with_two_starts_stores_them_and_counts_the_failures(tiny_ckpt, tmp_path, caplog):
    out = tmp_path / "run"
    cfg = compose_cfg("evaluate", [f"ckpt_path={tiny_ckpt}", "inversion.steps=3", "inversion.restarts=2",
                                   "logger=none", "+data.eval_train_samples=0", "trainer.enable_progress_bar=false"],
                      out)
    with caplog.at_level("INFO"):
        evaluate(cfg)
    rows = read_scores(out / "scores.h5")
    losses = rows["restart_losses"]
    assert losses.shape == (len(rows["index"]), 2)
    np.testing.assert_allclose(rows["scores/anomaly"], losses.min(1), rtol=1e-5)
    failed = first_start_failed(losses)
    metrics = json.loads((out / "metrics.json").read_text())
    block = metrics["mapping_failures"]
    test, val = rows["split"] == 2, rows["split"] == 1
    for name, sel in (("test_normal", test & (rows["label"] == 0)), ("test_anomalous", test & (rows["label"] == 1)),
                      ("normal_validation", val & (rows["label"] == 0))):
        assert block["groups"][name]["n"] == int(sel.sum()) > 0, name
        assert block["groups"][name]["first_start_failed"] == int(failed[sel].sum()), name
    assert block["restarts"] == 2 and "mapping failures (the first of 2 starts" in caplog.text


def test_scans_count_the_failed_first_starts_of_their_patches(tiny_run, tmp_path, monkeypatch):
    import anogan.metrics.restarts as restarts

    monkeypatch.setattr(restarts, "FAILURE_TOL", 1e-6)  # this tiny G barely depends on z: count tiny gaps
    rng = np.random.default_rng(3)
    for k in range(4):
        _save(tmp_path / "scans" / f"{k}.png", rng.integers(0, 255, (40, 70), dtype=np.uint8))
        _save(tmp_path / "masks" / f"{k}.png", ((rng.random((40, 70)) < 0.02) * (k % 2)).astype(np.uint8) * 255)
    for k in range(2):
        _save(tmp_path / "normal" / f"{k}.png", rng.integers(0, 255, (40, 48), dtype=np.uint8))
    out = tmp_path / "run"
    evaluate(compose_cfg("evaluate", [
        f"ckpt_path={tiny_run / 'checkpoints' / 'last.ckpt'}", "data=scans", f"data.path={tmp_path}/scans",
        f"data.masks={tmp_path}/masks", f"data.normal_path={tmp_path}/normal", "inversion.steps=3",
        "inversion.restarts=2", "inversion.lr=0.5", "logger=none", "trainer.enable_progress_bar=false"], out))
    losses = read_scores(out / "scores.h5")["restart_losses"]
    failed = first_start_failed(losses)
    assert failed.sum() == (losses[:, 0] > (1 + 1e-6) * losses.min(1)).sum()
    assert failed.any() and not failed.all()
    test = [int(r["failed_first_starts"]) for r in csv.DictReader(open(out / "predictions.csv"))]
    normal = [int(r["failed_first_starts"]) for r in csv.DictReader(open(out / "normal_scans.csv"))]
    assert len(test) == 4 and len(normal) == 2 and sum(test) + sum(normal) == int(failed.sum())
    groups = json.loads((out / "map_metrics.json").read_text())["mapping_failures"]["groups"]
    assert groups["patches_of_normal_scans"]["first_start_failed"] == sum(normal)
    assert groups["patches_of_scans_with_lesion"]["first_start_failed"] == test[1] + test[3]
    assert groups["patches_of_scans_without_lesion"]["first_start_failed"] == test[0] + test[2]
    assert sum(g["n"] for g in groups.values()) == len(failed)
