"""The results tables of README.md and docs/*.md, written from the result files under benchmarks/results/.

Each published run keeps its numbers in ``benchmarks/results/<name>/``: the files as the run wrote them
(a sweep's ``benchmark.csv``, a ``metrics.json``, a script's CSV) and a ``run.json`` saying where they
come from (``RUN_KEYS``: commit, date, command, machine, load, wall time, the files transcribed from the
docs rather than kept from the run, a note). Each table sits in its markdown file between
``<!-- table:NAME -->`` and ``<!-- /table -->``; this script writes what lies between: the table, then a
caption naming its result directory with the commit, date, machine, load and wall time of its run.json.

    python benchmarks/tables.py                  # write every table
    python benchmarks/tables.py --check          # exit 1 naming every table that differs from its files
    python benchmarks/tables.py --record NAME -- python train.py ...   # run, time and record a new result

``--record`` runs the command and writes ``benchmarks/results/NAME/run.json`` (the checkout's commit, the
date, the machine, the load average before and after, the wall time); copy the run's own files beside it,
then add or adapt the table's function here and its markers in the doc (docs/results.md).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import importlib.metadata
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path("benchmarks") / "results"  # relative to the root of the checkout
RUN_KEYS = ("commit", "date", "command", "machine", "load", "wall_s", "transcribed", "note")
BLOCK = re.compile(r"(<!-- table:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /table -->)", re.S)
FASHION_MNIST = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                 "Ankle boot")


# ---- reading a result directory -------------------------------------------------------------------------

class Results:
    """The result directories under ``root``/benchmarks/results: ``run(name)`` its run.json (checked),
    ``csv(name, file)`` a CSV's rows as dicts of strings, ``json(name, file)``, ``text(name, file)``;
    ``read`` holds the (name, file) pairs read so far, so that a caption names the transcribed files a table
    used."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.dir = self.root / RESULTS
        self.read: set[tuple[str, str]] = set()

    def _path(self, name: str, file: str) -> Path:
        self.read.add((name, file))
        return self.dir / name / file

    def run(self, name: str) -> dict:
        """``name``/run.json; stops naming the file when it is missing, lacks one of ``RUN_KEYS`` or lists a
        transcribed file that is not there."""
        path = self.dir / name / "run.json"
        if not path.is_file():
            raise SystemExit(f"error: {path} is missing: every result directory needs a run.json "
                             f"({', '.join(RUN_KEYS)})")
        run = json.loads(path.read_text())
        missing = [k for k in RUN_KEYS if k not in run]
        if missing:
            raise SystemExit(f"error: {path} lacks {', '.join(missing)} (every run.json holds {', '.join(RUN_KEYS)})")
        absent = [f for f in run["transcribed"] if not (self.dir / name / f).is_file()]
        if absent:
            raise SystemExit(f"error: {path} lists transcribed files that are not there: {', '.join(absent)}")
        return run

    def csv(self, name: str, file: str) -> list[dict[str, str]]:
        with open(self._path(name, file), newline="") as f:
            return list(csv.DictReader(f))

    def json(self, name: str, file: str):
        return json.loads(self._path(name, file).read_text())

    def text(self, name: str, file: str) -> str:
        return self._path(name, file).read_text()


# ---- formatting -----------------------------------------------------------------------------------------

def f2(x) -> str:
    return f"{float(x):.2f}"


def f3(x) -> str:
    return f"{float(x):.3f}"


def cell3(x: str) -> str:
    """A CSV field as a table cell: a number with 3 decimals, a word as it is (e.g. "not evaluated"), empty as
    empty."""
    try:
        return f3(x)
    except ValueError:
        return x


def mean_std(mean, std) -> str:
    return f"{float(mean):.3f} ± {float(std):.3f}"


def span(lo: str, hi: str) -> str:
    """``lo–hi``, or ``lo`` alone when both are the same."""
    return lo if lo == hi else f"{lo}–{hi}"


def duration(seconds) -> str:
    """Seconds as ``35 min 26 s``; a [low, high] pair as ``2 min 3 s – 2 min 12 s``."""
    if isinstance(seconds, (list, tuple)):
        return " – ".join(duration(s) for s in seconds)
    s = round(float(seconds))
    h, m, s = s // 3600, s // 60 % 60, s % 60
    parts = [f"{h} h"] * bool(h) + [f"{m} min"] * bool(h or m) + [f"{s} s"] * bool(s or not (h or m))
    return " ".join(parts)


def bold(cell: str) -> str:
    return f"**{cell}**"


def bold_best(cells: list[str], values: list[float]) -> list[str]:
    """``cells`` with the one(s) of the largest value in bold."""
    best = max(values)
    return [bold(c) if v == best else c for c, v in zip(cells, values)]


def markdown(header: list[str], rows: list[list[str]], numeric_from: int = 1) -> list[str]:
    """A markdown table; columns from ``numeric_from`` on are right-aligned (``None``: none is)."""
    align = ["---" if numeric_from is None or i < numeric_from else "---:" for i in range(len(header))]
    return ["|" + "|".join(f" {c} " if c else " " for c in r) + "|" for r in (header, align, *rows)]


def short(commit: str) -> str:
    return commit[:7]


def result_link(name: str, doc: str) -> str:
    """A markdown link from ``doc`` (relative to the root) to the result directory ``name``."""
    target = os.path.relpath(RESULTS / name, Path(doc).parent).replace(os.sep, "/")
    return f"[`{(RESULTS / name).as_posix()}/`]({target}/)"


