"""The mapping's speed options and fast networks compute what the plain mapping computes."""

import re

import pytest
import torch
from conftest import ROOT, run_script
from test_inversion import make_inversion

from anogan.nets.mapping import LatentProjection, mapping_copy
from anogan.nets import Discriminator, Generator
from anogan.nets.scores import SCORE_NAMES
from anogan.errors import InputError


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(1)
    return torch.rand(6, 1, 32, 32, generator=g) * 2 - 1, torch.tensor([4, 17, 0, 9, 123, 5])


def assert_same_scores(a: dict, b: dict, tol: float = 1e-4) -> None:
    assert set(a["scores"]) == set(b["scores"])
    for name in a["scores"]:
        torch.testing.assert_close(a["scores"][name], b["scores"][name], atol=tol, rtol=tol, msg=name)
    torch.testing.assert_close(a["z"], b["z"], atol=tol, rtol=0)


@pytest.mark.parametrize(("size", "channels", "feature_layer"),
                         [(28, 1, -1), (32, 1, -1), (64, 1, -1), (32, 3, -1), (32, 1, 0), (32, 3, 1)])
def test_mapping_copies_of_g_and_d_compute_the_same_functions(size, channels, feature_layer):
    torch.manual_seed(0)
    G = Generator(size, channels, z_dim=16, width=8).eval()
    D = Discriminator(size, channels, width=8, feature_layer=feature_layer).eval()
    for m in list(G.modules()) + list(D.modules()):
        if isinstance(m, torch.nn.BatchNorm2d):  # every term of the fold away from its identity value
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    before = {k: v.clone() for k, v in {**G.state_dict(), **D.state_dict()}.items()}
    z = torch.rand(5, 16) * 2 - 1
    x = torch.rand(5, channels, size, size) * 2 - 1
    with torch.no_grad():
        fx = D.features(x)

    def loss_and_grad(g, d):
        """The mapping's loss terms and their gradient on z (what the mapping descends)."""
        zz = z.clone().requires_grad_(True)
        gz = g(zz)
        h = d.feature_map(gz)
        loss = (x - gz).abs().sum() + (h.flatten(1) - fx).abs().sum() + d.logits_from_feature_map(h).sum()
        (grad,) = torch.autograd.grad(loss, zz)
        return gz.detach(), h.detach(), loss.detach(), grad

    plain = loss_and_grad(G, D)
    for channels_last in (False, True):
        g, d = mapping_copy(G, channels_last), mapping_copy(D, channels_last)
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in [*g.modules(), *d.modules()])
        with torch.no_grad():
            torch.testing.assert_close(d(x), D(x), atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(d.features(x), fx, atol=1e-5, rtol=1e-5)
        for a, b, what in zip(loss_and_grad(g, d), plain, ("G(z)", "f(G(z))", "loss", "dloss/dz")):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4, msg=f"{what}, channels_last={channels_last}")
    after = {**G.state_dict(), **D.state_dict()}
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert G.net[0].weight.is_contiguous()  # the trained nets keep their memory format


def test_fast_layers_fall_back_on_inputs_they_do_not_cover():
    conv = torch.nn.ConvTranspose2d(4, 3, 2, 1, 0)
    x = torch.randn(2, 4, 3, 3)  # not the 1x1 latent
    torch.testing.assert_close(LatentProjection(conv)(x), conv(x))


@pytest.mark.parametrize("options", [{"channels_last": True}, {"compile": "aot_eager"}])
def test_speed_options_give_the_same_scores(batch, options):
    x, index = batch
    plain = make_inversion(record_steps=[4]).map_batch(x, index)
    fast = make_inversion(record_steps=[4], **options).map_batch(x, index)
    assert_same_scores(fast, plain)
    for name in SCORE_NAMES:
        torch.testing.assert_close(fast["recorded"][4][name], plain["recorded"][4][name], atol=1e-4, rtol=1e-4)


def test_changed_weights_reach_the_mapping(batch):
    x, index = batch
    inv = make_inversion()
    first = inv.map_batch(x, index)
    with torch.no_grad():
        inv.generator.net[-2].weight.mul_(-1)  # in place, as load_state_dict does
    again = inv.map_batch(x, index)
    fresh = make_inversion()
    with torch.no_grad():
        fresh.generator.net[-2].weight.mul_(-1)
    assert_same_scores(again, fresh.map_batch(x, index), tol=1e-6)
    assert (again["generated"] - first["generated"]).abs().max() > 1e-3  # the flipped G, not a stale copy


def test_early_stop_stops_each_mapping_where_a_shorter_run_ends(batch):
    x, index = batch
    steps = 30
    out = make_inversion(steps=steps, early_stop=True, tol=0.01, patience=3, record_steps=[20]).map_batch(x, index)
    taken = out["steps_taken"]
    assert taken.shape == (6, 2)
    assert (taken < steps).any()
    for k in sorted(set(taken[:, 0].tolist())):
        rows = (taken[:, 0] == k).nonzero().flatten()
        short = make_inversion(steps=k).map_batch(x[rows], index[rows])
        torch.testing.assert_close(out["z"][rows], short["z"], atol=1e-5, rtol=0)
        torch.testing.assert_close(out["scores"]["residual"][rows], short["scores"]["residual"], atol=1e-4, rtol=1e-5)
        if k <= 20:  # stopped before the recorded step: recorded there at its final z
            torch.testing.assert_close(out["recorded"][20]["anomaly"][rows], short["scores"]["anomaly"],
                                       atol=1e-4, rtol=1e-5)
    for k in sorted(set(taken[:, 1].tolist())):
        rows = (taken[:, 1] == k).nonzero().flatten()
        short = make_inversion(steps=k).map_batch(x[rows], index[rows])
        torch.testing.assert_close(out["z_reference"][rows], short["z_reference"], atol=1e-5, rtol=0)
    plain = make_inversion(steps=steps).map_batch(x, index)
    assert (plain["steps_taken"] == steps).all()


def test_early_stop_settings_are_checked():
    with pytest.raises(InputError, match="inversion.patience=0"):
        make_inversion(early_stop=True, patience=0)


def test_mapping_benchmark_runs_and_asserts_equal_scores(tmp_path):
    proc = run_script(["benchmarks/mapping.py", "--sizes", "32", "--steps", "2", "--rounds", "1", "--per-image", "2",
                       "--width", "8", "--z-dim", "16", "--device", "cpu"], cwd=ROOT)
    last = proc.stdout.strip().splitlines()[-1]
    values = dict(re.findall(r"(\S+)=(\S+)", last))
    assert values["equal_scores"] == "True"
    for key in ("s32_module", "s32_bare", "s32_per_image", "s32_module_over_bare", "s32_module_over_per_image"):
        assert float(values[key]) > 0
