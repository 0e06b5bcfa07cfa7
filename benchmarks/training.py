"""Training speed: the GAN LightningModule under ``lightning.Trainer`` vs a bare PyTorch loop, side by side.

Both train the default DCGAN (width 32) on the same in-memory images with the same maths (a D step on
real vs detached fake, then a G step with the non-saturating loss, Adam(2e-4, betas 0.5/0.999)).
Images per second and the ratio. Usage::

    OMP_NUM_THREADS=2 python benchmarks/training.py [--size 32] [--batches 20]
"""

from __future__ import annotations

import functools
import logging
import time
import warnings

import lightning as L
import torch
import torch.nn.functional as F
from _common import environment, parser, result_line

from anogan.gan import GAN
from anogan.nets import Discriminator, Generator


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


def adam():
    return functools.partial(torch.optim.Adam, lr=2e-4, betas=(0.5, 0.999))


def nets(size: int, width: int, z_dim: int):
    torch.manual_seed(0)
    return Generator(size, 1, z_dim, width), Discriminator(size, 1, width)


def lightning_run(x, batch, n, warm, size, width, z_dim, device) -> float:
    model = GAN(*nets(size, width, z_dim), adam(), adam())
    loader = torch.utils.data.DataLoader(Images(x), batch_size=batch, shuffle=True, drop_last=True)
    clock = Clock(warm)
    trainer = L.Trainer(
        accelerator="gpu" if device.startswith("cuda") else "cpu", devices=1, max_epochs=1,
        limit_train_batches=n, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[clock], num_sanity_val_steps=0,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model, loader)
    return clock.t1 - clock.t0


def bare_run(x, batch, n, warm, size, width, z_dim, device) -> float:
    G, D = (net.to(device) for net in nets(size, width, z_dim))
    opt_g, opt_d = adam()(G.parameters()), adam()(D.parameters())
    loader = torch.utils.data.DataLoader(Images(x), batch_size=batch, shuffle=True, drop_last=True)
    t0 = None
    for i, b in enumerate(loader):
        if i == n:
            break
        if i == warm:
            t0 = time.perf_counter()
        real = b["image"].to(device)
        ones, zeros = real.new_ones(len(real)), real.new_zeros(len(real))
        fake = G(torch.rand(len(real), z_dim, device=device) * 2 - 1)
        d_loss = F.binary_cross_entropy_with_logits(D(real), ones) + F.binary_cross_entropy_with_logits(
            D(fake.detach()), zeros)
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()
        g_loss = F.binary_cross_entropy_with_logits(D(fake), ones)
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
    args = p.parse_args()
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warm = 2
    x = torch.rand(args.batch * args.batches, 1, args.size, args.size) * 2 - 1
    runs = {"lightning": lightning_run, "bare": bare_run}
    best = {k: float("inf") for k in runs}
    for _ in range(args.rounds):
        for name, run in runs.items():
            best[name] = min(best[name], run(x, args.batch, args.batches, warm, args.size, args.width,
                                             args.z_dim, args.device))
    rate = {k: args.batch * (args.batches - warm) / t for k, t in best.items()}
    for k, r in rate.items():
        print(f"{args.size}px batch {args.batch} {k:10s} {r:8.1f} images/s", flush=True)
    result_line({f"s{args.size}_lightning": rate["lightning"], f"s{args.size}_bare": rate["bare"],
                 f"s{args.size}_lightning_over_bare": rate["lightning"] / rate["bare"], **environment()})


if __name__ == "__main__":
    main()
