"""What the command line takes and shows: ``--help`` generated from ``conf/``, ``data.<field>=``
overrides for ``evaluate.py``, Lightning's advertising kept out of our runs, and the closing summary
that names a run directory's files and the commands that continue from it.

Importing this module registers the ``anogan.help`` resolver that ``conf/hydra/default.yaml`` uses
as Hydra's app help template (``python train.py --help``).
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from anogan.engine.errors import input_error
from anogan.errors import _SET_BY_US, FULL_ERROR, full_error_asked, report

# --- third-party noise ------------------------------------------------------------------------

# Lightning prints these two tips on every Trainer, whatever the settings (lightning 2.6,
# logger_connector.py and callback_connector.py): advertising, never information about the run.
LIGHTNING_TIPS = ("pypi.org/project/litlogger", "pypi.org/project/litmodels")


class DropLightningTips(logging.Filter):
    """Drops Lightning's "💡 Tip: ... try installing litlogger / litmodels" records, nothing else."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (message.startswith("💡 Tip:") and any(t in message for t in LIGHTNING_TIPS))


def quiet_lightning() -> None:
    """Keep out of our runs what Lightning prints that nobody running anogan can act on: its
    litlogger / litmodels tips (a filter on the loggers ``rank_zero_info`` writes to) and the
    FutureWarning that torch >= 2.10 raises on Lightning's own ``LeafSpec()`` in
    ``lightning/pytorch/utilities/_pytree.py`` (matched on message, category and that module only).
    Every other record and warning passes. Idempotent."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, DropLightningTips) for f in logger.filters):
            logger.addFilter(DropLightningTips())
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                            category=FutureWarning, module=r"lightning\.pytorch\.utilities\._pytree")


# --- evaluate.py takes data.<field>= without + -------------------------------------------------

_DATA_FIELD = re.compile(r"^data\.[^=]+=")


def data_field_overrides(argv: list[str]) -> list[str]:
    """``argv`` with every ``data.<field>=value`` written ``++data.<field>=value`` (Hydra: set the key,
    adding it when absent). ``conf/evaluate.yaml`` composes no data config (``data: null``): the
    checkpoint's is used, so its fields are unknown to Hydra and a plain ``data.<field>=`` override
    would fail as "not in struct"; ``data=<group>``, ``+``, ``++`` and ``~`` overrides pass unchanged."""
    return [f"++{a}" if i and _DATA_FIELD.match(a) else a for i, a in enumerate(argv)]


# --- the closing summary --------------------------------------------------------------------------

def _shown(path: str | os.PathLike) -> str:
    """``path`` relative to the working directory when inside it (what a user types), else absolute."""
    path = Path(path).absolute()
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _command(command: str | list[str], width: int = 80, prefix: str = "  ") -> list[str]:
    """A command line (a list of words is shell-quoted) on lines of at most ``width`` characters
    where the words allow, broken with ``\\`` so that they still paste into a shell."""
    import textwrap

    command = command if isinstance(command, str) else shlex.join(command)
    lines = textwrap.wrap(command, width - 2, initial_indent=prefix, subsequent_indent=" " * (len(prefix) + 4),
                          break_on_hyphens=False, break_long_words=False)
    return [line + " \\" for line in lines[:-1]] + lines[-1:]


def task_overrides(drop: tuple[str, ...] = ()) -> list[str]:
    """The command line's overrides of this Hydra job (``hydra.overrides.task``) without those of the
    keys in ``drop``; [] outside a Hydra app (tests composing a config)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    keys = tuple(k.lstrip("+~") for k in drop)
    return [o for o in HydraConfig.get().overrides.task if o.lstrip("+~").split("=", 1)[0] not in keys]


def _conf_dir(hc) -> Path | None:
    """The running app's ``conf/`` directory (its primary config source), from ``HydraConfig.get()``."""
    return next((Path(s.path) for s in hc.runtime.config_sources if s.provider == "main" and s.schema == "file"),
                None)


def _override_value(value) -> str:
    """A config value as Hydra's override grammar writes it: true/false, null, [1,10]."""
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "null"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_override_value(v) for v in value) + "]"
    return str(value)


