"""Refusals of bad settings and inputs, and of numbers that are not finite: raised where they enter,
naming the offending key, image or step and a fix, before anything is computed from them.

- ``check_optimizer``: a learning rate, momentum, weight decay or betas outside its domain.
- ``check_data_size`` / ``check_image_shape``: evaluation data of another size or channel count than
  the GAN's.
- ``check_finite_loss`` / ``FiniteLossGuard``: a training stage (GAN, encoder, aCAE) stops at a NaN or
  infinite loss, before its weights change on the CPU, and before any checkpoint holds them on an
  accelerator (no host synchronisation per step); ``check_finite_scores``: non-finite scores name the
  images they belong to.
"""

from __future__ import annotations

import os

import lightning as L
import torch

from anogan.errors import InputError


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


def check_finite_scores(scores: dict[str, torch.Tensor], split: torch.Tensor, index: torch.Tensor,
                        split_names: dict[str, int] | None = None) -> None:
    """Raise naming every image (split, dataset index) with a NaN or infinite score; ``split_names``
    maps a split's name to its code in ``split`` (``anogan.data.SPLITS``)."""
    bad = torch.zeros_like(index, dtype=torch.bool)
    for v in scores.values():
        bad |= ~torch.isfinite(v.detach()).to(bad.device)
    if bad.any():
        names = {v: k for k, v in (split_names or {}).items()}
        which = [f"{names.get(int(s), s)}[{int(i)}]" for s, i in zip(split[bad].tolist(), index[bad].tolist())]
        kinds = sorted(k for k, v in scores.items() if not torch.isfinite(v.detach()).all())
        raise NonFiniteScoreError(
            f"non-finite {', '.join(kinds)} scores for {len(which)} image(s): {', '.join(which[:20])}"
            f"{' ...' if len(which) > 20 else ''} (split[dataset index]); check these images for NaN or "
            "inf values, and the checkpoint's weights"
        )
