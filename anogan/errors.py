"""Errors of bad input or settings, and how the entry points report them.

Every error that anogan raises on purpose because an input (a file, a folder, a config value) is wrong
is an ``InputError``: its message names the input and a fix that works in the command that was run.
``train.py``, ``evaluate.py`` and ``python -m anogan.data.prepare`` end on one with that message as
one line on stderr (``error: ...``), exit status 2 (the usual status of a command-line usage error)
and no traceback; ``job_status.json`` in the run directory keeps the error and its traceback. Any other
exception is a bug or an unforeseen failure and keeps its traceback; ``HYDRA_FULL_ERROR=1`` shows the
traceback of an ``InputError`` too.

``InputError`` derives from ``ValueError`` and ``MissingInputError`` from ``FileNotFoundError`` as well,
so code that catches those still catches these.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

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


def unknown_setting(wrapper: str, error: str) -> InputError | None:
    """A setting the class Hydra instantiated does not take (``TypeError: X.__init__() got an unexpected
    keyword argument 'k'``, X the target class or one of its bases), e.g. ``data.normal_path`` given to an
    evaluation without ``data=scans``, as an InputError naming the config groups of ``conf/`` that have
    the key; None for any other TypeError (a bug keeps its traceback)."""
    import re

    from hydra.utils import get_class

    target = re.search(r"target '([\w.]+)'", wrapper)
    found = re.search(r"(\w+)\.__init__\(\) got an unexpected keyword argument '(\w+)'", error)
    if target is None or found is None:
        return None
    try:
        cls = get_class(target.group(1))
    except Exception:  # noqa: BLE001 - not a class: not this case
        return None
    if found.group(1) not in {c.__name__ for c in cls.__mro__}:
        return None
    key = found.group(2)
    owners = groups_with_key(key)
    fix = (f"it is a setting of {' and '.join(owners)}: choose that on the command line" if owners else
           "check its spelling against the config (python evaluate.py --cfg job prints it)")
    return InputError(f"{cls.__name__} has no setting {key!r}; {fix}")


def groups_with_key(key: str) -> list[str]:
    """``group=option`` of every config in ``conf/<group>/`` with a top-level ``key`` (experiment
    presets, which set keys of other groups, left out)."""
    from pathlib import Path

    from omegaconf import OmegaConf

    conf = Path(__file__).resolve().parent.parent / "conf"
    out = []
    for path in sorted(conf.glob("*/*.yaml")):
        if path.parent.name in ("experiment", "hparams_search", "hydra") or "@package _global_" in path.read_text():
            continue
        node = OmegaConf.load(path)
        if OmegaConf.is_dict(node) and key in node:
            out.append(f"{path.parent.name}={path.stem}")
    return out


def input_error(error: BaseException | None) -> InputError | None:
    """The ``InputError`` behind ``error``: itself, or the cause of Hydra's ``InstantiationException``
    (which wraps what a constructor raised, e.g. ``data.val_fraction=2`` refused by a DataModule); an
    omegaconf ``MissingMandatoryValue`` (a setting left at ``???``) as an InputError naming the key."""
    from hydra.errors import InstantiationException

    from omegaconf.errors import MissingMandatoryValue

    wrapper = None
    while isinstance(error, InstantiationException) and error.__cause__ is not None:
        wrapper, error = error, error.__cause__
    if wrapper is not None and isinstance(error, TypeError):
        unknown = unknown_setting(str(wrapper), str(error))
        if unknown is not None:
            return unknown
    if isinstance(error, MissingMandatoryValue):  # a required setting left at ??? (e.g. data=folder's dirs)
        key = error.full_key or "a required setting"
        return InputError(f"{key} is required and was not given: set it on the command line, e.g. {key}=<value>")
    return error if isinstance(error, InputError) else None


def full_error_asked() -> bool:
    """Whether the user asked for every traceback (``HYDRA_FULL_ERROR=1``, as Hydra reads it)."""
    return os.environ.get(FULL_ERROR) == "1" and os.environ.get(_SET_BY_US) != "1"


def report(error: BaseException) -> int:
    """Print ``error: <message>`` as one line on stderr; returns ``INPUT_EXIT``."""
    print(f"error: {message_line(error)}", file=sys.stderr, flush=True)
    return INPUT_EXIT


def run_main(main: Callable[[], Any]) -> Any:
    """Run a ``@hydra.main`` function the way ``train.py`` and ``evaluate.py`` do: an ``InputError``
    (in a single run, or in any job of a multirun, once the sweep ends) ends the process with its
    one-line message and exit status 2; any other exception keeps its traceback and exit status 1.

    Hydra prints every exception of a job with a traceback; ``HYDRA_FULL_ERROR=1`` makes it re-raise
    the exception instead, which is set here for the run, so that this function decides what is shown.
    Hydra's own compact errors (a bad override, an unknown config option) are printed as Hydra prints
    them, exit status 1. With ``HYDRA_FULL_ERROR=1`` set by the user, everything is raised as it is. A
    multirun that ended with a failed job prints its sweep directory's closing lines first."""
    if full_error_asked():
        return main()
    os.environ[FULL_ERROR] = os.environ[_SET_BY_US] = "1"
    try:
        return main()
    except Exception as e:
        from hydra.errors import CompactHydraException
        from omegaconf.errors import OmegaConfBaseException

        from anogan.sweep import failed_multirun_report

        closing = failed_multirun_report()  # a multirun that ended with a failed job: its files first
        if closing:
            print(closing, flush=True)
        if input_error(e) is not None:
            sys.exit(report(input_error(e)))
        if not isinstance(e, CompactHydraException):
            raise
        print(str(e), file=sys.stderr)  # as Hydra's run_and_report prints them
        if isinstance(e.__cause__, OmegaConfBaseException):
            print(str(e.__cause__), file=sys.stderr)
        sys.exit(1)
    finally:
        del os.environ[FULL_ERROR], os.environ[_SET_BY_US]
