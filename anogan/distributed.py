"""Several processes (DDP) that do the work of one: the Trainer's strategy and cluster environment,
and the check that a Hydra multirun does not make Lightning start processes.

- ``build_trainer``: every Trainer of a run (GAN, encoder, aCAE, evaluation) is instantiated here.
  Lightning resolves the configured accelerator, devices, strategy and cluster; then, whatever the
  settings (``trainer=ddp``, or ``trainer.devices=4`` that makes Lightning pick plain ``ddp``), a DDP
  strategy finds unused parameters (the GAN's D step leaves G without gradients and its G step D;
  the aCAE alternates too), and under SLURM Lightning's own SIGUSR1 requeue is off (``SLURMEnvironment
  (auto_requeue=False)``: ``anogan.preemption.requeue_on_signal`` owns the signal on every rank).
- ``starts_processes`` / ``anogan.sweep.check_ddp_launch``: whether Lightning itself would start
  the processes (not SLURM tasks, not torchrun), which reruns the command line in a multirun.

Per-process randomness (z, WGAN-GP weights, data shard) is ``anogan.seeding.EpochSeed``'s; the
per-process share of the training images is decided in ``anogan.data.datamodule``.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager

import lightning as L
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
      ``anogan.preemption.requeue_on_signal``).

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
