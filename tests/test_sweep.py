"""Multiruns over lam x steps: summary.csv, figures, failed jobs, recorded steps (anogan/engine/sweep.py)."""

import csv
import json
import os
import subprocess
import sys

import pytest
from conftest import CONF, ROOT, compose_cfg, run_script
from omegaconf import OmegaConf

from anogan.engine.pipeline import evaluate
from anogan.engine.sweep import FIGURES, auroc_points, job_row, write_summary
from anogan.sweep import main
from anogan.errors import InputError

FAST = ["logger=none", "+data.test_subset=60", "+data.eval_train_samples=0", "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false"]


def read_summary(sweep_dir):
    with open(sweep_dir / "summary.csv") as f:
        return list(csv.DictReader(f))


def test_local_launcher_multirun_writes_summary_and_figures(tiny_ckpt, tmp_path):
    sweep = tmp_path / "sweep"
    run_script(["evaluate.py", "-m", "hydra/launcher=local", f"ckpt_path={tiny_ckpt}", "inversion.lam=0.1,0.5",
                "inversion.steps=1,3", *FAST, f"hydra.sweep.dir={sweep}"], cwd=ROOT)
    rows = read_summary(sweep)
    assert [r["job"] for r in rows] == ["0", "1", "2", "3"]
    assert {(float(r["lam"]), int(r["steps"])) for r in rows} == {(0.1, 1), (0.1, 3), (0.5, 1), (0.5, 3)}
    for r in rows:
        assert r["status"] == "COMPLETED" and r["error"] == ""
        assert r["inversion.lam"] == r["lam"] and f"inversion.steps={r['steps']}" in r["overrides"]
        metrics = json.loads((sweep / r["job"] / "metrics.json").read_text())
        assert (metrics["lam"], metrics["steps"]) == (float(r["lam"]), int(r["steps"]))
        for name, row in metrics["scores"].items():
            assert float(r[f"auroc/{name}"]) == pytest.approx(row["auroc"])
            assert float(r[f"auprc/{name}"]) == pytest.approx(row["auprc"])
            calibrated = row["calibrated"]
            if calibrated["threshold"] is None:  # 14 normal validation digits: too few for a conformal 5 % threshold
                assert "at least 19" in calibrated["reason"] and not r.get(f"calibrated_sensitivity/{name}")
            else:
                assert float(r[f"calibrated_sensitivity/{name}"]) == pytest.approx(calibrated["sensitivity"])
    # submitit ran each job as its own process: one submission folder with a result per job
    results = list((sweep / ".submitit").glob("*/*_result.pkl"))
    assert len(results) == 4
    for name in FIGURES:
        assert (sweep / name).stat().st_size > 3000