def evaluation_overrides(cfg) -> list[str]:
    """The overrides that make ``evaluate.py`` score a ``train.py`` job's GAN as the job did, whose
    evaluation settings may come from an ``experiment`` preset (which evaluate.py does not take): every
    ``inversion.*`` value that differs from its option file ``conf/inversion/<choice>.yaml``, and
    ``baselines=<choice>`` with every value that differs from ``conf/baselines/<choice>.yaml``; a value
    that is an interpolation there (``seed: ${seed}``) is compared with what it gives in
    ``conf/evaluate.yaml`` (so ``inversion.seed=1`` is printed for a ``seed=1`` job). [] outside a Hydra app."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    hc = HydraConfig.get()
    conf = _conf_dir(hc)
    out: list[str] = []
    top = {}  # evaluate.py's top-level values, against which an interpolated default resolves
    if conf is not None and (conf / "evaluate.yaml").is_file():
        top = {k: v for k, v in OmegaConf.to_container(OmegaConf.load(conf / "evaluate.yaml"), resolve=False).items()
               if not isinstance(v, (dict, list))}

    def evaluate_default(raw):
        if not (isinstance(raw, str) and "${" in raw):
            return raw
        try:
            return OmegaConf.create({**top, "_value_": raw})._value_
        except Exception:  # an interpolation evaluate.yaml cannot resolve: print the value
            return object()

    for group in ("inversion", "baselines"):
        choice, node = hc.runtime.choices.get(group), cfg.get(group)
        if not choice or not node or conf is None or not (conf / group / f"{choice}.yaml").is_file():
            continue
        default = OmegaConf.to_container(OmegaConf.load(conf / group / f"{choice}.yaml"), resolve=False)
        if group == "baselines":
            out.append(f"baselines={choice}")
        for key, value in OmegaConf.to_container(node, resolve=True).items():
            if value != evaluate_default(default.get(key)):
                out.append(f"{group}.{key}={_override_value(value)}")
    return out


RUN_FILES = {
    "metrics.json": "the table above, as JSON",
    "scores.h5": "per image: label, every score and its p-value, z, residual map",
    "figures": "",
    "checkpoints": "",
    "samples": "G(z) during training:",
    "summary.csv": "one row per job of the multirun",
    "predictions.csv": "data=scans: per scan, the scan decision (scan score, p-value, flag) and image score",
    "normal_scans.csv": "data=scans with data.normal_path: the scan scores the scan flag is calibrated on",
    "map_metrics.json": "data=scans with data.masks: pixel and scan-level metrics of the stitched maps",
    "maps": "data=scans: per scan, the stitched map (.npy) and its overlay (.png):",
}


def run_summary(output_dir: str | os.PathLike, ckpt_path: str | os.PathLike, task: str,
                max_epochs: int | None = None, width: int = 80, evaluation: list[str] | None = None) -> str:
    """The closing lines of ``train.py`` (``task="train"``) or ``evaluate.py`` (``"evaluate"``): the
    run directory, those of its main files that exist (``RUN_FILES``), the command that evaluates the
    GAN of ``ckpt_path`` again (evaluate: with this job's overrides; train: with ``evaluation``, the
    ``evaluation_overrides`` of the job) and (train) the one that goes on
    training it in the same directory to ``2 * max_epochs`` epochs, with this job's overrides so that
    data and model match. Lines are at most ``width`` characters where paths allow."""
    import textwrap

    out = Path(output_dir)
    lines = [f"Run directory: {_shown(out)}"]
    shown = []
    for name, what in RUN_FILES.items():
        path = out / name
        if path.is_dir():
            names = sorted(p.name for p in path.iterdir())
            listed = ", ".join(names) if len(names) <= 6 else f"{len(names)} files: {names[0]}, ..., {names[-1]}"
            shown.append((name + "/", f"{what} {listed}".strip()))
        elif path.is_file():
            shown.append((name, what))
    pad = max([14, *(len(name) + 1 for name, _ in shown)])  # a space after the longest name shown
    for name, what in shown:
        lines += textwrap.wrap(what, width, initial_indent=f"  {name:<{pad}}", subsequent_indent=" " * (pad + 2))
    ckpt = _shown(ckpt_path)
    again = ["python", "evaluate.py", f"ckpt_path={ckpt}"]
    if task == "evaluate":  # this job's overrides (inversion, data, ...): the same evaluation
        again += [o.removeprefix("++") if _DATA_FIELD.match(o.removeprefix("++")) else o  # as typed
                  for o in task_overrides(("ckpt_path", "hydra.run.dir"))]
    elif evaluation:  # train: the job's evaluation settings, which may come from an experiment preset
        again += evaluation
    lines.append("Evaluate again (e.g. with other inversion.lam, inversion.steps):")
    lines += _command(again, width)
    if task == "train":
        keep = task_overrides(("ckpt_path", "hydra.run.dir", "trainer.max_epochs"))
        more = [f"trainer.max_epochs={2 * max_epochs}"] if max_epochs else []
        lines.append("Train on (resumes from checkpoints/last.ckpt, in this directory):")
        lines += _command(["python", "train.py", *keep, "ckpt_path=auto", f"hydra.run.dir={_shown(out)}", *more],
                          width)
    return "\n".join(lines)


def print_summary(output_dir: str | os.PathLike, ckpt_path: str | os.PathLike, task: str,
                  max_epochs: int | None = None, evaluation: list[str] | None = None) -> None:
    """Print ``run_summary`` (the first process only, under DDP)."""
    from lightning.pytorch.utilities import rank_zero_only

    if rank_zero_only.rank == 0:
        print(run_summary(output_dir, ckpt_path, task, max_epochs, evaluation=evaluation), flush=True)


# --- --help generated from conf/ -------------------------------------------------------------------

_OVERRIDE = re.compile(r"^(-m|--multirun|[+~]*[\w./@-]+=\S*)$")


def _comment(path: Path) -> list[str]:
    """The leading comment lines of a YAML file, without ``#`` and ``@package`` headers."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        text = line.lstrip("#").strip()
        if not text.startswith("@package"):
            lines.append(text)
    return lines


