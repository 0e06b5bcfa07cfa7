"""Shared pieces of the benchmark scripts: the networks at their default size, the two baselines of
the mapping (a bare PyTorch batched loop and a per-image loop), side-by-side timing, the result line.

The scripts measure every variant in the same process, in interleaved rounds, and keep each
variant's fastest round: on a shared machine that is the figure least disturbed by other load."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, no install needed

from anogan.nets import Discriminator, Generator  # noqa: E402


def parser(doc: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc.strip().splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds; the best counts")
    p.add_argument("--width", type=int, default=32, help="G and D width (conf/model/dcgan.yaml: 32)")
    p.add_argument("--z-dim", type=int, default=100)
    return p


def networks(size: int, width: int = 32, z_dim: int = 100, device: str = "cpu"):
    """G and D of the default DCGAN for ``size``-pixel grey images, frozen, with non-trivial BatchNorm
    running statistics as after training."""
    torch.manual_seed(0)
    G, D = Generator(size, 1, z_dim=z_dim, width=width), Discriminator(size, 1, width=width)
    for mod in list(G.modules()) + list(D.modules()):
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.1, 0.1)
            mod.running_var.uniform_(0.5, 1.5)
    return [net.to(device).eval().requires_grad_(False) for net in (G, D)]


def queries(n: int, size: int, device: str = "cpu") -> torch.Tensor:
    return (torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(1)) * 2 - 1).to(device)


def bare_map(G, D, x, z1, steps: int, lam: float = 0.1, lr: float = 0.05,
             anogan: bool = True, reference: bool = True) -> dict[str, torch.Tensor]:
    """The mapping written as a plain PyTorch loop, uniform prior: the AnoGAN rows and/or the reference
    rows of z for the queries x, stacked in one batch. Returns the final L_R, L_D, L_D^ per image."""
    n = len(x)
    with torch.no_grad():
        fx = D.features(x)
    parts = int(anogan) + int(reference)
    z = z1.repeat(parts, 1).requires_grad_(True)
    target = x.repeat(parts, 1, 1, 1)
    opt = torch.optim.Adam([z], lr=lr)
    out: dict[str, torch.Tensor] = {}
    for t in range(steps + 1):
        with torch.set_grad_enabled(t < steps):
            fake = G(z)
            l_r = torch.sum(torch.abs(target - fake), dim=(1, 2, 3))
            h = fake
            for block in D.blocks[: D.feature_layer + 1]:
                h = block(h)
            second = []
            if anogan:
                out["discrimination"] = torch.sum(torch.abs(h[:n].flatten(1) - fx), dim=1)
                second.append(out["discrimination"])
            if reference:
                r = h[n:] if anogan else h
                for block in D.blocks[D.feature_layer + 1 :]:
                    r = block(r)
                logit = D.logit(r).view(-1)
                out["reference_discrimination"] = F.softplus(-logit)  # BCE with target "real"
                second.append(out["reference_discrimination"])
            loss = (1 - lam) * l_r + lam * torch.cat(second)
        if t == steps:
            break
        opt.zero_grad(set_to_none=True)
        loss.sum().backward()
        opt.step()
        with torch.no_grad():
            z.clamp_(-1, 1)
    if anogan:
        out["residual"] = l_r[:n].detach()
    if reference:
        out["reference_residual"] = l_r[-n:].detach()
    return {k: v.detach() for k, v in out.items()}


def per_image_map(G, D, x, z1, steps: int, **kw) -> dict[str, torch.Tensor]:
    """One z at a time, as the public implementations map: for each image, its AnoGAN mapping, then
    its reference mapping, each a loop of ``steps`` steps on a single z."""
    rows = []
    for i in range(len(x)):
        one = bare_map(G, D, x[i : i + 1], z1[i : i + 1], steps, anogan=True, reference=False, **kw)
        one.update(bare_map(G, D, x[i : i + 1], z1[i : i + 1], steps, anogan=False, reference=True, **kw))
        rows.append(one)
    return {k: torch.cat([r[k] for r in rows]) for k in rows[0]}


def sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def side_by_side(variants: dict[str, Callable[[], object]], rounds: int, device: str = "cpu") -> dict[str, float]:
    """Best wall time in seconds of each variant over ``rounds`` interleaved rounds (after one warm-up
    call each)."""
    for fn in variants.values():
        fn()
    best = {name: float("inf") for name in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


def environment() -> dict[str, object]:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return {"torch": torch.__version__, "threads": torch.get_num_threads(), "load1": round(load, 2)}


def result_line(values: dict[str, object]) -> str:
    """The one closing line of a benchmark: ``name=value`` pairs, floats with 3 significant digits."""
    fmt = {k: (f"{v:.3g}" if isinstance(v, float) else str(v)) for k, v in values.items()}
    line = " ".join(f"{k}={v}" for k, v in fmt.items())
    print(line, flush=True)
    return line
