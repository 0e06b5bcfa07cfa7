"""f-AnoGAN as released: the network families at every size, WGAN-GP training, the encoder recipe and
its output squashing, the presets, and 128-pixel patches end to end."""

import json
import logging
from functools import partial

import h5py
import lightning as L
import numpy as np
import pytest
import torch
from conftest import ROOT, TINY, assert_aurocs_match_scores, compose_cfg, run_script, sample_distances
from hydra.utils import instantiate

from anogan.nets import losses
from anogan.nets import scores as S
from anogan.data import DigitsDataModule
from anogan.models.encoder import EncoderTraining, FAnoGAN, load_encoder
from anogan.models.gan import GAN
from anogan.models.inversion import Inversion, load_gan
from anogan.nets.mapping import mapping_copy
from anogan.nets.optim import TF1RMSprop
from anogan.nets import FAMILIES, SUPPORTED_SIZES, ResNetCritic, ResNetEncoder, ResNetGenerator, build
from anogan.engine.pipeline import train
from anogan.nets.prior import encoder_squash
from anogan.errors import InputError

WGANGP = ["model=wgangp_resnet", "model.generator.width=4", "model.discriminator.width=4",
          "model.generator.z_dim=16"]


def _adam(lr=1e-4, betas=(0.0, 0.9)):
    return partial(torch.optim.Adam, lr=lr, betas=betas)


def _gan(family: str, size: int, channels: int, width: int = 2, z_dim: int = 8, **kw) -> GAN:
    G = build(family, "generator", image_size=size, channels=channels, z_dim=z_dim, width=width)
    D = build(family, "discriminator", image_size=size, channels=channels, width=width)
    return GAN(G, D, _adam(), _adam(), **kw)


# -- the gradient penalty ----------------------------------------------------------------------------
def test_gradient_penalty_equals_a_hand_computation():
    """critic(x) = a * sum(x^2) / 2: grad at x_hat is a * x_hat, so the penalty is
    mean((a ||x_hat|| - 1)^2) and its derivative in a is mean(2 (a ||x_hat|| - 1) ||x_hat||)."""
    a = torch.tensor(0.5, requires_grad=True)
    real = torch.tensor([[[[3.0, 4.0]]], [[[1.0, 0.0]]]])  # (2, 1, 1, 2)
    fake = torch.tensor([[[[1.0, 2.0]]], [[[0.0, 0.0]]]])
    eps = torch.tensor([0.5, 0.25]).view(2, 1, 1, 1)
    gp = losses.gradient_penalty(lambda x: a * x.pow(2).flatten(1).sum(1) / 2, real, fake, eps)
    # x_hat = (2, 3) and (0.25, 0): norms sqrt(13) and 0.25
    norms = torch.tensor([13.0 ** 0.5, 0.25])
    expected = ((0.5 * norms - 1) ** 2).mean()
    torch.testing.assert_close(gp, expected)
    gp.backward()  # create_graph: the penalty reaches the critic's weights
    torch.testing.assert_close(a.grad, (2 * (0.5 * norms - 1) * norms).mean())


