"""How much the scan decision moves with the mapping's initial z: the same scans and checkpoint evaluated
with several ``seed`` values (the initial z of a patch is drawn from the seed, the scan's name and the
patch's position), compared scan by scan.

    python evaluate.py ckpt_path=CKPT data=scans ... seed=0 hydra.run.dir=A
    python evaluate.py ckpt_path=CKPT data=scans ... seed=1 hydra.run.dir=B
    python benchmarks/oct_z_spread.py A B --out spread      # -> spread/per_scan.csv, spread/summary.json

``per_scan.csv``: per scan (test and normal scans) its ``scan_score`` under each evaluation and the range
(max - min). ``summary.json``: per evaluation the scan AUROC of ``scan_score`` and the flag's rates
(``map_metrics.json``); over the scans the median and maximum range of ``scan_score``, and how many test
scans change their ``scan_flagged``.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
from pathlib import Path


def _scores(run: Path) -> dict[str, dict]:
    """scan name -> {"score": float | None, "flagged": str, "set": "test" | "normal"} of one evaluation."""
    out = {}
    for name, kind in (("predictions.csv", "test"), ("normal_scans.csv", "normal")):
        path = run / name
        if not path.is_file():
            if kind == "test":
                raise SystemExit(f"error: {path} not found: give the run directories of evaluate.py data=scans")
            continue
        with open(path, newline="") as f:
            for r in csv.DictReader(f):
                out[f"{kind}:{r['image']}"] = {"score": float(r["scan_score"]) if r["scan_score"] else None,
                                               "flagged": r.get("scan_flagged", ""), "set": kind}
    return out


def _settings(run: Path) -> set[str] | None:
    """The evaluation's command-line overrides (``.hydra/overrides.yaml``) other than ``seed`` and the run
    directory; None when the run has no such file."""
    path = run / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return None
    overrides = [line[2:].strip() for line in path.read_text().splitlines() if line.startswith("- ")]
    return {o for o in overrides if not o.startswith(("seed=", "hydra.run.dir="))}


def spread(runs: list[Path]) -> tuple[list[dict], dict]:
    """(per-scan rows, summary) over the evaluations ``runs`` (>= 2) of the same scans."""
    if len(runs) < 2:
        raise SystemExit("error: give at least two evaluations of the same scans (other seed=...)")
    if len({r.resolve() for r in runs}) < len(runs):
        raise SystemExit("error: a run directory is given twice: give evaluations of the same scans with other seed=")
    settings = [_settings(r) for r in runs]
    for run, other in zip(runs[1:], settings[1:]):
        if settings[0] is not None and other is not None and other != settings[0]:
            raise SystemExit(f"error: {runs[0]} and {run} differ in more than seed= and the run directory "
                             f"({sorted(settings[0] ^ other)}): compare evaluations that differ only in seed=")
    scores = [_scores(r) for r in runs]
    names = sorted(scores[0])
    if any(sorted(s) != names for s in scores[1:]):
        raise SystemExit("error: the evaluations do not hold the same scans")
    rows = []
    for name in names:
        values = [s[name]["score"] for s in scores]
        row = {"scan": name.split(":", 1)[1], "set": scores[0][name]["set"]}
        row.update({f"scan_score_{i}": v for i, v in enumerate(values)})
        row["range"] = None if None in values else max(values) - min(values)
        row["flag_changes"] = int(len({s[name]["flagged"] for s in scores}) > 1) if row["set"] == "test" else ""
        rows.append(row)
    ranges = [r["range"] for r in rows if r["range"] is not None]
    per_run = []
    for run in runs:
        metrics = json.loads((run / "map_metrics.json").read_text())["scan"] if (run / "map_metrics.json").is_file() \
            else {}
        flag = metrics.get("at_flag", {})
        per_run.append({"run": str(run), "scan_auroc": metrics.get("scan_score_auroc"),
                        "flag_sensitivity": flag.get("sensitivity"), "flag_specificity": flag.get("specificity")})
    summary = {"evaluations": per_run, "n_scans": len(rows),
               "median_range": statistics.median(ranges) if ranges else None,
               "max_range": max(ranges) if ranges else None,
               "test_scans_whose_flag_changes": sum(r["flag_changes"] for r in rows if r["set"] == "test")}
    return rows, summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", type=Path, help="run directories of evaluate.py data=scans, other seed=")
    p.add_argument("--out", type=Path, required=True, help="folder for per_scan.csv and summary.json")
    a = p.parse_args(argv)
    rows, summary = spread(a.runs)
    a.out.mkdir(parents=True, exist_ok=True)
    with open(a.out / "per_scan.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (a.out / "summary.json").write_text(json.dumps(summary, indent=1))
    aurocs = ", ".join("null" if e["scan_auroc"] is None else f"{e['scan_auroc']:.3f}" for e in summary["evaluations"])
    print(f"scan_score range over {len(a.runs)} initial z: median {summary['median_range']:.3f}, max "
          f"{summary['max_range']:.3f}; scan AUROC {aurocs}; {summary['test_scans_whose_flag_changes']} test scans "
          "change their flag")
    return 0


if __name__ == "__main__":
    sys.exit(main())
