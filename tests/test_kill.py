"""The real scripts killed in a subprocess (SIGKILL: no chance to clean up; SIGTERM: what SLURM sends at
its time limit), at a moment the test controls (a file appearing), then started again."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import torch
from conftest import ROOT, TINY, compose_cfg, run_script

from anogan.callbacks import read_scores
from anogan.engine.pipeline import evaluate, train
from anogan.runtime.checkpoints import read_checkpoint
from anogan.runtime.preemption import SIGTERM_EXIT

TRAIN = [*TINY, "evaluate=false", "logger=none"]
EVAL = ["inversion.steps=10", "logger=none", "+data.eval_batch_size=32", "+data.eval_train_samples=0",
        "trainer.enable_progress_bar=false"]


def _start(args, out):
    """Start ``python <args> hydra.run.dir=out``; its output goes to files beside ``out``."""
    log = open(f"{out}.log", "w")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, *args, f"hydra.run.dir={out}"], cwd=ROOT, env=env,
                            stdout=log, stderr=subprocess.STDOUT)


def _when_exists(proc, path, timeout=120):
    """Wait until ``path`` exists while ``proc`` still runs (the moment to kill it)."""
    t0 = time.monotonic()
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"the process ended ({proc.returncode}) before {path} appeared")
        if time.monotonic() - t0 > timeout:
            proc.kill()
            raise AssertionError(f"{path} did not appear within {timeout} s")
        time.sleep(0.01)


def _stop(proc, sig, timeout=60):
    """Send ``sig``; return (exit status, seconds until the process ended)."""
    t0 = time.monotonic()
    proc.send_signal(sig)
    try:
        rc = proc.wait(timeout)
    finally:
        proc.kill()
    return rc, time.monotonic() - t0


def test_training_killed_with_sigkill_resumes_to_the_weights_of_an_uninterrupted_run(tmp_path):
    args = ["train.py", *TRAIN, "trainer.max_epochs=4"]
    full = tmp_path / "full"
    train(compose_cfg("train", args[1:], full))
    run = tmp_path / "killed"
    last = run / "checkpoints" / "last.ckpt"
    proc = _start([*args, "ckpt_path=auto"], run)
    _when_exists(proc, last)
    rc, _ = _stop(proc, signal.SIGKILL)
    assert rc == -signal.SIGKILL
    assert read_checkpoint(last)["epoch"] < 3  # killed before the end, with a complete last.ckpt
    run_script([*args, "ckpt_path=auto", f"hydra.run.dir={run}"], cwd=ROOT)  # the same command again
    a, b = (read_checkpoint(d / "checkpoints" / "last.ckpt") for d in (full, run))
    assert a["epoch"] == b["epoch"] == 3 and a["global_step"] == b["global_step"]
    for k, v in a["state_dict"].items():
        assert torch.equal(v, b["state_dict"][k]), k


def test_sigterm_stops_training_within_seconds_keeping_last_ckpt_and_skipping_evaluation(tmp_path):
    run = tmp_path / "run"
    last = run / "checkpoints" / "last.ckpt"
    proc = _start(["train.py", *TINY, "logger=none", "trainer.max_epochs=500"], run)
    _when_exists(proc, last)
    rc, seconds = _stop(proc, signal.SIGTERM)
    out = open(f"{run}.log").read()
    assert rc == SIGTERM_EXIT, out[-3000:]
    assert seconds < 10
    assert "training stopped by SIGTERM" in out and f"ckpt_path=auto hydra.run.dir={run}" in out
    assert 0 <= read_checkpoint(last)["epoch"] < 499
    assert not (run / "metrics.json").exists() and not any(run.glob("scores.h5*"))  # no evaluation


def test_evaluation_killed_with_sigkill_resumes_to_the_outputs_of_an_uninterrupted_run(tiny_ckpt, tmp_path):
    args = ["evaluate.py", f"ckpt_path={tiny_ckpt}", *EVAL]
    full = tmp_path / "full"
    evaluate(compose_cfg("evaluate", args[1:], full))
    run = tmp_path / "killed"
    proc = _start(args, run)
    _when_exists(proc, run / "scores.h5.partial")
    rc, _ = _stop(proc, signal.SIGKILL)
    assert rc == -signal.SIGKILL
    assert not (run / "scores.h5").exists() and not (run / "metrics.json").exists()
    run_script([*args, f"hydra.run.dir={run}"], cwd=ROOT)
    a, b = read_scores(full / "scores.h5"), read_scores(run / "scores.h5")
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert json.loads((full / "metrics.json").read_text()) == json.loads((run / "metrics.json").read_text())
    assert not (run / "scores.h5.partial").exists()


def test_sigterm_stops_evaluation_within_seconds_keeping_the_mapped_batches(tiny_ckpt, tmp_path):
    run = tmp_path / "run"
    proc = _start(["evaluate.py", f"ckpt_path={tiny_ckpt}", *EVAL], run)
    _when_exists(proc, run / "scores.h5.partial")
    rc, seconds = _stop(proc, signal.SIGTERM)
    out = open(f"{run}.log").read()
    assert rc == SIGTERM_EXIT, out[-3000:]
    assert seconds < 10
    assert "evaluation stopped by SIGTERM" in out
    kept = read_scores(run / "scores.h5.partial")  # closed cleanly: readable, whole batches only
    assert kept["@rows"] > 0 and kept["@rows"] % 32 == 0
    assert all(len(v) == kept["@rows"] for k, v in kept.items() if not k.startswith("@"))
    assert not (run / "scores.h5").exists() and not (run / "metrics.json").exists()