def caption(results: Results, sources: tuple[str, ...], doc: str) -> str:
    """The line under a table: where its numbers come from, with the commit, date, machine, load and wall
    time of each source's run.json; the transcribed files the table read (``results.read``) are named as such."""
    parts = []
    for name in sources:
        run = results.run(name)
        facts = [f"commit {short(run['commit'])}", run["date"], run["machine"], f"load {run['load']}"]
        if run["wall_s"] is not None:
            facts.append(f"wall {duration(run['wall_s'])}")
        part = f"{result_link(name, doc)}: {', '.join(facts)}."
        transcribed = [f for f in run["transcribed"] if (name, f) in results.read]
        if transcribed:
            part += f" **Transcribed from the docs, raw output not kept:** {', '.join(transcribed)}."
        parts.append(part)
    return f"<sub>By `python benchmarks/tables.py` from {' '.join(parts)}</sub>"


# ---- the tables -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Table:
    doc: str  # the markdown file, relative to the root
    sources: tuple[str, ...]  # result directories under benchmarks/results/
    build: Callable[[Results], list[str]]  # the table's lines
    caption: bool = True  # False: the table states the commit of each row itself


TABLES: dict[str, Table] = {}


def table(name: str, doc: str, *sources: str, caption: bool = True):
    """Register the function below as the builder of table ``name`` of ``doc``."""
    def register(build: Callable[[Results], list[str]]):
        TABLES[name] = Table(doc, sources, build, caption)
        return build
    return register


def _glance_row(results: Results, source: str, preset: str, command: str, wall: str, headline: str,
                details: str) -> list[str]:
    run = results.run(source)
    return [preset, command, wall, headline, f"{short(run['commit'])}, {run['date']}", details]


@table("results_at_a_glance", "README.md", "quickstart", "oct_phantom", "oct_seed_study", "fanogan_preset",
       "fashion_mnist_benchmark", caption=False)
def results_at_a_glance(r: Results) -> list[str]:
    def wall(name: str) -> str:
        run = r.run(name)
        return f"{duration(run['wall_s'])}, load {run['load']}"

    quick = r.json("quickstart", "metrics.json")["scores"]
    phantom = r.csv("oct_phantom", "train_metrics.csv")
    study, seeds = r.json("oct_seed_study", "scans_summary.json"), r.csv("oct_seed_study", "scans.csv")
    preset = r.json("fanogan_preset", "metrics.json")["scores"]
    preset_quality = r.json("fanogan_preset", "sample_quality.json")
    fashion = {row["score"]: row for row in r.csv("fashion_mnist_benchmark", "benchmark.csv")
               if row["normal_classes"] == "mean"}

    knn10, jobs = fashion["latent_knn10"], r.csv("fashion_mnist_benchmark", "summary.csv")

    def minmax(rows: list[dict], key: str) -> str:
        values = sorted(float(x[key]) for x in rows)
        return span(f3(values[0]), f3(values[-1]))

    rows = [
        _glance_row(r, "quickstart", "digits (the quickstart)", "`python train.py`", wall("quickstart"),
                    f"AUROC `anomaly` {quick['anomaly']['auroc']:.4f}, `reference_discrimination` "
                    f"{quick['reference_discrimination']['auroc']:.4f}", "[results.md](docs/results.md)"),
        _glance_row(r, "oct_phantom", "OCT-like phantom, patches", "`python train.py experiment=oct_phantom`",
                    wall("oct_phantom"), f"pixel AUROC {minmax(phantom, 'pixel_auroc')}, image AUROC "
                    f"{minmax(phantom, 'image_auroc')} (seeds {phantom[0]['seed']}–{phantom[-1]['seed']})",
                    "[oct.md](docs/oct.md)"),
        _glance_row(r, "oct_seed_study", f"phantom scans (`data=scans`), {len(seeds)} fresh seeds",
                    f"`python benchmarks/oct_seed_study.py --seeds {seeds[0]['seed']}-{seeds[-1]['seed']} --jobs 2`",
                    f"{wall('oct_seed_study')} (each seed: train, draw, map 44 B-scans; 2 seeds at a time)",
                    f"scan AUROC min {f3(study['summary']['scan_auroc']['min'])}, median "
                    f"{f3(study['summary']['scan_auroc']['median'])}; stitched pixel AUROC median "
                    f"{f3(study['summary']['pixel_auroc']['median'])}",
                    "[oct.md](docs/oct.md#ten-fresh-seeds-the-seed-study)"),
        _glance_row(r, "fanogan_preset", "f-AnoGAN, sized for a CPU", "`python train.py experiment=fanogan`",
                    wall("fanogan_preset"),
                    f"AUROC `fanogan` {f3(preset['fanogan']['auroc'])}, AnoGAN `anomaly` "
                    f"{f3(preset['anomaly']['auroc'])}; G's samples {f2(preset_quality['ratio'])}x the normal images' "
                    "distance", "[method.md](docs/method.md#the-fanogan-preset-g-needs-g-steps)"),
        _glance_row(r, "fashion_mnist_benchmark", "Fashion-MNIST one-class, 10 classes x 3 seeds",
                    "`python train.py -m experiment=fashion_mnist_benchmark`",
                    f"{duration(r.run('fashion_mnist_benchmark')['wall_s'])} ({len(jobs)} jobs, 2 at a time via SLURM)",
                    f"mean AUROC `latent_knn10` {mean_std(knn10['mean'], knn10['std'])}, 1-NN on pixels "
                    f"{f3(fashion['pixel_knn']['mean'])}, AnoGAN {f3(fashion['anomaly']['mean'])}",
                    "[benchmark.md](docs/benchmark.md)"),
    ]
    sources = TABLES["results_at_a_glance"].sources
    links = ", ".join(f"[{name}]({(RESULTS / name).as_posix()}/)" for name in sources)
    transcribed = ", ".join(dict.fromkeys(name for name, file in sorted(r.read) if file in r.run(name)["transcribed"]))
    return markdown(["preset", "command", "wall time", "headline", "measured", "details"], rows, None) + [
        "", f"<sub>By `python benchmarks/tables.py` from the result directories {links} of `benchmarks/results/`; "
        f"measured: each one's run.json. Transcribed from the docs, raw output not kept (wholly or partly): "
        f"{transcribed}.</sub>"]


