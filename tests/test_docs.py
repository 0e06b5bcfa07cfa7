"""The docs cannot drift from the code: every ``python train.py`` / ``python evaluate.py`` command of
README.md and docs/*.md (and of the comments of conf/ that ``--help`` shows) composes against conf/
(Hydra's compose API, nothing runs), every ``python -m anogan...`` command names a module whose parser
takes its arguments, every relative link and anchor, repository path, ``anogan.`` name and config key
named in the docs exists, and no doc or config points outside the repository or at an issue number."""

from __future__ import annotations

import argparse
import glob
import importlib
import importlib.util
import re
from pathlib import Path

import pytest
from conftest import CONF, ROOT
from doc_commands import DOCS, FENCE, INLINE, SCRIPTS, commands_in, doc_commands, readme_command, shown, words
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from anogan.engine.cli import data_field_overrides
from anogan.engine.errors import MOVED_MODULES
from anogan.runtime.launchers import check_slurm_gpus

HYDRA_FLAGS = {"-m", "--multirun", "--help", "-h", "--hydra-help", "--info", "--resolve", "--version"}
HYDRA_VALUED = {"--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn", "--config-dir",
                "-cd"}  # Hydra's flags that take a value
REPO_DIRS = ("anogan", "conf", "docs", "tests", "benchmarks", "notebooks", "hydra_plugins")
REPO_PATH = re.compile(rf"(?<![\w/.<-])((?:{'|'.join(REPO_DIRS)})/[\w./*{{}},-]*)")
ANOGAN_NAME = re.compile(r"(?<![\w./])anogan(?:\.\w+)+")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
OUTSIDE = re.compile(r"DESIGN\.md|STYLE\.md|\.\./shared|/work/|\bissues? #?\d+|\bour issues\b|project's issues\b",
                     re.I)

OVERRIDE_WORD = re.compile(r"^(-m|--multirun|[+~]*[\w./@-]+=\S*)$")  # as anogan.engine.cli reads examples

COMMANDS = doc_commands()
HYDRA_COMMANDS = [(w, c) for w, c in COMMANDS if c[0] in SCRIPTS]
MODULE_COMMANDS = [(w, c) for w, c in COMMANDS if c[0] == "-m"]


def _overrides(script: str, args: list[str]) -> list[str]:
    """The Hydra overrides of a command line: its flags checked and dropped, ``data.<field>=`` written as
    evaluate.py writes it, and each sweep (``a=1,2``, ``range(..)``) replaced by its first value."""
    rest, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif a in HYDRA_VALUED:
            skip = True
        elif a.startswith("-") and not a.startswith("--cfg=") and a not in HYDRA_FLAGS:
            raise AssertionError(f"{a}: not a flag of Hydra's command line")
        elif not a.startswith("-"):
            rest.append(a)
    if script == "evaluate.py":
        rest = data_field_overrides(["evaluate.py", *rest])[1:]
    return _first_values(rest)


def _first_values(overrides: list[str]) -> list[str]:
    """Hydra overrides with each sweep (``a=1,2``, ``range(..)``) replaced by its first value; a syntax
    error fails here."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    return [f"{o.get_key_element()}={next(iter(o.sweep_string_iterator()))}" if o.is_sweep_override()
            else o.input_line for o in parsed]


def compose_command(words: list[str]):
    """Compose ``python train.py|evaluate.py ARGS`` (``words`` from the script on) against conf/ as the
    script would, without running it; then again with the first value of every parameter of the config's
    own sweep (``hparams_search=...``), so that a preset's keys are checked too. Hydra raises on an
    unknown key or config group; a SLURM launcher's ``gpus_per_node`` must equal ``trainer.devices``."""
    script, args = words[0], words[1:]
    overrides = _overrides(script, args)
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose(config_name=SCRIPTS[script], overrides=overrides, return_hydra_config=True)
        params = OmegaConf.select(cfg, "hydra.sweeper.params") or {}
        if params:
            swept = _first_values([f"{k}={v}" for k, v in params.items()])
            cfg = compose(config_name=SCRIPTS[script], overrides=overrides + swept, return_hydra_config=True)
    GlobalHydra.instance().clear()
    if str(OmegaConf.select(cfg, "hydra.launcher._target_")).endswith("SlurmLauncher"):
        check_slurm_gpus(OmegaConf.select(cfg, "hydra.launcher.gpus_per_node"),
                         OmegaConf.select(cfg, "trainer.devices"))
    return cfg


