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

from anogan.runtime.checkpoints import check_stage_identity, gan_identity

log = logging.getLogger(__name__)
STAGES = ("encoder", "acae")  # config group = checkpoint name
FULL_STATE = {"weights_only": False}  # Trainer.save_checkpoint: write optimiser state too


def fit_stage(cfg: DictConfig, name: str, module: L.LightningModule, datamodule, ckpt_dir: Path) -> Path:
    """Fit ``module`` for ``cfg.<name>.max_epochs`` epochs, or ``cfg.<name>.max_steps`` optimiser steps
    (iterations) when set, with the run's trainer settings; save ``<ckpt_dir>/<name>.ckpt``."""
    from anogan.runtime.distributed import build_trainer, cudnn_benchmark
    from anogan.runtime.checkpoints import checkpoint_plugins

    max_steps = cfg[name].get("max_steps") or -1
    trainer = build_trainer(
        cfg.trainer, max_epochs=cfg[name].max_epochs if max_steps < 0 else -1, max_steps=max_steps,
        callbacks=[], logger=False, enable_checkpointing=False, benchmark=cudnn_benchmark(cfg),
        plugins=checkpoint_plugins(instantiate(cfg.trainer.get("plugins"))),  # written atomically
    )
    trainer.fit(module, datamodule=datamodule)
    path = ckpt_dir / f"{name}.ckpt"
    # what to save (the full state, not the weights alone), stated so that Lightning logs no default;
    # reading is always weights_only=True (anogan.runtime.checkpoints.read_checkpoint)
    trainer.save_checkpoint(path, **FULL_STATE)
    log.info("%s trained: %s (%s)", name, path,
             {k: round(float(v), 5) for k, v in trainer.callback_metrics.items() if v.numel() == 1})
    return path


def fit_stages(cfg: DictConfig, gan_ckpt: str | Path, datamodule) -> dict[str, Path]:
    """Train the configured stages (``cfg.encoder``, ``cfg.acae``) after the GAN of ``gan_ckpt``."""
    from anogan.models.inversion import load_gan

    paths: dict[str, Path] = {}
    ckpt_dir = Path(gan_ckpt).parent
    if not (cfg.get("encoder") or cfg.get("acae")):
        return paths
    G, D, prior, _ = load_gan(gan_ckpt)
    if cfg.get("encoder"):
        module = instantiate(cfg.encoder.module, generator=G, discriminator=D, prior=prior)
        paths["encoder"] = fit_stage(cfg, "encoder", module, datamodule, ckpt_dir)
    if cfg.get("acae"):
        module = instantiate(cfg.acae.module)
        module.gan_identity = gan_identity(G, D)  # recorded in acae.ckpt: valid with this GAN only
        paths["acae"] = fit_stage(cfg, "acae", module, datamodule, ckpt_dir)
    return paths


def stage_checkpoint(cfg: DictConfig, name: str, gan_ckpt: str | Path) -> Path | None:
    """``cfg.<name>_ckpt_path`` when set, else ``<name>.ckpt`` beside the GAN checkpoint if present."""
    explicit = cfg.get(f"{name}_ckpt_path")
    if explicit:
        return Path(explicit)
    beside = Path(gan_ckpt).parent / f"{name}.ckpt"
    return beside if beside.is_file() else None


def stage_scorers(
    cfg: DictConfig, gan_ckpt: str | Path, G: nn.Module, D: nn.Module
) -> tuple[nn.Module | None, list[nn.Module]]:
    """(E or None, scorers) for the evaluation: ``FAnoGAN`` when an encoder checkpoint is found,
    ``ACAEScores`` when an aCAE checkpoint is found. Each stage checkpoint must record the
    ``gan_identity`` of G and D (``CheckpointError`` otherwise, naming both files and the fix)."""
    from anogan.models.acae import ACAEScores, load_acae
    from anogan.models.encoder import FAnoGAN, load_encoder
    from anogan.runtime.checkpoints import GAN_IDENTITY, read_stage_checkpoint

    encoder, scorers, identity = None, [], gan_identity(G, D)
    key = {"encoder": "anogan_encoder", "acae": "anogan_acae"}
    ckpts = {}
    for name in STAGES:
        path = stage_checkpoint(cfg, name, gan_ckpt)
        if path is not None:
            ckpts[name] = read_stage_checkpoint(path, key[name], name)
            check_stage_identity(ckpts[name].get(GAN_IDENTITY), identity, name, path, gan_ckpt)
            log.info("%s: %s (trained with this GAN)", name, path)
    if "encoder" in ckpts:
        encoder, kappa = load_encoder(ckpts["encoder"])
        scorers.append(FAnoGAN(encoder, G, D, kappa))
    if "acae" in ckpts:
        scorers.append(ACAEScores(load_acae(ckpts["acae"]), lam=cfg.inversion.lam))
    return encoder, scorers
