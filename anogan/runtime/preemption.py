"""Stopping and requeueing: SIGTERM, and SLURM's SIGUSR1 before the time limit or at preemption.

- ``stopped_by_sigterm``: Lightning owns SIGTERM (its loops stop at the next batch, the mapping at its
  next step); this turns its exception into a logged message and exit status 143, the status of a
  process ended by SIGTERM.
- ``requeue_on_signal``: under SLURM, the signal sent before the time limit (``--signal=USR1@120``) or
  by preemption requeues the job; it is the one owner of that signal in every task of the job. The
  requeued job resumes from ``last.ckpt`` / ``scores.h5.partial`` in its own run directory
  (``anogan.runtime.checkpoints.resolve_ckpt_path``).
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

from lightning.pytorch.utilities.exceptions import SIGTERMException

from anogan.errors import InputError

log = logging.getLogger(__name__)


SIGTERM_EXIT = 143  # 128 + SIGTERM: what a shell reports for a process that SIGTERM ended


@contextmanager
def stopped_by_sigterm(what: str, resume_hint: str) -> Iterator[None]:
    """Turn Lightning's ``SIGTERMException`` (raised at the batch after a SIGTERM, once its callbacks
    have closed their files) into a logged message and ``SystemExit(143)``."""
    try:
        yield
    except SIGTERMException:
        log.warning("%s stopped by SIGTERM; %s", what, resume_hint)
        raise SystemExit(SIGTERM_EXIT) from None


def slurm_job_id() -> str | None:
    """The id ``scontrol requeue`` takes: ``<array job>_<task>`` in a job array, else ``SLURM_JOB_ID``."""
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array_job and os.environ.get("SLURM_ARRAY_TASK_ID"):
        return f"{array_job}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID")


def requeue_on_signal(signum: int = signal.SIGUSR1) -> bool:
    """In a SLURM job, make ``signum`` (SIGUSR1: ``--signal=USR1@120`` of ``hydra/launcher=slurm``, or
    ``scancel --signal=USR1 <job>``) requeue the job with ``scontrol requeue``; returns whether it did
    install the handler (not outside SLURM). Raises ``ValueError`` when the SLURM job id variables
    hold something else than a job id.

    In a job of several tasks (DDP, one task per device) SLURM signals every task; the handler is
    installed in each, so that the signal has one owner everywhere, but only the first task
    (``SLURM_PROCID`` 0) requeues the job; the others log the signal and go on until SLURM's SIGTERM,
    which Lightning's loops obey on every rank at the same batch.

    SLURM then stops the job with SIGTERM, which Lightning's loops obey at the next batch (see
    ``stopped_by_sigterm``), and starts it again in the same run directory, where training resumes from
    ``checkpoints/last.ckpt`` (``resolve_ckpt_path``) and evaluation from ``scores.h5.partial``.

    This replaces Lightning's own handler (``SLURMEnvironment(auto_requeue=True)``, which does not
    install its handler when one is set already): that one saves ``hpc_ckpt_<n>.ckpt`` from inside the
    signal handler, i.e. at any point of a batch (between the discriminator's and the generator's step
    too), and Lightning cannot resume such a mid-epoch checkpoint exactly (it warns that the data loader
    is not resumable): in one run on the one-node test cluster, signalled mid-epoch, the requeued
    run ended with other weights than an uninterrupted one. The price: the batches of the interrupted
    epoch are trained again. During an evaluation it saved the mapping module, which Lightning would
    restore into a later ``trainer.test`` in that directory (under SLURM it loads the newest
    ``hpc_ckpt`` whenever ``ckpt_path`` is None)."""
    job = slurm_job_id()
    if job is None:
        return False
    if not re.fullmatch(r"[0-9]+(_[0-9]+)?", job):
        raise InputError(f"SLURM_JOB_ID / SLURM_ARRAY_*={job!r} is not a SLURM job id")
    task = int(os.environ.get("SLURM_PROCID") or 0)

    def requeue(signum, frame) -> None:
        if task != 0:
            log.warning("received %s: task 0 of SLURM job %s requeues it", signal.Signals(signum).name, job)
            return
        log.warning("received %s: requeueing SLURM job %s (scontrol requeue)", signal.Signals(signum).name, job)
        try:
            result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
            error = result.stderr.strip() if result.returncode else None
        except (OSError, subprocess.TimeoutExpired) as e:
            error = str(e)
        if error is not None:
            log.error("scontrol requeue %s failed (%s); the job runs on until SLURM stops it", job, error)

    signal.signal(signum, requeue)
    return True