QUICKSTART_SCORES = {"residual": "residual", "discrimination": "discrimination", "anomaly": "anomaly (AnoGAN)",
                     "reference_discrimination": "reference_discrimination",
                     "reference_anomaly": "reference_anomaly (GAN_R)",
                     "discriminator": "discriminator (P_D, as the log-odds -D(x))"}


@table("quickstart_timings", "docs/results.md", "quickstart", "quickstart_rerun")
def quickstart_timings(r: Results) -> list[str]:
    published = short(r.run("quickstart")["commit"])
    rows = [[t["commit"], bold(duration(t["wall_s"])) if t["commit"] == published else duration(t["wall_s"]),
             f"{t['cpu_s']} s ({t['cpu_share_percent']} %)", duration(t["training_s"]), t["load"]]
            for t in r.csv("quickstart", "timings.csv")]
    rerun, (t,) = r.run("quickstart_rerun"), r.csv("quickstart_rerun", "time.csv")
    cpu = float(t["user_s"]) + float(t["system_s"])
    rows.append([f"{short(rerun['commit'])}, one thread", duration(t["wall_s"]),
                 f"{cpu:.0f} s ({100 * cpu / float(t['wall_s']):.0f} %)", duration(t["training_s"]), rerun["load"]])
    return markdown(["commit", "wall-clock", "CPU time (share of one core)", "of which training",
                     "load average (start, during, end)"], rows, None)


@table("quickstart_scores", "docs/results.md", "quickstart")
def quickstart_scores(r: Results) -> list[str]:
    scores = r.json("quickstart", "metrics.json")["scores"]
    rows = [[label, *(f"{scores[s][k]:.4f}" for k in ("auroc", "precision", "recall", "specificity")),
             f"{scores[s]['threshold']:.4g}"] for s, label in QUICKSTART_SCORES.items()]
    return markdown(["score", "AUROC", "precision", "recall (= sensitivity)", "specificity", "threshold"], rows,
                    None)


@table("fashion_mnist_recipe", "docs/benchmark.md", "fashion_mnist_recipe")
def fashion_mnist_recipe(r: Results) -> list[str]:
    rows = r.csv("fashion_mnist_recipe", "validation.csv")
    classes = [k for k in rows[0] if k.startswith("class_")]
    body = [[(bold(x["candidate"]) if x["kept"] else x["candidate"]) + (f" (`{x['score']}`)" if x["score"] else ""),
             *(f3(x[c]) for c in classes),
             bold(f3(x["mean"])) if x["kept"] else f3(x["mean"])] for x in rows]
    header = ["candidate (k: k-th nearest training image)", f"class {classes[0].split('_')[1]}",
              *(c.split("_")[1] for c in classes[1:]), "mean"]
    return markdown(header, body)


FASHION_COLUMNS = {"anomaly": "AnoGAN `anomaly`", "fanogan": "f-AnoGAN `fanogan`", "fanogan_latent": "`fanogan_latent`",
                   "feature_knn": "`feature_knn`", "latent_knn10": "**`latent_knn10`**", "pixel_pca": "PCA `pixel_pca`",
                   "pixel_knn": "1-NN `pixel_knn`", "pixel_knn10": "10-NN `pixel_knn10`"}


def class_index(normal_classes: str) -> int:
    """The class of a one-class sweep's ``data.normal_classes`` value as summary.csv writes it, ``[3]`` -> 3."""
    return int(normal_classes.strip("[]"))


def class_label(normal_classes: str) -> str:
    """``[3]`` -> ``3 Dress``: the class index and its Fashion-MNIST name."""
    return f"{class_index(normal_classes)} {FASHION_MNIST[class_index(normal_classes)]}"


def g_learned(jobs: list[dict], normal_classes: str | None = None) -> str:
    """What the sample-quality figure says of G over the completed ``jobs`` of a benchmark sweep (summary.csv
    rows; those of ``normal_classes`` only, when given): the range of ``sample_nn_ratio`` and how many
    jobs' G learned the class (ratio at most the warning ratio), e.g. ``1.33–1.41 (3/3)``; ``not
    measured`` when no job has the figure."""
    rows = [j for j in jobs if j["status"] == "COMPLETED" and j.get("sample_nn_ratio")
            and (normal_classes is None or j["data.normal_classes"] == normal_classes)]
    if not rows:
        return "not measured"
    ratios = sorted(float(j["sample_nn_ratio"]) for j in rows)
    learned = sum(j["g_learned"] == "True" for j in rows)
    return f"{span(f2(ratios[0]), f2(ratios[-1]))} ({learned}/{len(rows)})"


def benchmark_table(r: Results, name: str, columns: dict[str, str]) -> list[str]:
    """A Fashion-MNIST benchmark sweep's table: per normal class and the class mean, the AUROC mean ± std
    over seeds of each score of ``columns`` (the best of the row in bold), and what G's sample-quality
    figure says (``g_learned``)."""
    cells: dict[str, dict[str, dict]] = {}
    for row in r.csv(name, "benchmark.csv"):
        cells.setdefault(row["normal_classes"], {})[row["score"]] = row
    jobs = r.csv(name, "summary.csv")
    classes = sorted((c for c in cells if c != "mean"), key=class_index)
    body = []
    for c in [*classes, "mean"]:
        means = [float(cells[c][s]["mean"]) for s in columns]
        text = [mean_std(cells[c][s]["mean"], cells[c][s]["std"]) for s in columns]
        label = f"**mean ({len(classes)} classes)**" if c == "mean" else class_label(c)
        body.append([label, *bold_best(text, means), g_learned(jobs, None if c == "mean" else c)])
    return markdown(["normal class", *columns.values(), "G's samples: ratio (G learned)"], body)


