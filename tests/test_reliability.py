"""Resume, determinism and refusing bad input, in-process (the kill and SIGTERM tests are in test_kill.py)."""

import json
import os
import shutil
import tempfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from conftest import TINY, compose_cfg

from anogan.callbacks import read_scores
from anogan.runtime.io import write_json_atomic
from anogan.models.inversion import Inversion, load_gan
from anogan.runtime.io import atomic_path
from anogan.nets import Discriminator, Generator
from anogan.engine.pipeline import evaluate, train
from anogan.runtime.checkpoints import AtomicCheckpointIO, CheckpointError, read_checkpoint, resolve_ckpt_path
from anogan.runtime.checks import NonFiniteScoreError
from anogan.nets.scores import SCORE_NAMES
from anogan.errors import InputError, MissingInputError

TRAIN = [*TINY, "evaluate=false", "logger=none"]
EVAL = ["inversion.steps=3", "logger=none", "+data.eval_train_samples=0", "trainer.enable_progress_bar=false"]


def _weights(run_dir):
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]


def _assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _eval(tiny_ckpt, out, *extra):
    cfg = compose_cfg("evaluate", [f"ckpt_path={tiny_ckpt}", *EVAL, *extra], out)
    return evaluate(cfg)


def _assert_same_outputs(a, b):
    """scores.h5 and metrics.json of two evaluation run directories are equal, bit for bit."""
    x, y = read_scores(a / "scores.h5"), read_scores(b / "scores.h5")
    assert x.keys() == y.keys()
    for k in x:
        np.testing.assert_array_equal(x[k], y[k], err_msg=k)
    assert json.loads((a / "metrics.json").read_text()) == json.loads((b / "metrics.json").read_text())


@pytest.fixture(scope="module")
def clean_eval(tiny_ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("clean_eval")
    _eval(tiny_ckpt, out, "+data.eval_batch_size=64")
    return out


# -- 1. training resume ----------------------------------------------------------------------------
def test_training_resumed_from_its_last_ckpt_ends_with_the_uninterrupted_weights(tmp_path, monkeypatch):
    def no_system_temp(*args, **kwargs):
        raise AssertionError("a checkpoint went through the system temp dir: not atomic across file systems")

    monkeypatch.setattr(tempfile, "mkstemp", no_system_temp)  # Lightning's own writer uses it
    full, part, resumed = tmp_path / "full", tmp_path / "part", tmp_path / "resumed"
    train(compose_cfg("train", [*TRAIN, "trainer.max_epochs=3"], full))
    train(compose_cfg("train", [*TRAIN, "trainer.max_epochs=2"], part))
    ckpt = part / "checkpoints" / "last.ckpt"
    train(compose_cfg("train", [*TRAIN, "trainer.max_epochs=3", f"ckpt_path={ckpt}"], resumed))
    _assert_same_weights(_weights(full), _weights(resumed))
    # ckpt_path=auto in the run directory that holds last.ckpt continues it the same way
    train(compose_cfg("train", [*TRAIN, "trainer.max_epochs=3", "ckpt_path=auto"], part))
    _assert_same_weights(_weights(full), _weights(part))


def test_a_checkpoint_write_that_fails_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoints" / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"w": torch.ones(3)}, path)

    def killed(obj, f):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", killed)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"w": torch.zeros(3)}, path)
    assert torch.equal(read_checkpoint(path)["w"], torch.ones(3))
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]


def test_ckpt_path_auto_resolves_to_the_run_dirs_last_ckpt_or_a_fresh_start(tmp_path):
    assert resolve_ckpt_path("auto", tmp_path) is None
    assert resolve_ckpt_path(None, tmp_path) is None
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"x")
    assert resolve_ckpt_path("auto", tmp_path) == tmp_path / "checkpoints" / "last.ckpt"
    assert str(resolve_ckpt_path("other.ckpt", tmp_path)) == "other.ckpt"


