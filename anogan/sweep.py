"""``python -m anogan.sweep SWEEP_DIR``: rebuild a multirun's ``summary.csv``, ``benchmark.csv`` and figures
from its job directories (what ``anogan.engine.sweep.SweepSummary`` writes as the jobs end), e.g. after
copying the job directories of several sweeps into one."""

from __future__ import annotations

import argparse
from pathlib import Path

from anogan.engine.sweep import write_summary


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m anogan.sweep", description=__doc__.split("\n\n")[0])
    ap.add_argument("sweep_dir", type=Path, help="the multirun's directory (logs/<task>/multiruns/<date>_<time>)")
    args = ap.parse_args(argv)
    if not args.sweep_dir.is_dir():
        ap.error(f"{args.sweep_dir} is not a directory; pass a multirun's sweep directory")
    path = write_summary(args.sweep_dir)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
