"""trainer=ddp on CPU: two gloo processes train a few steps and evaluate like one process does."""

import json
import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
import torch
from conftest import DDP_TRAIN, PROBE_ENV, ROOT, TINY, compose_cfg, run_script

from anogan.callbacks import read_scores
from anogan.data import DigitsDataModule
from anogan.errors import InputError
from anogan.runtime.checkpoints import read_checkpoint
from anogan.engine.pipeline import evaluate

EVAL = ["inversion.steps=3", "inversion.record_steps=[1]"]
# 31 test + 8 training + 20 normal validation images (a conformal 5 % threshold needs 19): an odd count,
# so the DistributedSampler repeats one image to give both processes the same share
DATA = ["data.eval_train_samples=8", "data.eval_batch_size=16", "data.num_workers=0", "data.batch_size=16"]


def _patches(path):
    """Blurred noise patches; anomalous ones carry a bright square, annotated in ``masks``."""
    rng = np.random.default_rng(0)
    n = 131
    images = rng.normal(100, 20, (n, 32, 32)).clip(0, 255)
    labels = np.zeros(n, dtype=np.int64)
    split = np.array([0] * 80 + [1] * 20 + [2] * 31)
    labels[[i for i in range(100, n) if i % 2]] = 1
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
    assert len(rows_one["index"]) == 31 + 8 + 20
    assert rows_ddp.keys() == rows_one.keys()
    for key in rows_one:
        # z: the batches of 2 processes are not those of 1 (oneDNN picks kernels per batch shape), and
        # Adam turns a rounding difference in a near-zero gradient into up to ~2e-5 of z after 3 steps
        # (1.8e-5 seen on one of 4,900 coordinates); the scores and metrics.json agree to 1e-6
        atol = 1e-4 if key.startswith("z") else 1e-6
        np.testing.assert_allclose(rows_ddp[key], rows_one[key], rtol=1e-6, atol=atol, err_msg=key)


def test_ddp_trains_wgangp_with_the_gradient_penalty(tmp_path):
    """The penalty's double backward through D under DDP (gloo, 2 processes): one epoch trains, and the
    step count is one process's share of the batches plus one G step per critic_iterations of them."""
    out = tmp_path / "wgangp"
    run_script(["train.py", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "model=wgangp_resnet",
                "model.generator.width=4", "model.discriminator.width=4", "model.critic_iterations=3",
                "trainer.max_epochs=1", "evaluate=false", "logger=none", "data.batch_size=16", "data.num_workers=0",
                "trainer.enable_progress_bar=false", "+callbacks.probe._target_=ddp_probe.Probe",
                f"hydra.run.dir={out}"], cwd=ROOT, env=PROBE_ENV)
    ckpt = read_checkpoint(out / "checkpoints" / "last.ckpt")
    # ~130 normal training digits, half per process: 4 batches of 16, so 4 critic steps and 1 G step
    assert ckpt["global_step"] == 4 + 1 and ckpt["anogan_nets"]["family"] == "resnet"
    assert (out / "train_ddp_process_1.log").exists()
    zero, one = _probe(out)
    assert len(zero["eps"]) == len(one["eps"]) == 4
    for a, b in zip(zero["eps"], one["eps"]):  # each process its own interpolation weights
        assert a.shape == b.shape == (16,) and not np.isin(a.numpy(), b.numpy()).any()


def _probe(run):
    return [torch.load(run / "probe" / f"rank{r}.pt") for r in (0, 1)]


def test_ddp_processes_draw_their_own_z_and_train_on_their_own_shard_at_every_step(ddp_run):
    """Each process draws its own z (seeded by seed, epoch and rank) at every step, and trains on its
    own shard of the images, reshuffled every epoch."""
    zero, one = _probe(ddp_run)
    # one z per batch (its D and G steps share it): 4 batches of 16 per process and epoch, 3 epochs
    assert len(zero["z"]) == len(one["z"]) == len(zero["index"]) == 3 * 4
    for k, (a, b) in enumerate(zip(zero["z"], one["z"])):
        assert a.shape == b.shape == (16, 100)
        # no z of one process equals any of the other's at this step
        assert torch.cdist(a, b).min() > 0.1, k
    n = 4 * 16  # images per process and epoch
    for epoch in range(3):
        shards = [torch.cat([i for i, e in zip(p["index"], p["epoch"]) if e == epoch]) for p in (zero, one)]
        assert len(shards[0]) == len(shards[1]) == n
        assert len(set(shards[0].tolist()) & set(shards[1].tolist())) <= 1  # the sampler's padding at most
    orders = [torch.cat([i for i, e in zip(zero["index"], zero["epoch"]) if e == epoch]) for epoch in range(3)]
    assert not torch.equal(orders[0], orders[1])  # a new shuffle each epoch