# -- the network families ----------------------------------------------------------------------------
@pytest.mark.parametrize("size", SUPPORTED_SIZES)
def test_the_resnet_critic_has_layer_norm_and_g_and_e_batchnorm_at_every_size(size):
    D = ResNetCritic(size, 1, 2)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in D.modules())
    norms = [m for m in D.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert norms and all(m.num_groups == 1 for m in norms)  # layer norm over (C, H, W)
    for net in (ResNetGenerator(size, 1, 8, 2), ResNetEncoder(size, 1, 8, 2)):  # as released
        assert not any(isinstance(m, torch.nn.GroupNorm) for m in net.modules())
        bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        assert bns and all((m.momentum, m.eps) == (0.01, 1e-3) for m in bns)


def test_wgangp_refuses_a_batchnorm_critic_naming_the_fix():
    with pytest.raises(InputError, match="without BatchNorm.*model=wgangp_resnet"):
        _gan("dcgan", 32, 1, objective="wgangp")
    with pytest.raises(InputError, match="model.objective='hinge'"):
        _gan("resnet", 32, 1, objective="hinge")
    with pytest.raises(InputError, match="critic_iterations=0"):
        _gan("resnet", 32, 1, objective="wgangp", critic_iterations=0)


def test_the_resnet_layout_at_64_pixels_is_the_official_one():
    G, D = ResNetGenerator(64, 1, 128, 64), ResNetCritic(64, 1, 64)
    assert len(G.blocks) == 4 and len(D.blocks) == 4  # 4 residual blocks up / down
    assert [b.main[3].out_channels for b in G.blocks] == [512, 256, 128, 64]  # 8, 4, 2, 1 x DIM
    assert [b.main[5].out_channels for b in D.blocks] == [128, 256, 512, 512]  # 2, 4, 8, 8 x DIM
    assert D.linear.in_features == 4 * 4 * 8 * 64 and D.features(torch.zeros(1, 1, 64, 64)).shape == (1, 8192)


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("size", SUPPORTED_SIZES)
@pytest.mark.parametrize("channels", [1, 3])
def test_every_family_size_and_channel_count_builds_and_round_trips_through_a_checkpoint(family, size, channels):
    torch.manual_seed(0)
    gan = _gan(family, size, channels, objective="wgangp" if family == "resnet" else "dcgan").eval()
    z = torch.randn(2, 8)
    x = gan.generator(z)
    assert x.shape == (2, channels, size, size) and x.abs().max() <= 1
    out, f = gan.discriminator(x), gan.discriminator.features(x)
    assert out.shape == (2,) and f.shape[0] == 2 and f.ndim == 2
    ckpt = {"state_dict": gan.state_dict()}
    gan.on_save_checkpoint(ckpt)
    assert ckpt["anogan_nets"]["family"] == family
    G, D, prior, _ = load_gan(ckpt)
    assert type(G) is type(gan.generator) and type(D) is type(gan.discriminator)
    G.eval(), D.eval()
    torch.testing.assert_close(G(z), x)
    torch.testing.assert_close(D.features(x), f)
    enc = EncoderTraining(G, D, optimizer=_adam(), prior=prior)
    assert enc.encoder.family == family and enc.encoder.z_dim == 8
    e_ckpt = {"state_dict": enc.state_dict()}
    enc.on_save_checkpoint(e_ckpt)
    E, _ = load_encoder(e_ckpt)
    torch.testing.assert_close(E.eval()(x), enc.encoder.eval()(x))


def test_a_checkpoint_without_a_family_is_a_dcgan(tiny_ckpt):
    ckpt = torch.load(tiny_ckpt, map_location="cpu", weights_only=True)
    assert ckpt["anogan_nets"]["family"] == "dcgan"
    del ckpt["anogan_nets"]["family"]  # as written before families existed
    G, D, _, _ = load_gan(ckpt)
    assert G.family == D.family == "dcgan"


def test_resuming_a_dcgan_checkpoint_as_resnet_names_the_family(tiny_ckpt, tmp_path):
    from anogan.runtime.checkpoints import CheckpointError, check_architecture

    model = instantiate(compose_cfg("train", [*TINY, *WGANGP, "model.generator.z_dim=100"], tmp_path).model)
    with pytest.raises(CheckpointError, match="family: checkpoint 'dcgan', configured 'resnet'"):
        check_architecture(torch.load(tiny_ckpt, map_location="cpu", weights_only=True), tiny_ckpt, model)


# -- the mapping on the ResNet family ----------------------------------------------------------------
def test_the_mapping_falls_back_to_the_plain_resnet_nets_with_the_same_scores(monkeypatch):
    torch.manual_seed(0)
    gan = _gan("resnet", 28, 1, width=4, z_dim=8, objective="wgangp").eval()
    G, D = gan.generator, gan.discriminator
    copy = mapping_copy(G)
    assert [type(m) for m in copy.modules()] == [type(m) for m in G.modules()]  # no fast layers
    x, idx = torch.rand(6, 1, 28, 28) * 2 - 1, torch.arange(6)
    fast = Inversion(G, D, prior="normal", steps=3, channels_last=True).map_batch(x, idx)["scores"]  # conf default
    plain = Inversion(G, D, prior="normal", steps=3, channels_last=False)
    monkeypatch.setattr(plain, "_mapping_nets", lambda: (plain.generator, plain.discriminator))
    for name, value in plain.map_batch(x, idx)["scores"].items():
        torch.testing.assert_close(fast[name], value, msg=name)


# -- the encoder recipe ------------------------------------------------------------------------------
def test_encoder_squash_follows_the_prior_and_tanh_with_a_normal_prior_warns(caplog):
    assert encoder_squash("auto", "uniform") == "tanh"
    assert encoder_squash("auto", "normal") == "none"
    with caplog.at_level(logging.WARNING, logger="anogan.nets.prior"):
        assert encoder_squash("tanh", "normal") == "tanh"
    assert "third of N(0, 1)" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="anogan.nets.prior"):
        assert encoder_squash("clip", "normal") == "clip" and encoder_squash("tanh", "uniform") == "tanh"
    assert caplog.text == ""
    with pytest.raises(InputError, match="squash='sigmoid'"):
        encoder_squash("sigmoid", "uniform")
    torch.manual_seed(0)
    gan = _gan("resnet", 16, 1, width=4, objective="wgangp")
    x = torch.rand(8, 1, 16, 16) * 2 - 1
    ranges = {}
    for squash, prior in (("auto", "uniform"), ("auto", "normal"), ("clip", "normal")):
        E = EncoderTraining(gan.generator, gan.discriminator, optimizer=_adam(), prior=prior, squash=squash).encoder
        with torch.no_grad():
            E.linear.weight.mul_(200)  # outputs far beyond [-1, 1] before the squashing
            ranges[squash, prior] = (E.squash, float(E(x).abs().max()))
    assert ranges["auto", "uniform"][0] == "tanh" and ranges["auto", "uniform"][1] <= 1
    assert ranges["auto", "normal"][0] == "none" and ranges["auto", "normal"][1] > 1
    assert ranges["clip", "normal"] == ("clip", 1.0)


