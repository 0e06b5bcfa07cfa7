import lightning as L
import pytest
import torch

from anogan.models.inversion import Inversion
from anogan.nets import Discriminator, Generator
from anogan.nets.prior import initial_z
from anogan.nets.scores import SCORE_NAMES
from anogan.errors import InputError


def make_inversion(**kwargs) -> Inversion:
    torch.manual_seed(0)
    G, D = Generator(32, 1, z_dim=16, width=8), Discriminator(32, 1, width=8)
    # non-trivial BatchNorm running statistics, as after training
    for m in list(G.modules()) + list(D.modules()):
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return Inversion(G, D, **{"steps": 12, "lr": 0.05, "seed": 3, **kwargs})


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(1)
    return torch.rand(6, 1, 32, 32, generator=g) * 2 - 1, torch.tensor([4, 17, 0, 9, 123, 5])


def test_batched_inversion_matches_single_image(batch):
    x, index = batch
    inv = make_inversion()
    full = inv.map_batch(x, index)
    for i in range(len(x)):
        one = inv.map_batch(x[i : i + 1], index[i : i + 1])
        torch.testing.assert_close(one["z"], full["z"][i : i + 1], atol=1e-5, rtol=0)
        torch.testing.assert_close(one["z_reference"], full["z_reference"][i : i + 1], atol=1e-5, rtol=0)
        for name in SCORE_NAMES:
            torch.testing.assert_close(one["scores"][name], full["scores"][name][i : i + 1],
                                       atol=1e-5, rtol=1e-5)


def test_initial_z_depends_only_on_seed_and_index():
    a = initial_z("uniform", 3, torch.tensor([5, 9, 2]), 16)
    b = initial_z("uniform", 3, torch.tensor([2, 5]), 16)
    torch.testing.assert_close(a[[2, 0]], b)
    assert not torch.equal(initial_z("uniform", 4, torch.tensor([5]), 16), a[:1])
    assert a.abs().max() <= 1


def test_mapping_leaves_g_and_d_bit_identical_and_lowers_the_loss(batch):
    _, index = batch
    inv = make_inversion(steps=30)
    with torch.no_grad():  # queries G can reproduce: the mapping must find them
        x = inv.generator(torch.rand(6, 16, generator=torch.Generator().manual_seed(7)) * 2 - 1)
    before = {k: v.clone() for k, v in inv.state_dict().items()}
    out = inv.map_batch(x, index)
    after = inv.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None and not p.requires_grad for p in inv.parameters())
    first, last = out["mapping_loss"].unbind(1)
    assert (last < first).all()
    assert float((last / first).mean()) < 0.8
    assert out["z"].abs().max() <= 1 and out["z_reference"].abs().max() <= 1  # uniform prior's support


def test_recorded_steps_equal_the_final_scores_of_a_shorter_run(batch):
    x, index = batch
    long = make_inversion(steps=12, record_steps=[1, 5]).map_batch(x, index)
    for t in (1, 5):  # steps >= 1: Gamma = 0 is refused
        short = make_inversion(steps=t).map_batch(x, index)
        for name in SCORE_NAMES:
            torch.testing.assert_close(long["recorded"][t][name], short["scores"][name], atol=1e-6, rtol=1e-6)


def test_reference_mapping_can_be_switched_off(batch):
    x, index = batch
    out = make_inversion(reference=False).map_batch(x, index)
    assert out["z_reference"] is None
    assert set(out["scores"]) == {"residual", "discrimination", "anomaly", "discriminator"}
    with_ref = make_inversion().map_batch(x, index)
    torch.testing.assert_close(out["scores"]["anomaly"], with_ref["scores"]["anomaly"], atol=1e-5, rtol=1e-5)


def test_bad_settings_are_rejected():
    with pytest.raises(InputError, match="inversion.lam=1.5"):
        make_inversion(lam=1.5)
    with pytest.raises(InputError, match=r"record_steps \[20\]"):
        make_inversion(steps=10, record_steps=[5, 20])


class _Batches(torch.utils.data.Dataset):
    def __init__(self, x, index):
        self.x, self.index = x, index

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"image": self.x[i], "label": torch.tensor(i % 2), "index": self.index[i], "split": torch.tensor(2)}


def test_inversion_needs_a_trainer_without_inference_mode(batch):
    x, index = batch
    loader = torch.utils.data.DataLoader(_Batches(x, index), batch_size=4)
    kw = dict(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    with pytest.raises(RuntimeError, match=r"Trainer\(inference_mode=False\)"):
        L.Trainer(**kw).test(make_inversion(), loader, verbose=False)
    inv = make_inversion()
    outputs = []

    class Keep(L.Callback):
        def on_test_batch_end(self, trainer, pl_module, out, *args):
            outputs.append(out)

    L.Trainer(inference_mode=False, callbacks=[Keep()], **kw).test(inv, loader, verbose=False)
    z = torch.cat([o["z"] for o in outputs])
    torch.testing.assert_close(z, inv.map_batch(x, index)["z"], atol=1e-5, rtol=0)
    assert not inv.generator.training and not inv.discriminator.training
