"""Shared fixtures: composing configs against tmp_path, and a tiny trained GAN checkpoint."""

from __future__ import annotations

import os
import sys
from pathlib import Path

# One thread in the tests and in every script they start: bit-exact comparisons (resume, DDP, kills)
# need the same floating-point summation order in every process, and the small nets of the tests gain
# nothing from a second thread on the 2-core CI machine.
os.environ["OMP_NUM_THREADS"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.core.global_hydra import GlobalHydra  # noqa: E402
from omegaconf import open_dict  # noqa: E402

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
CONF = str(ROOT / "conf")

# Every test runs on the CPU unless it says otherwise (the `gpu` tests, tests/test_gpu.py): with
# trainer.accelerator=auto a machine with a GPU would run them there, where TF32 and cuDNN's algorithm
# choice break the bit-exact equalities they assert (resume, batch size, DDP vs one process), which hold
# on the CPU. compose_cfg and run_script (train.py, evaluate.py) add trainer.accelerator=cpu unless the
# test names an accelerator; tests that build a lightning.Trainer pass accelerator="cpu".
CPU = "cpu"

# fast settings for CPU tests: 28/32 pixels, narrow nets, few steps
TINY = [
    "model.generator.width=8",
    "model.discriminator.width=8",
    "trainer.max_epochs=2",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "trainer.log_every_n_steps=1",
    "inversion.steps=5",
    "data.eval_train_samples=16",
]


# a 2-process DDP run (gloo) of train.py that trains 3 epochs of 3 batches per process and evaluates;
# tests/ddp_probe.py records what each process draws (PROBE_ENV puts it on the path)
DDP_TRAIN = [
    "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
    "model.generator.width=8", "model.discriminator.width=8", "trainer.max_epochs=3",
    "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "logger=none",
    "data.batch_size=16", "data.test_subset=40", "data.eval_train_samples=8", "inversion.steps=3",
    "+callbacks.probe._target_=ddp_probe.Probe",
]
PROBE_ENV = {"PYTHONPATH": f"{ROOT / 'tests'}{os.pathsep}{ROOT}"}


def pytest_collection_modifyitems(config, items):
    """``gpu`` tests run where CUDA is present; elsewhere they are skipped, saying why."""
    if torch.cuda.is_available():
        return
    build = f"torch {torch.__version__}, CUDA build {torch.version.cuda or 'none'}"
    skip = pytest.mark.skip(reason=f"gpu test: no CUDA device here ({build}); bash benchmarks/gpu.sh on a GPU machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path, monkeypatch):
    """No network logging, no writes into the user's home."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    yield
    GlobalHydra.instance().clear()


def compose_cfg(config_name: str, overrides: list[str], output_dir: Path):
    """Compose a config like the entry points do, with Hydra's output dir set to ``output_dir``."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
    output_dir.mkdir(parents=True, exist_ok=True)
    with open_dict(cfg):
        if "trainer" in cfg and not any(o.lstrip("+").startswith("trainer.accelerator=") for o in overrides):
            cfg.trainer.accelerator = CPU  # the tests' equalities are CPU claims (see CPU below)
        cfg.paths.output_dir = str(output_dir)
        del cfg["hydra"]
    return cfg


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A run directory of ``python train.py`` with a tiny budget and evaluation (digits, 32 px)."""
    from anogan.engine.pipeline import train

    out = tmp_path_factory.mktemp("tiny_run")
    cfg = compose_cfg("train", TINY, out)
    train(cfg)
    GlobalHydra.instance().clear()
    return out


@pytest.fixture(scope="session")
def tiny_ckpt(tiny_run) -> Path:
    return tiny_run / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="session")
def ddp_run(tmp_path_factory) -> Path:
    """The run directory of ``python train.py`` with DDP_TRAIN, started locally (Lightning starts the
    second process)."""
    out = tmp_path_factory.mktemp("ddp_run")
    run_script(["train.py", *DDP_TRAIN, f"hydra.run.dir={out}"], cwd=ROOT, env=PROBE_ENV)
    return out


def run_script(args: list[str], cwd: Path, timeout: int = 600, env: dict | None = None, check: bool = True):
    """Run a project script in a subprocess; fail with its output when it fails (``check``)."""
    import subprocess

    if (args and Path(args[0]).name in ("train.py", "evaluate.py") and "--help" not in args
            and not any(a.lstrip("+").startswith("trainer.accelerator=") for a in args)):
        args = [*args, f"trainer.accelerator={CPU}"]
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=full_env)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def fit_with_nan_from_batch_4(gan, ckpt_dir: Path, accelerator: str = "cpu"):
    """Fit ``gan`` (a 28-pixel DCGAN) on the digits with D's output NaN from the fourth batch (training
    step 3) on and a checkpoint after every optimiser step. Asserts that training stopped with
    ``NonFiniteLossError`` and that every checkpoint written holds finite weights only; returns
    (trainer, the error's message)."""
    import lightning as L

    from anogan.data import DigitsDataModule
    from anogan.runtime.checkpoints import read_checkpoint
    from anogan.runtime.checks import NonFiniteLossError

    L.seed_everything(0)
    calls = {"n": 0}
    forward = gan.discriminator.forward

    def poisoned(x):
        calls["n"] += 1
        out = forward(x)
        return out * float("nan") if calls["n"] > 9 else out  # 3 D calls per batch: batch 4 breaks

    gan.discriminator.forward = poisoned
    ckpt = L.pytorch.callbacks.ModelCheckpoint(dirpath=ckpt_dir, every_n_train_steps=1, save_last=True)
    trainer = L.Trainer(accelerator=accelerator, max_epochs=5, logger=False, callbacks=[ckpt],
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    with pytest.raises(NonFiniteLossError) as error:
        trainer.fit(gan, datamodule=DigitsDataModule(image_size=28, batch_size=32))
    saved = list(Path(ckpt_dir).glob("*.ckpt"))
    assert saved
    for path in saved:
        state = read_checkpoint(path)["state_dict"]
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point()), path
    return trainer, str(error.value)


def sample_distances(gan, real: torch.Tensor) -> tuple[float, float]:
    """How far 256 samples of ``gan``'s G (a fixed z) are from the training images ``real``: the mean
    absolute gap of the mean images, and the mean distance of a sample to its nearest training image."""
    gan.generator.eval()
    with torch.no_grad():
        fake = gan.generator(gan.sample_z(256, torch.Generator().manual_seed(0)))
    gan.generator.train()
    mean_gap = float((fake.mean(0) - real.mean(0)).abs().mean())
    nearest = float(torch.cdist(fake.flatten(1), real.flatten(1)).min(1).values.mean())
    return mean_gap, nearest


def assert_aurocs_match_scores(run_dir: Path) -> dict:
    """Every AUROC of ``run_dir/metrics.json`` equals scikit-learn's on the test rows of its
    ``scores.h5`` (an implementation independent of torchmetrics); returns the metrics."""
    import json

    import numpy as np
    from sklearn.metrics import roc_auc_score

    from anogan.callbacks import read_scores
    from anogan.data import SPLITS

    metrics = json.loads((Path(run_dir) / "metrics.json").read_text())
    rows = read_scores(Path(run_dir) / "scores.h5")
    test = rows["split"] == SPLITS["test"]
    y = rows["label"][test]
    assert metrics["n_anomalous"] == int(y.sum()) and metrics["n_normal"] == int((1 - y).sum())
    assert set(metrics["scores"]) == {k[len("scores/"):] for k in rows if k.startswith("scores/")}
    for name, row in metrics["scores"].items():
        want = roc_auc_score(y, rows[f"scores/{name}"][test].astype(np.float64))
        assert row["auroc"] == pytest.approx(want, abs=1e-6), name  # torchmetrics computes in float32
    return metrics
