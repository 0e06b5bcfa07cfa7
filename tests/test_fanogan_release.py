"""f-AnoGAN line by line against the released code (tSchlegl/f-AnoGAN): the 64x64 ResNet G, critic and
E layer by layer with tflib's initialisation, G's BatchNorm statistics, E's BatchNorm, TF1's RMSProp,
and the paper's three encoder trainings (ziz, izi, izi_f)."""

import math
from functools import partial

import lightning as L
import pytest
import torch
from torch import nn

from anogan.data import DigitsDataModule
from anogan.models.encoder import EncoderTraining, FAnoGAN, load_encoder
from anogan.models.gan import GAN
from anogan.models.inversion import load_gan
from anogan.nets import ResNetCritic, ResNetEncoder, ResNetGenerator, build
from anogan.nets.optim import TF1RMSprop
from anogan.runtime.checkpoints import CheckpointError

# -- the table, transcribed from wgangp_64x64.py / z_encoding_izif.py and tflib/ops at tSchlegl/f-AnoGAN
# commit a73a92e (DIM 64, ZDIM 128, 64x64 grey)
# (official layer, kind, c_in, c_out, kernel, bias, output shape, initial weight std)
# kinds: linear, conv, bn (tf.layers.batch_normalization), ln (tflib Layernorm over [1, 2, 3]).
# std: tflib's uniform init, sqrt(4 / (fan_in + fan_out)) for he_init=True (Conv2D's default: the residual
# convolutions and Generator.Output), sqrt(2 / (fan_in + fan_out)) for he_init=False (the input
# convolutions, the 1x1 shortcuts) and for Linear (glorot); fans = channels x kernel area. Biases start at 0.
# Within a residual block the code computes the shortcut first, then BN1, Conv1 (biases=False), BN2, Conv2;
# a down block's Conv2 is ConvMeanPool (shape before the pooling), its shortcut MeanPoolConv (after it).
GENERATOR = [
    ("Generator.Input", "linear", 128, 8192, None, True, (8192,), 0.01550),
    ("Generator.Res1.Shortcut", "conv", 512, 512, 1, True, (512, 8, 8), 0.04419),
    ("Generator.Res1.BN1", "bn", 512, 512, None, True, (512, 4, 4), None),
    ("Generator.Res1.Conv1", "conv", 512, 512, 3, False, (512, 8, 8), 0.02083),
    ("Generator.Res1.BN2", "bn", 512, 512, None, True, (512, 8, 8), None),
    ("Generator.Res1.Conv2", "conv", 512, 512, 3, True, (512, 8, 8), 0.02083),
    ("Generator.Res2.Shortcut", "conv", 512, 256, 1, True, (256, 16, 16), 0.05103),
    ("Generator.Res2.BN1", "bn", 512, 512, None, True, (512, 8, 8), None),
    ("Generator.Res2.Conv1", "conv", 512, 256, 3, False, (256, 16, 16), 0.02406),
    ("Generator.Res2.BN2", "bn", 256, 256, None, True, (256, 16, 16), None),
    ("Generator.Res2.Conv2", "conv", 256, 256, 3, True, (256, 16, 16), 0.02946),
    ("Generator.Res3.Shortcut", "conv", 256, 128, 1, True, (128, 32, 32), 0.07217),
    ("Generator.Res3.BN1", "bn", 256, 256, None, True, (256, 16, 16), None),
    ("Generator.Res3.Conv1", "conv", 256, 128, 3, False, (128, 32, 32), 0.03402),
    ("Generator.Res3.BN2", "bn", 128, 128, None, True, (128, 32, 32), None),
    ("Generator.Res3.Conv2", "conv", 128, 128, 3, True, (128, 32, 32), 0.04167),
    ("Generator.Res4.Shortcut", "conv", 128, 64, 1, True, (64, 64, 64), 0.10206),
    ("Generator.Res4.BN1", "bn", 128, 128, None, True, (128, 32, 32), None),
    ("Generator.Res4.Conv1", "conv", 128, 64, 3, False, (64, 64, 64), 0.04811),
    ("Generator.Res4.BN2", "bn", 64, 64, None, True, (64, 64, 64), None),
    ("Generator.Res4.Conv2", "conv", 64, 64, 3, True, (64, 64, 64), 0.05893),
    ("Generator.OutputN", "bn", 64, 64, None, True, (64, 64, 64), None),
    ("Generator.Output", "conv", 64, 1, 3, True, (1, 64, 64), 0.08269),
]
DISCRIMINATOR = [
    ("Discriminator.Input", "conv", 1, 64, 3, True, (64, 64, 64), 0.05847),
    ("Discriminator.Res1.Shortcut", "conv", 64, 128, 1, True, (128, 32, 32), 0.10206),
    ("Discriminator.Res1.BN1", "ln", 64, 64, None, True, (64, 64, 64), None),
    ("Discriminator.Res1.Conv1", "conv", 64, 64, 3, False, (64, 64, 64), 0.05893),
    ("Discriminator.Res1.BN2", "ln", 64, 64, None, True, (64, 64, 64), None),
    ("Discriminator.Res1.Conv2", "conv", 64, 128, 3, True, (128, 64, 64), 0.04811),
    ("Discriminator.Res2.Shortcut", "conv", 128, 256, 1, True, (256, 16, 16), 0.07217),
    ("Discriminator.Res2.BN1", "ln", 128, 128, None, True, (128, 32, 32), None),
    ("Discriminator.Res2.Conv1", "conv", 128, 128, 3, False, (128, 32, 32), 0.04167),
    ("Discriminator.Res2.BN2", "ln", 128, 128, None, True, (128, 32, 32), None),
    ("Discriminator.Res2.Conv2", "conv", 128, 256, 3, True, (256, 32, 32), 0.03402),
    ("Discriminator.Res3.Shortcut", "conv", 256, 512, 1, True, (512, 8, 8), 0.05103),
    ("Discriminator.Res3.BN1", "ln", 256, 256, None, True, (256, 16, 16), None),
    ("Discriminator.Res3.Conv1", "conv", 256, 256, 3, False, (256, 16, 16), 0.02946),
    ("Discriminator.Res3.BN2", "ln", 256, 256, None, True, (256, 16, 16), None),
    ("Discriminator.Res3.Conv2", "conv", 256, 512, 3, True, (512, 16, 16), 0.02406),
    ("Discriminator.Res4.Shortcut", "conv", 512, 512, 1, True, (512, 4, 4), 0.04419),
    ("Discriminator.Res4.BN1", "ln", 512, 512, None, True, (512, 8, 8), None),
    ("Discriminator.Res4.Conv1", "conv", 512, 512, 3, False, (512, 8, 8), 0.02083),
    ("Discriminator.Res4.BN2", "ln", 512, 512, None, True, (512, 8, 8), None),
    ("Discriminator.Res4.Conv2", "conv", 512, 512, 3, True, (512, 8, 8), 0.02083),
    ("Discriminator.Output", "linear", 8192, 1, None, True, (1,), 0.01562),
]
# the official Encoder is GoodDiscriminator's code under the scope "Encoder": my_Normalize then gives
# BatchNorm (LayerNorm only for names containing "Discriminator"), and Encoder.Output goes to ZDIM
ENCODER = [(name.replace("Discriminator", "Encoder"), "bn" if kind == "ln" else kind, *rest)
           for name, kind, *rest in DISCRIMINATOR[:-1]] + [
    ("Encoder.Output", "linear", 8192, 128, None, True, (128,), 0.01550)]

