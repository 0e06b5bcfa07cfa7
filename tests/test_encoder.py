"""f-AnoGAN's encoder: izi_f training, the one-pass ``fanogan`` score, encoder-initialised mapping, and
``train.py encoder=izif acae=dcgan`` end to end."""

import json

import lightning as L
import numpy as np
import pytest
import torch
from conftest import TINY, compose_cfg
from sklearn.metrics import roc_auc_score
from torch.utils.data import DataLoader

from anogan.nets import scores as S
from anogan.callbacks import read_scores
from anogan.metrics.detection import auroc
from anogan.data import SPLITS
from anogan.models.encoder import EncoderTraining, FAnoGAN, load_encoder
from anogan.models.inversion import Inversion, load_gan
from anogan.nets import Discriminator, Encoder, Generator
from anogan.engine.pipeline import train
from anogan.errors import InputError


Z_DIM = 16


def _teacher() -> tuple[Generator, Discriminator]:
    """A small case with known ground truth: G is a fixed random generator (BatchNorm statistics
    calibrated, outputs spread over [-1, 1]), so the normal images G(z) are exactly reachable; D is a
    fixed random discriminator that supplies f()."""
    torch.manual_seed(0)
    G, D = Generator(32, 1, Z_DIM, 8), Discriminator(32, 1, 8)
    for m in G.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # cumulative average
    G.train()
    with torch.no_grad():
        for _ in range(4):
            G(torch.rand(256, Z_DIM) * 2 - 1)
        G.net[-2].weight.mul_(8.0)  # the last (pre-Tanh) layer: images spread over [-1, 1]
    return G.eval(), D.eval()