class _Parsed(Exception):
    """Raised by the patched ``parse_args``: the arguments parsed, the command would now run."""


def parse_module_command(words: list[str], monkeypatch) -> None:
    """``python -m anogan.X ARGS`` (``words`` = ``-m anogan.X ARGS``): the module exists; with arguments,
    its ``main(argv)`` parses them (argparse exits with status 2 on an unknown or missing argument) and
    stops right after parsing. A usage synopsis (``[options]``) checks the module only."""
    module, args = words[1], words[2:]
    assert importlib.util.find_spec(module) is not None, f"no module {module}"
    if not args or any(re.fullmatch(r"\[[^=\]]*\]", a) for a in args):
        return
    loaded = importlib.import_module(module)
    if not hasattr(loaded, "ArgumentParser") and not hasattr(loaded, "argparse") and hasattr(loaded, "parse"):
        loaded.parse([a.strip("[]") for a in args])  # key=value settings (python -m anogan.export), optional
        # ones in [brackets]: InputError for an unknown key
        return
    main = getattr(loaded, "main", None)
    assert main is not None, f"{module} has no main(argv) to parse {args}"
    parse_args = argparse.ArgumentParser.parse_args

    def parse_only(self, argv=None, namespace=None):
        raise _Parsed(parse_args(self, argv, namespace))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_only)
    with pytest.raises(_Parsed):
        main(args)


@pytest.mark.parametrize("words", [c for _, c in HYDRA_COMMANDS], ids=[w for w, _ in HYDRA_COMMANDS])
def test_every_train_and_evaluate_command_of_the_docs_composes(words):
    compose_command(words)


def _config_examples() -> list[tuple[str, list[str]]]:
    """The commands in the comments of conf/ as ``--help`` shows them (``anogan.engine.cli``): ``python
    train.py|evaluate.py`` and the overrides that follow it, up to the first word that is not one."""
    found = []
    for path in sorted((ROOT / "conf").rglob("*.yaml")):
        for line in path.read_text().splitlines():
            m = re.search(r"python ((?:train|evaluate)\.py)\s(.*)", line) if line.lstrip().startswith("#") else None
            if m:
                args = re.sub(r"<[^<>]*>", "x", m.group(2)).split()
                args = args[:next((i for i, a in enumerate(args) if not OVERRIDE_WORD.match(a)), len(args))]
                args = [re.sub(r"=\.\.\.$", "=x", a) for a in args]
                found.append((f"{path.relative_to(ROOT)}: {line.strip()}", [m.group(1), *args]))
    return found


CONFIG_EXAMPLES = _config_examples()


@pytest.mark.parametrize("words", [c for _, c in CONFIG_EXAMPLES], ids=[w for w, _ in CONFIG_EXAMPLES])
def test_every_example_in_the_config_comments_composes(words):
    compose_command(words)


@pytest.mark.parametrize("words", [c for _, c in MODULE_COMMANDS], ids=[w for w, _ in MODULE_COMMANDS])
def test_every_module_command_of_the_docs_parses(words, monkeypatch):
    parse_module_command(words, monkeypatch)


def test_the_docs_hold_the_commands_that_matter():
    """The extraction finds what a reader copies: the quickstart, the commands split over lines and
    those inside prose."""
    joined = {" ".join(c) for _, c in COMMANDS}
    assert "train.py" in joined
    assert any(c.startswith("evaluate.py -m hydra/launcher=slurm hydra.launcher.partition=gpu") and
               c.endswith("inversion.steps=50,200") for c in joined)  # four lines joined
    assert len(HYDRA_COMMANDS) > 40 and len(MODULE_COMMANDS) > 5


def test_the_readme_sweep_on_slurm_with_wandb_is_one_command_of_eight_slurm_jobs_logging_to_wandb():
    """README's lam x Gamma sweep composes to a multirun of 4 x 2 jobs through submitit's SLURM launcher
    (no GPU asked for), each logging to wandb; tests/test_slurm.py runs the same command on a one-node
    cluster. Its GPU form (``hydra/launcher=slurm trainer=gpu``) asks for trainer.devices GPUs."""
    command = readme_command("hparams_search=lam_steps", "logger=wandb")
    cfg = compose_command(command)
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN"
    assert dict(cfg.hydra.sweeper.params) == {"inversion.lam": "0,0.1,0.5,1", "inversion.steps": "50,200"}
    assert cfg.hydra.launcher._target_ == "hydra_plugins.anogan_launchers.launchers.SlurmLauncher"
    assert cfg.hydra.launcher.gpus_per_node is None and cfg.hydra.launcher.tasks_per_node == 1
    assert cfg.logger.wandb._target_ == "anogan.engine.sweep.wandb_logger" and list(cfg.logger) == ["wandb"]
    gpu = compose_command([w.replace("slurm_cpu", "slurm") for w in command] + ["trainer=gpu"])
    assert OmegaConf.select(gpu, "hydra.launcher.gpus_per_node") == gpu.trainer.devices == 1


