"""Atomic file writes: a reader (or a run killed mid-write) never sees half a file."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | os.PathLike, keep_suffix: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write to; on success it is renamed onto ``path`` (atomic
    on POSIX within a file system), on an exception it is removed and ``path`` is left as it was.
    ``keep_suffix``: the temporary name ends like ``path`` (matplotlib reads the format from it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tag = f"tmp{os.getpid()}"  # one temporary file per process: concurrent writers never share one
    tmp = path.with_name(f".{path.stem}.{tag}{path.suffix}" if keep_suffix else f".{path.name}.{tag}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json_atomic(data: dict, path: str | os.PathLike) -> Path:
    """Write JSON through a temporary file and a rename, so that a reader never sees half a file."""
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        json.dump(data, f, indent=2)
    return Path(path)


def write_csv_atomic(rows: list[dict], path: str | os.PathLike) -> Path:
    """Write ``rows`` (dicts with the keys of the first as the columns) as CSV with a header, through a
    temporary file and a rename, so that a reader never sees half a file. ValueError for no rows."""
    if not rows:
        raise ValueError(f"no rows to write to {path}")
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return Path(path)
