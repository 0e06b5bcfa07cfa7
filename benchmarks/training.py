"""Training speed: the GAN LightningModule under ``lightning.Trainer`` vs a bare PyTorch loop, side by side.

Both train on the same in-memory images with the same maths. ``--objective dcgan`` (default): the
default DCGAN (width 32), a D step on real vs detached fake, then a G step with the non-saturating
loss, Adam(2e-4, betas 0.5/0.999). ``--objective wgangp``: f-AnoGAN's ResNet G and critic, one critic
step with the gradient penalty per batch and a G step every ``--critic-iterations`` batches,
Adam(1e-4, betas 0/0.9). Images per second (real images through the critic) and the ratio. Usage::

    OMP_NUM_THREADS=2 python benchmarks/training.py [--size 32] [--batches 20] [--objective wgangp] [--bf16]
"""

from __future__ import annotations

import functools
import logging
import time
import warnings

import lightning as L
import torch
from _common import environment, parser, result_line

from anogan.nets import losses
from anogan.models.gan import GAN
from anogan.nets import build, running_stats_frozen


class Images(torch.utils.data.Dataset):
    def __init__(self, x: torch.Tensor):
        self.x = x

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.x[i]}


class Clock(L.Callback):
    """Wall time from the start of batch ``warm`` to the end of the last batch."""

    def __init__(self, warm: int):
        self.warm, self.t0, self.t1 = warm, None, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == self.warm:
            self.t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.t1 = time.perf_counter()


def adam(objective: str):
    if objective == "wgangp":
        return functools.partial(torch.optim.Adam, lr=1e-4, betas=(0.0, 0.9))
    return functools.partial(torch.optim.Adam, lr=2e-4, betas=(0.5, 0.999))


def nets(size: int, width: int, z_dim: int, objective: str):
    torch.manual_seed(0)
    family = "resnet" if objective == "wgangp" else "dcgan"
    return (build(family, "generator", image_size=size, channels=1, z_dim=z_dim, width=width),
            build(family, "discriminator", image_size=size, channels=1, width=width))


def lightning_run(x, batch, n, warm, size, width, z_dim, device, objective, critic_iterations,
                  precision: str = "32-true") -> float:
    prior = "normal" if objective == "wgangp" else "uniform"
    model = GAN(*nets(size, width, z_dim, objective), adam(objective), adam(objective), prior=prior,
                objective=objective, critic_iterations=critic_iterations)
    loader = torch.utils.data.DataLoader(Images(x), batch_size=batch, shuffle=True, drop_last=True)
    clock = Clock(warm)
    trainer = L.Trainer(
        accelerator="gpu" if device.startswith("cuda") else "cpu", devices=1, max_epochs=1,
        limit_train_batches=n, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[clock], num_sanity_val_steps=0, precision=precision,
        benchmark=device.startswith("cuda"),  # fixed shapes (drop_last): cuDNN's autotuner, as train.py
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model, loader)
    return clock.t1 - clock.t0


def bare_run(x, batch, n, warm, size, width, z_dim, device, objective, critic_iterations) -> float:
    G, D = (net.to(device) for net in nets(size, width, z_dim, objective))
    opt_g, opt_d = adam(objective)(G.parameters()), adam(objective)(D.parameters())
    loader = torch.utils.data.DataLoader(Images(x), batch_size=batch, shuffle=True, drop_last=True)
    t0 = None
    for i, b in enumerate(loader):
        if i == n:
            break
        if i == warm:
            t0 = time.perf_counter()
        real = b["image"].to(device)
        if objective == "wgangp":
            with torch.no_grad(), running_stats_frozen(G):  # as anogan.models.gan: G's statistics move in G steps
                fake = G(torch.randn(len(real), z_dim, device=device))
            eps = torch.rand(len(real), 1, 1, 1, device=device)
            d_loss = -losses.wasserstein_estimate(D(real), D(fake)) + 10.0 * losses.gradient_penalty(D, real, fake, eps)
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()
            if (i + 1) % critic_iterations == 0:
                g_loss = -D(G(torch.randn(len(real), z_dim, device=device))).mean()
                opt_g.zero_grad(set_to_none=True)
                g_loss.backward()
                opt_g.step()
            continue
        fake = G(torch.rand(len(real), z_dim, device=device) * 2 - 1)
        d_loss = losses.dcgan_d_loss(D(real), D(fake.detach()))
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()
        g_loss = losses.dcgan_g_loss(D(fake))
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        opt_g.step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--batches", type=int, default=20, help="batches per timed run (the first 2 are warm-up)")
    p.add_argument("--objective", choices=losses.OBJECTIVES, default="dcgan")
    p.add_argument("--critic-iterations", type=int, default=5)
    p.add_argument("--bf16", action="store_true", help="also time Lightning with trainer.precision=bf16-mixed")
    args = p.parse_args()
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warm = 2
    x = torch.rand(args.batch * args.batches, 1, args.size, args.size) * 2 - 1
    runs = {"lightning": lightning_run, "bare": bare_run}
    if args.bf16:
        runs["lightning_bf16"] = functools.partial(lightning_run, precision="bf16-mixed")
    best = {k: float("inf") for k in runs}
    for _ in range(args.rounds):
        for name, run in runs.items():
            best[name] = min(best[name], run(x, args.batch, args.batches, warm, args.size, args.width,
                                             args.z_dim, args.device, args.objective, args.critic_iterations))
    rate = {k: args.batch * (args.batches - warm) / t for k, t in best.items()}
    for k, r in rate.items():
        print(f"{args.objective} {args.size}px batch {args.batch} {k:10s} {r:8.1f} images/s", flush=True)
    key = f"{args.objective}_s{args.size}"
    extra = {}
    if args.bf16:
        extra = {f"{key}_lightning_bf16": rate["lightning_bf16"],
                 f"{key}_bf16_over_fp32": rate["lightning_bf16"] / rate["lightning"]}
    result_line({f"{key}_lightning": rate["lightning"], f"{key}_bare": rate["bare"],
                 f"{key}_lightning_over_bare": rate["lightning"] / rate["bare"], **extra, **environment()})


if __name__ == "__main__":
    main()
