"""GAN training objectives as pure functions of tensors (no Lightning): the DCGAN minimax losses of
AnoGAN and the WGAN-GP losses of f-AnoGAN's released code (Gulrajani et al. 2017)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

OBJECTIVES = ("dcgan", "wgangp")


def dcgan_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """D's loss: sigmoid cross-entropy of real images against 1 and of fakes against 0 (a scalar)."""
    return F.binary_cross_entropy_with_logits(logits_real, torch.ones_like(logits_real)) + \
        F.binary_cross_entropy_with_logits(logits_fake, torch.zeros_like(logits_fake))


def dcgan_g_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """G's non-saturating loss: sigmoid cross-entropy of D(G(z)) against 1 (a scalar)."""
    return F.binary_cross_entropy_with_logits(logits_fake, torch.ones_like(logits_fake))


def gradient_penalty(critic: Callable[[torch.Tensor], torch.Tensor], real: torch.Tensor, fake: torch.Tensor,
                     eps: torch.Tensor, scale: torch.Tensor | float = 1.0) -> torch.Tensor:
    """WGAN-GP's penalty (Gulrajani et al. 2017, eq. 3; official ``wgangp_64x64.py``): the mean over the
    batch of ``(||grad_x critic(x_hat)||_2 - 1)**2`` at ``x_hat = eps * real + (1 - eps) * fake``.

    real, fake: (B, C, H, W); eps: (B, 1, 1, 1) in [0, 1], one draw per image. The gradient is taken
    with ``create_graph=True`` so that the penalty itself can be back-propagated to the critic's
    weights; it therefore needs autograd (not inference mode). Returns a float32 scalar.

    ``scale``: the loss scale of a ``torch.amp.GradScaler`` (fp16 training; a tensor on the device, so no
    host synchronisation), following PyTorch's AMP recipe for gradient penalties ("Automatic Mixed
    Precision examples", gradient penalty): the critic's output is scaled before ``autograd.grad``, so
    that fp16 gradients do not underflow, and the gradient is unscaled after, before its norm. A
    gradient that overflowed gives an infinite penalty, which the scaler's step then skips. 1 without
    a scaler (fp32, bf16): the same penalty up to rounding for any scale."""
    x_hat = (eps * real + (1 - eps) * fake).detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(x_hat).float().sum() * scale, x_hat, create_graph=True)
    grad = grad.float() / scale
    return (grad.flatten(1).norm(2, dim=1) - 1).pow(2).mean()


def wasserstein_estimate(critic_real: torch.Tensor, critic_fake: torch.Tensor) -> torch.Tensor:
    """The critic's estimate of the Wasserstein-1 distance, ``mean critic(real) - mean critic(fake)``;
    the critic minimises ``-estimate + gp_weight * penalty``, G minimises ``-mean critic(G(z))``."""
    return critic_real.mean() - critic_fake.mean()
