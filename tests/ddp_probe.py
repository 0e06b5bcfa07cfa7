"""A callback the DDP and SLURM tests add to ``train.py`` (``+callbacks.probe._target_=ddp_probe.Probe``,
with ``tests/`` on PYTHONPATH): it records, in every process, what the GAN draws and trains on, and can
kill the run at a chosen batch.

Per process it writes ``<run dir>/probe/rank<r>.pt`` at the end of training: ``z`` (one (n, z_dim)
tensor per ``sample_z`` call of a training step, in order), ``eps`` (the WGAN-GP interpolation weights of
each gradient penalty), ``index`` (the dataset rows of each training batch) and ``epoch`` (per batch).
With ``ANOGAN_PROBE_KILL_AT=<epoch>:<batch>`` in the environment, process 0 sends SIGKILL to its whole
process group when that batch starts (the test starts the run in a session of its own). With
``ANOGAN_PROBE_NAN_AT=<rank>:<epoch>:<batch>``, that process's batch becomes NaN (its loss too); with
``ANOGAN_PROBE_SLEEP=<seconds>`` every batch starts that much later (time to signal a run mid-training).
"""

import os
import signal
import time
from pathlib import Path

import lightning as L
import torch

from anogan.nets import losses


class Probe(L.Callback):
    def on_fit_start(self, trainer, pl_module) -> None:
        self.record = {"z": [], "eps": [], "index": [], "epoch": []}
        sample_z, penalty = pl_module.sample_z, losses.gradient_penalty

        def recorded_z(n, generator=None):
            z = sample_z(n, generator)
            if generator is None:  # the training draws (SampleGrid passes its own generator)
                self.record["z"].append(z.detach().cpu().clone())
            return z

        def recorded_penalty(D, real, fake, eps, *scale):
            self.record["eps"].append(eps.detach().cpu().flatten().clone())
            return penalty(D, real, fake, eps, *scale)

        pl_module.sample_z = recorded_z
        losses.gradient_penalty = recorded_penalty

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        time.sleep(float(os.environ.get("ANOGAN_PROBE_SLEEP", 0)))
        self.record["index"].append(batch["index"].cpu().clone())
        self.record["epoch"].append(trainer.current_epoch)
        kill_at = os.environ.get("ANOGAN_PROBE_KILL_AT")
        if trainer.global_rank == 0 and kill_at == f"{trainer.current_epoch}:{batch_idx}":
            os.killpg(os.getpgrp(), signal.SIGKILL)
        if os.environ.get("ANOGAN_PROBE_NAN_AT") == f"{trainer.global_rank}:{trainer.current_epoch}:{batch_idx}":
            batch["image"].fill_(float("nan"))

    def on_train_end(self, trainer, pl_module) -> None:
        out = Path(trainer.default_root_dir) / "probe"
        out.mkdir(parents=True, exist_ok=True)
        torch.save(self.record, out / f"rank{trainer.global_rank}.pt")