@pytest.mark.parametrize("bad, message", [
    ("inversion.lamm=0.1", "lamm"),  # a misspelt key
    ("data=folderr", "folderr"),  # an unknown option of a group
    ("hydra/launcher=slurmm", "slurmm"),
    ("hydra.launcher.gpus_per_node=4", "gpus_per_node=4 but trainer.devices=1"),
])
def test_a_wrong_override_in_a_command_fails_to_compose(bad, message):
    words = ["evaluate.py", "-m", "ckpt_path=x", "hparams_search=lam_steps", "hydra/launcher=slurm", bad]
    with pytest.raises(Exception, match=re.escape(message)):
        compose_command(words)


def test_a_preset_sweep_over_an_unknown_key_fails_to_compose(tmp_path):
    """The parameters of an ``hparams_search`` preset are composed too."""
    (tmp_path / "hparams_search").mkdir()
    (tmp_path / "hparams_search" / "bad.yaml").write_text(
        "# @package _global_\nhydra:\n  sweeper:\n    params:\n      inversion.lamm: 0,0.1\n")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose(config_name="evaluate", overrides=[f"hydra.searchpath=[file://{tmp_path}]",
                                                         "hparams_search=bad"], return_hydra_config=True)
    with pytest.raises(Exception, match="lamm"):
        compose_command(["evaluate.py", "ckpt_path=x", f"hydra.searchpath=[file://{tmp_path}]",
                         "hparams_search=bad"])
    assert "inversion.lamm" in cfg.hydra.sweeper.params


def test_the_extraction_joins_lines_fills_placeholders_and_finds_wrapped_commands():
    text = ('sbatch --wrap "srun python train.py ..." && OMP_NUM_THREADS=1 python evaluate.py '
            "ckpt_path=<run dir>/l \\\n    inversion.lam=0,0.1 | tee log; python -m anogan.sweep <sweep dir>")
    assert commands_in(words(text)) == [["train.py"], ["evaluate.py", "ckpt_path=x/l", "inversion.lam=0,0.1"],
                                          ["-m", "anogan.sweep", "x"]]
    assert _overrides("evaluate.py", ["-m", "data.test_subset=5", "inversion.lam=0,0.1"]) == [
        "++data.test_subset=5", "inversion.lam=0"]
    with pytest.raises(AssertionError, match="--multirunn"):
        _overrides("train.py", ["--multirunn"])


def test_a_module_command_with_a_wrong_argument_fails(monkeypatch):
    with pytest.raises(SystemExit):
        parse_module_command(["-m", "anogan.data.prepare", "folder", "scans/", "out.h5", "--patch-sise", "64"],
                             monkeypatch)
    with pytest.raises(AssertionError, match="no module anogan.prepare"):
        parse_module_command(["-m", "anogan.prepare", "folder"], monkeypatch)


@pytest.mark.parametrize("doc", DOCS, ids=[d.name for d in DOCS])
def test_every_relative_link_of_the_docs_exists_inside_the_repository(doc):
    for target in LINK.findall(shown(doc)):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        path = (doc.parent / target.split("#")[0]).resolve()
        assert path.is_relative_to(ROOT), f"{doc.name}: link {target} leaves the repository"
        assert path.exists(), f"{doc.name}: link {target} points at nothing"
        if "#" in target and path.suffix == ".md":
            assert target.split("#")[1] in _anchors(path), f"{doc.name}: {target}: no such heading"


def _anchors(doc: Path) -> set[str]:
    """GitHub's anchors of the headings of ``doc``: lower case, punctuation dropped, spaces as hyphens."""
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
            for h in re.findall(r"^#+ (.*)$", FENCE.sub("", shown(doc)), re.M)}