KINDS = {nn.Linear: "linear", nn.Conv2d: "conv", nn.BatchNorm2d: "bn", nn.GroupNorm: "ln"}


def _layers_in_forward_order(net: nn.Module, x: torch.Tensor) -> list:
    """(module, kind, c_in, c_out, kernel, bias, output shape) of every layer of KINDS, as called."""
    rows, hooks = [], []

    def record(m, inputs, out):
        kind = KINDS[type(m)]
        if kind == "linear":
            row = (m.in_features, m.out_features, None, m.bias is not None)
        elif kind == "conv":
            row = (m.in_channels, m.out_channels, m.kernel_size[0], m.bias is not None)
        else:
            c = m.num_features if kind == "bn" else m.num_channels
            row = (c, c, None, m.affine)
        rows.append((m, kind, *row, tuple(out.shape[1:])))

    for m in net.modules():
        if type(m) in KINDS:
            hooks.append(m.register_forward_hook(record))
    with torch.no_grad():
        net.eval()(x)
    for h in hooks:
        h.remove()
    return rows


@pytest.mark.parametrize("role", ["generator", "discriminator", "encoder"])
def test_the_64_pixel_resnet_nets_match_the_released_code_layer_by_layer(role):
    torch.manual_seed(0)
    net, table, x = {
        "generator": (ResNetGenerator(64, 1, 128, 64), GENERATOR, torch.randn(2, 128)),
        "discriminator": (ResNetCritic(64, 1, 64), DISCRIMINATOR, torch.rand(2, 1, 64, 64) * 2 - 1),
        "encoder": (ResNetEncoder(64, 1, 128, 64), ENCODER, torch.rand(2, 1, 64, 64) * 2 - 1),
    }[role]
    ours = _layers_in_forward_order(net, x)
    assert len(ours) == len(table) and len(list(m for m in net.modules() if type(m) in KINDS)) == len(table)
    for (m, *structure), (name, *expected) in zip(ours, table):
        assert tuple(structure) == tuple(expected[:-1]), name
        std = expected[-1]
        if std is None:  # a normalisation layer: the official kind and settings, scale 1 and offset 0
            if expected[0] == "bn":
                assert (m.momentum, m.eps, m.track_running_stats) == (0.01, 1e-3, True), name
            else:
                assert (m.num_groups, m.eps) == (1, 1e-5), name
            assert torch.equal(m.weight, torch.ones_like(m.weight)) and not m.bias.any(), name
            continue
        w = m.weight.detach()
        # uniform on [-std sqrt(3), std sqrt(3)]: the sample std within sampling error (>= 576 weights:
        # 10% is over 5 standard errors), every weight inside the bound and the largest near it
        assert w.std().item() == pytest.approx(std, rel=0.1), name
        bound = std * math.sqrt(3)
        assert bound * 0.9 < w.abs().max().item() <= bound * 1.001, name
        assert m.bias is None or not m.bias.any(), name
    if role == "generator":  # the examples: a 3x3 512->512 convolution, G's input layer
        assert net.blocks[0].main[3].weight.std().item() == pytest.approx(0.0208, rel=0.03)
        assert net.project.weight.std().item() == pytest.approx(0.0155, rel=0.03)