def test_fanogan_latent_is_the_distance_of_e_x_and_e_g_e_x():
    torch.manual_seed(0)
    gan = _gan("resnet", 16, 1, width=4, objective="wgangp").eval()
    E = EncoderTraining(gan.generator, gan.discriminator, optimizer=_adam(), prior="normal").encoder.eval()
    x = torch.rand(5, 1, 16, 16) * 2 - 1
    out = FAnoGAN(E, gan.generator, gan.discriminator)(x)
    with torch.no_grad():
        ex = E(x)
        expected = ((ex - E(gan.generator(ex))) ** 2).sum(1) / 8  # the mean over z_dim = 8 coordinates
    torch.testing.assert_close(out["fanogan_latent"], expected)
    torch.testing.assert_close(out["fanogan_latent"], S.fanogan_latent(ex, E(gan.generator(ex))))


# -- the presets -------------------------------------------------------------------------------------
def test_the_fanogan_paper_preset_has_the_official_settings(tmp_path):
    cfg = compose_cfg("train", ["experiment=fanogan_paper", "data.path=patches.h5"], tmp_path)
    m = cfg.model
    assert (m.objective, m.critic_iterations, m.gp_weight, m.prior) == ("wgangp", 5, 10.0, "normal")
    for opt in (m.optimizer_g, m.optimizer_d):
        assert opt._target_ == "torch.optim.Adam" and opt.lr == 1e-4 and list(opt.betas) == [0.0, 0.9]
    assert (m.generator.z_dim, m.generator.width, m.discriminator.width) == (128, 64, 64)
    assert (cfg.data.image_size, cfg.data.channels, cfg.data.batch_size) == (64, 1, 64)
    e = cfg.encoder
    assert (e.module.squash, e.module.kappa, e.max_steps) == ("tanh", 1.0, 50000)
    assert (cfg.trainer.max_epochs, e.module.mode) == (7, "izi_f")  # the official TRAIN_EPOCHS
    assert e.module.optimizer._target_ == "anogan.nets.optim.TF1RMSprop" and e.module.optimizer.lr == 5e-5
    model = instantiate(m)
    assert isinstance(model.generator, ResNetGenerator) and isinstance(model.discriminator, ResNetCritic)
    opt_g, opt_d = model.configure_optimizers()
    assert opt_g.defaults["betas"] == (0.0, 0.9) and opt_d.defaults["lr"] == 1e-4
    enc = instantiate(e.module, generator=model.generator, discriminator=model.discriminator, prior=m.prior)
    assert isinstance(enc.encoder, ResNetEncoder) and enc.encoder.squash == "tanh"
    assert isinstance(enc.configure_optimizers(), TF1RMSprop)


