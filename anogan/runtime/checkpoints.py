"""Checkpoint files: writing them whole, reading them safely, and refusing the wrong one.

- ``AtomicCheckpointIO`` / ``checkpoint_plugins``: a checkpoint is complete or absent, never truncated,
  wherever the run lives.
- ``resolve_ckpt_path`` / ``read_checkpoint`` / ``gan_nets`` / ``check_architecture`` /
  ``check_resume_data``: ``ckpt_path=auto``, and clear errors for a missing, truncated, foreign or
  mismatched checkpoint. Checkpoints are loaded with ``weights_only=True``: tensors and plain containers
  only, so loading one cannot run code.
- ``weights_identity`` / ``gan_identity`` / ``check_stage_identity``: a stage checkpoint (encoder,
  aCAE) records the content hash of the G and D weights it was trained against, and is refused with
  any other GAN.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
from pathlib import Path

import torch
from lightning.pytorch.plugins.io import CheckpointIO, TorchCheckpointIO

from anogan.errors import InputError, MissingInputError
from anogan.runtime.io import atomic_path

log = logging.getLogger(__name__)


LAST = Path("checkpoints") / "last.ckpt"


class CheckpointError(InputError):
    """A checkpoint that cannot be used: truncated, not an anogan GAN, or of another architecture."""


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
                "by train.py; see docs/reliability.md"
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
    """Refuse to resume ``model`` (an ``anogan.models.gan.GAN``) from a checkpoint of other nets; name the
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


GAN_IDENTITY = "anogan_gan_identity"  # checkpoint entry: gan_identity of the GAN a stage was trained with
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


def read_stage_checkpoint(ckpt: str | os.PathLike | dict, key: str, stage: str) -> dict:
    """A stage checkpoint (``stage``: encoder or acae) as a dict that holds ``key`` (the nets' configs
    written by its module), read by ``anogan.runtime.checkpoints.read_checkpoint`` (``weights_only=True``).
    Raises FileNotFoundError, CheckpointError, or ValueError when ``key`` is missing."""
    hint = f"pass {stage}_ckpt_path=<run dir>/checkpoints/{stage}.ckpt"
    if not isinstance(ckpt, dict):
        path, ckpt = ckpt, read_checkpoint(ckpt, f"{stage}_ckpt_path", f"checkpoints/{stage}.ckpt")
    else:
        path = "<checkpoint dict>"
    if key not in ckpt:
        raise InputError(f"{path} has no {key!r} entry; {hint}")
    return ckpt


def sub_state(state: dict, prefix: str) -> dict:
    """The entries of a state dict under ``prefix.``, with the prefix removed."""
    return {k[len(prefix) + 1:]: v for k, v in state.items() if k.startswith(prefix + ".")}