@table("fashion_mnist_benchmark", "docs/benchmark.md", "fashion_mnist_benchmark")
def fashion_mnist_benchmark(r: Results) -> list[str]:
    return benchmark_table(r, "fashion_mnist_benchmark", FASHION_COLUMNS)


FANOGAN_COLUMNS = {"fanogan": "f-AnoGAN `fanogan`", "fanogan_latent": "`fanogan_latent`",
                   "feature_knn": "`feature_knn` (critic)", "latent_knn10": "`latent_knn10`",
                   "pixel_knn": "1-NN `pixel_knn`", "pixel_knn10": "10-NN `pixel_knn10`"}


@table("fashion_mnist_benchmark_fanogan", "docs/benchmark.md", "fashion_mnist_benchmark_fanogan")
def fashion_mnist_benchmark_fanogan(r: Results) -> list[str]:
    return benchmark_table(r, "fashion_mnist_benchmark_fanogan", FANOGAN_COLUMNS)


GAN_SCORE_COLUMNS = {"encoder_knn10": "**`encoder_knn10`**", "latent_knn10": "`latent_knn10`",
                     "pixel_knn": "1-NN `pixel_knn`", "pixel_knn10": "10-NN `pixel_knn10`"}
GEOM = 0.935  # Golan & El-Yaniv 2018, Table 1: the aim of the recipe (docs/benchmark.md)


@table("fashion_mnist_gan_score", "docs/benchmark.md", "fashion_mnist_gan_score")
def fashion_mnist_gan_score(r: Results) -> list[str]:
    """The recipe's test runs: per class, the kept score beside the benchmark's best and the pixel baselines."""
    return benchmark_table(r, "fashion_mnist_gan_score", GAN_SCORE_COLUMNS)


@table("fashion_mnist_gan_score_seeds", "docs/benchmark.md", "fashion_mnist_gan_score")
def fashion_mnist_gan_score_seeds(r: Results) -> list[str]:
    """The recipe's test runs per seed: each score's ten-class mean within the seed (summary.csv), their mean
    ± std over the seeds, and whether the mean reaches GEOM's 0.935."""
    jobs = [j for j in r.csv("fashion_mnist_gan_score", "summary.csv") if j["status"] == "COMPLETED"]
    seeds = sorted({int(j["seed"]) for j in jobs})
    classes = {j["data.normal_classes"] for j in jobs}
    body = []
    for score, label in GAN_SCORE_COLUMNS.items():
        per_seed = []
        for s in seeds:
            values = [float(j[f"auroc/{score}"]) for j in jobs if int(j["seed"]) == s]
            if len(values) != len(classes):
                raise SystemExit(f"error: fashion_mnist_gan_score: seed {s} lacks classes for {score}")
            per_seed.append(statistics.mean(values))
        mean = statistics.mean(per_seed)
        body.append([label, *(f3(v) for v in per_seed), mean_std(mean, statistics.stdev(per_seed)),
                     f"yes ({f3(mean)} >= {GEOM})" if mean >= GEOM else f"no ({f3(mean - GEOM)})"])
    return markdown([f"score (mean over the {len(classes)} classes)", *(f"seed {s}" for s in seeds),
                     "mean ± std", f"reaches GEOM's {GEOM}"], body)


DEV_SCORES = {"anomaly": "AnoGAN `anomaly`", "fanogan": "`fanogan` (izi_f)", "latent_knn10": "`latent_knn10`"}


@table("fanogan_fashion_mnist_dev", "docs/method.md", "fanogan_fashion_mnist_dev")
def fanogan_fashion_mnist_dev(r: Results) -> list[str]:
    jobs = [j for j in r.csv("fanogan_fashion_mnist_dev", "summary.csv") if j["status"] == "COMPLETED"]
    settings = sorted({int(j["model.critic_iterations"]) for j in jobs}, reverse=True)
    body = []
    for n in settings:
        rows = sorted((j for j in jobs if int(j["model.critic_iterations"]) == n),
                      key=lambda j: class_index(j["data.normal_classes"]))
        for j in rows:
            ratio = f2(j["sample_nn_ratio"]) + ("" if j["g_learned"] == "True" else " (not learned)")
            aurocs = [f3(j[f"auroc/{s}"]) for s in DEV_SCORES]
            body.append([class_label(j["data.normal_classes"]), str(n), ratio, *aurocs])
        body.append([f"**mean ({len(rows)} classes)**", str(n),
                     f"{sum(j['g_learned'] == 'True' for j in rows)}/{len(rows)} learned",
                     *(f3(statistics.mean(float(j[f"auroc/{s}"]) for j in rows)) for s in DEV_SCORES)])
    return markdown(["normal class (seed 100)", "critic steps per G step", "G's samples: ratio",
                     *DEV_SCORES.values()], body)


SPACE_LABELS = {"pixel": "pixels", "latent_flip": "E(x), flipped training images added",
                "latent": "E(x), G's latent space", "feature": "D's last block (f)", "d_block0": "D's first block",
                "e_block": "E's last block (E's features)"}
GAN_SCORE_KEPT = "e_block k=10"  # docs/benchmark.md: the rule, fixed before validation.csv was computed


def candidate_label(candidate: str) -> str:
    """score_candidates.py's candidate names in words: ``latent k=10 + pixel k=1`` -> ``E(x), G's latent
    space, k = 10 + pixels, k = 1``."""
    parts = []
    for part in candidate.split(" + "):
        space, k = part.split(" k=")
        parts.append(f"{SPACE_LABELS[space]}, k = {k}")
    return " + ".join(parts)


