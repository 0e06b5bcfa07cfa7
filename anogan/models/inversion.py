"""The mapping (paper sec. 2.2): find z with G(z) close to a query x by gradient descent, G and D frozen.

``Inversion`` is a LightningModule for ``Trainer(inference_mode=False).test``: every test batch is
mapped as a batch (no Python loop over images), and the step returns, per image, the six scores of
``anogan.nets.scores``, the residual map, G(z), z, label, index and split, for the evaluation callbacks.
The maths lives in ``map_batch``, usable without Lightning.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import NamedTuple

import lightning as L
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch import nn

from anogan.nets import scores as S
from anogan.nets.mapping import FAST_DEVICES, mapping_copy
from anogan.nets import Discriminator, Generator, build
from anogan.nets.resnet import resnet_hint
from anogan.nets.prior import initial_z, project_to_support
from anogan.runtime.checkpoints import CheckpointError, gan_nets, read_checkpoint
from anogan.data import SPLITS
from anogan.runtime.checks import check_finite_scores
from anogan.errors import InputError


def load_gan(ckpt: str | os.PathLike | dict) -> tuple[Generator, Discriminator, str, dict]:
    """(G, D, prior, run config) from a GAN checkpoint written by training (``anogan.models.gan.GAN``); the
    nets of the family it records (``dcgan`` for checkpoints written before families existed)."""
    path = ckpt if not isinstance(ckpt, dict) else "<checkpoint dict>"
    if not isinstance(ckpt, dict):
        ckpt = read_checkpoint(ckpt)  # weights_only=True: loading cannot run code
    nets = gan_nets(ckpt, path)
    family = nets.get("family", "dcgan")
    G, D = build(family, "generator", **nets["generator"]), build(family, "discriminator", **nets["discriminator"])
    state = ckpt["state_dict"]
    try:
        G.load_state_dict({k[len("generator."):]: v for k, v in state.items() if k.startswith("generator.")})
        D.load_state_dict(
            {k[len("discriminator."):]: v for k, v in state.items() if k.startswith("discriminator.")}
        )
    except RuntimeError as e:
        raise CheckpointError(f"{path}: the weights do not fit the nets it describes ({nets}){resnet_hint(nets)}: "
                              f"{e}") from None
    return G, D, nets.get("prior", "uniform"), ckpt.get("anogan_config", {})


def check_settings(lam: float, steps: int, record_steps: Sequence[int] | None = None,
                   lr: float | None = None, init: str = "random", restarts: int = 1) -> list[int]:
    """Refuse mapping settings outside their domain (before any work is done), naming the config key;
    the sorted record_steps. ``steps=0`` is allowed with ``init=encoder`` only: z = E(x) unchanged,
    f-AnoGAN's one pass."""
    if isinstance(restarts, bool) or int(restarts) != restarts or restarts < 1:
        raise InputError(f"inversion.restarts={restarts} must be an integer >= 1 (starts per image; 1: the paper's "
                         "one random z_1)")
    if lr is not None and not lr > 0:
        raise InputError(f"inversion.lr={lr} must be > 0 (Adam's learning rate on z; the default is 0.05)")
    if not 0 <= lam <= 1:
        raise InputError(f"inversion.lam={lam} must lie in [0, 1] (the paper uses 0.1)")
    least = 0 if init == "encoder" else 1
    if int(steps) != steps or steps < least:
        raise InputError(f"inversion.steps={steps} must be an integer >= 1 (Gamma; the paper uses 500), or 0 "
                         "with inversion.init=encoder (f-AnoGAN's one pass: z = E(x))")
    record = sorted({int(s) for s in (record_steps or [])})
    bad = [s for s in record if not 0 <= s <= steps]
    if bad:
        raise InputError(f"inversion.record_steps {bad} lie outside [0, inversion.steps={steps}]")
    return record


MAPPING_PRECISIONS = {"32-true": None, "32": None, "bf16-mixed": torch.bfloat16}


