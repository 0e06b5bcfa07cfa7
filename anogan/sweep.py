"""``python -m anogan.sweep SWEEP_DIR``: rebuild a multirun's ``summary.csv``, ``benchmark.csv`` and figures
from its job directories (what ``anogan.engine.sweep.SweepSummary`` writes as the jobs end), e.g. after
copying the job directories of several sweeps into one."""

from __future__ import annotations

import sys
from pathlib import Path

from anogan.engine.sweep import write_summary


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or not Path(argv[0]).is_dir():
        raise SystemExit("usage: python -m anogan.sweep <sweep directory>")
    path = write_summary(argv[0])
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