@table("fashion_mnist_gan_dev", "docs/benchmark.md", "fashion_mnist_gan_dev")
def fashion_mnist_gan_dev(r: Results) -> list[str]:
    """benchmarks/score_candidates.py's validation AUROCs: one row per candidate, the development classes as
    columns, their mean; the kept candidate in bold."""
    rows = r.csv("fashion_mnist_gan_dev", "validation.csv")
    classes = sorted({x["class"] for x in rows}, key=class_index)
    auroc = {(x["candidate"], x["class"]): float(x["auroc"]) for x in rows}
    body = []
    for c in dict.fromkeys(x["candidate"] for x in rows):
        values = [auroc[(c, k)] for k in classes]
        cells = [candidate_label(c), *(f3(v) for v in values), f3(statistics.mean(values))]
        body.append([bold(x) for x in cells] if c == GAN_SCORE_KEPT else cells)
    return markdown(["candidate (k: k-th nearest training image)",
                     *(class_label(k) for k in classes), "mean"], body)


@table("fashion_mnist_oneclass", "docs/benchmark.md", "fashion_mnist_oneclass")
def fashion_mnist_oneclass(r: Results) -> list[str]:
    # the script's own auroc.md: its 3 decimals come from the unrounded AUROCs, auroc.csv keeps 4
    return [line for line in r.text("fashion_mnist_oneclass", "auroc.md").splitlines() if line.startswith("|")]


TRAIN_HEADER = ["seed", "image AUROC (anomaly)", "AUPRC", "F1-max", "Youden point sens. / spec. (test labels)",
                "calibrated at 5 % FPR: sens. / spec. / prec.", "pixel AUROC", "pixel AUPRC", "best Dice",
                "AUPRO (0.3)", "Dice at the calibrated pixel threshold"]


def train_rows(rows: list[dict]) -> list[list[str]]:
    """The patch-level metrics of phantom training runs, one row per seed (train_metrics.csv's columns)."""
    return [[x["seed"], f3(x["image_auroc"]), f3(x["image_auprc"]), f3(x["f1_max"]),
             f"{f2(x['youden_sensitivity'])} / {f2(x['youden_specificity'])}",
             f"{f2(x['calibrated_sensitivity'])} / {f2(x['calibrated_specificity'])} / {f2(x['calibrated_precision'])}",
             f3(x["pixel_auroc"]), f3(x["pixel_auprc"]), f3(x["pixel_best_dice"]), f3(x["pixel_aupro"]),
             f3(x["dice_at_pixel_threshold"]) + (f" (spec. {float(x['pixel_threshold_specificity']):.4f})"
                                                 if x.get("pixel_threshold_specificity") else "")]
            for x in rows]


@table("oct_phantom", "docs/oct.md", "oct_phantom")
def oct_phantom(r: Results) -> list[str]:
    return markdown(TRAIN_HEADER, train_rows(r.csv("oct_phantom", "train_metrics.csv")), None)


def _seed(x: dict) -> str:
    return f"{x['seed']} (development)" if x["role"] == "development" else x["seed"]


def _flag(x: dict, rule: str, threshold: bool = True) -> str:
    rates = f"{f2(x[f'{rule}_sensitivity'])} / {f2(x[f'{rule}_specificity'])}"
    return f"{rates} ({f3(x[f'{rule}_threshold'])})" if threshold else rates


PIXEL_HEADER = ["seed", "pixel AUROC (stitched)", "pixel AUPRC", "best Dice", "AUPRO (0.3)",
                "Dice at the calibrated pixel threshold", "scan AUROC: `scan_score`"]


def _pixel_cells(x: dict) -> list[str]:
    return [_seed(x), *(f3(x[k]) for k in ("pixel_auroc", "pixel_auprc", "pixel_best_dice", "pixel_aupro",
                                            "dice_at_pixel_threshold")), bold(f3(x["scan_score_auroc"]))]


@table("oct_phantom_scan_decision_65aa7b2", "docs/oct.md", "oct_phantom_scan_decision_65aa7b2")
def oct_phantom_scan_decision_65aa7b2(r: Results) -> list[str]:
    rows = [[*_pixel_cells(x), f3(x["image_score_auroc"]), _flag(x, "quantile12"), _flag(x, "quantile20")]
            for x in r.csv("oct_phantom_scan_decision_65aa7b2", "scan_decision.csv")]
    return markdown([*PIXEL_HEADER, "scan AUROC: most anomalous patch",
                     "`scan_flagged`, 12 normal scans: sens. / spec. (`scan_threshold`)",
                     "`scan_flagged`, 20 normal scans"], rows, None)


@table("oct_phantom_train_65aa7b2", "docs/oct.md", "oct_phantom_scan_decision_65aa7b2")
def oct_phantom_train_65aa7b2(r: Results) -> list[str]:
    return markdown(TRAIN_HEADER, train_rows(r.csv("oct_phantom_scan_decision_65aa7b2", "train_metrics.csv")), None)


@table("oct_phantom_scan_decision", "docs/oct.md", "oct_phantom_scan_decision")
def oct_phantom_scan_decision(r: Results) -> list[str]:
    rows = []
    for x in r.csv("oct_phantom_scan_decision", "per_seed.csv"):
        flag = f"{f2(x['flag_sensitivity'])} / {f2(x['flag_specificity'])} ({f3(x['scan_threshold'])})"
        before = f"{_flag(x, 'quantile12', False)}, {_flag(x, 'quantile20', False)}"
        rows.append([*_pixel_cells(x), f3(x["scan_border_include_auroc"]), f3(x["image_score_auroc"]), flag, before])
    return markdown([*PIXEL_HEADER, "scan AUROC: `scan_border=include`", "scan AUROC: most anomalous patch",
                     "`scan_flagged`, 20 normal scans (conformal): sens. / spec. (`scan_threshold`)",
                     "before: 95 % quantile of 12 / 20 normal scans: sens. / spec."], rows, None)


