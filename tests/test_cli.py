"""What a user sees and types: the 80-column table, --help, data.<field>= for evaluate.py, the closing
summary and its commands, and no Lightning advertising."""

import json
import logging
import shlex
import warnings

import pytest
from conftest import CONF, ROOT, TINY, compose_cfg, run_script
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from rich.console import Console

from anogan.callbacks.metrics import print_table
from anogan.engine.cli import data_field_overrides, quiet_lightning
from anogan.runtime.checkpoints import read_checkpoint
from anogan.nets.scores import SCORE_NAMES

NAMES = (*SCORE_NAMES, "fanogan", "acae_residual", "acae_discrimination", "acae_anomaly", "feature_knn10",
         "latent_knn10", "encoder_knn10")


def test_results_table_fits_80_columns_with_every_score_name_in_full():
    row = {"auroc": 0.91234, "threshold": -12345.678, "precision": 0.5, "recall": 1.0, "sensitivity": 1.0,
           "specificity": 0.25, "auprc": 0.5, "f1_max": 0.25,
           "calibrated": {"target_fpr": 0.05, "threshold": -12345.678, "sensitivity": 0.125, "specificity": 0.95,
                          "precision": None}}
    result = {"lam": 0.1, "steps": 500, "n_normal": 12345, "n_anomalous": 67890,
              "scores": {name: dict(row) for name in NAMES}, "pixel_auroc": None}
    result["scores"]["residual"]["auroc"] = None  # undefined: printed as null, not as a number
    console = Console(width=80, record=True)
    print_table(result, console=console)
    text = console.export_text()
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 80
    for name in NAMES:
        assert any(line.split()[:1] == [name] for line in lines), name
    row_of = {}
    for line in lines:  # the first table's row (the second table repeats the names)
        if line.split()[:1] and line.split()[0] in NAMES:
            row_of.setdefault(line.split()[0], line.split()[1:])
    assert row_of["residual"] == ["null", "0.5000", "1.0000", "1.0000", "0.2500", "-1.235e+04"]
    assert row_of["fanogan"][0] == "0.9123"
    assert "pixel-level AUROC of the residual maps: null" in text
    assert "0.500  0.250  0.05  -1.235e+04  0.125  0.950   null" in text  # the calibrated rates


def test_data_field_overrides_are_set_or_added_and_others_pass_unchanged():
    argv = ["evaluate.py", "ckpt_path=a.ckpt", "data.test_subset=50", "data=digits", "+data.seed=1",
            "++data.num_workers=0", "~data.root", "inversion.lam=0.5", "-m", "data.normal_classes=[1,2]"]
    assert data_field_overrides(argv) == [
        "evaluate.py", "ckpt_path=a.ckpt", "++data.test_subset=50", "data=digits", "+data.seed=1",
        "++data.num_workers=0", "~data.root", "inversion.lam=0.5", "-m", "++data.normal_classes=[1,2]"]


@pytest.mark.parametrize("source", [[], ["data=fashion_mnist"]])
def test_evaluate_config_takes_data_fields_without_plus(source, tmp_path):
    args = data_field_overrides(["evaluate.py", "ckpt_path=x.ckpt", *source, "data.eval_batch_size=8"])[1:]
    cfg = compose_cfg("evaluate", args, tmp_path)
    assert cfg.data.eval_batch_size == 8
    if source:  # data=<group> still chooses the whole source
        assert cfg.data._target_ == "anogan.data.IDXDataModule" and cfg.data.normal_classes == [0]
    else:
        assert "_target_" not in cfg.data  # fields on top of the checkpoint's data config


def test_train_help_lists_every_experiment_and_group_within_80_columns():
    out = run_script(["train.py", "--help"], cwd=ROOT).stdout
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= 80
    options = {line.split()[0].lstrip("*") for line in lines if line.startswith("  ") and line.split()}
    for group in ("experiment", "data", "model", "inversion", "encoder", "acae", "logger", "trainer",
                  "hydra/launcher"):
        assert any(line.startswith(f"{group}:") for line in lines), group
        assert {p.stem for p in (ROOT / "conf" / group).glob("*.yaml")} <= options, group
    experiment = lines[next(i for i, line in enumerate(lines) if line.startswith("experiment:")):]
    example = next(line for line in experiment if "e.g." in line)
    assert example.split("e.g. ")[1].startswith("python train.py experiment=")
    assert any(line.startswith("  *digits ") for line in lines)  # the default data source marked


