"""The paper's equations as pure per-image functions (Schlegl et al., IPMI 2017, section 2).

Every function maps batches to one value per image, (B,); nothing here knows Lightning. Images are
(B, C, H, W) in [-1, 1], features f(x) are (B, F) from ``Discriminator.features``, logits (B,) from
``Discriminator.forward``. Section numbers refer to arXiv 1703.05921.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def residual_map(x: torch.Tensor, gz: torch.Tensor) -> torch.Tensor:
    """x_R = |x - G(z)|, the pixel-level anomaly map (sec. 2.3), summed over channels: (B, H, W)."""
    return (x - gz).abs().sum(1)


def residual(x: torch.Tensor, gz: torch.Tensor) -> torch.Tensor:
    """L_R(z) = sum |x - G(z)| (eq. 3), the residual score R(x) at the last step: (B,)."""
    return (x - gz).abs().flatten(1).sum(1)


def discrimination(fx: torch.Tensor, fgz: torch.Tensor) -> torch.Tensor:
    """L_D(z) = sum |f(x) - f(G(z))| (eq. 4, feature matching), the score D(x) at the last step: (B,)."""
    return (fx - fgz).abs().flatten(1).sum(1)


def reference_discrimination(logits_gz: torch.Tensor) -> torch.Tensor:
    """L_D^(z): sigmoid cross-entropy of D(G(z)) against the target "real" (1), as in Yeh et al.'s
    semantic inpainting; the paper's reference discrimination loss (sec. 3): (B,)."""
    return F.binary_cross_entropy_with_logits(logits_gz, torch.ones_like(logits_gz), reduction="none")


def mapping_loss(residual_loss: torch.Tensor, discrimination_loss: torch.Tensor, lam: float) -> torch.Tensor:
    """L(z) = (1 - lam) L_R(z) + lam L_D(z) (eq. 5): (B,). The same weighting gives the reference
    mapping's loss with L_D^ in place of L_D."""
    return (1 - lam) * residual_loss + lam * discrimination_loss


def anomaly(residual_score: torch.Tensor, discrimination_score: torch.Tensor, lam: float) -> torch.Tensor:
    """A(x) = (1 - lam) R(x) + lam D(x) (eq. 6), the AnoGAN anomaly score: (B,)."""
    return mapping_loss(residual_score, discrimination_score, lam)


def reference_anomaly(
    residual_score: torch.Tensor, reference_discrimination_score: torch.Tensor, lam: float
) -> torch.Tensor:
    """A^(x) = (1 - lam) R(x) + lam D^(x), both at the reference mapping's z (GAN_R, sec. 3): (B,)."""
    return mapping_loss(residual_score, reference_discrimination_score, lam)


def discriminator(logits_x: torch.Tensor) -> torch.Tensor:
    """The paper's P_D row (sec. 3): the trained D's own verdict on the query, higher = more anomalous,
    as the log-odds -D(x) = logit(P_D), where P_D = 1 - sigmoid(D(x)) = sigmoid(score): (B,), unbounded.

    It ranks images exactly as P_D does (so AUROC and the ROC are P_D's), but P_D itself saturates to
    exactly 1.0 in float32 for logits below about -17, which ties the most anomalous images and lowers
    the AUROC; the log-odds do not. ``torch.sigmoid(score)`` gives P_D for display."""
    return -logits_x


SCORE_NAMES = (
    "residual",
    "discrimination",
    "anomaly",
    "reference_discrimination",
    "reference_anomaly",
    "discriminator",
)


def izi(x: torch.Tensor, gez: torch.Tensor) -> torch.Tensor:
    """f-AnoGAN's izi loss (Schlegl et al., MedIA 2019, the izi encoder training; the official ``MSE`` of
    ``z_encoding_izif.py``): ||x - G(E(x))||^2 / n, n pixels per image. x, gez: (B, C, H, W) -> (B,)."""
    return (x - gez).pow(2).flatten(1).mean(1)


def ziz(z: torch.Tensor, egz: torch.Tensor) -> torch.Tensor:
    """f-AnoGAN's ziz loss (MedIA 2019, the ziz encoder training): ||z - E(G(z))||^2 / d for z sampled
    from p_z, d = z_dim. z, egz: (B, d) -> (B,)."""
    return (z - egz).pow(2).flatten(1).mean(1)


def fanogan(
    x: torch.Tensor, gez: torch.Tensor, fx: torch.Tensor, fgez: torch.Tensor, kappa: float = 1.0
) -> torch.Tensor:
    """f-AnoGAN's izi_f score (Schlegl et al., MedIA 2019, the izi_f loss): ||x - G(E(x))||^2 / n +
    kappa ||f(x) - f(G(E(x)))||^2 / m, n pixels and m features per image; also E's training loss: (B,)."""
    return izi(x, gez) + kappa * (fx - fgez).pow(2).flatten(1).mean(1)


def fanogan_latent(ex: torch.Tensor, egex: torch.Tensor) -> torch.Tensor:
    """f-AnoGAN's latent distance ||E(x) - E(G(E(x)))||^2 / d, the mean over z's d coordinates, as the
    official ``anomaly_detection.py`` reports it beside the izi_f score (``z_distance``); the ziz
    expression at z = E(x). ex, egex: (B, d) -> (B,)."""
    return ziz(ex, egex)
