"""trainer=ddp on CPU: two gloo processes train a few steps and evaluate like one process does."""

import json

import numpy as np
from conftest import ROOT, TINY, compose_cfg, run_script

from anogan.callbacks import read_scores
from anogan.pipeline import evaluate

# an odd test set: the DistributedSampler repeats one image to give both processes the same count
EVAL = ["inversion.steps=3", "inversion.record_steps=[1]"]
DATA = ["data.test_subset=61", "data.eval_train_samples=7", "data.eval_batch_size=16"]


def _sorted_rows(path):
    rows = read_scores(path)
    order = np.lexsort((rows["index"], rows["split"]))
    return {k: v[order] for k, v in rows.items() if not k.startswith("@")}


def test_ddp_training_and_evaluation_equal_one_process(tmp_path):
    ddp = tmp_path / "ddp"
    tiny = [o for o in TINY if not o.startswith(("trainer.max_epochs", "inversion.steps", "data.eval_train"))]
    run_script(["train.py", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "logger=csv", *tiny,
                "trainer.max_epochs=1", *EVAL, *DATA, f"hydra.run.dir={ddp}"], cwd=ROOT)
    steps = [line for line in (ddp / "csv" / "metrics.csv").read_text().splitlines()[1:] if line.split(",")[0]]
    assert steps, "the DDP run logged training steps"
    assert (ddp / "train_ddp_process_1.log").exists()  # Lightning started the second process

    one = tmp_path / "one"
    evaluate(compose_cfg("evaluate", [f"ckpt_path={ddp / 'checkpoints' / 'last.ckpt'}", "logger=none",
                                      "trainer.enable_progress_bar=false", *EVAL,
                                      *(f"+{o}" for o in DATA)], one))
    a, b = json.loads((ddp / "metrics.json").read_text()), json.loads((one / "metrics.json").read_text())
    assert a["n_normal"] + a["n_anomalous"] == 61
    assert a == b
    rows_ddp, rows_one = _sorted_rows(ddp / "scores.h5"), _sorted_rows(one / "scores.h5")
    assert len(rows_one["index"]) == 61 + 7
    assert rows_ddp.keys() == rows_one.keys()
    for key in rows_one:
        np.testing.assert_allclose(rows_ddp[key], rows_one[key], rtol=1e-6, atol=1e-6, err_msg=key)