def check_precision(precision) -> None:
    """Refuse an ``inversion.precision`` other than 32-true or bf16-mixed, naming the key and the fix."""
    if str(precision) not in MAPPING_PRECISIONS:
        raise InputError(
            f"inversion.precision={precision!r} must be 32-true or bf16-mixed (G and D under bfloat16 autocast; "
            "z and the scores stay float32); 16-mixed is not offered for the mapping: float16 gradients of "
            "z would need a loss scaler, whose skipped steps couple the images of a batch"
        )


class Inversion(L.LightningModule):
    """Maps each test image to z with ``steps`` (Gamma) Adam steps on ``(1 - lam) L_R + lam L_D``.

    Args:
        generator, discriminator: trained networks; frozen here (eval mode, no weight gradients).
        prior: p_z of training; z_1 is drawn from it and z is kept in its support.
        lam: lambda of eq. 5. steps: Gamma. lr: Adam's learning rate on z.
        reference: also run the reference mapping (GAN_R, ``(1 - lam) L_R + lam L_D^``) in the same
            batched pass, for the scores reference_discrimination and reference_anomaly.
        record_steps: also report the scores after each of these step counts (<= steps).
        seed: z_1 of image i is a function of (seed, i) only (i: the batch's ``z_key`` where the data
            gives one, e.g. data=scans' patch key, else its ``index``).
        restarts: starts per image (1: the paper). Each image is mapped from ``restarts`` initial z as
            extra rows of the same batch (start 0 is the one ``restarts=1`` maps; with ``init=encoder``
            it is E(x), the others are drawn from the prior), and the start with the lowest final loss
            is kept, for the AnoGAN and the reference mapping separately: a mapping that ends in a poor
            local minimum from one start is replaced by a better one. Costs ``restarts`` times the
            step loop's work. ``map_batch`` then also returns every start's final loss.
        init: ``random`` (z_1 from the prior, as in the paper) or ``encoder`` (z_1 = E(x), f-AnoGAN's
            encoder, kept in the prior's support); with ``steps=0`` the scores and residual map are taken
            at z = E(x) without optimisation (f-AnoGAN's one-pass maps, e.g. for whole scans).
        encoder: E for ``init=encoder``; frozen here.
        scorers: modules mapping x (B, C, H, W) to more scores {name: (B,)} in one forward pass
            (``anogan.models.encoder.FAnoGAN``, ``anogan.models.acae.ACAEScores``), added to the mapping's scores.
        channels_last: run G and D in the channels_last memory format (same scores, often faster).
        fast_nets: map with ``anogan.nets.mapping``' fast copies of G and D (same functions); None: on
            the devices where they were measured faster (``anogan.nets.mapping.FAST_DEVICES``: the CPU).
        compile: ``torch.compile`` the mapping's forward pass (same scores up to float rounding); it
            pays a compilation per batch shape, so it is off by default; a string names the backend
            (default inductor).
        early_stop: stop a mapping once its loss has not improved by a fraction ``tol`` for
            ``patience`` steps (changes the method: off by default).
        precision: ``32-true`` (default) or ``bf16-mixed``: G and D's forward passes in the step loop run
            under bfloat16 autocast. z, its gradient, Adam's state, the losses and every output stay
            float32 (G(z) and f are cast back before the losses). Not inherited from the training's
            ``trainer.precision``: the evaluation Trainer always runs in 32-true, and this is its own
            setting (``inversion.precision``). ``16-mixed`` is refused: float16 gradients of z would need
            a loss scaler, whose skipped steps would couple the images of a batch.
    """

    def __init__(
        self,
        generator: Generator,
        discriminator: Discriminator,
        prior: str = "uniform",
        lam: float = 0.1,
        steps: int = 500,
        lr: float = 0.05,
        reference: bool = True,
        record_steps: Sequence[int] | None = None,
        seed: int = 0,
        init: str = "random",
        encoder: nn.Module | None = None,
        scorers: Sequence[nn.Module] = (),
        channels_last: bool = False,
        compile: bool | str = False,
        early_stop: bool = False,
        tol: float = 1e-3,
        patience: int = 20,
        precision: str = "32-true",
        fast_nets: bool | None = None,
        restarts: int = 1,
    ):
        super().__init__()
        record = check_settings(lam, steps, record_steps, lr, init, restarts)
        check_precision(precision)
        if init not in ("random", "encoder"):
            raise InputError(f"inversion.init={init!r} must be 'random' or 'encoder'")
        if init == "encoder" and encoder is None:
            raise InputError(
                "inversion.init=encoder needs an encoder: pass encoder_ckpt_path=<run>/checkpoints/encoder.ckpt"
            )
        if early_stop and (patience < 1 or tol < 0):
            raise InputError(f"inversion.patience={patience} must be >= 1 and inversion.tol={tol} >= 0")
        self.generator, self.discriminator = generator, discriminator
        self.encoder, self.scorers = encoder, nn.ModuleList(scorers)
        for net in (generator, discriminator) + ((encoder,) if encoder is not None else ()):
            net.requires_grad_(False)
            net.eval()
        self.save_hyperparameters(ignore=["generator", "discriminator", "encoder", "scorers"])
        self.hparams.record_steps = record
        self._nets = self._compiled = None  # the loop's copies of G and D, and its compiled forward
        self.cache = None  # set by ScoreFile when resuming: outputs of images mapped before

    @classmethod
    def from_checkpoint(cls, ckpt: str | os.PathLike | dict, **kwargs) -> Inversion:
        G, D, prior, _ = load_gan(ckpt)
        return cls(G, D, prior=prior, **kwargs)

    def train(self, mode: bool = True) -> Inversion:
        # G and D stay in eval mode whatever Lightning asks: BatchNorm must use running statistics so
        # that images in a batch do not interact.
        super().train(mode)
        self.generator.eval()
        self.discriminator.eval()
        if self.encoder is not None:
            self.encoder.eval()
        return self

    def initial_z(self, x: torch.Tensor, index: torch.Tensor, restarts: int = 1) -> torch.Tensor:
        """z_1 (restarts * B, z_dim), start-major (``anogan.nets.prior.initial_z``): from (seed, index) for
        ``init=random``; for ``init=encoder`` start 0 is E(x) and the others are the prior's draws."""
        hp = self.hparams
        random = initial_z(hp.prior, hp.seed, index.cpu(), self.generator.z_dim, restarts).to(x)
        if hp.init == "encoder":
            with torch.no_grad():
                z1 = self.encoder(x)
                project_to_support(hp.prior, z1)
            return torch.cat([z1, random[len(x):]])
        return random

    def _losses(self, G: Generator, D: Discriminator, z: torch.Tensor, xs: torch.Tensor, fx: torch.Tensor,
                n_main: int):
        """One forward pass of the fused mapping: rows [0, n_main) of z map with the AnoGAN loss
        against f(x) = ``fx``, the remaining rows with the reference loss; ``xs`` is the query of
        every row. G runs once over all rows and D once up to its feature layer; D's later blocks
        and its logit layer run only on the reference rows, the only ones whose loss needs D(G(z)).
        Returns the per-row loss and its terms: (loss, G(z), L_R, L_D or None, L_D^ or None)."""
        lam = self.hparams.lam
        with self.autocast(z):  # G and D only: the losses below are float32
            gz = G(z)
            h = D.feature_map(gz)
            logits = D.logits_from_feature_map(h[n_main:]) if h.shape[0] > n_main else None
        gz, h = gz.float(), h.float()
        res = S.residual(xs, gz)
        dis = ref_dis = None
        losses = []
        if n_main:
            dis = S.discrimination(fx, h[:n_main].flatten(1))
            losses.append(S.mapping_loss(res[:n_main], dis, lam))
        if logits is not None:
            ref_dis = S.reference_discrimination(logits.float())
            losses.append(S.mapping_loss(res[n_main:], ref_dis, lam))
        return torch.cat(losses) if len(losses) > 1 else losses[0], gz, res, dis, ref_dis

    def autocast(self, like: torch.Tensor):
        """bfloat16 autocast on ``like``'s device for ``precision=bf16-mixed``; else autocast off, so that
        the mapping runs in float32 even inside a mixed-precision Trainer."""
        dtype = MAPPING_PRECISIONS[str(self.hparams.get("precision", "32-true"))]
        return torch.autocast(like.device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)

    def _mapping_nets(self) -> tuple[Generator, Discriminator]:
        """The loop's copies of G and D (``anogan.nets.mapping``; the fast ones per ``fast_nets``),
        channels_last if asked; rebuilt when G or D move to another device or dtype or their weights
        change in place (tensor version counters)."""
        tensors = [*self.generator.state_dict().values(), *self.discriminator.state_dict().values()]
        key = (tensors[0].device, tensors[0].dtype, tuple(t._version for t in tensors))
        if self._nets is None or self._nets[0] != key:
            fast = self.hparams.get("fast_nets")
            fast = tensors[0].device.type in FAST_DEVICES if fast is None else fast
            nets = [mapping_copy(net, self.hparams.channels_last, fast) for net in (self.generator, self.discriminator)]
            self._nets, self._compiled = (key, nets), None
        return self._nets[1]

    def _loss_fn(self):
        if not self.hparams.compile:
            return self._losses
        if self._compiled is None:
            backend = self.hparams.compile if isinstance(self.hparams.compile, str) else "inductor"
            self._compiled = torch.compile(self._losses, backend=backend)
        return self._compiled

    def _scores(self, B: int, res, dis, ref_dis, logits_x) -> dict:
        lam = self.hparams.lam
        cur = {"residual": res[:B].detach(), "discrimination": dis.detach()}
        cur["anomaly"] = S.anomaly(cur["residual"], cur["discrimination"], lam)
        if self.hparams.reference:
            cur["reference_discrimination"] = ref_dis.detach()
            cur["reference_anomaly"] = S.reference_anomaly(res[B:].detach(), ref_dis.detach(), lam)
        cur["discriminator"] = S.discriminator(logits_x)
        return cur

    def map_batch(self, x: torch.Tensor, index: torch.Tensor) -> dict:
        """Map a batch x (B, C, H, W) in [-1, 1] with dataset indices (B,). Returns a dict of
        per-image tensors: ``scores`` {name: (B,)}, ``recorded`` {step: {name: (B,)}},
        ``residual_map`` (B, H, W), ``generated`` (B, C, H, W), ``z`` and ``z_reference`` (B, z_dim),
        ``mapping_loss`` (B, 2): the AnoGAN mapping loss at the first and the last step, and
        ``steps_taken`` (B, m): Adam steps of the AnoGAN (and reference) mapping, < steps only
        with early_stop.

        The AnoGAN and the reference mapping run as one batch of 2B rows of z. The step loop does
        no host synchronisation (no ``.item()``), except once every ``patience`` steps with early_stop.

        With ``restarts`` R > 1 every image is mapped from R starts in one batch of R B images and each
        output is the kept start's (``best_start``); ``restart_losses`` (B, R) holds every start's final
        AnoGAN mapping loss, and ``restart`` (B,) the start kept.

        Runs with any surrounding autocast (a mixed-precision Trainer's) switched off: z, Adam and every
        output are float32; only G and D's forward passes follow ``precision``."""
        restarts = int(self.hparams.get("restarts", 1))
        with torch.autocast(x.device.type, enabled=False):
            x = x.float()
            z1 = self.initial_z(x, index, restarts)
            if restarts == 1:
                return self._map_batch(x, z1)
            return best_start(self._map_batch(x.repeat(restarts, 1, 1, 1), z1), restarts)

    def _map_batch(self, x: torch.Tensor, z1: torch.Tensor) -> dict:
        """The step loop from z_1 ``z1`` (B, z_dim): ``steps`` Adam steps on every row of z still mapping,
        scored at each recorded step and at the last one. Rows [0, B) are the AnoGAN mapping, rows
        [B, 2B) the reference one."""
        hp = self.hparams
        G, D = self._mapping_nets()
        losses_of = self._loss_fn()
        B, m = x.shape[0], 2 if hp.reference else 1
        if hp.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.no_grad(), self.autocast(x):
            fx, logits_x = D.features_and_logits(x)  # f(x) once per batch, not per step
        fx, logits_x = fx.float(), logits_x.float()
        z = z1.float().repeat(m, 1).requires_grad_(True)
        rows = _Rows(z, torch.optim.Adam([z], lr=hp.lr), x.repeat(m, 1, 1, 1), fx, B)
        stop = _EarlyStop(z, B, hp.tol, hp.patience) if hp.early_stop else None
        record, recorded, first_loss = set(hp.record_steps), {}, None
        for t in range(hp.steps + 1):
            self._poll_sigterm()
            final = t == hp.steps or (stop is not None and stop.finished)
            compacted = stop is not None and stop.compacted
            if not (final and compacted):  # a compacted batch is scored by the full pass below
                with torch.set_grad_enabled(not final):
                    step = _Pass(*losses_of(G, D, rows.z, rows.xs, rows.fx, rows.n_main))
                first_loss = step.loss[:B].detach() if first_loss is None else first_loss
            if t in record or final:
                scored = step
                if compacted:  # some mappings stopped early: score every row at its z (one more pass)
                    with torch.no_grad():
                        scored = _Pass(*losses_of(G, D, stop.full_z(rows.z), x.repeat(m, 1, 1, 1), fx, B))
                cur = self._scores(B, scored.residual, scored.discrimination, scored.reference_discrimination,
                                   logits_x)
                recorded.update({s: cur for s in record if s == t or (final and s > t)})
            if final:
                break
            rows = self._adam_step(rows, step.loss, t, stop, fx)
        return self._outputs(x, cur, recorded, first_loss, scored, rows.z, stop)

    def _poll_sigterm(self) -> None:
        """Stop within a step, not a batch, once the Trainer has received SIGTERM (SLURM's grace period is
        short): Lightning's ``SIGTERMException``, which ``anogan.runtime.preemption.stopped_by_sigterm``
        turns into the resume message and exit status 143."""
        if getattr(self._trainer, "received_sigterm", False):
            raise SIGTERMException

    def _adam_step(self, rows: _Rows, loss: torch.Tensor, t: int, stop: _EarlyStop | None,
                   fx: torch.Tensor) -> _Rows:
        """One Adam step of every row still mapping, z then projected back into p_z's support. The
        per-image losses are summed for ``backward``: Adam is element-wise, so images stay independent.
        With early stop, the rows that stopped at step t leave the batch first (``_EarlyStop.compact``;
        ``fx``: f(x) of the whole batch)."""
        rows.opt.zero_grad(set_to_none=True)
        loss.sum().backward()
        if stop is not None and stop.update(t, loss):
            rows = _Rows(*stop.compact(t, rows.z, rows.opt, rows.xs, fx))
            if stop.finished:
                return rows
        rows.opt.step()
        with torch.no_grad():
            project_to_support(self.hparams.prior, rows.z)
        return rows

    def _outputs(self, x: torch.Tensor, cur: dict, recorded: dict, first_loss: torch.Tensor, final: _Pass,
                 z: torch.Tensor, stop: _EarlyStop | None) -> dict:
        """``map_batch``'s dict from the last step's scores ``cur`` (plus the one-pass scorers'), its pass
        over every row ``final`` and the rows' z; see ``map_batch``."""
        B, m, steps = x.shape[0], 2 if self.hparams.reference else 1, self.hparams.steps
        for scorer in self.scorers:  # one forward pass each, no optimisation (f-AnoGAN, aCAE)
            cur.update(scorer(x))
        gz = final.generated.detach()
        z_out = stop.full_z(z) if stop is not None else z.detach()
        taken = stop.steps_taken(steps) if stop is not None else torch.full((m * B,), steps)
        return {
            "scores": cur,
            "recorded": recorded,
            "residual_map": S.residual_map(x, gz[:B]),
            "generated": gz[:B],
            "z": z_out[:B],
            "z_reference": z_out[B:] if self.hparams.reference else None,
            "mapping_loss": torch.stack([first_loss, final.loss[:B].detach()], 1),
            "steps_taken": taken.view(m, B).T,
        }

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict:
        if torch.is_inference_mode_enabled():
            raise RuntimeError(
                "the mapping optimises z by gradient descent, which inference mode forbids: "
                "run it with Trainer(inference_mode=False)"
            )
        out = self.cache.lookup(batch["split"], batch["index"]) if self.cache is not None else None
        if out is None:
            # z_1 from the batch's z_key where the data gives one (data=scans: the patch's scan and
            # position, so a scan's z_1 do not depend on the other scans of the run), else its index
            with torch.enable_grad():  # Lightning's test loop runs under no_grad
                out = self.map_batch(batch["image"], batch.get("z_key", batch["index"]))
            check_finite_scores(out["scores"], batch["split"], batch["index"], SPLITS)
        out.update({k: batch[k] for k in ("image", "label", "index", "split", "mask") if k in batch})
        return out

    def configure_optimizers(self):
        return None


