"""The latent prior p_z: sampling, per-image seeding, and keeping z in its support."""

from __future__ import annotations

import logging

import torch
from anogan.errors import InputError

log = logging.getLogger(__name__)
PRIORS = ("uniform", "normal")


def sample_prior(
    prior: str, generator: torch.Generator | None, n: int, z_dim: int, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """n draws of z from p_z: ``uniform`` on [-1, 1]^z_dim or standard ``normal``; (n, z_dim) on ``device``.

    Drawn on ``device`` from its default generator (``torch.manual_seed``) when ``generator`` is None;
    else from ``generator``, on its device, and moved to ``device``. Raises ValueError for another prior."""
    where = generator.device if generator is not None else torch.device(device)
    if prior == "uniform":
        return (torch.rand(n, z_dim, generator=generator, device=where) * 2 - 1).to(device)
    if prior == "normal":
        return torch.randn(n, z_dim, generator=generator, device=where).to(device)
    raise InputError(f"unknown prior {prior!r}; expected one of {PRIORS} (model.prior)")


def initial_z(prior: str, seed: int, index: torch.Tensor, z_dim: int, restarts: int = 1) -> torch.Tensor:
    """z_1 of each image: a function of (seed, dataset index) only, never of batch or rank.

    index: (B,) int -> (restarts * B, z_dim) on CPU (move it where needed), restart-major: rows
    [r B, (r + 1) B) are the r-th start of each image, the r-th draw of the image's generator, so start 0
    is the same whatever ``restarts`` (``inversion.restarts``)."""
    gen = torch.Generator()
    rows: list[list[torch.Tensor]] = [[] for _ in range(restarts)]
    for i in index.tolist():  # B tiny generator seeds; the draws themselves are vectorised
        gen.manual_seed(seed * 1_000_003 + int(i))
        for r in range(restarts):
            rows[r].append(sample_prior(prior, gen, 1, z_dim))
    return torch.cat([z for start in rows for z in start]) if len(index) else torch.empty(0, z_dim)


def project_to_support(prior: str, z: torch.Tensor) -> None:
    """Keep z in p_z's support, in place: clip to [-1, 1] for the uniform prior."""
    if prior == "uniform":
        z.clamp_(-1.0, 1.0)


def encoder_squash(squash: str, prior: str) -> str:
    """E's output squashing for ``squash`` (``auto``, ``tanh``, ``none``, ``clip``) under ``prior``:
    ``auto`` is tanh for the uniform prior (E(x) in its support (-1, 1)^z_dim) and none for the normal
    prior. tanh with the normal prior is allowed (the official f-AnoGAN code does it) but logged as a
    warning: tanh cannot reach |z_i| >= 1, a third of N(0, 1)'s mass per coordinate."""
    from anogan.nets.common import check_squash

    if prior not in PRIORS:
        raise InputError(f"unknown prior {prior!r}; expected one of {PRIORS} (model.prior)")
    if squash == "auto":
        return "tanh" if prior == "uniform" else "none"
    check_squash(squash)
    if squash == "tanh" and prior == "normal":
        log.warning(
            "encoder.module.squash=tanh with the normal prior: E(x) stays in (-1, 1)^z_dim, which misses "
            "|z_i| >= 1, about a third of N(0, 1)'s mass per coordinate (the official f-AnoGAN code does "
            "this; encoder.module.squash=auto or none follows the prior)"
        )
    return squash
