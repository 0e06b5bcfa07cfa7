"""anogan's Hydra launchers (``conf/hydra/launcher/``): submitit's local and SLURM launchers, made to
see the GPUs. Hydra instantiates launchers only from this package; the logic is in ``anogan.runtime.launchers``."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, filter_overrides
from hydra_plugins.hydra_submitit_launcher import submitit_launcher
from omegaconf import OmegaConf

from anogan.runtime import launchers

log = logging.getLogger(__name__)
# the settings submitit's local executor reads (the others, e.g. mem_gb, mean nothing locally)
LOCAL_KEYS = ("timeout_min", "tasks_per_node", "signal_delay_s", "stderr_to_stdout", "setup")


class LocalLauncher(submitit_launcher.LocalLauncher):
    """submitit's local launcher (every job in its own process, all at once), each job on its own GPUs
    (``anogan.runtime.launchers.job_gpus``); the GPUs of every job are logged."""

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        import submitit

        assert self.config is not None and len(job_overrides) > 0
        placement = launchers.job_gpus(len(job_overrides), self.params.get("gpus_per_node"),
                                      launchers.visible_gpus())
        executor = submitit.LocalExecutor(folder=self.params["submitit_folder"])
        executor.update_parameters(**{k: v for k, v in self.params.items() if k in LOCAL_KEYS})
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if "mode" in self.config.hydra.sweep:
            os.chmod(sweep_dir, mode=int(str(self.config.hydra.sweep.mode), 8))
        log.info(f"Submitit 'local' sweep output dir : {sweep_dir}")
        jobs = []
        for k, (overrides, gpus) in enumerate(zip(job_overrides, placement)):
            idx = initial_job_idx + k
            log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))} "
                     f"(CUDA_VISIBLE_DEVICES={','.join(map(str, gpus)) or 'none: CPU'})")
            # submitit exports the first gpus_per_node of visible_gpus as the job's CUDA_VISIBLE_DEVICES
            executor.update_parameters(gpus_per_node=len(gpus), visible_gpus=gpus)
            jobs.append(executor.submit(self, list(overrides), "hydra.sweep.dir", idx, f"job_id_for_{idx}",
                                        Singleton.get_state()))
        return [j.results()[0] for j in jobs]


class SlurmLauncher(submitit_launcher.SlurmLauncher):
    """submitit's SLURM launcher, refusing a GPU count other than ``trainer.devices`` (the processes
    Lightning starts, one per SLURM task and GPU) before anything is submitted."""

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        launchers.check_slurm_gpus(self.params.get("gpus_per_node"), OmegaConf.select(self.config, "trainer.devices"))
        return super().launch(job_overrides, initial_job_idx)