def test_a_failed_job_is_a_row_with_its_error(tiny_ckpt, tmp_path):
    """Hydra's default launcher: job 1 fails (lam out of range); the sweep exits non-zero, and the
    summary still holds both jobs, the failed one with its error."""
    sweep = tmp_path / "sweep"
    proc = subprocess.run([sys.executable, "evaluate.py", "-m", f"ckpt_path={tiny_ckpt}", "inversion.lam=0.1,2",
                           "inversion.steps=1", *FAST, f"hydra.sweep.dir={sweep}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr  # bad input: one line, after the whole sweep
    assert proc.stderr.strip().splitlines()[-1] == "error: inversion.lam=2 must lie in [0, 1] (the paper uses 0.1)"
    # the sweep's closing lines, as after a sweep without failures
    assert f"Sweep directory: {sweep}" in proc.stdout and "summary.csv" in proc.stdout.split("Sweep directory:")[1]
    ok, failed = read_summary(sweep)
    assert ok["status"] == "COMPLETED"
    job = json.loads((sweep / ok["job"] / "metrics.json").read_text())
    assert float(ok["auroc/anomaly"]) == pytest.approx(job["scores"]["anomaly"]["auroc"])
    assert failed["status"] == "FAILED" and float(failed["lam"]) == 2.0
    assert failed["error"].startswith("InputError: inversion.lam=2") and failed["auroc/anomaly"] == ""
    status = json.loads((sweep / "1" / "job_status.json").read_text())
    assert "Traceback" in status["traceback"]
    assert (sweep / FIGURES[0]).is_file()  # drawn from the completed job


def _fake_job(sweep, num, overrides, metrics=None, status="COMPLETED"):
    job = sweep / str(num)
    (job / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(overrides), job / ".hydra" / "overrides.yaml")
    if metrics is not None:
        (job / "metrics.json").write_text(json.dumps(metrics))
    if status:
        (job / "job_status.json").write_text(json.dumps({"status": status}))
    return job


def test_recorded_steps_fill_the_steps_axis_and_the_summary_rebuilds(tmp_path, capsys):
    sweep = tmp_path / "sweep"

    def m(lam, steps, auroc, recorded=None):
        out = {"lam": lam, "steps": steps, "scores": {"anomaly": {"auroc": auroc}, "residual": {"auroc": auroc}}}
        if recorded:
            out["recorded"] = {str(t): {"anomaly": a, "residual": a} for t, a in recorded.items()}
        return out

    _fake_job(sweep, 0, ["inversion.lam=0.1"], m(0.1, 200, 0.9, {25: 0.6, 50: 0.7, 100: 0.8}))
    _fake_job(sweep, 1, ["inversion.lam=0.5"], m(0.5, 200, 0.85, {25: 0.65, 50: 0.75, 100: 0.8}))
    _fake_job(sweep, 2, ["inversion.lam=0.5", "inversion.steps=50"], m(0.5, 50, 0.77))
    _fake_job(sweep, 10, ["inversion.lam=1"], None, status=None)  # still running
    main([str(sweep)])
    assert "summary.csv" in capsys.readouterr().out
    rows = read_summary(sweep)
    assert [r["job"] for r in rows] == ["0", "1", "2", "10"]
    assert rows[3]["status"] == "RUNNING"
    assert float(rows[0]["auroc/anomaly/step_50"]) == 0.7
    points = auroc_points([job_row(sweep / r["job"]) for r in rows])
    assert points == {(0.1, 25): 0.6, (0.1, 50): 0.7, (0.1, 100): 0.8, (0.1, 200): 0.9,
                      (0.5, 25): 0.65, (0.5, 50): 0.77, (0.5, 100): 0.8, (0.5, 200): 0.85}
    for name in FIGURES:
        assert (sweep / name).is_file()
    with pytest.raises(SystemExit) as refused:
        main([str(tmp_path / "missing")])
    assert refused.value.code == 2 and "missing is not a directory" in capsys.readouterr().err


def test_the_summary_carries_auprc_f1_calibrated_rates_and_pixel_metrics_with_reasons(tmp_path):
    sweep = tmp_path / "sweep"
    row = {"auroc": 0.8, "auprc": 0.6, "f1_max": 0.55,
           "calibrated": {"threshold": 3.0, "sensitivity": 0.4, "specificity": 0.96}}
    metrics = {"lam": 0.1, "steps": 5, "scores": {"anomaly": row}, "pixel_auroc": 0.9, "pixel_auprc": 0.3,
               "pixel_best_dice": 0.35, "pixel_aupro": None, "pixel_aupro_reason": "undefined: no region"}
    _fake_job(sweep, 0, ["inversion.lam=0.1"], metrics)
    main([str(sweep)])
    (r,) = read_summary(sweep)
    assert (float(r["auprc/anomaly"]), float(r["f1_max/anomaly"])) == (0.6, 0.55)
    assert (float(r["calibrated_sensitivity/anomaly"]), float(r["calibrated_specificity/anomaly"])) == (0.4, 0.96)
    assert (float(r["pixel_auprc"]), float(r["pixel_best_dice"])) == (0.3, 0.35)
    assert r["pixel_aupro"] == "" and r["pixel_aupro_reason"] == "undefined: no region"
    with open(sweep / "summary.csv") as f:
        header = f.readline().strip().split(",")
    assert header.index("pixel_auroc") < header.index("pixel_aupro") < header.index("auroc/anomaly") < header.index(
        "auprc/anomaly")


def test_the_summary_says_whether_each_job_g_learned_its_class(tmp_path):
    """sample_quality.json (written after training) gives each row sample_nn_ratio, sample_spread_ratio and
    g_learned (the ratio against the run's warning ratio); a job without the file leaves them empty."""
    sweep = tmp_path / "sweep"
    metrics = {"lam": 0.1, "steps": 5, "scores": {"anomaly": {"auroc": 0.8}}}
    for num, ratio in ((0, 1.2), (1, 2.9), (2, None)):
        job = _fake_job(sweep, num, [f"seed={num}"], metrics)
        if ratio is not None:
            (job / "sample_quality.json").write_text(json.dumps({"ratio": ratio, "spread_ratio": 0.9,
                                                                 "warn_ratio": 1.5}))
    main([str(sweep)])
    rows = {r["job"]: r for r in read_summary(sweep)}
    assert (float(rows["0"]["sample_nn_ratio"]), rows["0"]["g_learned"]) == (1.2, "True")
    assert (float(rows["1"]["sample_nn_ratio"]), rows["1"]["g_learned"]) == (2.9, "False")
    assert float(rows["1"]["sample_spread_ratio"]) == 0.9
    assert rows["2"]["sample_nn_ratio"] == rows["2"]["g_learned"] == ""


def test_a_recorded_step_scores_like_a_job_that_stops_there(tiny_ckpt, tmp_path):
    """Why one job per lam suffices: AUROC after 2 of 4 recorded steps == AUROC of a 2-step job."""
    sweep = tmp_path / "sweep"
    for num, extra in enumerate([["inversion.steps=4", "inversion.record_steps=[2]"], ["inversion.steps=2"]]):
        job = _fake_job(sweep, num, extra, status=None)
        evaluate(compose_cfg("evaluate", [f"ckpt_path={tiny_ckpt}", "inversion.lam=0.3", *FAST, *extra], job))
        (job / "job_status.json").write_text(json.dumps({"status": "COMPLETED"}))
    write_summary(sweep)
    recorded, final = read_summary(sweep)
    for name in ("anomaly", "residual", "discrimination"):
        assert float(recorded[f"auroc/{name}/step_2"]) == pytest.approx(float(final[f"auroc/{name}"]), abs=1e-6)


def _hydra_cfg(overrides):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose("evaluate", ["ckpt_path=x.ckpt", *overrides], return_hydra_config=True)


def _sbatch_lines(tmp_path, monkeypatch, overrides) -> set[str]:
    """The lines of the sbatch script that submitit would submit for these launcher overrides (no
    cluster here: a stub srun lets submitit start, and the submission itself is intercepted)."""
    import submitit
    from hydra.utils import get_class

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    cfg = _hydra_cfg([*overrides, f"hydra.sweep.dir={tmp_path / 'sweep'}"])
    launcher_class = get_class(cfg.hydra.launcher._target_)  # hydra_plugins.anogan_launchers.launchers
    launcher = launcher_class(**{k: v for k, v in cfg.hydra.launcher.items() if k != "_target_"})
    launcher.setup(hydra_context=None, task_function=None, config=cfg)

    class Submitted(Exception):
        pass

    def intercept(executor, fn, *args):
        raise Submitted(executor._executor._make_submission_file_text("python -u -m submitit.core._submit", "0"))

    monkeypatch.setattr(submitit.AutoExecutor, "map_array", intercept)
    with pytest.raises(Submitted) as sbatch:
        launcher.launch([["inversion.lam=0.1"]], 0)
    lines = set(sbatch.value.args[0].splitlines())
    assert sum(line.startswith("#SBATCH --signal") for line in lines) == 1  # one owner: requeue_on_signal
    return lines


def test_slurm_launcher_submits_one_task_per_gpu_with_one_owner_of_the_requeue_signal(tmp_path, monkeypatch):
    lines = _sbatch_lines(tmp_path, monkeypatch, [
        "hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.account=proj42",
        "trainer=ddp", "trainer.devices=4", "hydra.launcher.timeout_min=90", "hydra.launcher.mem_gb=64"])
    for line in ("--partition=gpu", "--account=proj42", "--gpus-per-node=4", "--ntasks-per-node=4", "--time=90",
                 "--mem=64GB", "--requeue", "--signal=USR1@120"):
        assert f"#SBATCH {line}" in lines, line


def test_slurm_cpu_launcher_asks_for_no_gpu_and_keeps_the_requeue_settings(tmp_path, monkeypatch):
    lines = _sbatch_lines(tmp_path, monkeypatch, ["hydra/launcher=slurm_cpu"])
    for line in ("--ntasks-per-node=1", "--cpus-per-task=2", "--mem=8GB", "--time=240", "--requeue",
                 "--signal=USR1@120"):
        assert f"#SBATCH {line}" in lines, line
    assert not any(line.startswith(("#SBATCH --gpus", "#SBATCH --gres", "#SBATCH --partition")) for line in lines)


def test_the_run_directory_is_named_by_the_slurm_job_id(monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    assert _hydra_cfg([]).hydra.run.dir == "logs/evaluate/runs/4242"
    monkeypatch.delenv("SLURM_JOB_ID")
    assert _hydra_cfg([]).hydra.run.dir.startswith("logs/evaluate/runs/20")


def test_every_setting_that_makes_lightning_start_processes_fails_a_multirun_early(monkeypatch):
    from hydra.core.hydra_config import HydraConfig

    from anogan.engine.sweep import check_ddp_launch

    def check(overrides):
        cfg = _hydra_cfg(["trainer.accelerator=cpu", *overrides])
        HydraConfig.instance().set_config(cfg)
        check_ddp_launch(cfg)

    monkeypatch.setattr(HydraConfig.instance(), "cfg", HydraConfig.instance().cfg)  # restored afterwards
    for key in [k for k in os.environ if k.startswith(("SLURM_", "TORCHELASTIC", "LOCAL_RANK"))]:
        monkeypatch.delenv(key)
    for overrides in (["trainer=ddp", "trainer.devices=2"], ["trainer.devices=2"],  # Lightning picks ddp
                      ["trainer.strategy=ddp_spawn", "trainer.devices=3"], ["trainer.num_nodes=2"]):
        with pytest.raises(InputError, match="start [0-9] processes itself and restart the whole sweep.*"
                                             "hydra/launcher=slurm_cpu "):  # the CPU preset, on a CPU
            check([*overrides, "hydra.mode=MULTIRUN"])
    check(["trainer=ddp", "trainer.devices=2", "hydra.mode=RUN"])  # a single run: Lightning relaunches it
    check(["hydra.mode=MULTIRUN"])  # one process per job
    check(["trainer.strategy=ddp", "hydra.mode=MULTIRUN"])  # DDP in one process: nothing started
    # a 2-task SLURM job (hydra.launcher.tasks_per_node=2): SLURM started the processes
    for key, value in {"SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "2", "SLURM_JOB_NAME": "train",
                       "SLURM_NODELIST": "localhost", "SLURM_PROCID": "0", "SLURM_LOCALID": "0",
                       "SLURM_NODEID": "0", "SLURM_JOB_ID": "7"}.items():
        monkeypatch.setenv(key, value)
    check(["trainer=ddp", "trainer.devices=2", "hydra.mode=MULTIRUN"])
    check(["trainer.devices=2", "hydra.mode=MULTIRUN"])
