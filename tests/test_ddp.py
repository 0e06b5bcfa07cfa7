"""trainer=ddp on CPU: two gloo processes train a few steps and evaluate like one process does."""

import json

import h5py
import numpy as np
from conftest import ROOT, TINY, compose_cfg, run_script

from anogan.callbacks import read_scores
from anogan.reliability import read_checkpoint
from anogan.pipeline import evaluate

EVAL = ["inversion.steps=3", "inversion.record_steps=[1]"]
# 31 test + 8 training + 10 normal validation images: an odd count, so the DistributedSampler repeats one
# image to give both processes the same share
DATA = ["data.eval_train_samples=8", "data.eval_batch_size=16", "data.num_workers=0", "data.batch_size=16"]


def _patches(path):
    """Blurred noise patches; anomalous ones carry a bright square, annotated in ``masks``."""
    rng = np.random.default_rng(0)
    n = 121
    images = rng.normal(100, 20, (n, 32, 32)).clip(0, 255)
    labels = np.zeros(n, dtype=np.int64)
    split = np.array([0] * 80 + [1] * 10 + [2] * 31)
    labels[[i for i in range(90, n) if i % 2]] = 1
    masks = np.zeros((n, 32, 32), dtype=bool)
    for i in np.flatnonzero(labels):
        y, x = rng.integers(4, 20, 2)
        masks[i, y:y + 8, x:x + 8] = True
    images[masks] = 250
    with h5py.File(path, "w") as f:
        f["images"], f["labels"], f["masks"], f["split"] = images.astype(np.uint8), labels, masks, split


def _sorted_rows(path):
    rows = read_scores(path)
    order = np.lexsort((rows["index"], rows["split"]))
    return {k: v[order] for k, v in rows.items() if not k.startswith("@")}


def test_ddp_training_and_evaluation_equal_one_process(tmp_path):
    ddp = tmp_path / "ddp"
    _patches(tmp_path / "patches.h5")
    tiny = [o for o in TINY if not o.startswith(("trainer.max_epochs", "inversion.steps", "data.eval_train"))]
    run_script(["train.py", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "logger=csv", *tiny,
                "data=hdf5", f"data.path={tmp_path / 'patches.h5'}", "data.image_size=32",
                "trainer.max_epochs=1", *EVAL, *DATA, f"hydra.run.dir={ddp}"], cwd=ROOT)
    ckpt = read_checkpoint(ddp / "checkpoints" / "last.ckpt")
    # 80 normal training images shared by 2 processes: 40 each, 2 batches of 16 (the last one dropped),
    # 2 optimiser steps per batch; one process alone would make 5 batches
    assert ckpt["global_step"] == 2 * 2
    assert (ddp / "train_ddp_process_1.log").exists()  # Lightning started the second process

    one = tmp_path / "one"
    evaluate(compose_cfg("evaluate", [f"ckpt_path={ddp / 'checkpoints' / 'last.ckpt'}", "logger=none",
                                      "trainer.enable_progress_bar=false", *EVAL,
                                      *(f"+{o}" for o in DATA)], one))
    a, b = json.loads((ddp / "metrics.json").read_text()), json.loads((one / "metrics.json").read_text())
    assert (a["n_normal"], a["n_anomalous"]) == (16, 15) and isinstance(a["pixel_auroc"], float)
    assert a == b  # every AUROC, the pixel-level one included, the operating points and the pixel metrics
    assert a["pixel_aupro"] is not None and a["scores"]["anomaly"]["calibrated"]["threshold"] is not None
    rows_ddp, rows_one = _sorted_rows(ddp / "scores.h5"), _sorted_rows(one / "scores.h5")
    assert len(rows_one["index"]) == 31 + 8 + 10
    assert rows_ddp.keys() == rows_one.keys()
    for key in rows_one:
        np.testing.assert_allclose(rows_ddp[key], rows_one[key], rtol=1e-6, atol=1e-6, err_msg=key)


def test_ddp_trains_wgangp_with_the_gradient_penalty(tmp_path):
    """The penalty's double backward through D under DDP (gloo, 2 processes): one epoch trains, and the
    step count is one process's share of the batches plus one G step per critic_iterations of them."""
    out = tmp_path / "wgangp"
    run_script(["train.py", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "model=wgangp_resnet",
                "model.generator.width=4", "model.discriminator.width=4", "model.critic_iterations=3",
                "trainer.max_epochs=1", "evaluate=false", "logger=none", "data.batch_size=16", "data.num_workers=0",
                "trainer.enable_progress_bar=false", f"hydra.run.dir={out}"], cwd=ROOT)
    ckpt = read_checkpoint(out / "checkpoints" / "last.ckpt")
    # ~125 normal training digits, half per process: 4 batches of 16, so 4 critic steps and 1 G step
    assert ckpt["global_step"] == 4 + 1 and ckpt["anogan_nets"]["family"] == "resnet"
    assert (out / "train_ddp_process_1.log").exists()
