"""Several processes (DDP) that do the work of one: the Trainer's strategy and cluster environment,
and the check that a Hydra multirun does not make Lightning start processes.

- ``build_trainer``: every Trainer of a run (GAN, encoder, aCAE, evaluation) is instantiated here.
  Lightning resolves the configured accelerator, devices, strategy and cluster; then, whatever the
  settings (``trainer=ddp``, or ``trainer.devices=4`` that makes Lightning pick plain ``ddp``), a DDP
  strategy finds unused parameters (the GAN's D step leaves G without gradients and its G step D;
  the aCAE alternates too), and under SLURM Lightning's own SIGUSR1 requeue is off (``SLURMEnvironment
  (auto_requeue=False)``: ``anogan.runtime.preemption.requeue_on_signal`` owns the signal on every rank).
- ``starts_processes`` / ``anogan.engine.sweep.check_ddp_launch``: whether Lightning itself would start
  the processes (not SLURM tasks, not torchrun), which reruns the command line in a multirun.

Per-process randomness (z, WGAN-GP weights, data shard) is ``anogan.runtime.seeding.EpochSeed``'s; the
per-process share of the training images is decided in ``anogan.data.datamodule``.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager

import lightning as L
import numpy as np
import torch
from hydra.utils import instantiate
from lightning.fabric.plugins.environments import ClusterEnvironment, SLURMEnvironment
from lightning.pytorch.strategies import DDPStrategy, StrategyRegistry

log = logging.getLogger(__name__)
FIND_UNUSED = "_find_unused_parameters_true"


def build_trainer(trainer_cfg, **kwargs) -> L.Trainer:
    """``hydra.utils.instantiate(trainer_cfg, **kwargs)``, then fixed where Lightning's choice cannot
    run this project's modules (instantiated again, with the same arguments, when it is):

    * a DDP strategy named by a string (``auto`` resolved to DDP, ``ddp``, ``ddp_spawn``, ...) becomes
      its ``*_find_unused_parameters_true`` variant: the alternating D and G steps each leave one net
      without gradients, which plain DDP refuses in the first batch;
    * a SLURM cluster environment gets ``auto_requeue=False`` (one owner of SIGUSR1, see
      ``anogan.runtime.preemption.requeue_on_signal``).

    A strategy or cluster environment configured as an object (``_target_``) is left as it is."""
    trainer: L.Trainer = instantiate(trainer_cfg, **kwargs)
    fix = {}
    name = trainer_cfg.get("strategy", "auto")
    if isinstance(trainer.strategy, DDPStrategy) and isinstance(name, str) and FIND_UNUSED not in name:
        variant = ("ddp" if name == "auto" else name) + FIND_UNUSED
        if variant in StrategyRegistry:
            fix["strategy"] = variant
    env = getattr(trainer.strategy, "cluster_environment", None)
    if isinstance(env, SLURMEnvironment) and env.auto_requeue:
        plugins = kwargs.get("plugins") or []
        plugins = list(plugins) if isinstance(plugins, list | tuple) else [plugins]
        if not any(isinstance(p, ClusterEnvironment) for p in plugins):
            fix["plugins"] = [*plugins, SLURMEnvironment(auto_requeue=False)]
    if not fix:
        return trainer
    log.info("trainer: %s", ", ".join(f"{k}={v}" for k, v in fix.items()))
    return instantiate(trainer_cfg, **{**kwargs, **fix})


def starts_processes(trainer: L.Trainer) -> bool:
    """Whether ``trainer`` runs several processes that Lightning itself starts (``ddp`` reruns the
    command line, ``ddp_spawn`` spawns), rather than ones started by SLURM (one task per device) or
    torchrun."""
    env = getattr(trainer.strategy, "cluster_environment", None)
    return trainer.world_size > 1 and not (env is not None and env.creates_processes_externally)


@contextmanager
def quiet_info():
    """Lightning's INFO lines (``GPU available: ...``) silenced, for a Trainer built only to inspect it."""
    logging.disable(logging.INFO)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def cudnn_benchmark(cfg, fixed_shapes: bool = True) -> bool:
    """``trainer.benchmark`` when set, else cuDNN's autotuner on wherever the batch shapes are fixed and
    ``trainer.deterministic`` is off (the autotuner may pick other algorithms run to run; no effect on CPU)."""
    if cfg.trainer.get("benchmark") is not None:
        return bool(cfg.trainer.benchmark)
    return fixed_shapes and not cfg.trainer.get("deterministic")


def gather_rows(pl_module: L.LightningModule, rows: dict) -> dict:
    """Per-image rows of every process, each image once. ``rows``: (N, ...) tensors (nested dicts
    allowed) with ``split`` and ``index``; every process must hold the same N, as the
    DistributedSampler makes it by repeating a few images, which are dropped here (first copy kept)."""
    from lightning.fabric.utilities.apply_func import apply_to_collection

    rows = apply_to_collection(rows, torch.Tensor, lambda t: t.to(pl_module.device))
    rows = apply_to_collection(pl_module.all_gather(rows), torch.Tensor, lambda t: t.flatten(0, 1).cpu())
    keys = rows["split"].long() * (int(rows["index"].max()) + 1) + rows["index"].long()
    _, first = np.unique(keys.numpy(), return_index=True)
    keep = torch.from_numpy(np.sort(first))
    return apply_to_collection(rows, torch.Tensor, lambda t: t[keep])


def padded_duplicates(trainer: L.Trainer, seen: int, n: int) -> torch.Tensor:
    """(n,) bool: which of the next n test images of this process, after ``seen`` before, are the
    DistributedSampler's padding (repeats of images that another process maps). Process r gets the
    positions r, r + W, r + 2W, ... of the index list padded from N to a multiple of W."""
    world = trainer.world_size
    if world == 1:
        return torch.zeros(n, dtype=torch.bool)
    loaders = trainer.test_dataloaders
    loader = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
    positions = (seen + torch.arange(n)) * world + trainer.global_rank
    return positions >= len(loader.dataset)
