"""Exceptions as the command line shows them: the ``InputError`` behind Hydra's wrappers, a setting
the instantiated class does not take, a required setting left at ``???``, and a ``_target_`` that names
a module path of an earlier anogan release (one line naming the new path)."""

from __future__ import annotations

from anogan.errors import InputError

# module paths of anogan 0.1 that moved when the package was split into layers (anogan 0.2): a user
# config (``_target_``) or script that names one gets one line naming the new path
MOVED_MODULES = {
    "anogan.mapping_nets": "anogan.nets.mapping", "anogan.scores": "anogan.nets.scores",
    "anogan.losses": "anogan.nets.losses", "anogan.prior": "anogan.nets.prior", "anogan.optim": "anogan.nets.optim",
    "anogan.localization": "anogan.metrics.localization", "anogan.checkpoints": "anogan.runtime.checkpoints",
    "anogan.checks": "anogan.runtime.checks", "anogan.preemption": "anogan.runtime.preemption",
    "anogan.seeding": "anogan.runtime.seeding", "anogan.distributed": "anogan.runtime.distributed",
    "anogan.launchers": "anogan.runtime.launchers", "anogan.io": "anogan.runtime.io",
    "anogan.gan": "anogan.models.gan", "anogan.inversion": "anogan.models.inversion",
    "anogan.encoder": "anogan.models.encoder", "anogan.acae": "anogan.models.acae",
    "anogan.baselines": "anogan.models.baselines", "anogan.viz": "anogan.callbacks.viz",
    "anogan.pipeline": "anogan.engine.pipeline", "anogan.stages": "anogan.engine.stages",
    "anogan.cli": "anogan.engine.cli", "anogan.sweep.SweepSummary": "anogan.engine.sweep.SweepSummary",
    "anogan.sweep.wandb_logger": "anogan.engine.sweep.wandb_logger",
}


def moved_target(target: str) -> str | None:
    """The current path of ``target`` (a dotted ``_target_``) when it names a module path of anogan 0.1
    that moved, e.g. ``anogan.gan.GAN`` -> ``anogan.models.gan.GAN``; None for any other path."""
    for old in sorted(MOVED_MODULES, key=len, reverse=True):
        if target == old or target.startswith(old + "."):
            return MOVED_MODULES[old] + target[len(old):]
    return None


def moved_error(wrapper: str) -> InputError | None:
    """Hydra's "Error locating target 'X'" for an X that moved, as one line naming the new path."""
    import re

    found = re.search(r"Error locating target '([\w.]+)'", wrapper)
    new = moved_target(found.group(1)) if found else None
    if new is None:
        return None
    return InputError(f"_target_ {found.group(1)} moved to {new} when anogan's package was split into layers; "
                      f"write _target_: {new} in your config")


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

    conf = Path(__file__).resolve().parents[2] / "conf"
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
    if wrapper is not None:
        moved = moved_error(str(wrapper))
        if moved is not None:
            return moved
    if wrapper is not None and isinstance(error, TypeError):
        unknown = unknown_setting(str(wrapper), str(error))
        if unknown is not None:
            return unknown
    if isinstance(error, MissingMandatoryValue):  # a required setting left at ??? (e.g. data=folder's dirs)
        key = error.full_key or "a required setting"
        return InputError(f"{key} is required and was not given: set it on the command line, e.g. {key}=<value>")
    return error if isinstance(error, InputError) else None
