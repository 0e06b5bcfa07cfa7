"""Mixed precision on the CPU: training every stage (GAN, f-AnoGAN's encoder, aCAE) in bf16-mixed, the
mapping's own precision (``inversion.precision``, never the trainer's), float32 outputs; the gradient
penalty's loss-scaling recipe; the non-finite-loss guard that reads nothing on the host per step.

bf16 is 2-3x slower than float32 on this CPU, so every run here is tiny (60 test images, 5 steps)."""

from functools import partial

import numpy as np
import pytest
import torch
from conftest import TINY, assert_aurocs_match_scores, compose_cfg, fit_with_nan_from_batch_4
from hydra.utils import instantiate

from anogan.nets import losses
from anogan.callbacks import read_scores
from anogan.models.gan import GAN, NonFiniteLossError
from anogan.models.inversion import Inversion
from anogan.nets import Discriminator, Generator, ResNetCritic
from anogan.engine.pipeline import evaluate, train
from anogan.runtime.checkpoints import read_checkpoint
from anogan.runtime.checks import FiniteLossGuard

MODELS = {
    "wgangp": ["model=wgangp_resnet", "model.generator.width=4", "model.discriminator.width=4",
               "model.generator.z_dim=16"],
    "dcgan": [],
}
STAGES = ["logger=none", "data.test_subset=60", "encoder=izif", "encoder.max_steps=10", "acae=dcgan",
          "acae.max_epochs=1", "baselines=pixel", "inversion.init=encoder"]
# Largest AUROC difference to float32 measured in these runs: 0.024 (reference_discrimination of the
# bf16-trained WGAN-GP; 9 normal and 51 anomalous test images, so one swapped pair moves an AUROC by 0.002)
AUROC_TOL = 0.05
CHECKPOINTS = ("last", "encoder", "acae")


@pytest.fixture(scope="module")
def fp32_runs(tmp_path_factory) -> dict:
    """A float32 run directory per model: GAN, encoder and aCAE trained, evaluated with init=encoder."""
    runs = {}
    for model, args in MODELS.items():
        runs[model] = tmp_path_factory.mktemp(f"fp32_{model}")
        train(compose_cfg("train", [*TINY, *args, *STAGES], runs[model]))
    return runs


def _aurocs(run_dir) -> dict:
    return {k: v["auroc"] for k, v in assert_aurocs_match_scores(run_dir)["scores"].items()}


def _assert_float32(run_dir) -> dict:
    rows = read_scores(run_dir / "scores.h5")
    floats = {k: v.dtype for k, v in rows.items() if not k.startswith(("@", "p_value/")) and v.dtype.kind == "f"}
    assert {"z", "scores/residual", "scores/fanogan", "scores/acae_anomaly", "scores/pixel_knn"} <= set(floats)
    assert set(floats.values()) == {np.dtype("float32")}, floats
    # the p-values are not outputs of the mapping: exact fractions (1 + k) / (n + 1), float64, in (0, 1]
    p = {k: v for k, v in rows.items() if k.startswith("p_value/")}
    assert "p_value/anomaly" in p and all(v.dtype == np.float64 for v in p.values()), {k: v.dtype for k, v in p.items()}
    assert all(((v > 0) & (v <= 1)).all() for v in p.values())
    return rows


@pytest.mark.parametrize("model", list(MODELS))
def test_bf16_training_of_every_stage_gives_float32_weights_and_scores_and_the_aurocs_of_fp32(
        fp32_runs, tmp_path, model):
    """python train.py trainer.precision=bf16-mixed model=... encoder=izif acae=dcgan baselines=pixel
    inversion.init=encoder, on the CPU."""
    train(compose_cfg("train", [*TINY, *MODELS[model], *STAGES, "trainer.precision=bf16-mixed"], tmp_path))
    for name in CHECKPOINTS:
        bf16, fp32 = (read_checkpoint(d / "checkpoints" / f"{name}.ckpt")["state_dict"]
                      for d in (tmp_path, fp32_runs[model]))
        weights = {k: v for k, v in bf16.items() if v.is_floating_point()}
        assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in weights.values()), name
        # bf16 autocast did run: the weights moved otherwise than in float32
        assert max(float((v - fp32[k]).abs().max()) for k, v in weights.items()) > 0, name
    _assert_float32(tmp_path)
    bf16, fp32 = _aurocs(tmp_path), _aurocs(fp32_runs[model])
    assert set(bf16) == set(fp32)
    for score, auroc in fp32.items():
        assert bf16[score] == pytest.approx(auroc, abs=AUROC_TOL), score


