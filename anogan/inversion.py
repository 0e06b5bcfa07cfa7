"""The mapping (paper sec. 2.2): find z with G(z) close to a query x by gradient descent, G and D frozen.

``Inversion`` is a LightningModule for ``Trainer(inference_mode=False).test``: every test batch is
mapped as a batch (no Python loop over images), and the step returns, per image, the six scores of
``anogan.scores``, the residual map, G(z), z, label, index and split, for the evaluation callbacks.
The maths lives in ``map_batch``, usable without Lightning.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import lightning as L
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch import nn

from anogan import scores as S
from anogan.nets import Discriminator, Generator
from anogan.prior import initial_z, project_to_support
from anogan.reliability import CheckpointError, check_finite_scores, gan_nets, read_checkpoint


def load_gan(ckpt: str | os.PathLike | dict) -> tuple[Generator, Discriminator, str, dict]:
    """(G, D, prior, run config) from a GAN checkpoint written by training (``anogan.gan.GAN``)."""
    path = ckpt if not isinstance(ckpt, dict) else "<checkpoint dict>"
    if not isinstance(ckpt, dict):
        ckpt = read_checkpoint(ckpt)  # weights_only=True: loading cannot run code
    nets = gan_nets(ckpt, path)
    G, D = Generator(**nets["generator"]), Discriminator(**nets["discriminator"])
    state = ckpt["state_dict"]
    try:
        G.load_state_dict({k[len("generator."):]: v for k, v in state.items() if k.startswith("generator.")})
        D.load_state_dict(
            {k[len("discriminator."):]: v for k, v in state.items() if k.startswith("discriminator.")}
        )
    except RuntimeError as e:
        raise CheckpointError(f"{path}: the weights do not fit the nets it describes ({nets}): {e}") from None
    return G, D, nets.get("prior", "uniform"), ckpt.get("anogan_config", {})


def check_settings(lam: float, steps: int, record_steps: Sequence[int] | None = None) -> list[int]:
    """Refuse mapping settings outside their domain (before any work is done); the sorted record_steps."""
    if not 0 <= lam <= 1:
        raise ValueError(f"inversion.lam={lam} must lie in [0, 1] (the paper uses 0.1)")
    if int(steps) != steps or steps < 1:
        raise ValueError(f"inversion.steps={steps} must be an integer >= 1 (Gamma; the paper uses 500)")
    record = sorted({int(s) for s in (record_steps or [])})
    bad = [s for s in record if not 0 <= s <= steps]
    if bad:
        raise ValueError(f"inversion.record_steps {bad} lie outside [0, inversion.steps={steps}]")
    return record


class Inversion(L.LightningModule):
    """Maps each test image to z with ``steps`` (Gamma) Adam steps on ``(1 - lam) L_R + lam L_D``.

    Args:
        generator, discriminator: trained networks; frozen here (eval mode, no weight gradients).
        prior: p_z of training; z_1 is drawn from it and z is kept in its support.
        lam: lambda of eq. 5. steps: Gamma. lr: Adam's learning rate on z.
        reference: also run the reference mapping (GAN_R, ``(1 - lam) L_R + lam L_D^``) in the same
            batched pass, for the scores reference_discrimination and reference_anomaly.
        record_steps: also report the scores after each of these step counts (<= steps).
        seed: z_1 of image i is a function of (seed, i) only.
        init: ``random`` (z_1 from the prior, as in the paper) or ``encoder`` (z_1 = E(x), f-AnoGAN's
            encoder, kept in the prior's support).
        encoder: E for ``init=encoder``; frozen here.
        scorers: modules mapping x (B, C, H, W) to more scores {name: (B,)} in one forward pass
            (``anogan.encoder.FAnoGAN``, ``anogan.acae.ACAEScores``), added to the mapping's scores.
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
    ):
        super().__init__()
        record = check_settings(lam, steps, record_steps)
        if init not in ("random", "encoder"):
            raise ValueError(f"inversion.init={init!r} must be 'random' or 'encoder'")
        if init == "encoder" and encoder is None:
            raise ValueError(
                "inversion.init=encoder needs an encoder: pass encoder_ckpt_path=<run>/checkpoints/encoder.ckpt"
            )
        self.generator, self.discriminator = generator, discriminator
        self.encoder, self.scorers = encoder, nn.ModuleList(scorers)
        for net in (generator, discriminator) + ((encoder,) if encoder is not None else ()):
            net.requires_grad_(False)
            net.eval()
        self.save_hyperparameters(ignore=["generator", "discriminator", "encoder", "scorers"])
        self.hparams.record_steps = record
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

    def initial_z(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """z_1 (B, z_dim): from (seed, index) for ``init=random``; E(x) for ``init=encoder``."""
        hp = self.hparams
        if hp.init == "encoder":
            with torch.no_grad():
                z1 = self.encoder(x)
                project_to_support(hp.prior, z1)
            return z1
        return initial_z(hp.prior, hp.seed, index.cpu(), self.generator.z_dim).to(x)

    def map_batch(self, x: torch.Tensor, index: torch.Tensor) -> dict:
        """Map a batch x (B, C, H, W) in [-1, 1] with dataset indices (B,). Returns a dict of
        per-image tensors: ``scores`` {name: (B,)}, ``recorded`` {step: {name: (B,)}},
        ``residual_map`` (B, H, W), ``generated`` (B, C, H, W), ``z`` and ``z_reference`` (B, z_dim),
        ``mapping_loss`` (B, 2): the AnoGAN mapping loss at the first and the last step."""
        hp = self.hparams
        G, D = self.generator, self.discriminator
        lam, steps, ref = hp.lam, hp.steps, hp.reference
        B = x.shape[0]
        with torch.no_grad():
            fx, logits_x = D.features_and_logits(x)  # f(x) once per batch, not per step
        z1 = self.initial_z(x, index)
        m = 2 if ref else 1  # rows [0, B): AnoGAN mapping; rows [B, 2B): reference mapping
        z = z1.repeat(m, 1).requires_grad_(True)
        xs = x.repeat(m, 1, 1, 1)
        opt = torch.optim.Adam([z], lr=hp.lr)
        record, recorded = set(hp.record_steps), {}
        first_loss = None
        for t in range(steps + 1):
            final = t == steps
            if getattr(self._trainer, "received_sigterm", False):
                raise SIGTERMException  # stop within a step, not a batch: SLURM's grace period is short
            with torch.set_grad_enabled(not final):
                gz = G(z)
                res = S.residual(xs, gz)
                dis = S.discrimination(fx, D.features(gz[:B]))  # D only up to the feature layer
                loss = S.mapping_loss(res[:B], dis, lam)
                if ref:
                    ref_dis = S.reference_discrimination(D(gz[B:]))
                    loss = torch.cat([loss, S.mapping_loss(res[B:], ref_dis, lam)])
            if first_loss is None:
                first_loss = loss[:B].detach()
            if t in record or final:
                cur = {"residual": res[:B].detach(), "discrimination": dis.detach()}
                cur["anomaly"] = S.anomaly(cur["residual"], cur["discrimination"], lam)
                if ref:
                    cur["reference_discrimination"] = ref_dis.detach()
                    cur["reference_anomaly"] = S.reference_anomaly(res[B:].detach(), ref_dis.detach(), lam)
                cur["discriminator"] = S.discriminator(logits_x)
                if t in record:
                    recorded[t] = cur
            if final:
                break
            opt.zero_grad(set_to_none=True)
            loss.sum().backward()  # per-image losses: Adam is element-wise, so images stay independent
            opt.step()
            with torch.no_grad():
                project_to_support(hp.prior, z)
        for scorer in self.scorers:  # one forward pass each, no optimisation (f-AnoGAN, aCAE)
            cur.update(scorer(x))
        gz = gz.detach()
        return {
            "scores": cur,
            "recorded": recorded,
            "residual_map": S.residual_map(x, gz[:B]),
            "generated": gz[:B],
            "z": z[:B].detach(),
            "z_reference": z[B:].detach() if ref else None,
            "mapping_loss": torch.stack([first_loss, loss[:B].detach()], 1),
        }

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict:
        if torch.is_inference_mode_enabled():
            raise RuntimeError(
                "the mapping optimises z by gradient descent, which inference mode forbids: "
                "run it with Trainer(inference_mode=False)"
            )
        out = self.cache.lookup(batch["split"], batch["index"]) if self.cache is not None else None
        if out is None:
            with torch.enable_grad():  # Lightning's test loop runs under no_grad
                out = self.map_batch(batch["image"], batch["index"])
            check_finite_scores(out["scores"], batch["split"], batch["index"])
        out.update({k: batch[k] for k in ("image", "label", "index", "split", "mask") if k in batch})
        return out

    def configure_optimizers(self):
        return None
