"""Per job of a finished ``train.py`` sweep, the wall seconds of its stages, read from its files' modification
times: GAN training (the job's start, ``.hydra/``, to ``sample_quality.json``, written after training),
f-AnoGAN's encoder (to ``checkpoints/encoder.ckpt``), the evaluation (to ``metrics.json``) and the whole job
(to ``job_status.json``). Files copied elsewhere lose these times: run it on the sweep directory itself.

  python benchmarks/job_times.py SWEEP_DIR --out benchmarks/results/NAME/job_times.csv

Columns: job, normal_classes, seed, critic_iterations (empty where the sweep left the preset's), gan_s,
encoder_s, evaluation_s, job_s; a stage whose file is missing is empty (and so are those after it).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from omegaconf import OmegaConf

from anogan.runtime.io import write_csv_atomic

STAGES = (("gan_s", "sample_quality.json"), ("encoder_s", "checkpoints/encoder.ckpt"),
          ("evaluation_s", "metrics.json"))


def job_times(job: Path) -> dict:
    """One job directory's row (see the module's docstring)."""
    overrides = dict(str(o).split("=", 1) for o in OmegaConf.load(job / ".hydra" / "overrides.yaml")
                     if "=" in str(o))
    row = {"job": job.name, "normal_classes": overrides.get("data.normal_classes", ""),
           "seed": overrides.get("seed", ""), "critic_iterations": overrides.get("model.critic_iterations", "")}
    start = last = (job / ".hydra").stat().st_mtime
    for key, file in STAGES:
        path = job / file
        if last is None or not path.is_file():
            row[key], last = "", None
            continue
        row[key] = round(path.stat().st_mtime - last)
        last = path.stat().st_mtime
    status = job / "job_status.json"
    row["job_s"] = round(status.stat().st_mtime - start) if status.is_file() else ""
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    jobs = sorted((d for d in args.sweep.iterdir() if d.name.isdigit() and (d / ".hydra").is_dir()),
                  key=lambda d: int(d.name))
    if not jobs:
        raise SystemExit(f"{args.sweep}: no job directories (0/, 1/, ... with .hydra/): give a sweep directory")
    rows = [job_times(j) for j in jobs]
    write_csv_atomic(rows, args.out)
    print(f"wrote {args.out}: {len(rows)} jobs")


if __name__ == "__main__":
    main()