# the scores of the AnoGAN mapping and of the reference mapping; every other score is one pass over x
_ANOGAN_SCORES, _REFERENCE_SCORES = ("residual", "discrimination", "anomaly"), ("reference_discrimination",
                                                                              "reference_anomaly")


def best_start(out: dict, restarts: int) -> dict:
    """``map_batch``'s outputs for B images from those of the R B rows of their ``restarts`` starts
    (start-major, ``Inversion.initial_z``): per image the AnoGAN mapping's outputs (its scores, residual
    map, G(z), z, loss, steps) of the start with the lowest final mapping loss, and the reference
    mapping's (``reference_*``, ``z_reference``) of the start with the lowest final reference loss
    (``reference_anomaly``); each recorded step's scores from the start lowest at that step; the one-pass
    scores (D(x), f-AnoGAN, aCAE, baselines) from start 0, where every start has the same. Adds
    ``restart_losses`` (B, R): every start's final AnoGAN mapping loss, and ``restart`` (B,): the start
    kept. Ties keep the lower start, so a start that equals start 0 never replaces it."""
    n = out["mapping_loss"].shape[0] // restarts
    rows = torch.arange(n, device=out["mapping_loss"].device)

    def pick(loss: torch.Tensor) -> torch.Tensor:  # row of the kept start of each image
        return loss.view(restarts, n).argmin(0) * n + rows

    def scores(d: dict, main: torch.Tensor, ref: torch.Tensor | None) -> dict:
        return {k: v[main] if k in _ANOGAN_SCORES else v[ref] if k in _REFERENCE_SCORES else v[:n]
                for k, v in d.items()}

    losses = out["mapping_loss"][:, 1]
    main = pick(losses)
    ref = pick(out["scores"]["reference_anomaly"]) if "reference_anomaly" in out["scores"] else None
    recorded = {t: scores(d, pick(d["anomaly"]), pick(d["reference_anomaly"]) if ref is not None else None)
                for t, d in out["recorded"].items()}
    taken = out["steps_taken"]
    return {
        **out,
        "scores": scores(out["scores"], main, ref),
        "recorded": recorded,
        "residual_map": out["residual_map"][main],
        "generated": out["generated"][main],
        "z": out["z"][main],
        "z_reference": out["z_reference"][ref] if ref is not None else None,
        "mapping_loss": out["mapping_loss"][main],
        "steps_taken": torch.stack([taken[main, 0], *([taken[ref, 1]] if ref is not None else [])], 1),
        "restart_losses": losses.view(restarts, n).T.contiguous(),
        "restart": (main - rows) // n,
    }