def test_evaluate_help_lists_its_own_groups(tmp_path):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF, version_base="1.3", job_name="evaluate"):
        cfg = compose("evaluate", return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    try:
        text = cfg.hydra.help.template
    finally:
        HydraConfig.instance().cfg = None
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 80
    groups = {line.split(":")[0] for line in lines if line and not line.startswith(" ") and ":" in line}
    assert {"hparams_search", "data", "inversion", "hydra/launcher"} <= groups
    assert not {"experiment", "model", "encoder"} & groups  # train.py's groups only
    assert any(line.startswith("   lam_steps ") for line in lines)
    assert "   e.g. python evaluate.py ckpt_path=... logger=none" in lines  # the required key in the example
    assert "$" not in text.replace("$$", "")  # Hydra's string.Template gets escaped dollars only


def test_lightning_tips_and_leafspec_warning_are_dropped_and_nothing_else(caplog):
    quiet_lightning()
    from lightning.pytorch.utilities.rank_zero import rank_zero_info

    with caplog.at_level(logging.INFO, logger="lightning.pytorch.utilities.rank_zero"):
        rank_zero_info("💡 Tip: For seamless cloud logging, try installing "
                       "[litlogger](https://pypi.org/project/litlogger/) to enable LitLogger.")
        rank_zero_info("GPU available: False, used: False")
    assert [r.getMessage() for r in caplog.records] == ["GPU available: False, used: False"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        quiet_lightning()
        from lightning.pytorch.utilities._pytree import _tree_flatten

        _tree_flatten({"a": 1})  # Lightning's own LeafSpec(): torch's FutureWarning, dropped
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated", FutureWarning, stacklevel=1)  # ours: kept
    assert [str(w.message) for w in caught] == ["`isinstance(treespec, LeafSpec)` is deprecated"]


def _closing_commands(stdout: str) -> dict[str, list[str]]:
    """The commands of the closing summary, by their heading's first word."""
    lines = stdout.splitlines()
    start = max(i for i, line in enumerate(lines) if line.startswith("Run directory: "))
    commands, heading = {}, None
    for line in lines[start:]:
        if line.endswith(":") and not line.startswith(" "):
            heading = line.split()[0]
            commands[heading] = ""
        elif heading and line.startswith("  "):
            commands[heading] += " " + line.strip().removesuffix("\\")
    return {k: shlex.split(v) for k, v in commands.items()}


def test_train_script_ends_with_its_run_directory_and_a_train_on_command_that_resumes(tmp_path):
    out = tmp_path / "run"
    args = [*TINY, "trainer.max_epochs=1", "evaluate=false", "data.batch_size=64"]
    proc = run_script(["train.py", *args, f"hydra.run.dir={out}"], cwd=ROOT, env={"COLUMNS": "80"})
    printed = proc.stdout + proc.stderr
    for noise in ("litlogger", "litmodels", "LeafSpec"):
        assert noise not in printed
    lines = proc.stdout.splitlines()
    tail = lines[lines.index(f"Run directory: {out}"):]
    assert len(tail) <= 16  # the last lines, without the progress and log lines after them
    assert "  checkpoints/  last.ckpt" in tail and "samples/" in "".join(tail)
    commands = _closing_commands(proc.stdout)
    assert commands["Evaluate"] == ["python", "evaluate.py", f"ckpt_path={out}/checkpoints/last.ckpt"]
    again = commands["Train"]
    assert again[:2] == ["python", "train.py"] and "trainer.max_epochs=2" in again
    run_script(again[1:], cwd=ROOT)  # exactly as printed: one more epoch in the same directory
    state = read_checkpoint(out / "checkpoints" / "last.ckpt")
    assert state["epoch"] == 1 and json.loads((out / "job_status.json").read_text())["status"] == "COMPLETED"


def test_the_closing_file_list_keeps_a_space_after_the_longest_file_name(tmp_path):
    """data=scans' run files (predictions.csv, map_metrics.json) are longer than the training ones: each
    name is still followed by a space before what it holds."""
    from anogan.engine.cli import run_summary

    for name in ("metrics.json", "predictions.csv", "map_metrics.json"):
        (tmp_path / name).write_text("{}")
    (tmp_path / "checkpoints").mkdir()
    lines = run_summary(tmp_path, tmp_path / "checkpoints" / "last.ckpt", "evaluate").splitlines()
    for name in ("metrics.json", "predictions.csv", "map_metrics.json"):
        line = next(line for line in lines if line.strip().startswith(name))
        assert line.startswith(f"  {name} ") and line[len(name) + 3:].strip(), line
