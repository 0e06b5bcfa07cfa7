"""Seeding of training: what makes a resumed run, and every process of a DDP run, draw what an
uninterrupted run draws.

- ``epoch_seed`` / ``EpochSeed``: the random draws of training epoch e on process (rank) r (data order,
  z and the WGAN-GP interpolation weights of the GAN steps) are a function of (seed, e, r) only, so a
  run resumed from ``last.ckpt`` ends with the same weights as one never stopped, and the processes of
  a DDP run draw different z (each its own share of the global batch).

(The initial z of the mapping, a function of (seed, image), is ``anogan.nets.prior.initial_z``.)
"""

from __future__ import annotations

import random

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, RandomSampler


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """The seed of training epoch ``epoch`` on process ``rank`` (DDP's global rank; 0 without DDP), in
    [0, 2**63). Rank 0 keeps the seed of a single-process run; other ranks get seeds drawn by numpy's
    SeedSequence from (seed, epoch, rank), distinct from each other and from rank 0's."""
    if rank == 0:
        return (int(seed) * 1_000_003 + int(epoch)) % 2**63
    state = np.random.SeedSequence([int(seed) % 2**32, int(epoch), int(rank)]).generate_state(2, np.uint32)
    return (int(state[0]) << 31 | int(state[1]) >> 1) % 2**63


class EpochSeed(L.Callback):
    """Reseeds the global RNGs (CPU and every GPU) and the training sampler's generator at the start of
    every epoch with ``epoch_seed(seed, epoch, rank)``, so that epoch e draws the same data order and the
    same z whether the run started at epoch 0 or was resumed from a checkpoint, and each DDP process
    draws its own z and WGAN-GP interpolation weights (from the generator of the device it trains on).

    Under DDP the data shard of a process is Lightning's ``DistributedSampler`` (replacing the
    loader's sampler): its order is a function of (seed, epoch) (Lightning passes ``seed_everything``'s
    seed and calls ``set_epoch``) and the shard one of the rank, so it is exact on resume too.
    (With ``data.num_workers > 0`` the workers fetch the first indices before this hook runs, so the
    order is exact only with ``num_workers=0``, the CPU default.)"""

    def __init__(self, seed: int):
        self.seed = seed

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        s = epoch_seed(self.seed, trainer.current_epoch, trainer.global_rank)
        torch.manual_seed(s)  # seeds the CUDA generators too
        np.random.seed(s % 2**32)
        random.seed(s)
        loaders = trainer.train_dataloader
        loaders = loaders.values() if isinstance(loaders, dict) else (
            loaders if isinstance(loaders, list | tuple) else [loaders])
        for dl in loaders:
            sampler = getattr(dl, "sampler", None) if isinstance(dl, DataLoader) else None
            if isinstance(sampler, RandomSampler):
                # a generator of the sampler's own: the loader's also seeds each new iterator, which
                # Lightning creates before this hook in a run's first epoch and after it in later ones
                sampler.generator = torch.Generator().manual_seed(s)  # drawn from lazily, after this