# -- 2. evaluation resume --------------------------------------------------------------------------
def test_an_evaluation_with_a_torn_last_batch_recomputes_it_and_equals_an_uninterrupted_one(
        tiny_ckpt, clean_eval, tmp_path, monkeypatch):
    out = tmp_path / "torn"
    _eval(tiny_ckpt, out, "+data.eval_batch_size=64")
    # rebuild the state of a run killed while writing its third batch: two committed batches, and a
    # third whose rows were half written (garbage, some datasets longer than others)
    (out / "scores.h5").rename(out / "scores.h5.partial")
    (out / "metrics.json").unlink()
    with h5py.File(out / "scores.h5.partial", "a") as f:
        f.attrs["rows"] = 128
        for name in ("index", "scores/anomaly", "z"):
            f[name].resize(160, axis=0)
            f[name][128:160] = -7
        for name in ("label", "split"):
            f[name].resize(128, axis=0)
    mapped = []
    original = Inversion.map_batch
    monkeypatch.setattr(Inversion, "map_batch", lambda self, x, i: mapped.append(len(x)) or original(self, x, i))
    _eval(tiny_ckpt, out, "+data.eval_batch_size=64")
    n = len(read_scores(clean_eval / "scores.h5")["index"])
    assert sum(mapped) == n - 128  # the two committed batches were reused, the torn one mapped again
    _assert_same_outputs(clean_eval, out)