def _examples(path: Path, group: str) -> list[str]:
    """Command lines in the comments of ``path`` that set ``group``: ``python X.py`` and the overrides
    that follow it (prose after them dropped)."""
    found = []
    for line in path.read_text().splitlines():
        m = re.search(r"python (train|evaluate)\.py\s(.*)", line) if line.lstrip().startswith("#") else None
        if m is None:
            continue
        words = []
        for word in m.group(2).split():
            if not _OVERRIDE.match(word):
                break
            words.append(word)
        if any(w.startswith(f"{group}=") for w in words):
            found.append(f"python {m.group(1)}.py {' '.join(words)}")
    return found


def _wrap(text: str, width: int, indent: str = "", max_lines: int | None = None) -> list[str]:
    """``text`` on lines of at most ``width`` characters (more than ``max_lines``: cut, ending in …)."""
    import textwrap

    return textwrap.wrap(text, width, subsequent_indent=indent, max_lines=max_lines, placeholder=" …",
                         break_on_hyphens=False, break_long_words=False)


def _is_preset(path: Path) -> bool:
    return "# @package _global_" in path.read_text()


def app_help(required: list[str] | tuple[str, ...] = (), width: int = 80) -> str:
    """Hydra's app help (``python train.py --help``, ``python evaluate.py --help``), generated from the
    running app's primary config and its ``conf/`` directory: the primary config's leading comment,
    then each config group its defaults list uses (presets such as ``experiment`` first), with every
    option (``*`` = chosen by default) and the start of the option file's comment, and one example
    command: the shortest from the options' comments (this script's first), else
    ``python <script> <required>=... <group>=<an option chosen nowhere>``, ``required`` being the
    primary config's mandatory (``???``) keys. Lines are at most ``width`` characters (examples broken
    with ``\\``). Must run inside a Hydra app (reads ``HydraConfig``)."""
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    script = f"{hc.job.name}.py"
    conf = _conf_dir(hc)
    lines = _wrap(" ".join(_comment(conf / f"{hc.job.config_name}.yaml")), width)
    lines += ["", "Config groups (conf/GROUP/OPTION.yaml): choose with GROUP=OPTION; * = default"]
    chosen: dict[str, set] = {}  # group -> its options chosen by the defaults list
    for key, value in reversed(list(hc.runtime.choices.items())):  # Hydra lists them last first
        group = key.split("@")[0]
        if group != "hydra" and (conf / group).is_dir():
            chosen.setdefault(group, set()).add(value)
    plain = set(hc.runtime.choices)  # chosen as GROUP=..., not only as GROUP@PACKAGE=...
    files = {g: sorted((conf / g).glob("*.yaml")) for g in chosen}
    for group in sorted(chosen, key=lambda g: not any(_is_preset(f) for f in files[g])):
        default = chosen[group] - {None}
        missing = sorted(d for d in default if not (conf / group / f"{d}.yaml").is_file())
        lines += ["", f"{group}:" + (f" (default: {', '.join(missing) or 'none'})"
                                      if missing or not default else "")]
        col = max([16] + [len(f.stem) for f in files[group]])  # the option names' column
        for f in files[group]:
            about = _wrap(" ".join(_comment(f)), width - col - 4, max_lines=2) or [""]
            lines.append(f"  {'*' if f.stem in default else ' '}{f.stem:<{col}} {about[0]}".rstrip())
            lines += [" " * (col + 4) + line for line in about[1:]]
        examples = sorted((e for f in files[group] for e in _examples(f, group)),
                          key=lambda e: (not e.startswith(f"python {script}"), len(e)))
        other = [f.stem for f in files[group] if f.stem not in default and "???" not in f.read_text()]
        if not examples and other and group in plain:
            examples = [" ".join(["python", script, *(f"{k}=..." for k in required), f"{group}={other[0]}"])]
        for e in examples[:1]:
            lines += _command(e, width, "   e.g. ")
    lines += ["", "Any value: key=value (e.g. inversion.lam=0.5); a sweep: -m key=a,b.",
              f"The composed config: python {script} --cfg job", "Hydra's own flags: --hydra-help"]
    return "\n".join(lines) + "\n"


def _help_resolver(_root_) -> str:
    """``${anogan.help:}``: ``app_help`` with the composed config's mandatory keys, ``$`` escaped."""
    required = [k for k in _root_ if k != "hydra" and OmegaConf.is_missing(_root_, k)]
    return app_help(required).replace("$", "$$")  # the help template is a string.Template


if not OmegaConf.has_resolver("anogan.help"):
    OmegaConf.register_new_resolver("anogan.help", _help_resolver)


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

        from anogan.engine.sweep import failed_multirun_report

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
