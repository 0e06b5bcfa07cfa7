"""The stages after the GAN: f-AnoGAN's encoder and the aCAE baseline, trained in the GAN's run
directory (``checkpoints/encoder.ckpt``, ``checkpoints/acae.ckpt``), and their scorers for evaluation.

``python train.py encoder=izif acae=dcgan`` trains GAN, then E (G and D frozen), then the aCAE, then
evaluates with all of them; ``evaluate.py`` finds the two checkpoints beside ``ckpt_path`` unless
``encoder_ckpt_path`` / ``acae_ckpt_path`` name others.
"""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn

from anogan.nets import Discriminator, Generator

log = logging.getLogger(__name__)
STAGES = ("encoder", "acae")  # config group = checkpoint name


def fit_stage(cfg: DictConfig, name: str, module: L.LightningModule, datamodule, ckpt_dir: Path) -> Path:
    """Fit ``module`` for ``cfg.<name>.max_epochs`` epochs with the run's trainer settings; save
    ``<ckpt_dir>/<name>.ckpt``."""
    trainer: L.Trainer = instantiate(
        cfg.trainer, max_epochs=cfg[name].max_epochs, callbacks=[], logger=False, enable_checkpointing=False
    )
    trainer.fit(module, datamodule=datamodule)
    path = ckpt_dir / f"{name}.ckpt"
    trainer.save_checkpoint(path, weights_only=False)  # the full state; explicit, or Lightning logs its default
    log.info("%s trained: %s (%s)", name, path,
             {k: round(float(v), 5) for k, v in trainer.callback_metrics.items() if v.numel() == 1})
    return path


def fit_stages(cfg: DictConfig, gan_ckpt: str | Path, datamodule) -> dict[str, Path]:
    """Train the configured stages (``cfg.encoder``, ``cfg.acae``) after the GAN of ``gan_ckpt``."""
    from anogan.inversion import load_gan

    paths: dict[str, Path] = {}
    ckpt_dir = Path(gan_ckpt).parent
    if cfg.get("encoder"):
        G, D, _, _ = load_gan(gan_ckpt)
        module = instantiate(cfg.encoder.module, generator=G, discriminator=D)
        paths["encoder"] = fit_stage(cfg, "encoder", module, datamodule, ckpt_dir)
    if cfg.get("acae"):
        paths["acae"] = fit_stage(cfg, "acae", instantiate(cfg.acae.module), datamodule, ckpt_dir)
    return paths


def stage_checkpoint(cfg: DictConfig, name: str, gan_ckpt: str | Path) -> Path | None:
    """``cfg.<name>_ckpt_path`` when set, else ``<name>.ckpt`` beside the GAN checkpoint if present."""
    explicit = cfg.get(f"{name}_ckpt_path")
    if explicit:
        return Path(explicit)
    beside = Path(gan_ckpt).parent / f"{name}.ckpt"
    return beside if beside.is_file() else None


def stage_scorers(
    cfg: DictConfig, gan_ckpt: str | Path, G: Generator, D: Discriminator
) -> tuple[nn.Module | None, list[nn.Module]]:
    """(E or None, scorers) for the evaluation: ``FAnoGAN`` when an encoder checkpoint is found,
    ``ACAEScores`` when an aCAE checkpoint is found."""
    from anogan.acae import ACAEScores, load_acae
    from anogan.encoder import FAnoGAN, load_encoder

    encoder, scorers = None, []
    path = stage_checkpoint(cfg, "encoder", gan_ckpt)
    if path is not None:
        encoder, kappa = load_encoder(path)
        scorers.append(FAnoGAN(encoder, G, D, kappa))
        log.info("f-AnoGAN encoder: %s", path)
    path = stage_checkpoint(cfg, "acae", gan_ckpt)
    if path is not None:
        scorers.append(ACAEScores(load_acae(path), lam=cfg.inversion.lam))
        log.info("aCAE: %s", path)
    return encoder, scorers
