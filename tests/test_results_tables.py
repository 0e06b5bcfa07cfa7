"""The results tables of README.md and docs/ are written by benchmarks/tables.py from the files under
benchmarks/results/: a table that differs from its result files fails here, as does a run.json without its
keys or with a commit outside the history; the check itself is held on copies whose numbers are changed."""

from __future__ import annotations

import datetime
import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, run_script

_spec = importlib.util.spec_from_file_location("benchmarks_tables", ROOT / "benchmarks" / "tables.py")
tables = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = tables  # dataclasses look their module up
_spec.loader.exec_module(tables)

RESULTS = ROOT / tables.RESULTS
RESULT_DIRS = sorted(p.name for p in RESULTS.iterdir() if p.is_dir())


def _copy(tmp_path: Path) -> Path:
    """README.md, docs/ and benchmarks/results/ of the checkout under ``tmp_path``."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "README.md", tmp_path / "README.md")
    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    shutil.copytree(RESULTS, tmp_path / tables.RESULTS)
    return tmp_path


def _check(root: Path):
    return run_script([str(ROOT / "benchmarks" / "tables.py"), "--check", "--root", str(root)], cwd=root,
                      check=False)


def test_every_results_table_of_the_docs_is_what_its_result_files_give():
    _, stale = tables.update(ROOT)
    assert not stale, f"{stale}: run python benchmarks/tables.py (after changing benchmarks/results/)"
    proc = _check(ROOT)
    assert proc.returncode == 0 and proc.stdout == "", proc.stdout + proc.stderr


@pytest.mark.parametrize("name", RESULT_DIRS)
def test_every_result_directory_has_a_run_json_with_its_keys_and_feeds_a_table(name):
    run = json.loads((RESULTS / name / "run.json").read_text())
    assert set(tables.RUN_KEYS) <= set(run), f"{name}/run.json lacks {set(tables.RUN_KEYS) - set(run)}"
    assert re.fullmatch(r"[0-9a-f]{40}", run["commit"]), f"{name}: commit {run['commit']!r} is not a full hash"
    datetime.date.fromisoformat(run["date"])
    assert run["command"] and run["machine"] and run["load"]
    assert run["wall_s"] is None or isinstance(run["wall_s"], (int, float, list))
    files = {p.name for p in (RESULTS / name).iterdir()} - {"run.json"}
    assert set(run["transcribed"]) <= files, f"{name}: transcribed files that are not there"
    assert files, f"{name} holds no result file"
    if run["transcribed"]:
        assert "transcribed from" in run["note"].lower(), f"{name}: the note says where the numbers were typed"
    assert any(name in t.sources for t in tables.TABLES.values()), f"{name} feeds no table of benchmarks/tables.py"


def test_every_run_json_commit_is_in_the_history():
    git = ["git", "-C", str(ROOT)]
    if subprocess.run([*git, "rev-parse", "--git-dir"], capture_output=True).returncode:
        pytest.skip("not a git checkout")
    if subprocess.run([*git, "rev-parse", "--is-shallow-repository"], capture_output=True,
                      text=True).stdout.strip() == "true":
        pytest.skip("a shallow clone lacks the older commits")
    commits = {name: json.loads((RESULTS / name / "run.json").read_text())["commit"] for name in RESULT_DIRS}
    missing = [name for name, commit in commits.items()
               if subprocess.run([*git, "cat-file", "-e", commit + "^{commit}"], capture_output=True).returncode]
    assert not missing, f"run.json commits not in the history: {missing}"


def test_a_changed_number_in_a_result_file_fails_the_check_naming_its_table_until_rewritten(tmp_path):
    root = _copy(tmp_path)
    csv_path = root / tables.RESULTS / "fashion_mnist_benchmark" / "benchmark.csv"
    text = csv_path.read_text()
    row = next(line for line in text.splitlines() if line.startswith("experiment=fashion_mnist_benchmark,[3],anomaly,"))
    cells = row.split(",")
    cells[4] = "0.7123"  # the mean AUROC of class 3's anomaly score
    csv_path.write_text(text.replace(row, ",".join(cells)))

    proc = _check(root)
    assert proc.returncode == 1
    assert proc.stdout.splitlines() == [
        "stale: docs/benchmark.md: fashion_mnist_benchmark (python benchmarks/tables.py rewrites it from "
        "benchmarks/results/)"]
    assert "0.712 ±" not in (root / "docs" / "benchmark.md").read_text()  # --check writes nothing

    run_script([str(ROOT / "benchmarks" / "tables.py"), "--root", str(root)], cwd=root)
    assert "| 3 Dress | 0.712 ± " in (root / "docs" / "benchmark.md").read_text()
    assert _check(root).returncode == 0
    for doc in ("README.md", "docs/oct.md", "docs/results.md"):  # the other files untouched
        assert (root / doc).read_text() == (ROOT / doc).read_text()


def test_a_table_edited_by_hand_and_a_changed_run_json_fail_the_check(tmp_path):
    root = _copy(tmp_path)
    oct_md = root / "docs" / "oct.md"
    text = oct_md.read_text()
    start = text.index("<!-- table:oct_phantom_scan_decision -->")
    row = text.index("\n| ", text.index("| ---", start))  # the first row of numbers
    oct_md.write_text(text[:row] + text[row:].replace("0.", "0.9", 1))  # one number typed by hand
    run_path = root / tables.RESULTS / "fanogan_preset" / "run.json"
    run = json.loads(run_path.read_text())
    run["commit"] = "0" * 40
    run_path.write_text(json.dumps(run))

    proc = _check(root)
    assert proc.returncode == 1
    stale = sorted(line.split(" (")[0].removeprefix("stale: ") for line in proc.stdout.splitlines())
    of_the_run = {f"{t.doc}: {name}" for name, t in tables.TABLES.items() if "fanogan_preset" in t.sources}
    assert stale == sorted({"docs/oct.md: oct_phantom_scan_decision", *of_the_run})
    assert "README.md: results_at_a_glance" in stale  # the README's row states the run's commit


def test_a_run_json_without_its_keys_or_a_doc_without_its_markers_stops_with_an_error(tmp_path):
    root = _copy(tmp_path)
    run_path = root / tables.RESULTS / "export_speed" / "run.json"
    run = json.loads(run_path.read_text())
    del run["load"]
    run_path.write_text(json.dumps(run))
    proc = _check(root)
    assert proc.returncode == 1 and "export_speed/run.json lacks load" in proc.stderr

    root = _copy(tmp_path / "second")
    deploy = root / "docs" / "deploy.md"
    deploy.write_text(deploy.read_text().replace("<!-- table:export_speed -->", "<!-- table:export_sped -->"))
    proc = _check(root)
    assert proc.returncode == 1 and "no table export_sped for docs/deploy.md" in proc.stderr


def test_the_caption_states_the_commit_and_names_only_the_transcribed_files_the_table_read():
    results = tables.Results(ROOT)
    scans = tables.render("oct_phantom_scan_decision", results)  # per_seed.csv: the runs' own numbers
    train = tables.render("oct_phantom_scan_decision_train", results)  # + train_metrics.csv, transcribed
    assert "commit 3638ce5, 2026-12-07" in scans and "Transcribed" not in scans
    assert "**Transcribed from the docs, raw output not kept:** train_metrics.csv." in train
    bench, run = tables.render("fashion_mnist_benchmark", results), results.run("fashion_mnist_benchmark")
    assert f"commit {run['commit'][:7]}, {run['date']}" in bench and f"wall {tables.duration(run['wall_s'])}" in bench
    assert "Transcribed" not in bench


def test_wall_times_read_as_the_docs_write_them():
    assert tables.duration(2126) == "35 min 26 s"
    assert tables.duration(3480) == "58 min"
    assert tables.duration(27) == "27 s"
    assert tables.duration(3725) == "1 h 2 min 5 s"
    assert tables.duration([123, 132]) == "2 min 3 s – 2 min 12 s"


def test_record_writes_a_run_json_with_the_commit_wall_time_and_load(tmp_path):
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    (tmp_path / "f").write_text("x")
    subprocess.run([*git, "add", "f"], check=True)
    subprocess.run([*git, "commit", "-qm", "c"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()

    path = tables.record("probe", [sys.executable, "-c", "open('ran', 'w').write('1')"], tmp_path)
    run = json.loads(path.read_text())
    assert path == tmp_path / tables.RESULTS / "probe" / "run.json" and (tmp_path / "ran").is_file()
    assert run["commit"] == head and run["date"] == datetime.date.today().isoformat()
    assert set(tables.RUN_KEYS) <= set(run) and run["transcribed"] == [] and run["note"] == ""
    assert 0 <= run["wall_s"] < 60 and "before" in run["load"]

    with pytest.raises(SystemExit, match="exited with 3; no run.json written"):
        tables.record("failed", [sys.executable, "-c", "raise SystemExit(3)"], tmp_path)
    assert not (tmp_path / tables.RESULTS / "failed").exists()
