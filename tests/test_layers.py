"""The package's layers hold (import-linter's contracts of pyproject.toml, and no import cycle), every
``_target_`` of conf/ resolves, and what earlier releases stored or configured still works or is named."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from hydra.utils import get_object, instantiate

from anogan.engine.errors import MOVED_MODULES, input_error, moved_target
from anogan.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
LINT = [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; "
        "sys.exit(lint_imports_command())"]


def _lint(cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(LINT + ["--no-cache"], cwd=cwd, capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(cwd), "PATH": "/usr/bin:/bin"})


def test_import_contracts_are_kept():
    proc = _lint(ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "3 kept, 0 broken" in proc.stdout


LAYERS, MODELS = "layers, top to bottom", "models import no other model"
COMMANDS = "no library module imports a command"


@pytest.mark.parametrize("module, line, contract", [
    ("nets/common.py", "from anogan.engine import pipeline", LAYERS),  # a lower layer importing the top one
    ("runtime/checks.py", "from anogan.data import SPLITS", LAYERS),  # runtime reaching up into data
    ("models/acae.py", "from anogan.models.encoder import load_encoder", MODELS),  # one model on another
    ("data/scans.py", "from anogan.data.prepare import main", COMMANDS),  # library importing a command
])
def test_a_wrong_way_import_breaks_a_contract(tmp_path, module, line, contract):
    shutil.copytree(ROOT / "anogan", tmp_path / "anogan", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / "anogan" / module
    target.write_text(target.read_text() + f"\n\ndef _wrong_way():\n    {line}\n")  # inside a function: counted
    proc = _lint(tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"{contract} BROKEN" in proc.stdout, proc.stdout
    assert "anogan." + module.removesuffix(".py").replace("/", ".") in proc.stdout  # the import is named


def _cycles(graph, modules: set[str]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), imports inside functions included."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(m: str) -> None:
        index[m] = low[m] = len(index)
        stack.append(m)
        on.add(m)
        for n in graph.find_modules_directly_imported_by(m) & modules:
            if n not in index:
                visit(n)
                low[m] = min(low[m], low[n])
            elif n in on:
                low[m] = min(low[m], index[n])
        if low[m] == index[m]:
            comp = []
            while True:
                n = stack.pop()
                on.discard(n)
                comp.append(n)
                if n == m:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for m in sorted(modules):
        if m not in index:
            visit(m)
    return out


def test_no_import_cycle_among_the_package_modules():
    import grimp

    graph = grimp.build_graph("anogan", cache_dir=None)
    modules = {m for m in graph.modules if m.startswith("anogan")}
    # a package's __init__ re-exports its children; the cycles that matter are between real modules
    packages = {m for m in modules if (ROOT / m.replace(".", "/") / "__init__.py").is_file()}
    assert _cycles(graph, modules - packages) == []
    assert len(modules - packages) > 40  # the whole package was read


def test_at_most_six_modules_directly_in_the_package():
    top = sorted(p.name for p in (ROOT / "anogan").glob("*.py") if p.name != "__init__.py")
    assert len(top) <= 6, top
    assert {"nets", "metrics", "runtime", "data", "models", "callbacks", "engine"} <= {
        p.name for p in (ROOT / "anogan").iterdir() if (p / "__init__.py").is_file()}


def _targets(node, where: str):
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "_target_":
                yield where, v
            else:
                yield from _targets(v, f"{where}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _targets(v, f"{where}[{i}]")


def test_every_target_in_conf_resolves():
    found = []
    for path in sorted((ROOT / "conf").rglob("*.yaml")):
        for where, target in _targets(yaml.safe_load(path.read_text()) or {}, path.relative_to(ROOT).as_posix()):
            if "${" in str(target):
                continue
            found.append(target)
            assert callable(get_object(target)), f"{where}: {target}"
    assert len(found) > 25 and any(t.startswith("anogan.models.") for t in found)


@pytest.mark.parametrize("old, new", sorted(MOVED_MODULES.items()))
def test_every_moved_module_path_names_a_module_or_object_that_exists(old, new):
    assert get_object(new) is not None
    assert moved_target(old) == new


def test_an_old_target_in_a_user_config_is_one_line_naming_the_new_path():
    with pytest.raises(Exception) as raised:
        instantiate({"_target_": "anogan.gan.GAN", "generator": {}, "discriminator": {}})
    error = input_error(raised.value)
    assert isinstance(error, InputError)
    assert str(error) == ("_target_ anogan.gan.GAN moved to anogan.models.gan.GAN when anogan's package was split "
                          "into layers; write _target_: anogan.models.gan.GAN in your config")
    assert moved_target("anogan.sweep.SweepSummary") == "anogan.engine.sweep.SweepSummary"
    assert moved_target("anogan.data.DigitsDataModule") is None  # data paths never moved
    assert moved_target("anogan.gantry.X") is None  # a prefix of a name is not the name


def test_a_checkpoint_of_the_flat_package_still_evaluates_and_resumes(tiny_ckpt, tmp_path):
    """A checkpoint written before the move stores its run config with the flat module paths (e.g.
    ``anogan.gan.GAN``, ``anogan.checkpoints.AtomicCheckpointIO``); only its data config is instantiated
    again, and data targets (``anogan.data.*``) did not move: it evaluates and resumes as before."""
    from conftest import TINY, compose_cfg

    from anogan.engine.pipeline import evaluate_checkpoint, train

    ckpt = torch.load(tiny_ckpt, map_location="cpu", weights_only=True)
    config = ckpt["anogan_config"]
    assert config["model"]["_target_"] == "anogan.models.gan.GAN"
    assert config["data"]["_target_"].startswith("anogan.data.")
    config["model"]["_target_"] = "anogan.gan.GAN"  # as main before the move wrote it
    config["trainer"]["plugins"] = {"_target_": "anogan.checkpoints.AtomicCheckpointIO"}
    old = tmp_path / "old" / "checkpoints" / "last.ckpt"
    old.parent.mkdir(parents=True)
    torch.save(ckpt, old)

    def evaluated(path: Path, out: str) -> dict:
        cfg = compose_cfg("evaluate", [f"ckpt_path={path}", "inversion.steps=2", "logger=none",
                                       "+data.test_subset=16", "+data.eval_train_samples=0",
                                       "trainer.enable_progress_bar=false"], tmp_path / out)
        return evaluate_checkpoint(cfg, path)

    metrics = evaluated(old, "eval_old")
    assert metrics == evaluated(tiny_ckpt, "eval_new") and "test/auroc/anomaly" in metrics
    assert (tmp_path / "eval_old" / "metrics.json").is_file()

    epochs = config["trainer"]["max_epochs"] + 1
    cfg = compose_cfg("train", TINY + [f"ckpt_path={old}", f"trainer.max_epochs={epochs}", "evaluate=false"],
                      tmp_path / "resumed")
    train(cfg)
    resumed = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert resumed["epoch"] == epochs - 1 and resumed["anogan_config"]["model"]["_target_"] == "anogan.models.gan.GAN"