def _expand(path: str) -> list[str]:
    """``a/{b,c}.md`` -> ``a/b.md``, ``a/c.md``."""
    m = re.search(r"\{([^{}]*)\}", path)
    if not m:
        return [path]
    return [p for alt in m.group(1).split(",") for p in _expand(path[:m.start()] + alt + path[m.end():])]


@pytest.mark.parametrize("doc", DOCS, ids=[d.name for d in DOCS])
def test_every_repository_path_and_anogan_name_of_the_docs_exists(doc):
    text = shown(doc)
    for found in REPO_PATH.findall(text):
        for path in _expand(found.rstrip(".,")):
            assert glob.glob(str(ROOT / path)), f"{doc.name}: {path} is not in the repository"
    for name in ANOGAN_NAME.findall(text):
        if any(name == old or name.startswith(old + ".") for old in MOVED_MODULES):
            continue  # the old module paths, named as such (docs/architecture.md)
        assert _resolves(name), f"{doc.name}: {name} names no module or attribute of anogan"


# dotted names in inline code that are config keys: these roots, then key parts (a value may follow)
CONFIG_KEY = re.compile(r"(?:inversion|data|model|encoder|acae|baselines|trainer|logger|callbacks|evaluation_callbacks"
                        r"|prediction_callbacks|hydra\.launcher)(?:\.\w+)+(?==|$)")
NOT_CONFIG = {"trainer.global_step", "trainer.test"}  # Lightning's Trainer attribute and method, named as such
FILE_NAME = re.compile(r"\.(ckpt|h5|json|csv|png|npy|md|py|yaml)$")  # checkpoints/encoder.ckpt is a file


def _keys(node, prefix: str = "") -> set[str]:
    """Every dotted key of a config (unresolved; lists as leaves)."""
    if not isinstance(node, dict):
        node = OmegaConf.to_container(node, resolve=False)
    out = set()
    for k, v in node.items():
        out.add(f"{prefix}{k}")
        if isinstance(v, dict):
            out |= _keys(v, f"{prefix}{k}.")
    return out


def known_config_keys() -> set[str]:
    """The keys of train.py's and evaluate.py's configs with every option of every config group chosen in
    turn (a source's fields, a launcher's settings, ...)."""
    keys = set()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        for group in ("data", "model", "encoder", "acae", "baselines", "trainer", "logger", "inversion",
                      "hydra/launcher", "experiment"):
            for option in sorted(p.stem for p in (ROOT / "conf" / group).glob("*.yaml")):
                name = "evaluate" if (group, option) == ("data", "scans") else "train"
                cfg = compose(config_name=name, overrides=[f"{group}={option}"], return_hydra_config=True)
                keys |= _keys(cfg)
        keys |= _keys(compose(config_name="evaluate", overrides=[], return_hydra_config=True))
    GlobalHydra.instance().clear()
    return keys


def test_every_config_key_named_in_the_docs_exists():
    """An inline ``inversion.early_stop`` or ``data.eval_val_samples=0`` names a key of conf/ (of some
    option of its group; ``+key=`` adds one and is not checked); a key renamed or removed in conf/ fails
    here."""
    known = known_config_keys()
    assert {"data.eval_val_samples", "prediction_callbacks.maps.scan_window", "hydra.launcher.partition"} <= known
    missing = []
    for doc in DOCS:
        for span in INLINE.findall(FENCE.sub("", shown(doc))):
            for word in span.split():
                key = CONFIG_KEY.match(word.lstrip("~"))  # +key=...: a key added on purpose
                if key and not FILE_NAME.search(key.group(0)) and key.group(0) not in known | NOT_CONFIG:
                    missing.append(f"{doc.name}: {key.group(0)}")
    assert not missing, missing


def _resolves(name: str) -> bool:
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        module = ".".join(parts[:i])
        try:
            if importlib.util.find_spec(module) is None:
                continue
        except ModuleNotFoundError:  # a parent is a module, not a package
            continue
        obj = importlib.import_module(module)
        for attr in parts[i:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


@pytest.mark.parametrize("doc", [*DOCS, *sorted((ROOT / "conf").rglob("*.yaml"))], ids=lambda p: p.name)
def test_no_doc_or_config_points_outside_the_repository_or_at_issue_numbers(doc):
    for i, line in enumerate(doc.read_text().splitlines(), 1):
        found = OUTSIDE.search(line)
        assert found is None, f"{doc.relative_to(ROOT)}:{i}: {found.group(0)!r} is not something a reader can see"
