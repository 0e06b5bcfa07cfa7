"""The GPUs of the jobs of a multirun: ``hydra/launcher=local`` runs every job at once, each on its own
GPU(s) of the machine, and ``hydra/launcher=slurm`` asks SLURM for the GPUs ``trainer.devices`` uses. The
launchers themselves are Hydra plugins (Hydra instantiates launchers only from the ``hydra_plugins``
package): ``hydra_plugins/anogan_launchers/launchers.py``, built on these functions.

submitit's local executor exports ``CUDA_VISIBLE_DEVICES`` to each job: ``""`` with ``gpus_per_node: 0``
(every job on the CPU, or failing with ``trainer=gpu``, on a GPU machine), and the first N GPUs with N
(every parallel job on GPU 0 with 1). Our ``LocalLauncher`` gives job k the GPUs ``k*n .. k*n+n-1`` (modulo
the GPUs visible to the sweep: jobs share a GPU only when there are more jobs than GPUs), n =
``hydra.launcher.gpus_per_node``: null (the config's default) = 1 where a GPU is visible, 0 on a CPU machine.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from anogan.errors import InputError


def visible_gpus() -> list[int]:
    """The GPUs this process may use, as indices for ``CUDA_VISIBLE_DEVICES``: its own value when set
    (ValueError for GPU UUIDs, which the local launcher cannot split), else every CUDA device."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        try:
            return [int(g) for g in env.split(",") if g.strip()]
        except ValueError:
            raise InputError(f"CUDA_VISIBLE_DEVICES={env!r}: hydra/launcher=local splits GPUs given by index "
                             "(e.g. 0,1,2); list them by index") from None
    import torch

    return list(range(torch.cuda.device_count()))


def job_gpus(n_jobs: int, gpus_per_node: int | str | None, gpus: Sequence[int]) -> list[tuple[int, ...]]:
    """The GPUs of each of ``n_jobs`` jobs: ``gpus_per_node`` (None: 1 if any GPU is visible,
    else 0) consecutive GPUs of ``gpus`` per job, job k starting at GPU k * n, round robin. Raises
    InputError when more GPUs per job are asked for than are visible, naming the setting."""
    n = (1 if gpus else 0) if gpus_per_node is None else int(gpus_per_node)
    if n < 0 or n > len(gpus):
        raise InputError(f"hydra.launcher.gpus_per_node={gpus_per_node} but {len(gpus)} GPU(s) are visible "
                         f"({list(gpus)}); set hydra.launcher.gpus_per_node=null (1 per job where GPUs "
                         f"exist) or a number <= {len(gpus)}")
    return [tuple(gpus[(k * n + j) % len(gpus)] for j in range(n)) for k in range(n_jobs)]


def check_slurm_gpus(gpus_per_node, devices) -> None:
    """``hydra.launcher.gpus_per_node`` (None: a CPU partition) must equal ``trainer.devices`` when both
    are numbers: SLURM starts one task per GPU and Lightning one process per device. ValueError naming
    both and the fix."""
    if gpus_per_node is None or not isinstance(devices, int) or isinstance(devices, bool):
        return
    if int(gpus_per_node) != devices:
        raise InputError(
            f"hydra.launcher.gpus_per_node={gpus_per_node} but trainer.devices={devices}: each SLURM job runs "
            "one task per GPU and Lightning one process per device; set trainer.devices="
            f"{gpus_per_node} (with trainer=ddp for more than one) or drop the gpus_per_node override "
            "(it follows trainer.devices)"
        )
