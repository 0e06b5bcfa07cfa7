"""benchmarks/oct_seed_study.py: the seed study's rows, summary and resume, with the train / draw / map
commands replaced by writers of their outputs (the commands themselves are tested in test_oct_phantom.py
and test_predict.py)."""

import argparse
import csv
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import oct_seed_study as study  # noqa: E402


def _map_metrics(seed: int) -> dict:
    return {"n_scans": 24, "pixel_auroc": 0.9 + seed / 1000, "pixel_auprc": 0.1, "pixel_aupro": 0.8,
            "scan": {"scan_score_auroc": 0.8 + seed / 100, "image_score_auroc": 0.7,
                     "at_flag": {"sensitivity": 0.75, "specificity": 1.0}},
            "calibration": {"scan_threshold": 0.3, "n_normal_scans": 20},
            "mapping_failures": {"restarts": 2, "tol": 0.1, "groups": {
                "patches_of_normal_scans": {"n": 10, "first_start_failed": 1},
                "patches_of_scans_without_lesion": {"n": 20, "first_start_failed": seed},
                "patches_of_scans_with_lesion": {"n": 30, "first_start_failed": 0}}}}


@pytest.fixture
def fake_commands(monkeypatch):
    calls = []

    def run(cmd, log, threads):
        calls.append(cmd)
        if cmd[1] == "evaluate.py":
            here = Path(next(c for c in cmd if c.startswith("hydra.run.dir=")).split("=", 1)[1])
            seed = int(here.parent.name)
            here.mkdir(parents=True)
            (here / "map_metrics.json").write_text(json.dumps(_map_metrics(seed)))
        elif cmd[1] == "train.py":
            here = Path(next(c for c in cmd if c.startswith("hydra.run.dir=")).split("=", 1)[1])
            here.mkdir(parents=True)
            (here / "metrics.json").write_text("{}")
        else:
            (Path(cmd[3]) / "normal").mkdir(parents=True)
        return 1.5

    monkeypatch.setattr(study, "_run", run)
    return calls


def test_one_row_per_seed_the_summary_and_a_resume_that_redoes_nothing(tmp_path, fake_commands, capsys):
    out = tmp_path / "study"
    study.main(["--seeds", "1,100-102", "--out", str(out), "--name", "r2", "--eval", "inversion.restarts=2"])
    rows = list(csv.DictReader(open(out / "r2.csv")))
    assert [int(r["seed"]) for r in rows] == [1, 100, 101, 102]
    assert [r["role"] for r in rows] == ["development", "reported", "reported", "reported"]
    assert float(rows[1]["scan_auroc"]) == pytest.approx(1.8) and rows[2]["failed_first_starts_healthy_scans"] == "101"
    assert rows[0]["n_patches"] == "60"
    evals = [c for c in fake_commands if c[1] == "evaluate.py"]
    assert len(evals) == 4 and all("inversion.restarts=2" in c for c in evals)
    # the summary is over the reported seeds only: the development seed 1 is left out
    summary = json.loads((out / "r2_summary.json").read_text())
    assert summary["seeds"] == [100, 101, 102]
    s = summary["summary"]["scan_auroc"]
    assert (s["min"], s["median"], s["max"]) == pytest.approx((1.8, 1.81, 1.82)) and s["spread"] == pytest.approx(0.02)
    run = json.loads((out / "r2_run.json").read_text())
    assert {"commit", "date", "command", "machine", "load", "wall_s", "transcribed", "note"} <= set(run)
    assert run["command"].endswith("--name r2 --eval inversion.restarts=2")
    assert "scan_auroc: min 1.800, median 1.810" in capsys.readouterr().out
    # the same command again: every row exists, nothing runs; another name maps the same GANs again
    fake_commands.clear()
    study.main(["--seeds", "1,100-102", "--out", str(out), "--name", "r2"])
    assert fake_commands == []
    study.main(["--seeds", "100", "--out", str(out), "--name", "r1"])
    assert [c[1] for c in fake_commands] == ["evaluate.py"]


def test_seeds_are_ranges_or_lists_and_repeats_are_refused():
    assert study.seeds_arg("100-103,7") == [100, 101, 102, 103, 7]
    with pytest.raises(argparse.ArgumentTypeError, match="distinct"):
        study.seeds_arg("3,3")


def test_a_number_no_seed_has_is_null_with_its_reason():
    row = study.row_of(5, {**_map_metrics(5), "scan": {"scan_score_auroc": 0.9, "image_score_auroc": 0.8,
                                                      "at_flag": None}}, 1.0, 2.0)
    assert row["flag_sensitivity"] is None
    s = study.summary([row])["flag_sensitivity"]
    assert s["min"] is None and s["reason"] == "no seed has this number"