def _evaluate(run_dir, out, *overrides):
    evaluate(compose_cfg("evaluate", [f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}", "logger=none",
                                      "baselines=pixel", "inversion.steps=5", *overrides], out))
    return out


def test_the_evaluation_does_not_inherit_the_trainer_precision(fp32_runs, tmp_path):
    """evaluate.py trainer.precision=bf16-mixed wrote nothing before (TypeError: unsupported ScalarType
    BFloat16): now the mapping runs in float32 whatever the trainer's precision, with the same rows."""
    run = fp32_runs["wgangp"]
    out = _evaluate(run, tmp_path, "trainer.precision=bf16-mixed", "inversion.init=encoder")
    got, want = read_scores(out / "scores.h5"), read_scores(run / "scores.h5")
    for k, v in want.items():
        if not k.startswith("@"):
            np.testing.assert_array_equal(got[k], v, err_msg=k)


@pytest.mark.parametrize("init", ["random", "encoder"])
def test_a_bf16_mapping_keeps_z_and_every_output_float32_with_aurocs_near_fp32(fp32_runs, tmp_path, init):
    run = fp32_runs["wgangp"]
    fp32 = _evaluate(run, tmp_path / "fp32", f"inversion.init={init}")
    bf16 = _evaluate(run, tmp_path / "bf16", f"inversion.init={init}", "inversion.precision=bf16-mixed",
                     "trainer.precision=bf16-mixed")
    a, b = _assert_float32(bf16), _assert_float32(fp32)
    assert not np.array_equal(a["z"], b["z"])  # G and D did run in bfloat16
    # the one-pass scores (f-AnoGAN, aCAE, baselines) do not depend on the mapping's precision
    for k in ("scores/fanogan", "scores/acae_anomaly", "scores/pixel_knn"):
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    got, want = _aurocs(bf16), _aurocs(fp32)
    for score, auroc in want.items():
        assert got[score] == pytest.approx(auroc, abs=AUROC_TOL), score


def test_the_mapping_ignores_a_surrounding_autocast():
    """What a Trainer(precision="bf16-mixed") built by hand would wrap the test step in: the mapping
    switches it off, so its scores and z equal those mapped without it, bit for bit, and are float32."""
    torch.manual_seed(0)
    G, D = Generator(32, 1, 16, 8).eval(), Discriminator(32, 1, 8).eval()
    x, index = torch.rand(4, 1, 32, 32) * 2 - 1, torch.arange(4)
    plain = Inversion(G, D, steps=3).map_batch(x, index)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        wrapped = Inversion(G, D, steps=3).map_batch(x, index)
    assert wrapped["z"].dtype == torch.float32 and torch.equal(wrapped["z"], plain["z"])
    for name, value in plain["scores"].items():
        assert wrapped["scores"][name].dtype == torch.float32 and torch.equal(wrapped["scores"][name], value), name


def test_a_16_mixed_mapping_is_refused_before_training_naming_the_key(tmp_path):
    G, D = Generator(32, 1, 16, 8), Discriminator(32, 1, 8)
    with pytest.raises(ValueError, match=r"inversion.precision='16-mixed' must be 32-true or bf16-mixed"):
        Inversion(G, D, precision="16-mixed")
    with pytest.raises(ValueError, match=r"inversion.precision='16-mixed'"):
        train(compose_cfg("train", [*TINY, "inversion.precision=16-mixed"], tmp_path))
    assert not (tmp_path / "checkpoints").exists()  # refused before any training