def test_killed_ddp_training_resumes_to_the_weights_of_an_uninterrupted_run(ddp_run, tmp_path):
    """SIGKILL to both processes in the second batch of epoch 1; started again with ckpt_path=auto it
    ends with the weights of the uninterrupted 2-process run."""
    run = tmp_path / "killed"
    args = ["train.py", *DDP_TRAIN, "evaluate=false", f"hydra.run.dir={run}"]
    env = {**os.environ, **PROBE_ENV, "ANOGAN_PROBE_KILL_AT": "1:1"}
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300, start_new_session=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert read_checkpoint(run / "checkpoints" / "last.ckpt")["epoch"] == 0
    run_script([*args, "ckpt_path=auto"], cwd=ROOT, env=PROBE_ENV)
    a = read_checkpoint(ddp_run / "checkpoints" / "last.ckpt")
    b = read_checkpoint(run / "checkpoints" / "last.ckpt")
    assert a["epoch"] == b["epoch"] == 2 and a["global_step"] == b["global_step"] == 2 * 3 * 4
    for k, v in a["state_dict"].items():
        assert torch.equal(v, b["state_dict"][k]), k


def _partial(scores, partial, n):
    """``partial``: the first ``n`` rows of ``scores`` (a scores.h5), as an evaluation killed after
    them leaves ``scores.h5.partial``."""
    import shutil

    shutil.copy(scores, partial)
    with h5py.File(partial, "a") as f:
        names = []
        f.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
        for name in names:
            f[name].resize(n, axis=0)
        f.attrs["rows"] = n


def test_a_ddp_evaluation_resumes_from_the_partial_file_of_one_process_and_back(tiny_ckpt, tmp_path):
    """A 2-process evaluation reuses the rows of a killed 1-process evaluation (a marked row stays as
    it was in the file: not mapped again) and ends with the uninterrupted run's metrics.json and
    scores; a 1-process evaluation resumes from rows written by the 2 processes."""
    args = [f"ckpt_path={tiny_ckpt}", "inversion.steps=3", "logger=none", "+data.eval_batch_size=8",
            "+data.eval_train_samples=0", "+data.eval_val_samples=0", "+data.test_subset=40",
            "trainer.enable_progress_bar=false"]  # no validation rows: the 40 test images alone
    full = tmp_path / "full"
    evaluate(compose_cfg("evaluate", args, full))
    run = tmp_path / "ddp"
    run.mkdir()
    _partial(full / "scores.h5", run / "scores.h5.partial", 32)  # 4 of the 5 batches of one process
    with h5py.File(run / "scores.h5.partial", "a") as f:
        marked = (int(f["split"][5]), int(f["index"][5]))
        f["mapping_loss"][5] = -1.0
    proc = run_script(["evaluate.py", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", *args,
                       f"hydra.run.dir={run}"], cwd=ROOT)
    assert "scores.h5.partial: 32 images already mapped" in proc.stdout + proc.stderr
    assert not (run / "scores.h5.partial").exists()
    assert json.loads((run / "metrics.json").read_text()) == json.loads((full / "metrics.json").read_text())
    a, b = _sorted_rows(full / "scores.h5"), _sorted_rows(run / "scores.h5")
    assert a.keys() == b.keys() and len(b["index"]) == 40
    row = int(np.flatnonzero((b["split"] == marked[0]) & (b["index"] == marked[1]))[0])
    np.testing.assert_array_equal(b["mapping_loss"][row], -1.0)  # taken from the file
    b["mapping_loss"][row] = a["mapping_loss"][row]
    for key in a:
        np.testing.assert_allclose(b[key], a[key], rtol=1e-6, atol=1e-6, err_msg=key)

    one = tmp_path / "one"
    one.mkdir()
    # its 32 reused rows and 4 of the 8 that the 2 processes mapped (positions 32, 34, 36, 38)
    _partial(run / "scores.h5", one / "scores.h5.partial", 36)
    evaluate(compose_cfg("evaluate", args, one))
    c = _sorted_rows(one / "scores.h5")
    np.testing.assert_array_equal(c["mapping_loss"][row], -1.0)  # reused again
    c["mapping_loss"][row] = a["mapping_loss"][row]
    for key in a:
        np.testing.assert_allclose(c[key], a[key], rtol=1e-6, atol=1e-6, err_msg=key)


