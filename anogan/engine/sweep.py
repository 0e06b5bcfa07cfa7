"""Hydra multiruns over lam x steps: a per-job status file, the sweep's ``summary.csv`` and figures.

``SweepSummary`` is a Hydra callback (registered in ``conf/hydra/default.yaml``). At the end of every
job it finishes the job's wandb run (so that each job is its own run) and writes ``job_status.json``
into the job's directory (``{"status": "COMPLETED"}`` or ``{"status": "FAILED", "error": ...}``); a
single run ended by bad input (``anogan.errors.InputError``) then exits with its one-line message; in a
multirun it rebuilds, from every job directory found so far, the sweep directory's

* ``summary.csv``: one row per job: job number, status, error, lam, steps, its overrides (one column
  each), the AUROC of every score (``auroc/<score>``) and, with ``inversion.record_steps``, the AUROC
  after each recorded step count (``auroc/<score>/step_<t>``); per score its AUPRC (``auprc/<score>``),
  F1-max (``f1_max/<score>``) and the sensitivity and specificity at the threshold calibrated on normal
  validation images (``calibrated_sensitivity/<score>``, ``calibrated_specificity/<score>``); where
  masks exist ``pixel_auroc``, ``pixel_auprc``, ``pixel_best_dice``, ``pixel_aupro`` (an empty cell and
  ``<metric>_reason`` where undefined);
* ``auroc_heatmap.png``: anomaly AUROC over (lam, steps); ``auroc_vs_steps.png``: one line per lam;
* ``benchmark.csv`` / ``.md`` when the sweep has a seed or class axis (``data.normal_classes``, or
  ``data.category`` of ``data=mvtec``): AUROC (and ``pixel_auroc``) mean ± std over seeds per class.

The summary is written after each job, not only when the multirun ends, because Hydra's sweepers
stop at the first failed job before ``on_multirun_end``: a failed job still leaves its row, with its
error. Recorded step counts fill the steps axis, so one job per lam with
``inversion.steps=200 inversion.record_steps=[25,50,100]`` draws the same curves as four jobs per lam.

Rebuild a summary by hand: ``python -m anogan.sweep <sweep dir>``.
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys
import traceback
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from anogan.runtime.io import atomic_path
from anogan.nets.scores import SCORE_NAMES
from anogan.errors import InputError

STATUS_FILE = "job_status.json"
SUMMARY_FILE = "summary.csv"
FIGURES = ("auroc_heatmap.png", "auroc_vs_steps.png")
FIRST_COLUMNS = ("job", "status", "error", "lam", "steps", "overrides")
SAMPLE_QUALITY_FILE = "sample_quality.json"  # anogan.callbacks.SampleQuality, written after training
METRIC_PREFIXES = ("auroc/", "auprc/", "f1_max/", "calibrated_sensitivity/", "calibrated_specificity/")
PIXEL_METRICS = ("pixel_auroc", "pixel_auprc", "pixel_best_dice", "pixel_aupro")


def _rank() -> int:
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    return int(getattr(rank_zero_only, "rank", 0) or 0)


def _write_atomic(path: Path, write) -> None:
    with atomic_path(path) as tmp:
        write(tmp)


def write_job_status(job_dir: str | os.PathLike, error: BaseException | None = None) -> Path:
    """``job_status.json`` of one job: COMPLETED, or FAILED with the error and its traceback (an
    ``InputError`` that Hydra's instantiate wrapped: its own message, as the command line shows it)."""
    from anogan.engine.errors import input_error

    status: dict[str, Any] = {"status": "COMPLETED" if error is None else "FAILED"}
    if error is not None:
        shown = input_error(error) or error
        status["error"] = f"{type(shown).__name__}: {shown}"
        status["traceback"] = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    path = Path(job_dir) / STATUS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(path, lambda tmp: tmp.write_text(json.dumps(status, indent=2)))
    return path


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _job_dirs(sweep_dir: Path) -> list[Path]:
    """Job directories of a sweep (those with Hydra's ``.hydra/overrides.yaml`` or a status file),
    in job order."""
    dirs = [d for d in sweep_dir.iterdir() if d.is_dir() and
            ((d / ".hydra" / "overrides.yaml").is_file() or (d / STATUS_FILE).is_file())]
    return sorted(dirs, key=lambda d: (0, int(d.name), "") if d.name.isdigit() else (1, 0, d.name))


def job_row(job_dir: Path) -> dict[str, Any]:
    """One summary row: status (COMPLETED, FAILED, or RUNNING while no status file exists), error,
    lam, steps, the job's overrides, every AUROC of its ``metrics.json``, and what its
    ``sample_quality.json`` says of G (``sample_nn_ratio``, ``sample_spread_ratio``; ``g_learned``: True when
    the ratio is at most the run's warning ratio, False above it: an untrained G, whose mapping scores
    cannot be trusted; empty where not measured)."""
    row: dict[str, Any] = {"job": job_dir.name}
    status = _read_json(job_dir / STATUS_FILE) or {"status": "RUNNING"}
    row["status"] = status["status"]
    row["error"] = status.get("error", "")
    overrides = []
    if (job_dir / ".hydra" / "overrides.yaml").is_file():
        overrides = [str(o) for o in OmegaConf.load(job_dir / ".hydra" / "overrides.yaml")]
    config = OmegaConf.load(job_dir / ".hydra" / "config.yaml") if (job_dir / ".hydra" / "config.yaml").is_file() \
        else OmegaConf.create()
    metrics = _read_json(job_dir / "metrics.json") or {}
    for key, name in (("lam", "inversion.lam"), ("steps", "inversion.steps")):
        value = metrics.get(key, OmegaConf.select(config, name, default=None))
        row[key] = value if value is None or isinstance(value, (int, float)) else str(value)
    row["overrides"] = " ".join(overrides)
    for o in overrides:
        key, _, value = o.partition("=")
        row[key.lstrip("+~")] = value
    for name, scores in metrics.get("scores", {}).items():
        row[f"auroc/{name}"] = scores["auroc"]
        for key in ("auprc", "f1_max"):
            if key in scores:
                row[f"{key}/{name}"] = scores[key]
        for key in ("sensitivity", "specificity"):
            if key in scores.get("calibrated", {}):
                row[f"calibrated_{key}/{name}"] = scores["calibrated"][key]
    for key in PIXEL_METRICS:
        if key in metrics:  # null when undefined (no positive pixel): an empty cell and its reason
            row[key] = metrics[key]
            if metrics[key] is None:
                row[f"{key}_reason"] = metrics.get(f"{key}_reason", "undefined")
    for t, aurocs in sorted(metrics.get("recorded", {}).items(), key=lambda kv: int(kv[0])):
        for name, value in aurocs.items():
            row[f"auroc/{name}/step_{t}"] = value
    quality = _read_json(job_dir / SAMPLE_QUALITY_FILE) or {}
    if quality.get("ratio") is not None:
        row["sample_nn_ratio"], row["sample_spread_ratio"] = quality["ratio"], quality.get("spread_ratio")
        row["g_learned"] = quality["ratio"] <= quality.get("warn_ratio", float("inf"))
    return row


def _column_order(rows: list[dict]) -> list[str]:
    keys = {k for r in rows for k in r}
    first = [k for k in FIRST_COLUMNS if k in keys]
    aurocs = sorted((k for k in keys if k.startswith(METRIC_PREFIXES) or k in PIXEL_METRICS),
                    key=lambda k: (k.count("/"), _metric_rank(k), _score_rank(k), _step_of(k), k))
    rest = sorted(keys - set(first) - set(aurocs))
    return first + rest + aurocs


def _metric_rank(key: str) -> int:
    order = METRIC_PREFIXES + PIXEL_METRICS
    return next((i for i, p in enumerate(order) if key.startswith(p)), len(order))


def _score_rank(key: str) -> int:
    name = key.split("/")[1] if "/" in key else key
    return SCORE_NAMES.index(name) if name in SCORE_NAMES else len(SCORE_NAMES)


def _step_of(key: str) -> int:
    last = key.rsplit("/", 1)[-1]
    return int(last[5:]) if last.startswith("step_") else -1


def auroc_points(rows: list[dict], score: str = "anomaly") -> dict[tuple[float, int], float]:
    """{(lam, steps): AUROC of ``score``} over the completed jobs, with recorded step counts as extra
    points; a job that ran exactly ``steps`` takes precedence over another job's recorded value."""
    points: dict[tuple[float, int], float] = {}
    final = set()
    for r in rows:
        if r["status"] != "COMPLETED" or r.get("lam") is None or f"auroc/{score}" not in r:
            continue
        lam = float(r["lam"])
        for key, value in r.items():
            prefix = f"auroc/{score}/step_"
            if key.startswith(prefix) and (lam, int(key[len(prefix):])) not in final:
                points[(lam, int(key[len(prefix):]))] = float(value)
        points[(lam, int(r["steps"]))] = float(r[f"auroc/{score}"])
        final.add((lam, int(r["steps"])))
    return points


def write_summary(sweep_dir: str | os.PathLike, score: str = "anomaly") -> Path:
    """Write ``summary.csv`` and, when any job completed with an AUROC, the two figures; returns the
    csv path."""
    sweep_dir = Path(sweep_dir)
    rows = [job_row(d) for d in _job_dirs(sweep_dir)]
    path = sweep_dir / SUMMARY_FILE

    def write_csv(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=_column_order(rows) or list(FIRST_COLUMNS), restval="")
            writer.writeheader()
            writer.writerows(rows)

    _write_atomic(path, write_csv)
    benchmark = write_benchmark(rows, sweep_dir)
    points = auroc_points(rows, score)
    if points and not (benchmark and len(points) == 1):  # a classes x seeds sweep at one (lam, steps)
        plot_sweep(points, sweep_dir, score)
    return path


def sweep_report(sweep_dir: str | os.PathLike) -> str:
    """The closing lines of a multirun: the sweep directory and the files in it."""
    sweep_dir = Path(sweep_dir)
    about = {SUMMARY_FILE: "one row per job: status, overrides, every AUROC",
             BENCHMARK_FILES[1]: f"AUROC mean ± std over seeds, per class (+ {BENCHMARK_FILES[0]})",
             FIGURES[0]: "AUROC over lam x steps", FIGURES[1]: "AUROC against steps, one line per lam"}
    lines = [f"Sweep directory: {sweep_dir}"]
    lines += [f"  {name:<19} {text}" for name, text in about.items() if (sweep_dir / name).is_file()]
    lines += ["  0/, 1/, ...         the jobs' run directories",
              f"Rebuild the summary: python -m anogan.sweep {sweep_dir}"]
    return "\n".join(lines)


# -- seeds x classes: the paper table of a benchmark sweep ---------------------------------------------
SEED_KEY = "seed"
# the class axis of a benchmark: normal classes of a labelled set, or the category of data=mvtec
CLASS_KEYS = ("data.normal_classes", "data.category")
PIXEL = "pixel_auroc"  # the pixel-level AUROC column, a score of the table where masks exist
BENCHMARK_FILES = ("benchmark.csv", "benchmark.md")


def _final_scores(rows: list[dict]) -> list[str]:
    """The score names with a final AUROC column (``auroc/<name>``, not ``.../step_<t>``), in table order,
    then ``pixel_auroc`` where a job has one."""
    names = {k.split("/")[1] for r in rows for k in r if k.startswith("auroc/") and k.count("/") == 1}
    pixel = [PIXEL] if any(r.get(PIXEL) not in (None, "") for r in rows) else []
    return sorted(names, key=lambda n: (_score_rank(f"auroc/{n}"), n)) + pixel


def _column(score: str) -> str:
    return score if score == PIXEL else f"auroc/{score}"


def _class_key(rows: list[dict]) -> str:
    """The override that is the sweep's class axis: the first of ``CLASS_KEYS`` a job sets."""
    return next((k for k in CLASS_KEYS if any(k in r for r in rows)), CLASS_KEYS[0])


def _setting(row: dict) -> str:
    """A job's overrides without its seed and class: jobs of one setting differ only in those."""
    return " ".join(o for o in row["overrides"].split()
                    if o.partition("=")[0].lstrip("+~") not in (SEED_KEY, *CLASS_KEYS))


def _mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (ddof=1; None, undefined, for a single value)."""
    import numpy as np

    a = np.asarray(values, dtype=float)
    return float(a.mean()), (float(a.std(ddof=1)) if len(a) > 1 else None)


def benchmark_rows(rows: list[dict]) -> list[dict]:
    """Per setting, class (normal classes, or MVTec category) and score: AUROC mean and std over the
    completed seeds; and per setting and score the class mean (class ``mean``): the mean over classes
    within each seed that completed every class of the setting, then mean and std of those over the seeds.

    Returns dicts with setting, normal_classes (or category: the sweep's class axis), score, n (seeds),
    mean, std (None when n = 1), values."""
    done = [r for r in rows if r["status"] == "COMPLETED"]
    scores = _final_scores(done)
    class_key = _class_key(rows)
    field = class_key.split(".")[-1]
    out: list[dict] = []
    for setting in sorted({_setting(r) for r in done}):
        jobs = [r for r in done if _setting(r) == setting]
        classes = sorted({str(r.get(class_key, "")) for r in jobs})
        seeds = sorted({str(r.get(SEED_KEY, "")) for r in jobs})
        for score in scores:
            key = _column(score)
            per_seed: dict[str, list[float]] = {s: [] for s in seeds}
            for c in classes:
                vals = {str(r.get(SEED_KEY, "")): r[key] for r in jobs
                        if str(r.get(class_key, "")) == c and r.get(key) not in (None, "")}
                if not vals:
                    continue
                mean, std = _mean_std([float(v) for v in vals.values()])
                out.append({"setting": setting, field: c, "score": score, "n": len(vals), "mean": mean, "std": std,
                            "values": ";".join(f"{float(v):.6g}" for v in vals.values())})
                for s, v in vals.items():
                    per_seed[s].append(float(v))
            full = [sum(v) / len(v) for v in per_seed.values() if len(v) == len(classes)]
            if len(classes) > 1 and full:
                mean, std = _mean_std(full)
                out.append({"setting": setting, field: "mean", "score": score, "n": len(full), "mean": mean,
                            "std": std, "values": ";".join(f"{v:.6g}" for v in full)})
    return out


def _cell(row: dict | None) -> str:
    if row is None:
        return ""
    return f"{row['mean']:.3f} ± {row['std']:.3f}" if row["std"] is not None else f"{row['mean']:.3f} (n=1)"


def write_benchmark(rows: list[dict], sweep_dir: Path) -> list[Path]:
    """``benchmark.csv`` (one line per setting, class and score) and ``benchmark.md`` (per setting, a
    table of classes x scores, AUROC mean ± std over seeds) when the sweep has a seed or a
    ``data.normal_classes`` or ``data.category`` axis (``CLASS_KEYS``); nothing otherwise."""
    if not any(SEED_KEY in r or any(k in r for k in CLASS_KEYS) for r in rows):
        return []
    table = benchmark_rows(rows)
    paths = [sweep_dir / name for name in BENCHMARK_FILES]
    field = _class_key(rows).split(".")[-1]
    fields = ["setting", field, "score", "n", "mean", "std", "values"]

    def write_csv(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows([{**r, "std": "" if r["std"] is None else r["std"]} for r in table])

    _write_atomic(paths[0], write_csv)
    failed = sum(r["status"] == "FAILED" for r in rows)
    running = sum(r["status"] == "RUNNING" for r in rows)
    lines = ["AUROC, mean ± sample std over seeds (n = seeds); the class mean is taken within each seed "
             "that completed every class, then over seeds.",
             f"Jobs: {len(rows)} ({failed} failed, {running} running or without status; those are left out)."]
    scores = [s for s in _final_scores(rows)]
    for setting in sorted({r["setting"] for r in table}):
        cells = {(r[field], r["score"]): r for r in table if r["setting"] == setting}
        classes = sorted({c for c, _ in cells} - {"mean"}) + (["mean"] if any(c == "mean" for c, _ in cells) else [])
        lines += ["", f"### `{setting or '(no other overrides)'}`", "",
                  f"| {'normal class' if field == 'normal_classes' else field} | {' | '.join(scores)} |",
                  "| --- |" + " ---: |" * len(scores)]
        for c in classes:
            lines.append(f"| {c} | " + " | ".join(_cell(cells.get((c, s))) for s in scores) + " |")
    _write_atomic(paths[1], lambda tmp: tmp.write_text("\n".join(lines) + "\n"))
    return paths


def plot_sweep(points: dict[tuple[float, int], float], dirpath: Path, score: str = "anomaly") -> list[Path]:
    """``auroc_heatmap.png`` (lam rows x steps columns, blank where no job ran) and
    ``auroc_vs_steps.png`` (one line per lam)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import numpy as np

    lams = sorted({lam for lam, _ in points})
    steps = sorted({s for _, s in points})
    grid = np.full((len(lams), len(steps)), np.nan)
    for (lam, s), v in points.items():
        grid[lams.index(lam), steps.index(s)] = v
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(steps), 1.0 + 0.6 * len(lams)))
    im = ax.imshow(grid, cmap="viridis", aspect="auto", vmin=np.nanmin(grid), vmax=np.nanmax(grid))
    for i in range(len(lams)):
        for j in range(len(steps)):
            if not math.isnan(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:.3f}", ha="center", va="center", fontsize=8, color="w")
    ax.set(xticks=range(len(steps)), xticklabels=steps, yticks=range(len(lams)), yticklabels=lams,
           xlabel="steps (Gamma)", ylabel="lam", title=f"{score} AUROC")
    fig.colorbar(im, ax=ax)
    paths = [dirpath / FIGURES[0], dirpath / FIGURES[1]]
    _write_atomic(paths[0], lambda tmp: fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png"))
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for lam in lams:
        xs = [s for s in steps if (lam, s) in points]
        ax.plot(xs, [points[(lam, s)] for s in xs], marker="o", label=f"lam={lam:g}")
    ax.set(xlabel="steps (Gamma)", ylabel=f"{score} AUROC", title=f"{score} AUROC against steps")
    ax.legend(fontsize=8)
    _write_atomic(paths[1], lambda tmp: fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png"))
    plt.close(fig)
    return paths


def _locked_summary(sweep_dir: Path) -> None:
    """Rebuild the summary under a lock: with parallel jobs, the last one to take it sees every
    status file written before."""
    import fcntl

    sweep_dir.mkdir(parents=True, exist_ok=True)
    with open(sweep_dir / ".summary.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        write_summary(sweep_dir)


def finish_wandb(failed: bool = False) -> None:
    """Finish the active wandb run, if any, so that the next job of a multirun starts its own."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish(exit_code=1 if failed else 0)


def wandb_logger(**kwargs: Any):
    """Lightning's ``WandbLogger``; in a Hydra multirun each job is its own run, grouped by sweep
    (``group`` = ``<task>/<sweep dir name>`` unless set) and named ``<name>-<job number>``."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from lightning.pytorch.loggers import WandbLogger

    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        hc = HydraConfig.get()
        if not kwargs.get("group"):
            kwargs["group"] = f"{hc.job.name}/{Path(str(hc.sweep.dir)).name}"
        kwargs["name"] = f"{kwargs.get('name') or hc.job.name}-{hc.job.num}"
    return WandbLogger(**kwargs)


def check_ddp_launch(cfg: DictConfig) -> None:
    """Fail a multirun job whose trainer settings make Lightning start processes itself: ``ddp``
    reruns the command line, which would rerun the whole sweep in each new process. Lightning resolves
    the settings (a Trainer is built and dropped), so every way there is caught: ``trainer=ddp``,
    ``trainer.devices=2`` (Lightning picks ``ddp``), ``ddp_spawn``, ``num_nodes``. Processes started by
    SLURM (one task per device, ``hydra.launcher.tasks_per_node``) or torchrun are fine. Called by
    ``anogan.engine.pipeline`` at the start of a job, before any work; raises ValueError."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from anogan.runtime.distributed import build_trainer, quiet_info, starts_processes

    if not (HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN):
        return
    with quiet_info():
        trainer = build_trainer(cfg.trainer, logger=False, enable_checkpointing=False, callbacks=[])
    if starts_processes(trainer):
        t = cfg.trainer
        from lightning.pytorch.accelerators import CPUAccelerator

        launcher = "slurm_cpu" if isinstance(trainer.accelerator, CPUAccelerator) else "slurm"
        raise InputError(
            f"trainer.strategy={t.get('strategy', 'auto')} with trainer.devices={t.get('devices', 1)} "
            f"(trainer.num_nodes={t.get('num_nodes', 1)}) in a multirun: Lightning would start "
            f"{trainer.world_size} processes itself and restart the whole sweep in each. Run DDP jobs one by one "
            f"(without -m), or through hydra/launcher={launcher} with hydra.launcher.tasks_per_node=<devices> "
            "(SLURM starts one task per device)"
        )


def job_error(job_return) -> BaseException | None:
    """The exception that ended a Hydra job, or None when it completed (read without
    ``JobReturn.return_value``, which prints "Error executing job ..." and raises it)."""
    from hydra.core.utils import JobStatus

    return job_return._return_value if job_return.status == JobStatus.FAILED else None


_MULTIRUN_DIR: Path | None = None  # the sweep directory of this process's multirun (on_multirun_start)


def failed_multirun_report() -> str | None:
    """The closing lines of this process's multirun when it ended with a failed job, which Hydra's
    sweepers end before ``on_multirun_end``: the summary rebuilt from every job directory, then
    ``sweep_report``; None outside a multirun or before its directory exists."""
    if _MULTIRUN_DIR is None or not _MULTIRUN_DIR.is_dir():
        return None
    _locked_summary(_MULTIRUN_DIR)
    return sweep_report(_MULTIRUN_DIR)


class SweepSummary(Callback):
    """Hydra callback: finish the job's wandb run, write ``job_status.json``, and in a multirun the
    sweep's ``summary.csv`` and figures (after every job, and when the multirun ends; when a job fails,
    ``anogan.engine.cli.run_main`` prints the closing lines with ``failed_multirun_report``)."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        global _MULTIRUN_DIR
        _MULTIRUN_DIR = Path(str(config.hydra.sweep.dir))

    def on_job_end(self, config: DictConfig, job_return, **kwargs: Any) -> None:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        error = job_error(job_return)
        finish_wandb(failed=error is not None)
        if _rank() != 0:
            return  # DDP / SLURM tasks other than the first share the job's directory
        hc = HydraConfig.get()
        write_job_status(hc.runtime.output_dir, error)
        if hc.mode == RunMode.MULTIRUN:
            _locked_summary(Path(str(hc.sweep.dir)))

    def on_run_end(self, config: DictConfig, job_return=None, **kwargs: Any) -> None:
        """A single run ended by bad input or settings: its one-line message, exit status 2 (the
        status file is written); multiruns are reported by ``anogan.engine.cli.run_main`` when they end."""
        from anogan.engine.errors import input_error
        from anogan.errors import full_error_asked, report

        error = input_error(job_error(job_return)) if job_return is not None else None
        if error is not None and not full_error_asked():
            sys.exit(report(error))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        global _MULTIRUN_DIR
        _MULTIRUN_DIR = None  # reported here
        sweep_dir = Path(str(config.hydra.sweep.dir))
        if sweep_dir.is_dir():
            _locked_summary(sweep_dir)
            print(sweep_report(sweep_dir))