def test_the_cpu_fanogan_preset_composes_with_the_acae_and_the_encoder(tmp_path):
    cfg = compose_cfg("train", ["experiment=fanogan", "acae=dcgan"], tmp_path)
    model = instantiate(cfg.model)
    assert (model.objective, model.prior, cfg.data.image_size) == ("wgangp", "normal", 28)
    acae = instantiate(cfg.acae.module)  # the aCAE's own DCGAN nets, sized like the ResNet GAN
    assert acae.net.config["z_dim"] == model.generator.z_dim == 128
    enc = instantiate(cfg.encoder.module, generator=model.generator, discriminator=model.discriminator,
                      prior=model.prior)
    assert isinstance(enc.encoder, ResNetEncoder) and enc.encoder.squash == "none"  # auto, normal prior


@pytest.mark.slow
def test_the_cpu_fanogan_preset_learns_the_normal_class_and_anogan_separates(tmp_path):
    """``python train.py experiment=fanogan`` as the README runs it: G draws the normal class (the
    sample-quality figure in its log and sample_quality.json below the warning), AnoGAN's mapping score
    separates (>= 0.9; 0.60 when the preset gave G 120 steps) and f-AnoGAN's stays at 1.000."""
    run = tmp_path / "run"
    proc = run_script(["train.py", "experiment=fanogan", "logger=none", "trainer.enable_progress_bar=false",
                       f"hydra.run.dir={run}"], ROOT, timeout=1500, env={"OMP_NUM_THREADS": "2"})
    quality = json.loads((run / "sample_quality.json").read_text())
    assert quality["ratio"] < quality["warn_ratio"] and 0.67 < quality["spread_ratio"]
    assert "sample quality: G's samples lie" in (run / "train.log").read_text()
    assert "G has not learned" not in proc.stdout + proc.stderr
    scores = json.loads((run / "metrics.json").read_text())["scores"]
    assert scores["anomaly"]["auroc"] >= 0.9 and scores["fanogan"]["auroc"] == 1.0


# -- WGAN-GP training --------------------------------------------------------------------------------
def test_wgangp_takes_one_g_step_per_critic_iterations_batches_and_resumes_exactly(tmp_path):
    args = [*TINY, *WGANGP, "evaluate=false", "logger=none", "data.batch_size=16", "model.critic_iterations=3"]
    full, part, resumed = tmp_path / "full", tmp_path / "part", tmp_path / "resumed"
    train(compose_cfg("train", [*args, "trainer.max_epochs=3"], full))
    train(compose_cfg("train", [*args, "trainer.max_epochs=2"], part))
    train(compose_cfg("train", [*args, "trainer.max_epochs=3", f"ckpt_path={part / 'checkpoints/last.ckpt'}"],
                      resumed))
    a, b = (torch.load(d / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True) for d in (full, resumed))
    dm = instantiate(compose_cfg("train", args, tmp_path / "dm").data)
    dm.setup("fit")
    per_epoch = len(dm.train_dataloader())
    assert per_epoch % 3  # so that G steps counted per epoch would give fewer
    batches = 3 * per_epoch
    assert a["global_step"] == batches + batches // 3  # critic steps + G steps
    assert b["global_step"] == a["global_step"]
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k