def test_two_devices_without_trainer_ddp_train_a_share_smaller_than_a_batch(tmp_path):
    """``trainer.devices=2`` alone: Lightning picks plain ``ddp`` (made to find the unused net of the
    alternating steps); ~130 normal digits over 2 processes is one batch of ~65 each, not a batch of 80
    dropped on both (which trained zero batches)."""
    out = tmp_path / "run"
    run_script(["train.py", "trainer.accelerator=cpu", "trainer.devices=2", "data.batch_size=80",
                "model.generator.width=8", "model.discriminator.width=8", "trainer.max_epochs=1", "evaluate=false",
                "logger=none", "trainer.enable_progress_bar=false", "+callbacks.probe._target_=ddp_probe.Probe",
                f"hydra.run.dir={out}"], cwd=ROOT, env=PROBE_ENV)
    assert read_checkpoint(out / "checkpoints" / "last.ckpt")["global_step"] == 2  # one D and one G step
    zero, one = _probe(out)
    [a], [b] = zero["index"], one["index"]
    n = len(DigitsDataModule(normal_classes=[0]).build()[0])
    assert len(a) == len(b) == -(-n // 2) and len(set(a.tolist()) | set(b.tolist())) == n


class _Trainer:
    def __init__(self, world_size):
        self.world_size = world_size


def test_each_process_drops_its_last_incomplete_batch_and_a_share_below_two_images_is_refused():
    dm = DigitsDataModule(normal_classes=[0], batch_size=16)
    dm.setup("fit")
    n = len(dm.train_set)
    for world, batch, drop in ((1, 16, True), (2, 16, True), (2, -(-n // 2), False), (1, n, False)):
        dm.batch_size, dm.trainer = batch, _Trainer(world)
        loader = dm.train_dataloader()
        assert (loader.drop_last, loader.batch_size) == (drop, batch)
    dm.trainer = _Trainer(n)  # one image per process
    with pytest.raises(InputError, match=rf"{n} normal training image\(s\) over {n} process\(es\) is 1 image per "
                                         r"process \(data.batch_size=.*fewer processes \(trainer.devices\) or on "
                                         r"more normal classes \(data.normal_classes\)$"):
        dm.train_dataloader()


def test_too_few_images_per_process_names_the_setting_of_the_data_source_at_hand(tmp_path):
    """The fix in the message is one that works for the source: image folders have no normal_classes."""
    from trees import make_folders

    from anogan.data.folder import FolderDataModule

    dirs = {k: str(v) for k, v in make_folders(tmp_path, size=(16, 16), n_normal=6, mask_suffix=None).items()}
    dm = FolderDataModule(**dirs, image_size=16, channels=1, val_fraction=0.2, test_fraction=0.2)
    dm.setup("fit")
    dm.trainer = _Trainer(len(dm.train_set))
    with pytest.raises(InputError, match=r"fewer processes \(trainer.devices\) or on more normal images in "
                                         r"data.normal_dir$"):
        dm.train_dataloader()


def test_a_nan_loss_on_one_process_ends_the_run_promptly_with_its_error(tmp_path):
    """Process 1 alone meets a NaN loss (its batch is NaN): it raises, and the other process, waiting
    in the gradients' all-reduce, stops at once, not at the backend's 30-minute timeout."""
    out = tmp_path / "run"
    env = {**os.environ, **PROBE_ENV, "ANOGAN_PROBE_NAN_AT": "1:0:1"}
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "train.py", *DDP_TRAIN, "evaluate=false", f"hydra.run.dir={out}"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and time.monotonic() - t0 < 120
    # the failing process's own error, as the one line of bad input (anogan.errors), not only the
    # other process's "Connection closed by peer"
    assert "error: train/d_loss is nan at training step 1" in proc.stderr, proc.stderr[-3000:]
    assert not (out / "checkpoints" / "last.ckpt").exists()