@table("oct_phantom_scan_decision_train", "docs/oct.md", "oct_phantom_scan_decision")
def oct_phantom_scan_decision_train(r: Results) -> list[str]:
    kept = {x["seed"]: x for x in r.csv("oct_phantom_scan_decision", "per_seed.csv")}
    rows = [{**x, "image_auroc": kept[x["seed"]]["train_image_auroc"],
             "calibrated_sensitivity": kept[x["seed"]]["train_calibrated_sensitivity"],
             "calibrated_specificity": kept[x["seed"]]["train_calibrated_specificity"],
             "pixel_auroc": kept[x["seed"]]["train_pixel_auroc"]}
            for x in r.csv("oct_phantom_scan_decision", "train_metrics.csv")]
    header = [h.replace("5 % FPR:", "5 % FPR (conformal):") for h in TRAIN_HEADER]
    return markdown(header, train_rows(rows), None)


@table("oct_restarts_dev", "docs/oct.md", "oct_restarts_dev", "oct_phantom_scan_decision")
def oct_restarts_dev(r: Results) -> list[str]:
    """The development seeds mapped from one start (per_seed.csv) and from two (``inversion.restarts=2``)."""
    one = [x for x in r.csv("oct_phantom_scan_decision", "per_seed.csv") if x["role"] == "development"]
    two = r.csv("oct_restarts_dev", "r2.csv")
    rows = [[x["seed"], "1", f3(x["scan_score_auroc"]), f3(x["pixel_auroc"]), f3(x["pixel_aupro"]),
             f"{f2(x['flag_sensitivity'])} / {f2(x['flag_specificity'])}", "not counted (one start)",
             duration(x["scans_wall_s"])] for x in one]
    rows += [[x["seed"], "2", f3(x["scan_auroc"]), f3(x["pixel_auroc"]), f3(x["pixel_aupro"]),
              f"{f2(x['flag_sensitivity'])} / {f2(x['flag_specificity'])}",
              " / ".join(x[f"failed_first_starts_{g}_scans"] for g in ("normal", "healthy", "fluid")),
              duration(x["scans_wall_s"])] for x in two]
    return markdown(["seed", "restarts", "scan AUROC: `scan_score`", "pixel AUROC (stitched)", "AUPRO (0.3)",
                     "`scan_flagged`: sens. / spec.",
                     "first starts failed: patches of normal / healthy / fluid scans", "wall, 44 B-scans"],
                    sorted(rows, key=lambda row: (int(row[0]), row[1])), None)


@table("oct_z_spread_dev", "docs/oct.md", "oct_z_spread_dev")
def oct_z_spread_dev(r: Results) -> list[str]:
    """One development seed's scans mapped from the initial z of two ``seed`` values (benchmarks/oct_z_spread.py)."""
    summary = r.json("oct_z_spread_dev", "summary.json")
    rows = [[f"`seed={i}`", f3(e["scan_auroc"]), f"{f2(e['flag_sensitivity'])} / {f2(e['flag_specificity'])}"]
            for i, e in enumerate(summary["evaluations"])]
    return markdown(["initial z", "scan AUROC: `scan_score`", "`scan_flagged`: sens. / spec."], rows, None) + [
        "", f"Over its {summary['n_scans']} test and normal scans, `scan_score` moves by a median of "
            f"{summary['median_range']:.3f} and at most {summary['max_range']:.3f}; "
            f"{summary['test_scans_whose_flag_changes']} test scans change their flag."]


@table("oct_seed_study", "docs/oct.md", "oct_seed_study")
def oct_seed_study(r: Results) -> list[str]:
    """The ten fresh seeds of benchmarks/oct_seed_study.py, one row each, then the minimum, median and maximum."""
    seeds = r.csv("oct_seed_study", "scans.csv")
    summary = r.json("oct_seed_study", "scans_summary.json")["summary"]
    def flag(x: dict) -> str:
        return f"{f2(x['flag_sensitivity'])} / {f2(x['flag_specificity'])}"

    rows = [[x["seed"], f3(x["scan_auroc"]), f3(x["image_score_auroc"]), f3(x["pixel_auroc"]), f3(x["pixel_auprc"]),
             f3(x["pixel_aupro"]), f"{flag(x)} ({f3(x['scan_threshold'])})",
             f"{duration(x['train_wall_s'])} + {duration(x['scans_wall_s'])}"] for x in seeds]
    for stat in ("min", "median", "max"):
        at = {k: v[stat] for k, v in summary.items()}
        cell = {k: "null" if v is None else f3(v) for k, v in at.items()}
        rows.append([bold(stat), bold(cell["scan_auroc"]), cell["image_score_auroc"], bold(cell["pixel_auroc"]),
                     cell["pixel_auprc"], cell["pixel_aupro"], flag(at),
                     f"{duration(at['train_wall_s'])} + {duration(at['scans_wall_s'])}"])
    below = [x["seed"] for x in seeds if float(x["scan_auroc"]) < 0.9]
    scan_median, pixel_median = summary["scan_auroc"]["median"], summary["pixel_auroc"]["median"]

    def verdict(ok: bool) -> str:
        return "met" if ok else "**not met**"

    wall = r.run("oct_seed_study")["wall_s"]
    named = (": seed " if len(below) == 1 else ": seeds ") + ", ".join(below) if below else ""
    aim = (f"The aim: scan AUROC ≥ 0.9 on every seed, {verdict(not below)} ({len(below)} of {len(seeds)} below"
           f"{named}); its median ≥ 0.97, {verdict(scan_median >= 0.97)} ({scan_median:.3f}); the stitched pixel "
           f"AUROC's median ≥ 0.97, {verdict(pixel_median >= 0.97)} ({pixel_median:.3f}); the whole study within "
           f"90 minutes, {verdict(wall <= 5400)} ({duration(wall)}).")
    return markdown(["seed", "scan AUROC: `scan_score`", "scan AUROC: most anomalous patch", "pixel AUROC (stitched)",
                     "pixel AUPRC", "AUPRO (0.3)", "`scan_flagged`: sens. / spec. (`scan_threshold`)",
                     "wall: training + 44 B-scans"], rows, None) + ["", aim]