def test_trainer_precision_and_strategy_are_settings_and_16_mixed_runs_as_bf16_on_the_cpu(tmp_path):
    """No + needed; on a CPU Lightning 2.6 replaces 16-mixed (no float16 autocast there) by bf16-mixed,
    without a loss scaler: what trainer.precision=16-mixed trains with on a CPU."""
    cfg = compose_cfg("train", [*TINY, "trainer.precision=16-mixed", "trainer.strategy=auto", "logger=none"], tmp_path)
    trainer = instantiate(cfg.trainer, logger=False)
    assert trainer.precision_plugin.precision == "bf16-mixed" and trainer.precision_plugin.scaler is None


def test_the_gradient_penalty_is_the_same_under_any_loss_scale():
    """PyTorch's AMP recipe for penalties: scale before autograd.grad, unscale after. In float32 the
    penalty and its gradients do not depend on the scale (here GradScaler's initial 2**16)."""
    torch.manual_seed(0)
    critic = ResNetCritic(16, 1, width=4)
    real, fake = torch.rand(6, 1, 16, 16) * 2 - 1, torch.rand(6, 1, 16, 16) * 2 - 1
    eps = torch.rand(6, 1, 1, 1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    results = []
    for scale in (1.0, scaler.scale(torch.ones(()))):
        critic.zero_grad()
        penalty = losses.gradient_penalty(critic, real, fake, eps, scale)
        penalty.backward()
        # the output layer's bias has no gradient: the penalty depends on D's input gradient only
        results.append((penalty.detach(), [p.grad.clone() for p in critic.parameters() if p.grad is not None]))
    assert float(scaler.scale(torch.ones(()))) == 2.0**16
    (p1, g1), (p2, g2) = results
    assert len(g1) == len(g2) > 4
    torch.testing.assert_close(p2, p1, rtol=1e-5, atol=0)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-7)


def test_the_deferred_loss_guard_reads_nothing_on_the_host_until_asked(monkeypatch):
    """The form used on accelerators: check() keeps the first non-finite step on the device; only
    raise_if_non_finite() reads it (one host read), naming the first bad step and its value."""
    guard = FiniteLossGuard("Lower the learning rates.", deferred=True)

    def host_read(*args):
        raise AssertionError("a host read in check()")

    for method in ("item", "tolist", "__bool__", "__float__", "__int__", "cpu", "numpy"):
        monkeypatch.setattr(torch.Tensor, method, host_read)
    for step, value in enumerate([1.0, 2.0, float("nan"), float("inf"), 3.0]):
        guard.check("train/d_loss", torch.tensor(value), step)
        guard.check("train/g_loss", torch.tensor(1.0), step)
    monkeypatch.undo()
    with pytest.raises(NonFiniteLossError, match=r"train/d_loss is nan at training step 2: .*Lower the learning"):
        guard.raise_if_non_finite()
    finite = FiniteLossGuard("", deferred=True)
    finite.check("train/d_loss", torch.tensor(1.0), 0)
    finite.raise_if_non_finite()  # nothing to report


def test_a_deferred_guard_stops_training_before_a_checkpoint_holds_the_non_finite_step(tmp_path):
    """The accelerator form forced on the CPU: D's loss turns NaN in batch 4 (training step 3); training
    stops in that batch, at the checkpoint written after it, and no checkpoint holds non-finite weights."""
    opt = partial(torch.optim.Adam, lr=2e-4, betas=(0.5, 0.999))
    gan = GAN(Generator(28, 1, 100, 8), Discriminator(28, 1, 8), opt, opt)
    gan.finite.deferred = True
    trainer, message = fit_with_nan_from_batch_4(gan, tmp_path)
    assert message.startswith("train/d_loss is nan at training step 3: training stopped (checked every 100")
    assert trainer.global_step == 8  # the fourth batch's two optimiser steps were taken, no fifth batch