def test_the_fluid_scans_table_describes_each_fluid_scan_against_its_seeds_top_healthy_scan(tmp_path):
    """benchmarks/oct_fluid_scans.py on a constructed seed folder: a fluid scan of two blobs scoring below the
    top healthy scan, one above it, and the healthy scans left out of the rows."""
    import numpy as np
    from PIL import Image

    import oct_fluid_scans as fluid

    seed = tmp_path / "study" / "7"
    (seed / "scans" / "maps" / "v").mkdir(parents=True)
    (seed / "phantom" / "masks" / "v").mkdir(parents=True)
    scores = {"v/healthy_a": 0.30, "v/healthy_b": 0.40, "v/fluid_low": 0.35, "v/fluid_high": 0.90}
    for name in scores:
        mask = np.zeros((16, 16), np.uint8)
        if name == "v/fluid_low":
            mask[2:4, 2:5] = 255  # 6 pixels
            mask[10, 10] = 255  # a second blob of 1
        if name == "v/fluid_high":
            mask[5:9, 5:9] = 255
        Image.fromarray(mask).save(seed / "phantom" / "masks" / f"{name}.png")
        score_map = np.full((16, 16), 0.1, np.float32)
        score_map[mask > 0] = 0.8
        np.save(seed / "scans" / "maps" / f"{name}.npy", score_map)
    with open(seed / "scans" / "predictions.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, ["image", "scan_score"])
        writer.writeheader()
        writer.writerows({"image": k, "scan_score": v} for k, v in scores.items())
    assert fluid.main([str(tmp_path / "study")]) == 0
    rows = {r["scan"]: r for r in csv.DictReader(open(tmp_path / "study" / "scans_fluid_scans.csv"))}
    assert set(rows) == {"v/fluid_low", "v/fluid_high"}
    low, high = rows["v/fluid_low"], rows["v/fluid_high"]
    assert (low["below_top_healthy"], high["below_top_healthy"]) == ("1", "0")
    assert float(low["top_healthy_score"]) == 0.4
    assert (low["fluid_pixels"], low["blobs"], low["largest_blob"], low["fluid_rows"]) == ("7", "2", "6", "9")
    assert float(low["map_in_fluid"]) == pytest.approx(0.8) and float(low["map_around_fluid"]) == pytest.approx(0.1)
    (tmp_path / "empty").mkdir()
    for bad in ("empty", "missing"):  # no seed folder there, no folder: argparse's error, exit status 2
        with pytest.raises(SystemExit) as stop:
            fluid.main([str(tmp_path / bad)])
        assert stop.value.code == 2


def test_the_z_spread_compares_the_same_scans_under_other_initial_z(tmp_path):
    """benchmarks/oct_z_spread.py: per scan the range of scan_score over the evaluations, the test scans whose
    flag changes, each evaluation's scan AUROC; fewer than two runs or other scans are refused."""
    import oct_z_spread as z

    def run(name: str, test: dict, normal: dict, auroc: float) -> Path:
        here = tmp_path / name
        here.mkdir()
        for file, scans in (("predictions.csv", test), ("normal_scans.csv", normal)):
            with open(here / file, "w", newline="") as f:
                writer = csv.DictWriter(f, ["image", "scan_score", "scan_flagged"])
                writer.writeheader()
                writer.writerows({"image": k, "scan_score": "" if s is None else s,
                                  "scan_flagged": int(bool(s and s > 0.5))} for k, s in scans.items())
        flag = {"sensitivity": 1.0, "specificity": 0.5}
        (here / "map_metrics.json").write_text(json.dumps({"scan": {"scan_score_auroc": auroc, "at_flag": flag}}))
        return here

    a = run("a", {"f1": 0.6, "h1": 0.3, "tiny": None}, {"n1": 0.2}, 1.0)
    b = run("b", {"f1": 0.4, "h1": 0.35, "tiny": None}, {"n1": 0.25}, 0.5)
    assert z.main([str(a), str(b), "--out", str(tmp_path / "out")]) == 0
    rows = {(r["set"], r["scan"]): r for r in csv.DictReader(open(tmp_path / "out" / "per_scan.csv"))}
    assert float(rows[("test", "f1")]["range"]) == pytest.approx(0.2)
    assert rows[("test", "f1")]["flag_changes"] == "1" and rows[("test", "h1")]["flag_changes"] == "0"
    assert rows[("test", "tiny")]["range"] == ""  # no score: no range, not 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["max_range"] == pytest.approx(0.2) and summary["median_range"] == pytest.approx(0.05)
    assert summary["test_scans_whose_flag_changes"] == 1
    assert [e["scan_auroc"] for e in summary["evaluations"]] == [1.0, 0.5]
    with pytest.raises(SystemExit, match="at least two"):
        z.spread([a])
    other = run("c", {"f2": 0.6, "h1": 0.3, "tiny": None}, {"n1": 0.2}, 1.0)
    with pytest.raises(SystemExit, match="same scans"):
        z.spread([a, other])
    with pytest.raises(SystemExit, match="given twice"):
        z.spread([a, tmp_path / "a"])
    for here, overrides in ((a, ["data=scans", "seed=0"]), (b, ["data=scans", "seed=1", "inversion.restarts=2"])):
        (here / ".hydra").mkdir()
        (here / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    with pytest.raises(SystemExit, match=r"more than seed=.*inversion.restarts=2"):
        z.spread([a, b])


@pytest.mark.parametrize("bad", ["abc", "5-3", "3,3", "1-x"])
def test_bad_seeds_are_refused_with_an_example(bad):
    with pytest.raises(argparse.ArgumentTypeError, match="e.g. 100-109"):
        study.seeds_arg(bad)