@table("oct_seed_study_fluid", "docs/oct.md", "oct_seed_study")
def oct_seed_study_fluid(r: Results) -> list[str]:
    """The study's fluid scans that score below their seed's top healthy scan against the others (medians)."""
    scans = r.csv("oct_seed_study", "scans_fluid_scans.csv")

    def median(rows: list[dict], key: str) -> float:
        return statistics.median(float(x[key]) for x in rows)

    rows = []
    for label, below in (("below their seed's top healthy scan", "1"), ("above it", "0")):
        group = [x for x in scans if x["below_top_healthy"] == below]
        rows.append([f"{label}: {len(group)}", *(f"{median(group, k):.0f}" for k in
                                                  ("fluid_pixels", "blobs", "largest_blob", "fluid_rows")),
                     *(f3(median(group, k)) for k in ("map_in_fluid", "map_around_fluid", "scan_score"))])
    return markdown(["fluid scans", "fluid pixels", "blobs", "largest blob (pixels)", "rows spanned",
                     "averaged map on the fluid", "around it (4 pixels)", "`scan_score`"], rows)


@table("test_suite", "docs/results.md", "test_suite")
def test_suite(r: Results) -> list[str]:
    """The full test suite as CI runs it: pytest's closing counts and wall time, and its slowest tests."""
    lines = r.text("test_suite", "pytest.txt").splitlines()
    counts = next(line for line in reversed(lines) if re.search(r"\d+ passed", line)).strip("= ")
    slowest = [line.split() for line in lines if re.match(r"\s*[\d.]+s (call|setup|teardown) ", line)]
    rows = [["`python -m pytest -q` (what CI runs)", counts.split(" in ")[0], duration(r.run("test_suite")["wall_s"])]]
    rows += [[f"its slowest: `{name.split('::')[-1]}`", "1", duration(seconds.rstrip("s"))]
             for seconds, _, name in slowest[:2]]
    return markdown(["command", "tests", "wall"], rows, 2)


@table("performance_speed", "docs/performance.md", "performance_speed")
def performance_speed(r: Results) -> list[str]:
    rows = [[x["figure"], x["px32"], x["px64"], x["target"], x["command"], x["added_at"]]
            for x in r.csv("performance_speed", "speed.csv")]
    return markdown(["figure (batch 64)", "32x32", "64x64", "target", "command", "published at"], rows, None)


@table("scans_speed", "docs/oct.md", "scans_speed")
def scans_speed(r: Results) -> list[str]:
    load = r.run("scans_speed")["load"]
    rows = [[f"{x['device']} (load {load})", x["patches_per_scan"], x["steps"],
             f"{x['whole_scans_per_s']} ({x['whole_s_per_scan']} s per scan)", x["mapping_scans_per_s"], x["ratio"]]
            for x in r.csv("scans_speed", "speed.csv")]
    return markdown(["device", "patches per scan", "steps", "whole path (scans/s)", "mapping alone (scans/s)",
                     "ratio"], rows)


@table("fanogan_line_by_line_preset", "docs/method.md", "fanogan_line_by_line")
def fanogan_line_by_line_preset(r: Results) -> list[str]:
    rows = [[x["code"], duration(x["wall_s"]),
             *(f3(x[k]) for k in ("fanogan", "fanogan_latent", "anomaly", "residual", "discrimination"))]
            for x in r.csv("fanogan_line_by_line", "preset.csv")]
    return markdown(["", "wall", "`fanogan`", "`fanogan_latent`", "AnoGAN `anomaly`", "`residual`",
                     "`discrimination`"], rows)


@table("fanogan_line_by_line_fashion_mnist", "docs/method.md", "fanogan_line_by_line")
def fanogan_line_by_line_fashion_mnist(r: Results) -> list[str]:
    rows = r.csv("fanogan_line_by_line", "fashion_mnist.csv")
    best_of = ("fanogan", "fanogan_latent")  # bold: the best encoder of the class
    best = {(x["class"], k): max(float(y[k]) for y in rows if y["class"] == x["class"]) for x in rows for k in best_of}
    body = [[x["class"], x["code"], x["encoder"],
             *(bold(f3(x[k])) if float(x[k]) == best[x["class"], k] else f3(x[k]) for k in best_of),
             f"{x['gan_wall_s']} s" if x["gan_wall_s"] else "(same GAN)", f"{x['e_wall_s']} s"] for x in rows]
    return markdown(["class", "code", "encoder", "`fanogan`", "`fanogan_latent`", "GAN wall", "E wall"], body, 3)


@table("fanogan_preset", "docs/method.md", "fanogan_preset")
def fanogan_preset(r: Results) -> list[str]:
    rows = [[f"{x['g_steps']} ({x['critic_iterations']}), {x['what']}", x["samples"], x["sample_quality_ratio"],
             cell3(x["anomaly"]), cell3(x["fanogan"])]
            for x in r.csv("fanogan_preset", "g_steps.csv")]
    scores = r.json("fanogan_preset", "metrics.json")["scores"]
    quality = r.json("fanogan_preset", "sample_quality.json")
    rerun = short(r.run("fanogan_preset")["commit"])
    rows.append([f"800 (1), 200 epochs: the preset re-run at {rerun}, its files kept",
                 "", f2(quality["ratio"]), f3(scores["anomaly"]["auroc"]), f3(scores["fanogan"]["auroc"])])
    return markdown(["G steps (critic steps per G step)", "G's samples", "`sample_quality.json` ratio",
                     "AnoGAN `anomaly`", "`fanogan`"], rows, 2)


