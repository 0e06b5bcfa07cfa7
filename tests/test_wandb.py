"""logger=wandb offline: one run per multirun job, grouped by sweep, with losses, images and tables."""

import json

from conftest import ROOT, TINY, run_script


def test_each_multirun_job_is_its_own_offline_wandb_run(tmp_path):
    sweep = tmp_path / "sweep"
    home = tmp_path / "home"
    tiny = [o for o in TINY if not o.startswith(("trainer.max_epochs", "inversion.steps", "data.eval_train"))]
    run_script(["train.py", "-m", "logger=wandb", "seed=0,1", *tiny, "trainer.max_epochs=1", "inversion.steps=2",
                "data.eval_train_samples=8", "data.test_subset=60", f"hydra.sweep.dir={sweep}"], cwd=ROOT,
               env={"WANDB_MODE": "offline", "HOME": str(home), "WANDB_DIR": str(home)})
    for job in ("0", "1"):
        runs = list((sweep / job / "wandb").glob("offline-run-*"))
        assert len(runs) == 1, f"job {job}: one wandb run each, found {runs}"
        run = runs[0]
        record = next(run.glob("run-*.wandb")).read_bytes()
        assert f"train/{sweep.name}".encode() in record  # the group: <task>/<sweep dir>
        assert f"train-{job}".encode() in record
        for key in (b"train/d_loss", b"train/g_loss", b"test/hist/residual/test-normal",
                    b"test/hist/discrimination/test-anomalous", b"test/roc_table"):
            assert key in record, key
        media = run / "files" / "media"
        for image in ("train/samples", "test/anomaly_grid", "test/roc_models", "test/roc_scores",
                      "test/score_distributions"):
            pngs = list((media / "images").glob(f"{image}_*.png"))
            assert len(pngs) == 1 and pngs[0].read_bytes()[:4] == b"\x89PNG", image
        table = json.loads(next((media / "table" / "test").glob("table_*.table.json")).read_text())
        metrics = json.loads((sweep / job / "metrics.json").read_text())
        by_score = {row[0]: dict(zip(table["columns"], row)) for row in table["data"]}
        assert set(by_score) == set(metrics["scores"])
        for name, row in metrics["scores"].items():
            assert by_score[name]["auroc"] == row["auroc"]
            assert by_score[name]["specificity"] == row["specificity"]
        roc = json.loads(next((media / "table" / "test").glob("roc_table_*.table.json")).read_text())
        assert roc["columns"] == ["score", "fpr", "tpr"] and {r[0] for r in roc["data"]} >= {"AnoGAN", "P_D"}
    assert not (home / ".netrc").exists()
