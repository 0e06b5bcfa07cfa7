"""The errors of bad input or settings: the lowest layer, imported by every other one.

Every error that anogan raises on purpose because an input (a file, a folder, a config value) is wrong
is an ``InputError``: its message names the input and a fix that works in the command that was run.
``train.py``, ``evaluate.py`` and ``python -m anogan.data.prepare`` end on one with that message as
one line on stderr (``error: ...``), exit status 2 (the usual status of a command-line usage error)
and no traceback (``anogan.engine.cli.run_main``); ``job_status.json`` in the run directory keeps the
error and its traceback. Any other exception is a bug or an unforeseen failure and keeps its
traceback; ``HYDRA_FULL_ERROR=1`` shows the traceback of an ``InputError`` too.

``InputError`` derives from ``ValueError`` and ``MissingInputError`` from ``FileNotFoundError`` as well,
so code that catches those still catches these.
"""

from __future__ import annotations

import os
import sys

INPUT_EXIT = 2  # exit status of a command ended by bad input or settings (argparse's for usage errors)
FULL_ERROR = "HYDRA_FULL_ERROR"
_SET_BY_US = "_ANOGAN_SET_HYDRA_FULL_ERROR"  # HYDRA_FULL_ERROR=1 set by run_main, not by the user


class InputError(ValueError):
    """Bad input or settings; the message names the input (file, folder, config key) and the fix."""


class MissingInputError(InputError, FileNotFoundError):
    """An input file or folder that does not exist; the message names it and how to pass it."""


def message_line(error: BaseException) -> str:
    """The message of ``error`` as one line. An error re-raised by a DataLoader worker carries the
    worker's traceback in its message: its last line is the message."""
    text = str(error).strip()
    if "Original Traceback" in text:  # torch.utils.data's ExceptionWrapper.reraise
        text = text.splitlines()[-1]
        name = f"{type(error).__module__}.{type(error).__qualname__}: "
        text = text.removeprefix(name).removeprefix(f"{type(error).__qualname__}: ")
    return " ".join(text.split())


def full_error_asked() -> bool:
    """Whether the user asked for every traceback (``HYDRA_FULL_ERROR=1``, as Hydra reads it)."""
    return os.environ.get(FULL_ERROR) == "1" and os.environ.get(_SET_BY_US) != "1"


def report(error: BaseException) -> int:
    """Print ``error: <message>`` as one line on stderr; returns ``INPUT_EXIT``."""
    print(f"error: {message_line(error)}", file=sys.stderr, flush=True)
    return INPUT_EXIT