@table("export_speed", "docs/deploy.md", "export_speed")
def export_speed(r: Results) -> list[str]:
    rows = r.csv("export_speed", "speed.csv")
    sizes = [f"{x['size']}x{x['size']}" for x in rows]
    return markdown(["batch 64, 2 threads", *sizes], [
        ["onnxruntime (images/s)", *(x["onnxruntime_images_per_s"] for x in rows)],
        ["PyTorch eager (images/s)", *(x["torch_images_per_s"] for x in rows)],
        ["onnxruntime / PyTorch", *(bold(x["ratio"]) for x in rows)]], None)


# ---- writing and checking the docs ----------------------------------------------------------------------

def render(name: str, results: Results) -> str:
    """What lies between table ``name``'s markers: the table and its caption, each line ending in a newline."""
    t = TABLES[name]
    results.read.clear()
    lines = t.build(results)
    if t.caption:
        lines = [*lines, "", caption(results, t.sources, t.doc)]
    return "\n".join(lines) + "\n"


def update(root: Path) -> tuple[dict[Path, str], list[str]]:
    """({doc: its text with every table rewritten}, ["doc: table" of each table whose text changed]). A marker
    naming no table of its doc, a table without its markers or with two pairs of them, stops with an error."""
    results, new, stale = Results(root), {}, []
    docs = {t.doc for t in TABLES.values()} | {"README.md"} | {f"docs/{p.name}" for p in (root / "docs").glob("*.md")}
    for doc in sorted(docs):
        text = (root / doc).read_text()
        blocks = list(BLOCK.finditer(text))
        found = [m.group("name") for m in blocks]
        unknown = [n for n in found if n not in TABLES or TABLES[n].doc != doc]
        if unknown:
            raise SystemExit(f"error: {doc}: benchmarks/tables.py has no table {', '.join(unknown)} for {doc}")
        wrong = [n for n, t in TABLES.items() if t.doc == doc and found.count(n) != 1]
        if wrong:
            raise SystemExit(f"error: {doc} must hold the markers <!-- table:NAME --> ... <!-- /table --> once for "
                             f"{', '.join(wrong)}")
        parts, last = [], 0
        for m in blocks:
            body = render(m.group("name"), results)
            if body != m.group("body"):
                stale.append(f"{doc}: {m.group('name')}")
            parts += [text[last:m.start("body")], body]
            last = m.end("body")
        new[root / doc] = "".join(parts) + text[last:]
    return new, stale


def machine() -> str:
    """The CPU count and architecture, the GPUs nvidia-smi lists, the torch version: what a wall time depends on."""
    parts = [f"{os.cpu_count()}-core {platform.machine()} CPU ({platform.system()})"]
    try:
        gpus = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                              text=True, timeout=30).stdout.split("\n")
        parts += [g.strip() for g in gpus if g.strip()]
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        parts.append(f"torch {importlib.metadata.version('torch')}")
    except importlib.metadata.PackageNotFoundError:
        pass
    return ", ".join(parts)


def record(name: str, command: list[str], root: Path = ROOT) -> Path:
    """Run ``command`` in ``root`` and write results/``name``/run.json with its commit, date, machine, load and
    wall time; the run's exit status is returned through SystemExit when it fails."""
    git = ["git", "-C", str(root)]
    commit = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    dirty = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                           text=True, check=True).stdout.strip()
    load0, t0 = os.getloadavg()[0], time.monotonic()
    status = subprocess.run(command, cwd=root).returncode
    wall, load1 = time.monotonic() - t0, os.getloadavg()[0]
    if status:
        raise SystemExit(f"error: {' '.join(command)} exited with {status}; no run.json written")
    out = root / RESULTS / name
    out.mkdir(parents=True, exist_ok=True)
    run = {"commit": commit, "date": datetime.date.today().isoformat(), "command": " ".join(command),
           "machine": machine(),
           "load": f"{load0:.2f} before, {load1:.2f} after (1-minute average)", "wall_s": round(wall, 1),
           "transcribed": [], "note": "uncommitted changes to tracked files: " + dirty.replace("\n", ", ") if dirty
           else ""}
    (out / "run.json").write_text(json.dumps(run, indent=2) + "\n")
    return out / "run.json"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 naming each table that differs")
    p.add_argument("--root", type=Path, default=ROOT, help="the checkout: README.md, docs/, benchmarks/results/")
    p.add_argument("--record", metavar="NAME", help="run the command after -- and write results/NAME/run.json")
    p.add_argument("command", nargs=argparse.REMAINDER, help="with --record: -- COMMAND ...")
    a = p.parse_args(argv)
    if a.record:
        command = a.command[1:] if a.command[:1] == ["--"] else a.command
        if not command:
            p.error("--record NAME needs a command after --")
        print(f"wrote {record(a.record, command, a.root)}")
        return 0
    if a.command:
        p.error(f"unexpected arguments: {' '.join(a.command)}")
    new, stale = update(a.root)
    if a.check:
        for s in stale:
            print(f"stale: {s} (python benchmarks/tables.py rewrites it from benchmarks/results/)")
        return 1 if stale else 0
    for path, text in new.items():
        if path.read_text() != text:
            path.write_text(text)
    for s in stale:
        print(f"wrote {s}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
