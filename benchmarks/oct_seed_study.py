"""The OCT phantom's scan decision over many seeds, one command: per seed draw the phantom, train the GAN,
draw the test and normal scans, map them, and write one table row; then the minimum, median and spread.

Per seed S, in ``OUT/S/`` (the commands of docs/oct.md, "Reproduce a seed")::

    python train.py experiment=oct_phantom seed=S data.path=OUT/S/patches.h5 hydra.run.dir=OUT/S/train [TRAIN]
    python -m anogan.data.phantom OUT/S/phantom --ckpt OUT/S/train/checkpoints/last.ckpt --test-only --normal N
    python evaluate.py ckpt_path=OUT/S/train/checkpoints/last.ckpt data=scans data.path=OUT/S/phantom/scans \\
        data.masks=OUT/S/phantom/masks data.normal_path=OUT/S/phantom/normal hydra.run.dir=OUT/S/NAME [EVAL]

The row (``OUT/S/scans.json``, and ``OUT/scans.csv`` over the seeds; ``--name`` for another evaluation of the
same GANs, e.g. other ``--eval`` settings): the scan AUROC of ``scan_score``
and of the most anomalous patch (``image_score``), the stitched pixel AUROC, AUPRC, AUPRO, the rates of
``scan_flagged`` at the conformal threshold of the normal scans, the failed first starts (with
``inversion.restarts`` >= 2), and the wall times. A seed whose row exists is not run again, so a killed
study resumes with the same command. ``OUT/scans_summary.json`` holds the minimum, median, maximum and spread
(max - min) of each number over the seeds, with the commit, command, machine and load in ``OUT/scans_run.json``::

    python benchmarks/oct_seed_study.py --seeds 100-109 --out logs/oct_seed_study --jobs 2

Seeds 0-2 are the development seeds (the rule of the scan decision and the study's settings were chosen on
them); ``--jobs 2`` runs two seeds at once with one thread each (the 2-core machine).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

from tables import machine

ROOT = Path(__file__).resolve().parents[1]
DEVELOPMENT = (0, 1, 2)
COLUMNS = ("seed", "role", "scan_auroc", "image_score_auroc", "pixel_auroc", "pixel_auprc", "pixel_aupro",
           "flag_sensitivity", "flag_specificity", "scan_threshold", "n_normal_scans", "n_scans",
           "failed_first_starts_normal_scans", "failed_first_starts_healthy_scans", "failed_first_starts_fluid_scans",
           "n_patches", "train_wall_s", "scans_wall_s")
SUMMARISED = ("scan_auroc", "image_score_auroc", "pixel_auroc", "pixel_auprc", "pixel_aupro", "flag_sensitivity",
              "flag_specificity", "train_wall_s", "scans_wall_s")


def seeds_arg(text: str) -> list[int]:
    """``100-109`` or ``3,5,7`` (or both, comma-separated) -> the seeds, in order."""
    out: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        try:
            out += list(range(int(lo), int(hi) + 1)) if hi else [int(lo)]
        except ValueError:
            raise argparse.ArgumentTypeError(f"--seeds {text!r}: give whole numbers, e.g. 100-109 or 3,5,7") from None
    if not out or len(set(out)) != len(out):
        raise argparse.ArgumentTypeError(f"--seeds {text!r}: give distinct seeds, e.g. 100-109 or 3,5,7")
    return out


def _run(cmd: list[str], log: Path, threads: int) -> float:
    """Run ``cmd`` from the repository root with its output in ``log``; its wall time in seconds."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    with open(log, "w") as f:
        done = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env=env)
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed with status {done.returncode}; see {log}")
    return time.perf_counter() - start


def run_seed(seed: int, out: Path, args) -> dict:
    """Train, draw and map one seed (skipped when its row exists); its row."""
    here = out / str(seed)
    row_file = here / f"{args.name}.json"
    if row_file.exists():
        return json.loads(row_file.read_text())
    here.mkdir(parents=True, exist_ok=True)
    py, ckpt = sys.executable, here / "train" / "checkpoints" / "last.ckpt"
    train_s = 0.0
    if not (here / "train" / "metrics.json").exists():
        train_s = _run([py, "train.py", "experiment=oct_phantom", f"seed={seed}", f"data.path={here / 'patches.h5'}",
                        f"hydra.run.dir={here / 'train'}", "logger=csv", "trainer.enable_progress_bar=false",
                        *args.train], here / "train.log", args.threads)
    if not (here / "phantom" / "normal").exists():
        _run([py, "-m", "anogan.data.phantom", str(here / "phantom"), "--ckpt", str(ckpt), "--test-only",
              "--normal", str(args.normal)], here / "phantom.log", args.threads)
    phantom = here / "phantom"
    scans_s = _run([py, "evaluate.py", f"ckpt_path={ckpt}", "data=scans", f"data.path={phantom / 'scans'}",
                    f"data.masks={phantom / 'masks'}", f"data.normal_path={phantom / 'normal'}",
                    f"hydra.run.dir={here / args.name}", "logger=csv", "trainer.enable_progress_bar=false",
                    *args.eval], here / f"{args.name}.log", args.threads)
    row = row_of(seed, json.loads((here / args.name / "map_metrics.json").read_text()), train_s, scans_s)
    tmp = row_file.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(row, indent=1))
    tmp.replace(row_file)
    return row


