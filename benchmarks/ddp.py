"""DDP scaling of GAN training: 1 process vs 2 processes (gloo, one thread each), side by side.

Both train the default DCGAN (``anogan.models.gan.GAN``, width 32, 32x32 grey images held in memory) under
``lightning.Trainer`` on CPU with the same global batch: one process with batch ``--batch``, or two
processes (Lightning's ``ddp`` with unused-parameter detection, as ``anogan.runtime.distributed.build_trainer``
makes it) with ``--batch / 2`` each. Each timed run is a fresh ``python benchmarks/ddp.py --worker N``;
the clock (process 0) starts at batch 2 and stops after the last batch, so process start-up is left
out. Rounds alternate the two runs; each keeps its fastest round. Ends with::

    ddp_1proc=<images/s> ddp_2proc=<images/s> ratio=<2-process images/s over 1-process images/s> ...

    python benchmarks/ddp.py [--batch 64] [--batches 30] [--rounds 3]

On 2 idle cores the ideal ratio is 2; the gradient all-reduce of every D and G step costs the rest.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import torch
from _common import environment, parser, result_line

HERE = Path(__file__).resolve()


def worker(procs: int, batch: int, batches: int, width: int, z_dim: int) -> None:
    """Train ``batches`` global batches on ``procs`` processes; process 0 prints ``seconds=<t>``."""
    import lightning as L
    from training import Clock, Images, adam, nets

    from anogan.models.gan import GAN

    torch.set_num_threads(1)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warm = 2
    x = torch.rand(batch * batches, 1, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    model = GAN(*nets(32, width, z_dim, "dcgan"), adam("dcgan"), adam("dcgan"))
    loader = torch.utils.data.DataLoader(Images(x), batch_size=batch // procs, shuffle=True, drop_last=True)
    clock = Clock(warm)
    trainer = L.Trainer(
        accelerator="cpu", devices=procs, strategy="ddp_find_unused_parameters_true" if procs > 1 else "auto",
        max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[clock], num_sanity_val_steps=0,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model, loader)
    if trainer.global_rank == 0:
        print(f"seconds={clock.t1 - clock.t0}", flush=True)


def timed(procs: int, args) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, str(HERE), "--worker", str(procs), "--batch", str(args.batch),
                          "--batches", str(args.batches), "--width", str(args.width), "--z-dim", str(args.z_dim)],
                         env=env, capture_output=True, text=True, check=True, cwd=HERE.parent)
    return float(re.findall(r"^seconds=(\S+)$", out.stdout, re.M)[-1])


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--batch", type=int, default=64, help="global batch (each of 2 processes: half)")
    p.add_argument("--batches", type=int, default=30, help="global batches per timed run (2 are warm-up)")
    p.add_argument("--worker", type=int, default=0, help=argparse_hidden())
    args = p.parse_args()
    if args.worker:
        return worker(args.worker, args.batch, args.batches, args.width, args.z_dim)
    best = {1: float("inf"), 2: float("inf")}
    for _ in range(args.rounds):
        for procs in best:
            best[procs] = min(best[procs], timed(procs, args))
    rate = {procs: args.batch * (args.batches - 2) / t for procs, t in best.items()}
    for procs, r in rate.items():
        print(f"dcgan 32px global batch {args.batch}, {procs} process(es): {r:8.1f} images/s", flush=True)
    result_line({"ddp_1proc": rate[1], "ddp_2proc": rate[2], "ratio": rate[2] / rate[1],
                 "cpus": os.cpu_count(), **environment(), "threads": 1})  # per process


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