def test_atomic_writes_leave_the_previous_file_when_writing_fails(tmp_path):
    path = write_json_atomic({"a": 1}, tmp_path / "metrics.json")
    with pytest.raises(TypeError):
        write_json_atomic({"a": object()}, path)  # fails halfway through json.dump
    assert json.loads(path.read_text()) == {"a": 1}
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "figures" / "roc.png") as tmp:
        tmp.write_bytes(b"half a png")
        raise RuntimeError("killed")
    assert list((tmp_path / "figures").iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["figures", "metrics.json"]  # no temp files left


# -- 4. bad input ----------------------------------------------------------------------------------
def test_evaluate_without_ckpt_path_says_how_to_pass_it(tmp_path):
    cfg = compose_cfg("evaluate", [], tmp_path)
    with pytest.raises(InputError, match=r"ckpt_path is missing: python evaluate.py ckpt_path=<run dir>/check"):
        evaluate(cfg)


def test_a_run_directory_as_ckpt_path_names_the_file_to_pass(tiny_run, tmp_path):
    with pytest.raises(CheckpointError, match=r"is a directory; pass the file, e.g. ckpt_path=.*last.ckpt"):
        _eval(tiny_run, tmp_path)
    with pytest.raises(MissingInputError, match=r"nope.ckpt does not exist; pass ckpt_path="):
        train(compose_cfg("train", [*TRAIN, f"ckpt_path={tmp_path}/nope.ckpt"], tmp_path / "t"))
    assert not (tmp_path / "t" / "checkpoints").exists() and not (tmp_path / "metrics.json").exists()


@pytest.mark.parametrize(("override", "named"), [
    ("model.generator.width=16", "generator.width: checkpoint 8, configured 16"),
    ("data.image_size=28", "generator.image_size: checkpoint 32, configured 28"),
])
def test_resuming_from_a_checkpoint_of_other_nets_names_the_mismatch(tiny_ckpt, tmp_path, override, named):
    cfg = compose_cfg("train", [*TRAIN, override, f"ckpt_path={tiny_ckpt}"], tmp_path)
    with pytest.raises(CheckpointError, match=f"holds another architecture.*{named}.*start a new run"):
        train(cfg)
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize(("content", "named", "fix"), [
    # a text file made torch's unpickler fail with a bare ``KeyError: 101``
    (lambda ckpt: b"hello, not a checkpoint\n", "is not a PyTorch checkpoint", "pass ckpt_path="),
    (lambda ckpt: ckpt.read_bytes()[: ckpt.stat().st_size // 2], "is truncated or corrupt", "copy it again"),
], ids=["text file", "truncated"])
def test_a_bad_checkpoint_file_is_named_in_evaluation_and_training(tiny_ckpt, tmp_path, content, named, fix):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(content(tiny_ckpt))
    with pytest.raises(CheckpointError, match=f"bad.ckpt {named} .*{fix}"):
        _eval(bad, tmp_path / "eval")
    with pytest.raises(CheckpointError, match=f"bad.ckpt {named}"):
        train(compose_cfg("train", [*TRAIN, f"ckpt_path={bad}"], tmp_path / "train"))
    for out in (tmp_path / "eval", tmp_path / "train"):
        assert not any(out.glob("scores.h5*")) and not (out / "metrics.json").exists()
        assert not (out / "checkpoints").exists()


@pytest.mark.parametrize(("override", "named"), [
    ("+data.image_size=28", "data.image_size=28 but the GAN of .* was trained with image_size=32"),
    ("+data.channels=3", "data.channels=3 but the GAN of .* was trained with channels=1"),
])
def test_evaluation_data_sized_unlike_the_gan_is_refused(tiny_ckpt, tmp_path, override, named):
    with pytest.raises(InputError, match=named):
        _eval(tiny_ckpt, tmp_path, override)
    assert not any(tmp_path.glob("scores.h5*")) and not (tmp_path / "metrics.json").exists()


def test_a_test_set_of_one_class_says_auroc_is_undefined_and_still_writes_the_scores(tiny_ckpt, tmp_path):
    with pytest.raises(InputError, match=r"AUROC is undefined: the test split holds (\d+) normal and 0 anomalous"):
        _eval(tiny_ckpt, tmp_path, "+data.normal_classes=[0,1,2,3,4,5,6,7,8,9]")
    rows = read_scores(tmp_path / "scores.h5")
    assert len(rows["index"]) > 300 and rows["label"].sum() == 0
    assert np.isfinite(rows["scores/anomaly"]).all()
    assert not (tmp_path / "metrics.json").exists()


@pytest.mark.parametrize(("override", "named"), [
    ("inversion.lam=1.5", r"inversion.lam=1.5 must lie in \[0, 1\]"),
    ("inversion.lam=-0.1", r"inversion.lam=-0.1 must lie in \[0, 1\]"),
    ("inversion.steps=0", r"inversion.steps=0 must be an integer >= 1"),
])
def test_mapping_settings_out_of_range_are_refused_before_any_work(tiny_ckpt, tmp_path, override, named):
    with pytest.raises(InputError, match=named):
        _eval(tiny_ckpt, tmp_path / "eval", override)
    with pytest.raises(InputError, match=named):  # train.py refuses before training, not after it
        train(compose_cfg("train", [*TRAIN, "evaluate=true", override], tmp_path / "train"))
    assert not (tmp_path / "train" / "checkpoints").exists()
    assert not any((tmp_path / "eval").glob("scores.h5*"))


def test_non_finite_scores_name_the_images():
    G, D = Generator(28, 1, 16, 8), Discriminator(28, 1, 8)
    inv = Inversion(G, D, steps=2)
    image = torch.rand(4, 1, 28, 28) * 2 - 1
    image[2, 0, 5, 5] = float("nan")
    batch = {"image": image, "label": torch.zeros(4, dtype=torch.long),
             "index": torch.tensor([10, 11, 17, 12]), "split": torch.full((4,), 2)}
    with pytest.raises(NonFiniteScoreError, match=r"non-finite .*residual.* scores for 1 image\(s\): test\[17\]"):
        inv.test_step(batch, 0)


# -- 5. checkpoints from elsewhere -----------------------------------------------------------------
class _Payload:
    """Unpickling this runs code: it creates the directory ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return os.mkdir, (self.marker,)


def test_a_checkpoint_that_would_run_code_is_refused_without_running_it(tiny_ckpt, tmp_path):
    ckpt = torch.load(tiny_ckpt, map_location="cpu", weights_only=True)
    ckpt["anogan_config"] = _Payload(tmp_path / "pwned")
    evil = tmp_path / "evil.ckpt"
    torch.save(ckpt, evil)
    with pytest.raises(CheckpointError, match=r"evil.ckpt holds Python objects .*weights_only=True"):
        load_gan(evil)
    with pytest.raises(CheckpointError, match="weights_only=True"):
        train(compose_cfg("train", [*TRAIN, f"ckpt_path={evil}"], tmp_path / "train"))
    assert not (tmp_path / "pwned").exists()


# -- 6. determinism --------------------------------------------------------------------------------
def test_same_seed_gives_the_same_scores_across_runs_and_batch_sizes(tiny_ckpt, clean_eval, tmp_path):
    (tmp_path / "again").mkdir()
    (tmp_path / "again" / "scores.h5.partial").write_bytes(b"\x89HDF\r\n" + bytes(100))  # killed mid-flush
    _eval(tiny_ckpt, tmp_path / "again", "+data.eval_batch_size=64")  # discards it, maps from scratch
    _assert_same_outputs(clean_eval, tmp_path / "again")
    _eval(tiny_ckpt, tmp_path / "b50", "+data.eval_batch_size=50")
    a, b = read_scores(clean_eval / "scores.h5"), read_scores(tmp_path / "b50" / "scores.h5")
    np.testing.assert_array_equal(a["index"], b["index"])
    for name in SCORE_NAMES:
        np.testing.assert_allclose(a[f"scores/{name}"], b[f"scores/{name}"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(a["z"], b["z"], rtol=1e-5, atol=1e-6)


def test_a_resumed_evaluation_with_another_batch_size_neither_repeats_nor_drops_images(
        tiny_ckpt, clean_eval, tmp_path):
    out = tmp_path / "mixed"
    shutil.copytree(clean_eval, out)
    (out / "scores.h5").rename(out / "scores.h5.partial")
    with h5py.File(out / "scores.h5.partial", "a") as f:  # a run with batches of 64 killed after 2 batches
        f.attrs["rows"] = 128  # rows past the committed count are dropped on resume
    _eval(tiny_ckpt, out, "+data.eval_batch_size=50")  # batch 3 of 50 overlaps the kept rows
    a, b = read_scores(clean_eval / "scores.h5"), read_scores(out / "scores.h5")
    np.testing.assert_array_equal(a["index"], b["index"])
    np.testing.assert_array_equal(a["split"], b["split"])
    for name in SCORE_NAMES:
        np.testing.assert_allclose(a[f"scores/{name}"], b[f"scores/{name}"], rtol=1e-5, atol=1e-6)


def test_train_with_ckpt_path_auto_after_a_kill_in_its_evaluation_only_finishes_the_evaluation(
        tiny_run, tmp_path, monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    before = _weights(run)
    (run / "scores.h5").rename(run / "scores.h5.partial")  # as if killed after its first batch of 256
    (run / "metrics.json").unlink()
    with h5py.File(run / "scores.h5.partial", "a") as f:
        f.attrs["rows"] = 256
    n = len(read_scores(tiny_run / "scores.h5")["index"])
    mapped, steps = [], []
    original = Inversion.map_batch
    monkeypatch.setattr(Inversion, "map_batch", lambda self, x, i: mapped.append(len(x)) or original(self, x, i))
    from anogan.models.gan import GAN

    monkeypatch.setattr(GAN, "training_step", lambda self, batch, i: steps.append(i))
    train(compose_cfg("train", [*TINY, "ckpt_path=auto"], run))
    assert steps == []  # the training had finished: no batch is trained again
    _assert_same_weights(before, _weights(run))
    assert sum(mapped) == n - 256
    _assert_same_outputs(tiny_run, run)


def test_the_mapping_stops_within_a_step_after_sigterm(monkeypatch):
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    inv = Inversion(Generator(28, 1, 16, 8), Discriminator(28, 1, 8), steps=1000)
    trainer = type("Trainer", (), {"received_sigterm": False})()
    inv._trainer = trainer
    calls = []
    forward = inv.generator.forward

    def counting(z):
        calls.append(1)
        if len(calls) == 3:
            trainer.received_sigterm = True  # SIGTERM arrives during the third step
        return forward(z)

    monkeypatch.setattr(inv.generator, "forward", counting)
    with pytest.raises(SIGTERMException):
        inv.map_batch(torch.zeros(2, 1, 28, 28), torch.arange(2))
    assert len(calls) == 3  # not the 1001 steps of the batch


def test_the_script_exits_non_zero_with_the_message_and_no_output_on_bad_input(tiny_ckpt, tmp_path):
    import subprocess
    import sys

    from conftest import ROOT

    bad = tmp_path / "cut.ckpt"
    bad.write_bytes(tiny_ckpt.read_bytes()[:1000])
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "evaluate.py", f"ckpt_path={bad}", f"hydra.run.dir={out}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert f"{bad} is truncated or corrupt" in proc.stderr and "copy it again" in proc.stderr
    assert not any(out.glob("scores.h5*")) and not (out / "metrics.json").exists() and not (out / "figures").exists()


def test_configured_trainer_plugins_are_kept_and_a_checkpoint_writer_of_their_own_wins():
    from lightning.pytorch.plugins.environments import LightningEnvironment
    from lightning.pytorch.plugins.io import TorchCheckpointIO

    from anogan.runtime.checkpoints import checkpoint_plugins

    env = LightningEnvironment()
    assert [type(p) for p in checkpoint_plugins(None)] == [AtomicCheckpointIO]
    assert [type(p) for p in checkpoint_plugins(env)] == [LightningEnvironment, AtomicCheckpointIO]
    own = TorchCheckpointIO()
    assert checkpoint_plugins([env, own]) == [env, own]


def test_a_partial_score_file_of_other_settings_or_scorers_is_not_reused(tmp_path, tiny_ckpt):
    """A resumed evaluation reuses scores.h5.partial only when mapping settings and one-pass scorers agree
    (record_steps of another length, or an f-AnoGAN scorer added in between, start from scratch)."""
    import h5py

    from anogan.callbacks.score_file import ScoreFile, _settings
    from anogan.models.inversion import Inversion, load_gan

    G, D, _, _ = load_gan(tiny_ckpt)
    inv = Inversion(G, D, steps=3, record_steps=[1, 2])
    cb = ScoreFile(tmp_path / "scores.h5")
    cb.settings = _settings(None, inv)
    with h5py.File(cb.partial, "w") as f:
        for k, v in cb.settings.items():
            f.attrs[k] = v
    assert cb._matches(cb.partial)
    cb.settings = _settings(None, Inversion(G, D, steps=3, record_steps=[1]))
    assert not cb._matches(cb.partial)
    cb.settings = _settings(None, inv) | {"scorers": "FAnoGAN"}
    assert not cb._matches(cb.partial)


# -- SLURM: requeue on the time-limit signal, resume in the requeued job -------------------------------
def test_a_requeued_slurm_job_resumes_from_its_last_ckpt_without_ckpt_path(tmp_path, monkeypatch):
    from anogan.runtime.checkpoints import LAST, resolve_ckpt_path

    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    (tmp_path / LAST).parent.mkdir()
    (tmp_path / LAST).write_bytes(b"x")
    assert resolve_ckpt_path(None, tmp_path) is None  # a first start: from scratch
    monkeypatch.setenv("SLURM_RESTART_COUNT", "0")
    assert resolve_ckpt_path(None, tmp_path) is None
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")  # requeued: continue the first start's training
    assert resolve_ckpt_path(None, tmp_path) == tmp_path / LAST
    assert resolve_ckpt_path("other.ckpt", tmp_path) == Path("other.ckpt")  # an explicit path wins
    assert resolve_ckpt_path(None, tmp_path / "empty") is None  # requeued before its first epoch ended


def test_sigusr1_in_a_slurm_job_requeues_it_with_scontrol(tmp_path, monkeypatch, caplog):
    import signal

    from anogan.runtime.preemption import requeue_on_signal

    calls = tmp_path / "calls"
    (tmp_path / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {calls}\n[ "$2" != 99 ]\n')
    (tmp_path / "scontrol").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    for key in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_PROCID"):
        monkeypatch.delenv(key, raising=False)
    before = signal.getsignal(signal.SIGUSR1)
    try:
        assert not requeue_on_signal()  # not a SLURM job
        assert signal.getsignal(signal.SIGUSR1) is before
        monkeypatch.setenv("SLURM_JOB_ID", "71")
        monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "70")
        monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
        monkeypatch.setenv("SLURM_PROCID", "1")
        assert requeue_on_signal()  # a DDP task other than the first: ours too (not Lightning's), ...
        os.kill(os.getpid(), signal.SIGUSR1)
        assert not calls.exists() and "task 0 of SLURM job 70_3 requeues it" in caplog.text  # ... but task 0 requeues
        monkeypatch.setenv("SLURM_PROCID", "0")
        assert requeue_on_signal()
        os.kill(os.getpid(), signal.SIGUSR1)
        assert calls.read_text() == "requeue 70_3\n"  # the array task, not the whole array
        for key in ("SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID"):
            monkeypatch.delenv(key)
        monkeypatch.setenv("SLURM_JOB_ID", "99")  # scontrol fails: logged, the job runs on
        assert requeue_on_signal()
        os.kill(os.getpid(), signal.SIGUSR1)
        assert calls.read_text().splitlines()[-1] == "requeue 99"
        assert "scontrol requeue 99 failed" in caplog.text
        monkeypatch.setenv("SLURM_JOB_ID", "12;x")
        with pytest.raises(InputError, match="not a SLURM job id"):
            requeue_on_signal()
    finally:
        signal.signal(signal.SIGUSR1, before)


def test_write_csv_atomic_writes_the_rows_whole_and_refuses_none(tmp_path):
    import csv as _csv

    from anogan.runtime.io import write_csv_atomic

    out = write_csv_atomic([{"job": "0", "auroc": 0.9}, {"job": "1", "auroc": 0.8}], tmp_path / "sub" / "t.csv")
    with open(out, newline="") as f:
        assert list(_csv.DictReader(f)) == [{"job": "0", "auroc": "0.9"}, {"job": "1", "auroc": "0.8"}]
    assert [p.name for p in out.parent.iterdir()] == ["t.csv"]  # no temporary file left
    with pytest.raises(ValueError, match="no rows"):
        write_csv_atomic([], tmp_path / "empty.csv")
    assert not (tmp_path / "empty.csv").exists()