def _normal_and_anomalous(G, n: int, seed: int):
    """n images G(z), z ~ U[-1, 1], and n anomalous ones: noise with the same pixel mean and std."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        normal = G(torch.rand(n, Z_DIM, generator=gen) * 2 - 1)
    noise = torch.randn(normal.shape, generator=gen) * normal.std() + normal.mean()
    return normal, noise.clamp(-1, 1)


@pytest.fixture(scope="module")
def trained_encoder(tmp_path_factory):
    """E fitted on 512 normal images of the teacher G; the izi_f loss before and after."""
    G, D = _teacher()
    L.seed_everything(0)
    module = EncoderTraining(G, D, Encoder(32, 1, Z_DIM, 8), lambda p: torch.optim.Adam(p, lr=2e-3), kappa=1.0)
    train_x, _ = _normal_and_anomalous(G, 512, seed=1)
    loader = DataLoader([{"image": x} for x in train_x], batch_size=64, shuffle=True,
                        generator=torch.Generator().manual_seed(0))
    module.eval()
    with torch.no_grad():
        before = float(module.loss(train_x).mean())
    trainer = L.Trainer(accelerator="cpu", max_epochs=25, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path_factory.mktemp("enc"))
    trainer.fit(module, train_dataloaders=loader)
    module.eval()
    with torch.no_grad():
        after = float(module.loss(train_x).mean())
    path = tmp_path_factory.mktemp("enc_ckpt") / "encoder.ckpt"
    trainer.save_checkpoint(path)
    G0, D0 = _teacher()
    return {"G": G, "D": D, "G0": G0, "D0": D0, "before": before, "after": after, "path": path}


def test_encoder_training_lowers_izif_loss_and_keeps_g_d_frozen(trained_encoder):
    t = trained_encoder
    assert t["after"] < 0.5 * t["before"]
    for a, b in zip(list(t["G0"].state_dict().values()) + list(t["D0"].state_dict().values()),
                    list(t["G"].state_dict().values()) + list(t["D"].state_dict().values())):
        assert torch.equal(a, b)  # weights and BatchNorm statistics untouched


def test_fanogan_score_separates_normal_from_anomalous(trained_encoder):
    t = trained_encoder
    E, kappa = load_encoder(t["path"])
    normal, anomalous = _normal_and_anomalous(t["G"], 100, seed=2)  # unseen images
    score = FAnoGAN(E, t["G"], t["D"], kappa)(torch.cat([normal, anomalous]))["fanogan"]
    assert score.shape == (200,)
    assert auroc(score, torch.arange(200) >= 100) > 0.9


def test_fanogan_is_one_forward_pass_without_optimisation(trained_encoder, monkeypatch):
    t = trained_encoder
    E, kappa = load_encoder(t["path"])
    x = torch.cat(_normal_and_anomalous(t["G"], 20, seed=3))
    steps = []
    monkeypatch.setattr(torch.optim.Adam, "step", lambda self, *a, **k: steps.append(1))
    out = FAnoGAN(E, t["G"], t["D"], kappa)(x)["fanogan"]
    assert steps == [] and out.grad_fn is None
    with torch.no_grad():
        gez = t["G"](E(x))
        expected = S.fanogan(x, gez, t["D"].features(x), t["D"].features(gez), kappa)
    torch.testing.assert_close(out, expected)
    monkeypatch.undo()
    # inside the evaluation it does not depend on the mapping's steps
    idx = torch.arange(len(x))
    for steps in (1, 3):
        inv = Inversion(t["G"], t["D"], steps=steps, scorers=[FAnoGAN(E, t["G"], t["D"], kappa)])
        torch.testing.assert_close(inv.map_batch(x, idx)["scores"]["fanogan"], expected)


def test_encoder_initialised_mapping_starts_lower_than_random(trained_encoder):
    t = trained_encoder
    E, _ = load_encoder(t["path"])
    x, _ = _normal_and_anomalous(t["G"], 100, seed=4)
    idx = torch.arange(len(x))
    first = {}
    for init in ("random", "encoder"):
        inv = Inversion(t["G"], t["D"], steps=1, reference=False, init=init, encoder=E)
        out = inv.map_batch(x, idx)
        first[init] = float(out["mapping_loss"][:, 0].mean())
        if init == "encoder":  # started at E(x): one Adam step moves each coordinate by at most lr
            with torch.no_grad():
                assert float((out["z"] - E(x)).abs().max()) <= inv.hparams.lr + 1e-6
    assert first["encoder"] < 0.6 * first["random"]


def test_encoder_init_without_an_encoder_is_named(tiny_ckpt):
    G, D, _, _ = load_gan(tiny_ckpt)
    with pytest.raises(InputError, match="encoder_ckpt_path"):
        Inversion(G, D, init="encoder")
    with pytest.raises(InputError, match="inversion.init='zeros'"):
        Inversion(G, D, init="zeros")
    with pytest.raises(InputError, match="anogan_encoder"):
        load_encoder(tiny_ckpt)


def test_train_with_encoder_and_acae_reports_fanogan_and_acae(tmp_path, monkeypatch):
    """`python train.py encoder=izif acae=dcgan`: GAN, E, aCAE in one run dir; all scored."""
    from anogan.callbacks import figures

    legends = {}
    real_save = figures._save

    def save(fig, path):
        if path.stem.startswith("roc_"):
            legends[path.stem] = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
        return real_save(fig, path)

    monkeypatch.setattr(figures, "_save", save)
    cfg = compose_cfg("train", TINY + ["encoder=izif", "acae=dcgan", "logger=none", "inversion.init=encoder"],
                      tmp_path)
    train(cfg)
    for name in ("last", "encoder", "acae"):
        assert (tmp_path / "checkpoints" / f"{name}.ckpt").is_file()
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    rows = read_scores(tmp_path / "scores.h5")
    test = rows["split"] == SPLITS["test"]
    for name in ("fanogan", "acae_residual", "acae_discrimination", "acae_anomaly"):
        scores = rows[f"scores/{name}"][test]
        assert np.isfinite(scores).all() and scores.std() > 0, name  # a real score per image
        assert metrics["scores"][name]["auroc"] == pytest.approx(roc_auc_score(rows["label"][test], scores),
                                                                 abs=1e-6), name
    assert [lbl.split(" (")[0] for lbl in legends["roc_models"]] == ["AnoGAN", "GAN_R", "P_D", "f-AnoGAN", "aCAE"]
    assert (tmp_path / "figures" / "roc_models.png").stat().st_size > 5000