class _Pass(NamedTuple):
    """One forward pass of the fused mapping (``Inversion._losses``): per-row loss (rows,), G(z)
    (rows, C, H, W), L_R (rows,), L_D of the AnoGAN rows or None, L_D^ of the reference rows or None."""

    loss: torch.Tensor
    generated: torch.Tensor
    residual: torch.Tensor
    discrimination: torch.Tensor | None
    reference_discrimination: torch.Tensor | None


class _Rows(NamedTuple):
    """The rows of z still mapping: z (rows, z_dim), its Adam, their queries x (rows, C, H, W), f(x) of
    the AnoGAN rows among them, and their count ``n_main`` (the first rows)."""

    z: torch.Tensor
    opt: torch.optim.Optimizer
    xs: torch.Tensor
    fx: torch.Tensor
    n_main: int


class _EarlyStop:
    """Optional per-mapping early stop (``inversion.early_stop``; it changes the method, so it is off
    by default). A row of z stops when its mapping loss has not fallen below ``(1 - tol)`` times its
    best for ``patience`` steps; its z is kept as it is, and it leaves the batch, so that later steps
    cost less. Rows [0, n_main) of the fused batch are AnoGAN rows, the rest reference rows."""

    def __init__(self, z: torch.Tensor, n_main: int, tol: float, patience: int):
        self.tol, self.patience, self.n_main = tol, patience, n_main
        n = z.shape[0]
        self.rows = torch.arange(n, device=z.device)  # rows of the full batch still mapping
        self.best = torch.full((n,), float("inf"), device=z.device)
        self.since = torch.zeros(n, dtype=torch.long, device=z.device)  # steps without improvement
        self.z_full = z.detach().clone()
        self.stopped_at = torch.full((n,), -1, dtype=torch.long)
        self.compacted = self.finished = False

    def update(self, t: int, loss: torch.Tensor) -> bool:
        """Take the losses of step t (on the device); every ``patience`` steps, tell whether some
        rows stop (the one host synchronisation)."""
        cur = loss.detach()
        improved = cur < self.best * (1 - self.tol)
        self.best = torch.minimum(self.best, cur)
        self.since = torch.where(improved, 0, self.since + 1)
        return (t + 1) % self.patience == 0 and bool((self.since >= self.patience).any())

    def compact(self, t: int, z: torch.Tensor, opt: torch.optim.Optimizer, xs: torch.Tensor,
                fx: torch.Tensor):
        """Drop the stopped rows (kept at z_t) from z, its gradient, Adam's state and the queries."""
        keep = self.since < self.patience
        gone = self.rows[~keep]
        self.z_full[gone] = z.detach()[~keep]
        self.stopped_at[gone.cpu()] = t
        self.rows, self.best, self.since = self.rows[keep], self.best[keep], self.since[keep]
        self.n_main = int((self.rows < len(fx)).sum())
        new = z.detach()[keep].clone().requires_grad_(True)
        new.grad = z.grad[keep]
        new_opt = torch.optim.Adam([new], lr=opt.defaults["lr"])
        new_opt.state[new] = {k: v[keep].clone() if v.dim() else v.clone() for k, v in opt.state[z].items()}
        self.compacted, self.finished = True, len(self.rows) == 0
        return new, new_opt, xs[keep], fx[self.rows[: self.n_main]], self.n_main

    def full_z(self, z: torch.Tensor) -> torch.Tensor:
        """Every row's z: the stopped rows' z at their stop, the others' current z."""
        full = self.z_full.clone()
        full[self.rows] = z.detach()
        return full

    def steps_taken(self, steps: int) -> torch.Tensor:
        return torch.where(self.stopped_at >= 0, self.stopped_at, steps)
