"""Resuming, stopping and refusing: what keeps a days-long sweep on a shared cluster from losing work or
producing a silently wrong number.

- ``EpochSeed``: the random draws of training epoch e on process (rank) r (data order, z and the
  WGAN-GP interpolation weights of the GAN steps) are a function of (seed, e, r) only, so a run resumed
  from ``last.ckpt`` ends with the same weights as one never stopped, and the processes of a DDP run
  draw different z (each its own share of the global batch).
- ``AtomicCheckpointIO``: a checkpoint is complete or absent, never truncated, wherever the run lives.
- ``resolve_ckpt_path`` / ``read_checkpoint`` / ``check_architecture``: ``ckpt_path=auto``, and clear
  errors for a missing, truncated, foreign or mismatched checkpoint. Checkpoints are loaded with
  ``weights_only=True``: tensors and plain containers only, so loading one cannot run code.
- ``stopped_by_sigterm``: Lightning owns SIGTERM (its loops stop at the next batch, the mapping at its
  next step); this turns its exception into a logged message and exit status 143, the status of a
  process ended by SIGTERM.
- ``requeue_on_signal``: under SLURM, the signal sent before the time limit (``--signal=USR1@120``) or
  by preemption requeues the job; the requeued job resumes from ``last.ckpt`` / ``scores.h5.partial`` in
  its own run directory (``resolve_ckpt_path``).
- ``check_finite_scores``: non-finite scores name the images they belong to; ``check_finite_loss`` /
  ``FiniteLossGuard``: a training stage (GAN, encoder, aCAE) stops at a NaN or infinite loss, before its
  weights change on the CPU, and before any checkpoint holds them on an accelerator (no host
  synchronisation per step).
- ``gan_identity`` / ``check_stage_identity``: a stage checkpoint (encoder, aCAE) records the content
  hash of the G and D weights it was trained against, and is refused with any other GAN.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import random
import re
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.plugins.io import CheckpointIO, TorchCheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch.utils.data import DataLoader, RandomSampler

from anogan.io import atomic_path
from anogan.errors import InputError, MissingInputError

log = logging.getLogger(__name__)

SIGTERM_EXIT = 143  # 128 + SIGTERM: what a shell reports for a process that SIGTERM ended
LAST = Path("checkpoints") / "last.ckpt"


class CheckpointError(InputError):
    """A checkpoint that cannot be used: truncated, not an anogan GAN, or of another architecture."""


class NonFiniteScoreError(InputError, FloatingPointError):
    """Some images got a NaN or infinite score."""


class NonFiniteLossError(InputError, FloatingPointError):
    """A training loss became NaN or infinite; training stops before the weights change."""


def check_finite_loss(name: str, loss: torch.Tensor, step: int, hint: str) -> None:
    """Raise ``NonFiniteLossError`` when the scalar ``loss`` (logged as ``name``) is NaN or infinite at
    training ``step``, before its backward pass and optimiser step: no weights hold these values and no
    checkpoint is written. ``hint`` names the settings to change (e.g. the learning rates' config keys)."""
    if not torch.isfinite(loss.detach()).all():
        raise NonFiniteLossError(
            f"{name} is {loss.detach().float().mean().item()} at training step {step}: training stopped "
            f"before updating the weights, and no checkpoint holds these values. {hint}"
        )


class FiniteLossGuard(L.Callback):
    """Stops a training stage (GAN, encoder, aCAE) at a NaN or infinite loss without reading the loss on
    the host at every optimiser step where that read costs a device synchronisation.

    The module calls ``check(name, loss, step)`` before each backward pass and returns this guard from
    ``configure_callbacks``. Two forms, chosen by the loss's device (``deferred=None``) or forced:

    * on the CPU (a host read costs nothing): ``check_finite_loss`` at every step, so training stops
      before the weights change;
    * on an accelerator (``deferred``): the first non-finite step of each loss and its value are kept on
      the device (no synchronisation) and read every ``every`` training batches, at the end of every
      epoch and before every checkpoint is written; training then stops with ``NonFiniteLossError``
      naming that step. The weights in memory may have been updated from the non-finite loss for up to
      ``every`` batches, but no checkpoint holds them (the read runs before the checkpoint is written,
      and the error stops the write).
    """

    def __init__(self, hint: str, every: int = 100, deferred: bool | None = None):
        self.hint, self.every, self.deferred = hint, every, deferred
        self._first: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # name -> (first bad step, its loss)

    def check(self, name: str, loss: torch.Tensor, step: int) -> None:
        loss = loss.detach()
        deferred = self.deferred if self.deferred is not None else loss.device.type != "cpu"
        if not deferred:
            check_finite_loss(name, loss, step, self.hint)
            return
        bad = ~torch.isfinite(loss).all()
        never = torch.iinfo(torch.int64).max
        first, value = self._first.get(name) or (torch.full((), never, device=loss.device),
                                                 torch.zeros((), device=loss.device))
        new = bad & (first == never)
        self._first[name] = (torch.where(new, step, first), torch.where(new, loss.float().mean(), value))

    def raise_if_non_finite(self) -> None:
        """Raise ``NonFiniteLossError`` for the earliest recorded non-finite loss (one host read)."""
        if not self._first:
            return
        steps = torch.stack([first for first, _ in self._first.values()]).cpu()
        never = torch.iinfo(torch.int64).max
        if bool((steps == never).all()):
            return
        name = list(self._first)[int(steps.argmin())]
        step, value = (int(t) if t.dtype == torch.int64 else float(t) for t in self._first[name])
        raise NonFiniteLossError(
            f"{name} is {value} at training step {step}: training stopped (checked every {self.every} "
            f"batches on the accelerator, and before every checkpoint), and no checkpoint holds the weights "
            f"updated from it. {self.hint}"
        )

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if (batch_idx + 1) % self.every == 0:
            self.raise_if_non_finite()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.raise_if_non_finite()

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        self.raise_if_non_finite()


# -- training: per-epoch, per-process seeds -------------------------------------------------------
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


# -- checkpoints -----------------------------------------------------------------------------------
class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written to a temporary file beside their path, synced, then renamed over it.

    Lightning's own writer puts the temporary file in the system temp directory and moves it, which is a
    copy, not an atomic rename, when the run directory is on another file system (the usual cluster
    set-up: /tmp on the node, runs on a shared disk): a kill during the copy would leave a truncated
    ``last.ckpt``, and every kill a checkpoint-sized file in /tmp.

    Lightning reads a resumed run's checkpoint (``ckpt_path``, SLURM's ``hpc_ckpt_*``) through this
    plugin too, here with ``read_checkpoint`` (``weights_only=True``, whatever Lightning asks)."""

    def load_checkpoint(self, path, map_location=None, weights_only: bool | None = None) -> dict:
        if "://" in str(path):
            return super().load_checkpoint(path, map_location, weights_only=True)
        return read_checkpoint(path)

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        if storage_options is not None or "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        with atomic_path(path, keep_suffix=False) as tmp, open(tmp, "wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())


def checkpoint_plugins(configured) -> list:
    """The Trainer's plugins: those configured (``trainer.plugins``), plus ``AtomicCheckpointIO`` unless
    one of them already writes the checkpoints."""
    plugins = list(configured) if isinstance(configured, list | tuple) else [configured] if configured else []
    if not any(isinstance(p, CheckpointIO) for p in plugins):
        plugins.append(AtomicCheckpointIO())
    return plugins


def resolve_ckpt_path(ckpt_path: str | None, output_dir: str | os.PathLike) -> Path | None:
    """The checkpoint a training resumes from: None, a path, or ``auto`` = ``<run dir>/checkpoints/
    last.ckpt`` when it exists, else a fresh start. A requeued SLURM job (``SLURM_RESTART_COUNT`` > 0)
    is the same job started again: there ``None`` means ``auto``, so that it continues the training
    of its first start instead of overwriting it with a new one."""
    if ckpt_path in (None, "") and int(os.environ.get("SLURM_RESTART_COUNT") or 0) > 0:
        ckpt_path = "auto"
    if ckpt_path in (None, ""):
        return None
    if str(ckpt_path) == "auto":
        last = Path(output_dir) / LAST
        if last.is_file():
            log.info("ckpt_path=auto: resuming from %s", last)
            return last
        log.info("ckpt_path=auto: no %s yet, starting from scratch", last)
        return None
    return Path(ckpt_path)


def read_checkpoint(path: str | os.PathLike, key: str = "ckpt_path", example: str = str(LAST)) -> dict:
    """Load a checkpoint file on the CPU with ``weights_only=True``: the one reader of every checkpoint
    (GAN, encoder, aCAE, Lightning's resume and ``hpc_ckpt_*``, benchmarks). ``key`` is the config key
    that named the file and ``example`` the usual file, for the errors, which name the file and the fix.

    Raises FileNotFoundError (no such file) or CheckpointError (a directory, a truncated file, or one
    holding Python objects other than tensors and plain containers, whose unpickling could run code)."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{key}={path} is a directory; pass the file, e.g. {key}={path / Path(example).name}")
    if not path.is_file():
        raise MissingInputError(f"checkpoint {path} does not exist; pass {key}=<run dir>/{example}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only" in str(e).lower():
            raise CheckpointError(
                f"{path} holds Python objects other than tensors and plain containers, and loading "
                "them could run code, so it is not loaded (weights_only=True). Use a checkpoint written "
                "by train.py; see README, 'Reliability'"
            ) from None
        raise _corrupt(path, e) from None
    except (RuntimeError, EOFError, OSError) as e:
        raise _corrupt(path, e) from None
    except Exception as e:  # noqa: BLE001  any other file: torch's unpickler fails with KeyError, ValueError, ...
        raise CheckpointError(
            f"{path} is not a PyTorch checkpoint ({type(e).__name__}: {e}); pass {key}=<run dir>/{example}"
        ) from None


def _corrupt(path: Path, e: BaseException) -> CheckpointError:
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return CheckpointError(
        f"{path} is truncated or corrupt ({first[:200]}); copy it again, or use an earlier "
        f"{path.parent}/epoch_XXXX.ckpt"
    )


def gan_nets(ckpt: dict, path: str | os.PathLike) -> dict:
    """The ``anogan_nets`` entry of a GAN checkpoint (net configs and prior)."""
    if not isinstance(ckpt, dict) or "anogan_nets" not in ckpt or "state_dict" not in ckpt:
        raise CheckpointError(
            f"{path} is not an anogan GAN checkpoint (no 'anogan_nets' entry); pass the "
            f"{LAST} of a train.py run"
        )
    return ckpt["anogan_nets"]


def check_architecture(ckpt: dict, path: str | os.PathLike, model) -> None:
    """Refuse to resume ``model`` (an ``anogan.gan.GAN``) from a checkpoint of other nets; name the
    settings that differ."""
    nets = gan_nets(ckpt, path)
    wanted = {"generator": dict(model.generator.config), "discriminator": dict(model.discriminator.config)}
    diffs = [
        f"{net}.{k}: checkpoint {nets[net].get(k)!r}, configured {v!r}"
        for net, cfg in wanted.items() for k, v in cfg.items() if nets[net].get(k) != v
    ]
    from anogan.nets import family_of

    if nets.get("family", "dcgan") != family_of(model.generator):
        diffs.append(f"family: checkpoint {nets.get('family', 'dcgan')!r}, configured {family_of(model.generator)!r}")
    if nets.get("prior", "uniform") != model.prior:
        diffs.append(f"prior: checkpoint {nets.get('prior')!r}, configured {model.prior!r}")
    if diffs:
        raise CheckpointError(
            f"{path} holds another architecture than the configured model ({'; '.join(diffs)}); "
            "resume with that run's settings (its .hydra/config.yaml) or start a new run without ckpt_path"
        )


# data settings that change neither the training images nor their order: free to change on resume
RESUME_FREE_DATA = ("num_workers", "eval_batch_size", "eval_train_samples", "test_subset", "eval_val_samples")


def check_resume_data(ckpt: dict, path: str | os.PathLike, data: dict) -> None:
    """Refuse to resume training from ``path`` with another data config than the one it was trained
    on (``ckpt["anogan_config"]["data"]``, stored by train.py), naming every setting that differs;
    settings of ``RESUME_FREE_DATA`` (loading and evaluation only) may change."""
    stored = (ckpt.get("anogan_config") or {}).get("data")
    if not stored:
        return  # not written by train.py: nothing to compare (check_architecture has named the nets)
    keys = sorted((set(stored) | set(data)) - set(RESUME_FREE_DATA))
    diffs = [f"data.{k}: checkpoint {stored.get(k)!r}, configured {data.get(k)!r}"
             for k in keys if stored.get(k) != data.get(k)]
    if diffs:
        raise CheckpointError(
            f"{path} was trained on other data than configured ({'; '.join(diffs)}); resuming would "
            "continue its training on another set of images. Resume with that run's data settings (its "
            ".hydra/config.yaml), or start a new run without ckpt_path"
        )


# -- provenance: which GAN a stage checkpoint belongs to ----------------------------------------------
def weights_identity(*nets: torch.nn.Module) -> str:
    """The content hash of networks' weights: sha256 (hex, 64 characters) over the names, dtypes,
    shapes and bytes of every tensor of each net's ``state_dict`` (parameters and buffers, such as
    BatchNorm's running statistics), net by net, in key order. Equal for the same weights wherever they
    live (device, file, process); any changed value, however small, gives another identity."""
    h = hashlib.sha256()
    for i, net in enumerate(nets):
        for key, t in net.state_dict().items():
            t = t.detach().cpu().contiguous()
            h.update(f"{i}.{key}:{t.dtype}:{tuple(t.shape)};".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def gan_identity(generator: torch.nn.Module, discriminator: torch.nn.Module) -> str:
    """The identity of a GAN: ``weights_identity(G, D)``; what a stage checkpoint (encoder, aCAE) and
    ``scores.h5`` record of the GAN they belong to."""
    return weights_identity(generator, discriminator)


STAGE_GROUPS = {"encoder": "encoder=izif", "acae": "acae=dcgan"}  # a stage's config group on the command line


def check_stage_identity(stored: str | None, identity: str, stage: str, stage_path: str | os.PathLike,
                         gan_path: str | os.PathLike) -> None:
    """Refuse a stage checkpoint (``stage``: encoder or acae) trained against other GAN weights than
    the evaluated ones: ``stored`` is the ``gan_identity`` it recorded (None: written before identities
    existed), ``identity`` that of the GAN of ``gan_path``. Raises CheckpointError naming both files and
    the fix."""
    if stored == identity:
        return
    what = ("records no GAN identity (written by an older anogan)" if stored is None else
            f"was trained against GAN weights {stored[:12]}..., not those of {gan_path} ({identity[:12]}...)")
    run = Path(gan_path).resolve().parent.parent
    raise CheckpointError(
        f"{stage_path} {what}, so its scores would not belong to this GAN (was the GAN trained again "
        f"after it?). Train the {stage} again against this GAN: python train.py {STAGE_GROUPS[stage]} "
        f"ckpt_path=auto hydra.run.dir={run} (the finished GAN is kept), or pass {stage}_ckpt_path=<a "
        f"{stage}.ckpt trained with this GAN>"
    )


# -- settings --------------------------------------------------------------------------------------
def check_optimizer(optimizer, key: str) -> None:
    """Refuse a partially configured optimiser (Hydra ``_partial_: true``) whose learning rate,
    momentum or weight decay lies outside its domain, naming its config ``key`` (e.g.
    ``model.optimizer_g``), before PyTorch does with an error that names no key."""
    kw = getattr(optimizer, "keywords", None) or {}
    for name, ok, domain in (("lr", lambda v: v > 0, "> 0"), ("weight_decay", lambda v: v >= 0, ">= 0"),
                             ("momentum", lambda v: v >= 0, ">= 0")):
        if name in kw and kw[name] is not None and not ok(float(kw[name])):
            raise InputError(f"{key}.{name}={kw[name]} must be {domain}")
    betas = kw.get("betas")
    if betas is not None and not all(0 <= float(b) < 1 for b in betas):
        raise InputError(f"{key}.betas={list(betas)} must lie in [0, 1)")


# -- SIGTERM ---------------------------------------------------------------------------------------
@contextmanager
def stopped_by_sigterm(what: str, resume_hint: str) -> Iterator[None]:
    """Turn Lightning's ``SIGTERMException`` (raised at the batch after a SIGTERM, once its callbacks
    have closed their files) into a logged message and ``SystemExit(143)``."""
    try:
        yield
    except SIGTERMException:
        log.warning("%s stopped by SIGTERM; %s", what, resume_hint)
        raise SystemExit(SIGTERM_EXIT) from None


# -- SLURM preemption and time limit --------------------------------------------------------------
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


# -- evaluation input ------------------------------------------------------------------------------
def check_data_size(data_cfg, nets: dict, path: str | os.PathLike) -> None:
    """Evaluation data sized explicitly (``data.image_size`` / ``data.channels``) unlike the GAN."""
    gen = nets["generator"]
    for key in ("image_size", "channels"):
        if key in data_cfg and data_cfg[key] is not None and int(data_cfg[key]) != int(gen[key]):
            raise InputError(
                f"data.{key}={data_cfg[key]} but the GAN of {path} was trained with {key}={gen[key]}; "
                f"drop the override (the data is then sized for the GAN) or evaluate a GAN trained at "
                f"{key}={data_cfg[key]}"
            )


def check_image_shape(image: torch.Tensor, nets: dict, where: str) -> None:
    """A test image (C, H, W) must have the GAN's channels and size."""
    gen = nets["generator"]
    want = (gen["channels"], gen["image_size"], gen["image_size"])
    if tuple(image.shape) != want:
        raise InputError(
            f"{where} yields images of shape {tuple(image.shape)} but the GAN expects {want} "
            "(channels, height, width), and does not follow data.image_size / data.channels, which "
            f"evaluate.py sets to the GAN's: store the data as {want[0]}-channel images, or evaluate a GAN "
            "trained on this data"
        )


def check_finite_scores(scores: dict[str, torch.Tensor], split: torch.Tensor, index: torch.Tensor) -> None:
    """Raise naming every image (split, dataset index) with a NaN or infinite score."""
    bad = torch.zeros_like(index, dtype=torch.bool)
    for v in scores.values():
        bad |= ~torch.isfinite(v.detach()).to(bad.device)
    if bad.any():
        from anogan.data import SPLITS

        names = {v: k for k, v in SPLITS.items()}
        which = [f"{names.get(int(s), s)}[{int(i)}]" for s, i in zip(split[bad].tolist(), index[bad].tolist())]
        kinds = sorted(k for k, v in scores.items() if not torch.isfinite(v.detach()).all())
        raise NonFiniteScoreError(
            f"non-finite {', '.join(kinds)} scores for {len(which)} image(s): {', '.join(which[:20])}"
            f"{' ...' if len(which) > 20 else ''} (split[dataset index]); check these images for NaN or "
            "inf values, and the checkpoint's weights"
        )
