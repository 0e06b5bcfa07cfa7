"""The aCAE baseline: it trains (reconstruction improves), scores like AnoGAN, and loads back."""

import lightning as L
import pytest
import torch

from anogan.nets import scores as S
from anogan.models.acae import ACAE, ACAEScores, load_acae
from anogan.metrics.detection import auroc
from anogan.data import DigitsDataModule
from anogan.nets import AdversarialAutoencoder
from anogan.errors import InputError, MissingInputError


def _images(dataset):
    items = [dataset[i] for i in range(len(dataset))]
    return torch.stack([it["image"] for it in items]), torch.stack([it["label"] for it in items])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    L.seed_everything(0)
    dm = DigitsDataModule(normal_classes=[0], image_size=32, batch_size=32, eval_train_samples=0, seed=0)
    dm.setup()
    net = AdversarialAutoencoder(image_size=32, channels=1, z_dim=32, width=8)
    adam = lambda p: torch.optim.Adam(p, lr=1e-3, betas=(0.5, 0.999))  # noqa: E731
    module = ACAE(net, adam, adam, adversarial_weight=0.01)
    x, _ = _images(dm.train_set)
    net.eval()
    with torch.no_grad():
        before = float((x - net(x)).abs().mean())
    trainer = L.Trainer(accelerator="cpu", max_epochs=15, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path_factory.mktemp("acae"))
    trainer.fit(module, datamodule=dm)
    net.eval()
    with torch.no_grad():
        after = float((x - net(x)).abs().mean())
    path = tmp_path_factory.mktemp("acae_ckpt") / "acae.ckpt"
    trainer.save_checkpoint(path)
    return {"dm": dm, "net": net, "before": before, "after": after, "path": path, "trainer": trainer}


def test_acae_training_lowers_reconstruction_error(trained):
    assert trained["after"] < 0.6 * trained["before"]
    batches = len(trained["dm"].train_dataloader())
    assert trained["trainer"].global_step == 2 * 15 * batches  # a D and an autoencoder step per batch


def test_acae_scores_follow_anogans_equations_and_separate_digits(trained):
    net = load_acae(trained["path"])
    x, labels = _images(trained["dm"].test_set)
    out = ACAEScores(net, lam=0.3)(x)
    assert set(out) == {"acae_residual", "acae_discrimination", "acae_anomaly"}
    with torch.no_grad():
        recon = net(x)
        res = S.residual(x, recon)
        dis = S.discrimination(net.discriminator.features(x), net.discriminator.features(recon))
    torch.testing.assert_close(out["acae_residual"], res)
    torch.testing.assert_close(out["acae_discrimination"], dis)
    torch.testing.assert_close(out["acae_anomaly"], 0.7 * res + 0.3 * dis)
    assert auroc(out["acae_anomaly"], labels) > 0.75
    assert auroc(out["acae_residual"], labels) > 0.75


def test_loading_a_gan_checkpoint_as_acae_is_named(tiny_ckpt, tmp_path):
    with pytest.raises(InputError, match="anogan_acae"):
        load_acae(tiny_ckpt)
    with pytest.raises(MissingInputError, match="acae_ckpt_path"):
        load_acae(tmp_path / "none.ckpt")