def test_every_way_of_building_a_resnet_net_gets_the_released_initialisation(tmp_path):
    from conftest import compose_cfg
    from hydra.utils import instantiate

    from anogan.nets import encoder_like

    cfg = compose_cfg("train", ["model=wgangp_resnet", "data.image_size=32", "model.generator.width=4",
                                "model.discriminator.width=4"], tmp_path)
    model = instantiate(cfg.model)  # the config path
    built = build("resnet", "discriminator", image_size=32, channels=1, width=4)  # a checkpoint's record
    E = encoder_like(built, 128)
    for net in (model.generator, model.discriminator, built, E):
        for m in net.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
                assert not m.bias.any()  # PyTorch's default initialises biases non-zero
    # the 3x3 4->4 residual convolution of the first critic block: He, sqrt(4 / (36 + 36))
    for D in (model.discriminator, built):
        bound = math.sqrt(3 * 4 / 72)
        assert 0.8 * bound < D.blocks[0].main[2].weight.abs().max() <= bound * 1.001


# -- G's BatchNorm statistics: G steps only --------------------------------------------------------
def _adam(lr=1e-4):
    return partial(torch.optim.Adam, lr=lr, betas=(0.0, 0.9))


@pytest.mark.parametrize("batches, g_steps", [(2, 0), (3, 1)])
def test_g_batchnorm_statistics_move_in_g_steps_only(batches, g_steps, tmp_path):
    L.seed_everything(0)
    G = ResNetGenerator(16, 1, 8, 4)
    gan = GAN(G, ResNetCritic(16, 1, 4), _adam(), _adam(), prior="normal", objective="wgangp",
              critic_iterations=3)
    before = {k: v.clone() for k, v in G.state_dict().items() if "running" in k}
    L.Trainer(max_epochs=1, limit_train_batches=batches, limit_val_batches=0, logger=False,
              enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
              default_root_dir=tmp_path).fit(gan, datamodule=DigitsDataModule(image_size=16, batch_size=16))
    bns = [m for m in G.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(int(m.num_batches_tracked) == g_steps for m in bns)  # one update per G step, none per critic step
    assert all(m.track_running_stats for m in bns)  # restored after each critic step
    moved = [not torch.equal(before[k], v) for k, v in G.state_dict().items() if "running" in k]
    assert all(moved) if g_steps else not any(moved)


# -- E: BatchNorm in train mode while it trains, running statistics when it scores ----------------------
def test_the_resnet_encoder_trains_on_batch_statistics_and_scores_on_running_ones(tmp_path):
    L.seed_everything(0)
    G, D = ResNetGenerator(16, 1, 8, 4).eval(), ResNetCritic(16, 1, 4)
    module = EncoderTraining(G, D, optimizer=_adam(1e-3), prior="normal")
    E = module.encoder
    L.Trainer(max_steps=3, limit_val_batches=0, logger=False, enable_checkpointing=False,
              enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path).fit(
        module, datamodule=DigitsDataModule(image_size=16, batch_size=16))
    bns = [m for m in E.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(int(m.num_batches_tracked) == 3 for m in bns)  # train mode: updated every step
    assert all(int(m.num_batches_tracked) == 0 for m in G.modules() if isinstance(m, nn.BatchNorm2d))
    x = torch.rand(6, 1, 16, 16) * 2 - 1
    scorer = FAnoGAN(E, G, D)
    together = scorer(x)
    for i in range(6):  # eval mode: an image's score does not depend on the rest of its batch
        alone = scorer(x[i:i + 1])
        for name in together:
            torch.testing.assert_close(alone[name][0], together[name][i])


# -- TF1's RMSProp ----------------------------------------------------------------------------------
def test_tf1_rmsprop_makes_the_hand_computed_tf1_updates():
    """TF1 ApplyRMSProp, momentum 0: ms = 0.9 ms + 0.1 g^2 with ms_0 = 1, w -= lr g / sqrt(ms + 1e-10)."""
    w = torch.tensor([1.0, -2.0], dtype=torch.float64, requires_grad=True)
    opt = TF1RMSprop([w], lr=0.01)
    grads = [torch.tensor([0.5, -1.0], dtype=torch.float64), torch.tensor([0.1, 2.0], dtype=torch.float64)]
    # step 1: ms = 0.9 + 0.1 * (0.25, 1.0) = (0.925, 1.0)
    # step 2: ms = 0.9 * (0.925, 1.0) + 0.1 * (0.01, 4.0) = (0.8335, 1.3)
    expected = [
        [1.0 - 0.01 * 0.5 / math.sqrt(0.925 + 1e-10), -2.0 + 0.01 * 1.0 / math.sqrt(1.0 + 1e-10)],
        [1.0 - 0.01 * 0.5 / math.sqrt(0.925 + 1e-10) - 0.01 * 0.1 / math.sqrt(0.8335 + 1e-10),
         -2.0 + 0.01 * 1.0 / math.sqrt(1.0 + 1e-10) - 0.01 * 2.0 / math.sqrt(1.3 + 1e-10)],
    ]
    for g, want in zip(grads, expected):
        w.grad = g
        opt.step()
        torch.testing.assert_close(w.detach(), torch.tensor(want, dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(opt.state[w]["ms"], torch.tensor([0.8335, 1.3], dtype=torch.float64))


def test_tf1_rmsprop_first_steps_stay_near_lr_where_torch_rmsprop_takes_ten_times_it():
    w_tf, w_pt = (torch.zeros(3, requires_grad=True) for _ in range(2))
    tf, pt = TF1RMSprop([w_tf], lr=5e-5), torch.optim.RMSprop([w_pt], lr=5e-5)
    g = torch.tensor([1e-3, 0.1, 1.0])
    for w, opt in ((w_tf, tf), (w_pt, pt)):
        w.grad = g.clone()
        opt.step()
    # TF1: lr g / sqrt(0.9 + 0.1 g^2) ~ lr g; torch: lr g / (sqrt(0.01 g^2) + 1e-8) ~ 10 lr per weight
    torch.testing.assert_close(-w_tf.detach(), 5e-5 * g / torch.sqrt(0.9 + 0.1 * g * g))
    torch.testing.assert_close(-w_pt.detach(), torch.full((3,), 5e-4), rtol=1e-3, atol=0)
    with pytest.raises(ValueError, match="decay=1"):
        TF1RMSprop([w_tf], decay=1)


# -- the paper's three encoder trainings ------------------------------------------------------------
class _G(nn.Module):  # z (B, 2) -> the image (B, 1, 1, 2) holding z
    z_dim = 2

    def forward(self, z):
        return z.view(-1, 1, 1, 2)


class _E(nn.Module):  # x -> 0.5 x flattened, a linear layer with weight 0.5 I
    z_dim = 2

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 2, bias=False)
        nn.init.eye_(self.lin.weight)
        self.lin.weight.data *= 0.5

    def forward(self, x):
        return self.lin(x.flatten(1))


class _D(nn.Module):  # f(x) = 2 x flattened
    def features(self, x):
        return 2 * x.flatten(1)


@pytest.mark.parametrize("mode, expected", [
    # x = (1, 2) and (3, -1); E(x) = x / 2, G(E(x)) = x / 2, f(x) = 2x, f(G(E(x))) = x
    ("izi", [0.25 * (1 + 4) / 2, 0.25 * (9 + 1) / 2]),                       # mean (x / 2)^2
    ("izi_f", [0.625 + 0.5 * (1 + 4) / 2, 1.25 + 0.5 * (9 + 1) / 2]),        # + kappa mean (2x - x)^2
    # z = (2, -4) and (0, 1): E(G(z)) = z / 2, so mean (z / 2)^2; the images are not used
    ("ziz", [(1 + 4) / 2, (0 + 0.25) / 2]),
])
def test_each_encoder_training_mode_has_the_papers_loss(mode, expected):
    module = EncoderTraining(_G(), _D(), _E(), optimizer=_adam(), kappa=0.5, mode=mode)
    x = torch.tensor([[[[1.0, 2.0]]], [[[3.0, -1.0]]]])
    z = torch.tensor([[2.0, -4.0], [0.0, 1.0]])
    torch.testing.assert_close(module.loss(x, z), torch.tensor(expected))


def test_an_unknown_encoder_mode_is_named_with_the_presets():
    with pytest.raises(ValueError, match="encoder.module.mode='zz'.*encoder=ziz"):
        EncoderTraining(_G(), _D(), _E(), optimizer=_adam(), mode="zz")


@pytest.mark.parametrize("preset", ["ziz", "izi", "izi_f"])
def test_each_encoder_preset_trains_e_alone_and_logs_its_loss(preset, tmp_path):
    from conftest import compose_cfg
    from hydra.utils import instantiate

    cfg = compose_cfg("train", [f"encoder={preset}"], tmp_path)
    assert cfg.encoder.module.mode == preset and cfg.encoder.module.kappa == 1.0
    L.seed_everything(0)
    G, D = ResNetGenerator(16, 1, 8, 4), ResNetCritic(16, 1, 4)
    module = instantiate(cfg.encoder.module, generator=G, discriminator=D, prior="normal")
    E0 = {k: v.clone() for k, v in module.encoder.state_dict().items()}
    GD0 = [v.clone() for v in [*G.state_dict().values(), *D.state_dict().values()]]
    trainer = L.Trainer(max_steps=2, limit_val_batches=0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(module, datamodule=DigitsDataModule(image_size=16, batch_size=16))
    assert f"train/{preset.replace('_', '')}_loss" in trainer.callback_metrics
    assert any(not torch.equal(E0[k], v) for k, v in module.encoder.state_dict().items())
    assert all(torch.equal(a, b) for a, b in zip(GD0, [*G.state_dict().values(), *D.state_dict().values()]))
    ckpt = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(ckpt)
    assert ckpt["anogan_encoder"]["mode"] == preset
    load_encoder(ckpt)


# -- checkpoints of the earlier ResNet layout ---------------------------------------------------------
def test_a_resnet_checkpoint_of_the_earlier_layout_is_refused_naming_the_fix():
    G, D = ResNetGenerator(16, 1, 8, 4), ResNetCritic(16, 1, 4)
    state = {f"generator.{k}": v for k, v in G.state_dict().items()}
    state |= {f"discriminator.{k}": v for k, v in D.state_dict().items()}
    state["discriminator.blocks.0.main.2.bias"] = torch.zeros(4)  # the earlier first convolutions had biases
    ckpt = {"state_dict": state, "anogan_nets": {"generator": G.config, "discriminator": D.config,
                                                 "prior": "normal", "family": "resnet"}}
    with pytest.raises(CheckpointError, match="bias-free first convolutions.*train them again"):
        load_gan(ckpt)