@pytest.mark.slow
def test_wgangp_on_the_digits_improves_the_sample_statistics():
    L.seed_everything(0)
    dm = DigitsDataModule(normal_classes=[0], image_size=16, batch_size=32)
    dm.setup()
    real = torch.stack([dm.train_set[i]["image"] for i in range(len(dm.train_set))])
    gan = _gan("resnet", 16, 1, width=8, z_dim=32, objective="wgangp", prior="normal")
    gan.optimizer_g = gan.optimizer_d = _adam(lr=5e-4)

    gap0, nn0 = sample_distances(gan, real)
    # 120 epochs = 97 G steps: G samples in eval mode, on running statistics that move in G steps only
    # with the official decay 0.99 (60 epochs left them 39 % of the way: gap 0.33, distance 9.1)
    L.Trainer(accelerator="cpu", max_epochs=120, logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, limit_val_batches=0).fit(gan, datamodule=dm)
    gap1, nn1 = sample_distances(gan, real)
    # measured: mean-image gap 0.54 -> 0.17, nearest-training-image distance 10.7 -> 6.4
    assert gap1 < 0.5 * gap0, (gap0, gap1)
    assert nn1 < 0.8 * nn0, (nn0, nn1)


def test_a_non_finite_critic_loss_stops_wgangp_training_naming_the_loss(tmp_path):
    from anogan.models.gan import NonFiniteLossError

    L.seed_everything(0)
    gan = _gan("resnet", 16, 1, width=4, objective="wgangp", prior="normal")
    forward = gan.discriminator.forward
    gan.discriminator.forward = lambda x: forward(x) * float("nan")
    with pytest.raises(NonFiniteLossError, match="train/d_loss is nan at training step 0"):
        L.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                  enable_model_summary=False, limit_val_batches=0, default_root_dir=tmp_path).fit(
            gan, datamodule=DigitsDataModule(image_size=16, batch_size=16))


# -- 128-pixel patches end to end --------------------------------------------------------------------
def _patches_128(path, n=48):
    rng = np.random.default_rng(0)
    images = rng.normal(100, 20, (n, 128, 128)).clip(0, 255)
    labels = np.zeros(n, dtype=np.int64)
    split = np.array([0] * 24 + [2] * (n - 24))
    labels[24::2] = 1
    images[labels == 1, 40:80, 40:80] = 250
    with h5py.File(path, "w") as f:
        f["images"], f["labels"], f["split"] = images.astype(np.uint8), labels, split


def test_128_pixel_patches_train_and_evaluate_with_wgangp_and_the_encoder(tmp_path):
    _patches_128(tmp_path / "p128.h5")
    out = tmp_path / "run"
    cfg = compose_cfg("train", [*TINY, *WGANGP, "data=hdf5", f"data.path={tmp_path / 'p128.h5'}",
                                "data.image_size=128", "data.num_workers=0", "data.batch_size=8",
                                "data.eval_batch_size=16", "trainer.max_epochs=1", "inversion.steps=2",
                                "encoder=izif", "encoder.max_steps=2", "logger=none"], out)
    train(cfg)
    # the encoder ran for encoder.max_steps iterations, not for epochs (3 batches per epoch)
    assert torch.load(out / "checkpoints" / "encoder.ckpt", weights_only=True)["global_step"] == 2
    G, _, prior, _ = load_gan(out / "checkpoints" / "last.ckpt")
    assert G.config["image_size"] == 128 and G.family == "resnet" and prior == "normal"
    metrics = assert_aurocs_match_scores(out)
    assert metrics["n_normal"] + metrics["n_anomalous"] == 24
    assert {"anomaly", "residual", "fanogan", "fanogan_latent"} <= set(metrics["scores"])
    with h5py.File(out / "scores.h5") as f:
        assert f["residual_map"].shape[1:] == (128, 128)