def row_of(seed: int, metrics: dict, train_s: float, scans_s: float) -> dict:
    """One seed's row from its ``map_metrics.json``."""
    scan, flag = metrics["scan"], metrics["scan"].get("at_flag") or {}
    groups = (metrics.get("mapping_failures") or {}).get("groups") or {}

    def failed(name: str) -> int | None:
        return groups[name]["first_start_failed"] if name in groups else None

    return {"seed": seed, "role": "development" if seed in DEVELOPMENT else "reported",
            "scan_auroc": scan["scan_score_auroc"], "image_score_auroc": scan["image_score_auroc"],
            "pixel_auroc": metrics["pixel_auroc"], "pixel_auprc": metrics["pixel_auprc"],
            "pixel_aupro": metrics["pixel_aupro"], "flag_sensitivity": flag.get("sensitivity"),
            "flag_specificity": flag.get("specificity"), "scan_threshold": metrics["calibration"]["scan_threshold"],
            "n_normal_scans": metrics["calibration"]["n_normal_scans"], "n_scans": metrics["n_scans"],
            "failed_first_starts_normal_scans": failed("patches_of_normal_scans"),
            "failed_first_starts_healthy_scans": failed("patches_of_scans_without_lesion"),
            "failed_first_starts_fluid_scans": failed("patches_of_scans_with_lesion"),
            "n_patches": sum(g["n"] for g in groups.values()) if groups else None,
            "train_wall_s": round(train_s, 1), "scans_wall_s": round(scans_s, 1)}


def summary(rows: list[dict]) -> dict:
    """Minimum, median, maximum and spread (max - min) of each summarised number over the rows that have it."""
    out = {}
    for key in SUMMARISED:
        values = [r[key] for r in rows if r.get(key) is not None]
        out[key] = ({"n": len(values), "min": min(values), "median": statistics.median(values),
                     "max": max(values), "spread": max(values) - min(values)} if values else
                    {"n": 0, "min": None, "median": None, "max": None, "spread": None,
                     "reason": "no seed has this number"})
    return out


def _commit() -> str:
    done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                           text=True).stdout.strip()
    return done.stdout.strip() + ("+uncommitted changes" if dirty else "")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    p.add_argument("--seeds", type=seeds_arg, required=True, help="e.g. 100-109 (development seeds: 0-2)")
    p.add_argument("--out", type=Path, required=True, help="study directory (a seed's row there is not redone)")
    p.add_argument("--jobs", type=int, default=1, help="seeds run at once (2 on the 2-core machine)")
    p.add_argument("--threads", type=int, default=None, help="OMP threads per job (default: cores / jobs)")
    p.add_argument("--normal", type=int, default=5, help="healthy volumes drawn for the scan flag (4 B-scans each)")
    p.add_argument("--train", nargs="*", default=[], help="more train.py overrides, e.g. trainer.max_epochs=20")
    p.add_argument("--eval", nargs="*", default=[], help="more evaluate.py overrides, e.g. inversion.restarts=2")
    p.add_argument("--name", default="scans", help="the evaluation's name: OUT/S/NAME/ (its run), OUT/S/NAME.json "
                   "(its row), OUT/NAME.csv, OUT/NAME_summary.json, OUT/NAME_run.json; the trained GANs are shared")
    args = p.parse_args(argv)
    if args.jobs < 1 or args.normal < 1:
        p.error(f"--jobs {args.jobs} --normal {args.normal}: both must be >= 1, e.g. --jobs 2 --normal 5")
    args.threads = args.threads or max(1, (os.cpu_count() or 1) // args.jobs)
    args.out.mkdir(parents=True, exist_ok=True)
    started, load0, t0 = datetime.now(timezone.utc).isoformat(timespec="seconds"), os.getloadavg(), time.time()
    with ThreadPoolExecutor(args.jobs) as pool:
        rows = list(pool.map(lambda s: run_seed(s, args.out, args), args.seeds))
    with open(args.out / f"{args.name}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    reported = [r for r in rows if r["role"] == "reported"] or rows
    load1 = os.getloadavg()
    run = {"commit": _commit(), "date": started[:10], "started": started,
           "command": " ".join(["python", "benchmarks/oct_seed_study.py", *(sys.argv[1:] if argv is None else argv)]),
           "machine": f"{machine()}, {args.jobs} seed(s) at once, {args.threads} thread(s) each",
           "load": f"{load0[0]:.2f} at the start, {load1[0]:.2f} at the end (1-minute average)",
           "wall_s": round(time.time() - t0, 1), "transcribed": [],
           "note": "wall_s counts the seeds this call ran (rows that existed were read, not rerun); per seed "
                   f"train_wall_s and scans_wall_s in {args.name}.csv. train overrides: {args.train}; "
                   f"evaluate overrides: {args.eval}"}
    (args.out / f"{args.name}_run.json").write_text(json.dumps(run, indent=1))
    result = {"seeds": [r["seed"] for r in reported], "summary": summary(reported)}
    (args.out / f"{args.name}_summary.json").write_text(json.dumps(result, indent=1))
    print("| seed | scan AUROC | image-score AUROC | pixel AUROC | AUPRC | AUPRO | flag sens. / spec. "
          "| wall (train + scans) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")

    def f(v, d=3):
        return "null" if v is None else f"{v:.{d}f}"

    for r in rows:
        print(f"| {r['seed']} ({r['role']}) | {f(r['scan_auroc'])} | {f(r['image_score_auroc'])} "
              f"| {f(r['pixel_auroc'])} | {f(r['pixel_auprc'])} | {f(r['pixel_aupro'])} "
              f"| {f(r['flag_sensitivity'], 2)} / {f(r['flag_specificity'], 2)} "
              f"| {r['train_wall_s']:.0f} + {r['scans_wall_s']:.0f} s |")
    for key in ("scan_auroc", "pixel_auroc"):
        s = result["summary"][key]
        print(f"{key}: min {f(s['min'])}, median {f(s['median'])}, max {f(s['max'])} over {s['n']} seeds")


if __name__ == "__main__":
    main()
