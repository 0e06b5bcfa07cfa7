"""The cluster path on a real scheduler: a one-node SLURM cluster started for the session
(tests/slurm/start_cluster.sh, as root; skipped with the reason where it cannot start) runs sweeps
through ``hydra/launcher=slurm_cpu``, and jobs that are signalled as SLURM does before their time limit,
requeued and resumed."""

import csv
import json
import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from conftest import DDP_TRAIN, PROBE_ENV, ROOT, TINY, compose_cfg, run_script
from doc_commands import readme_command

from anogan.callbacks import read_scores
from anogan.engine.pipeline import evaluate, train
from anogan.runtime.checkpoints import read_checkpoint

pytestmark = pytest.mark.slow

SCRIPTS = ROOT / "tests" / "slurm"
FAST = ["logger=none", "+data.test_subset=60", "+data.eval_train_samples=0", "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false"]


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    """A running one-node cluster; ``SLURM_CONF`` points at it for the tests and the jobs they submit."""
    if os.geteuid() != 0:
        pytest.skip("the one-node SLURM cluster needs root (tests/slurm/start_cluster.sh installs and starts it)")
    state = tmp_path_factory.mktemp("slurm")
    proc = subprocess.run(["bash", str(SCRIPTS / "start_cluster.sh"), str(state)], capture_output=True, text=True,
                          timeout=900)
    if proc.returncode == 2:
        pytest.skip(f"no SLURM cluster: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    patch = pytest.MonkeyPatch()
    patch.setenv("SLURM_CONF", str(state / "slurm.conf"))
    try:
        yield state
    finally:
        subprocess.run(["bash", str(SCRIPTS / "stop_cluster.sh"), str(state)], timeout=120)
        patch.undo()


def job_info(job: str) -> dict[str, str]:
    out = subprocess.run(["scontrol", "-o", "show", "job", job], capture_output=True, text=True, check=True).stdout
    return dict(re.findall(r"(\w+)=(\S*)", out.splitlines()[0]))


def wait_for(what, check, timeout=240, proc=None):
    t0 = time.monotonic()
    while not (value := check()):
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the command ended ({proc.returncode}) before {what}")
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"no {what} within {timeout} s")
        time.sleep(0.2)
    return value


def read_summary(sweep):
    with open(sweep / "summary.csv") as f:
        return list(csv.DictReader(f))


def test_a_slurm_cpu_sweep_runs_every_job_on_the_scheduler_with_the_aurocs_of_a_local_run(slurm, tiny_ckpt, tmp_path):
    sweep = tmp_path / "sweep"
    run_script(["evaluate.py", "-m", "hydra/launcher=slurm_cpu", f"ckpt_path={tiny_ckpt}", "inversion.lam=0.1,0.5",
                "inversion.steps=1,3", *FAST, f"hydra.sweep.dir={sweep}"], cwd=ROOT, timeout=300)
    rows = read_summary(sweep)
    assert [r["status"] for r in rows] == ["COMPLETED"] * 4
    # each job was a task of one SLURM job array, run by this project's python
    submitted = sorted(p.parent.name for p in (sweep / ".submitit").glob("*_*/*_result.pkl"))
    array = submitted[0].split("_")[0]
    assert submitted == [f"{array}_{i}" for i in range(4)]
    for i in range(4):
        assert job_info(f"{array}_{i}")["JobState"] == "COMPLETED"
    script = (sweep / ".submitit" / array / f"{array}_submission.sh").read_text()
    assert "srun --unbuffered" in script and f" {sys.executable} -u -m submitit.core._submit " in script
    assert "#SBATCH --gpus-per-node" not in script and "#SBATCH --cpus-per-task=2" in script
    for r in rows:
        lam, steps = float(r["lam"]), int(r["steps"])
        local = evaluate(compose_cfg("evaluate", [f"ckpt_path={tiny_ckpt}", f"inversion.lam={lam}",
                                                  f"inversion.steps={steps}", *FAST], tmp_path / f"local{r['job']}"))
        for name in ("residual", "discrimination", "anomaly"):
            assert float(r[f"auroc/{name}"]) == pytest.approx(local[f"test/auroc/{name}"], abs=1e-6), (r["job"], name)


def test_the_readme_sweep_on_slurm_with_wandb_runs_eight_jobs_each_its_own_offline_wandb_run(
        slurm, tiny_ckpt, tmp_path):
    """README's lam x Gamma sweep on SLURM with wandb, as printed there (the tiny run's checkpoint in place
    of ``<run>``; one core per job, so that the 2-core node runs two at a time), with WANDB_MODE=offline:
    8 tasks of one job array, each job a wandb run of its own in its directory, named by job and grouped by
    sweep, whose table holds the job's AUROCs; summary.csv and the heat map cover the 4 x 2 grid."""
    command = readme_command("hparams_search=lam_steps", "logger=wandb")
    assert command[0] == "evaluate.py" and "hydra/launcher=slurm_cpu" in command
    args = [f"ckpt_path={tiny_ckpt}" if a.startswith("ckpt_path=") else a for a in command[1:]]
    sweep, home = tmp_path / "sweep", tmp_path / "home"
    run_script([command[0], *args, "hydra.launcher.cpus_per_task=1", *FAST[1:], f"hydra.sweep.dir={sweep}"],
               cwd=ROOT, timeout=900, env={"WANDB_MODE": "offline", "HOME": str(home), "WANDB_DIR": str(home)})
    rows = read_summary(sweep)
    assert [r["status"] for r in rows] == ["COMPLETED"] * 8
    assert {(float(r["lam"]), int(r["steps"])) for r in rows} == {(lam, steps) for lam in (0, 0.1, 0.5, 1)
                                                                  for steps in (50, 200)}
    submitted = sorted(p.parent.name for p in (sweep / ".submitit").glob("*_*/*_result.pkl"))
    array = submitted[0].split("_")[0]
    assert sorted(submitted) == sorted(f"{array}_{i}" for i in range(8))
    assert all(job_info(f"{array}_{i}")["JobState"] == "COMPLETED" for i in range(8))
    assert (sweep / "auroc_heatmap.png").read_bytes()[:4] == b"\x89PNG"
    for r in rows:
        [run] = (sweep / r["job"] / "wandb").glob("offline-run-*")  # one run per job
        record = next(run.glob("run-*.wandb")).read_bytes()
        assert f"evaluate/{sweep.name}".encode() in record and f"evaluate-{r['job']}".encode() in record
        assert b"test/roc_table" in record and b"test/hist/residual/test-normal" in record
        table = json.loads(next((run / "files" / "media" / "table" / "test").glob("table_*.table.json")).read_text())
        aurocs = {row[0]: dict(zip(table["columns"], row))["auroc"] for row in table["data"]}
        metrics = json.loads((sweep / r["job"] / "metrics.json").read_text())
        assert aurocs == {name: m["auroc"] for name, m in metrics["scores"].items()}
        assert float(r["auroc/anomaly"]) == pytest.approx(aurocs["anomaly"])
        assert (metrics["lam"], metrics["steps"]) == (float(r["lam"]), int(r["steps"]))


def test_a_failed_slurm_job_is_a_failed_row_and_the_others_complete(slurm, tiny_ckpt, tmp_path):
    sweep = tmp_path / "sweep"
    proc = subprocess.run([sys.executable, "evaluate.py", "-m", "hydra/launcher=slurm_cpu", f"ckpt_path={tiny_ckpt}",
                           "inversion.lam=0.1,2", "inversion.steps=1", *FAST, f"hydra.sweep.dir={sweep}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0  # the launcher reports the failed job
    ok, failed = read_summary(sweep)
    assert ok["status"] == "COMPLETED"
    job = json.loads((sweep / ok["job"] / "metrics.json").read_text())
    assert float(ok["auroc/anomaly"]) == pytest.approx(job["scores"]["anomaly"]["auroc"])
    assert failed["status"] == "FAILED" and failed["error"].startswith("InputError: inversion.lam=2")
    assert failed["auroc/anomaly"] == ""


def test_training_signalled_before_its_time_limit_is_requeued_and_ends_with_the_weights_of_an_uninterrupted_run(
        slurm, tmp_path):
    """A plain ``sbatch`` job of ``python train.py`` (srun, as in a user's script): SIGUSR1 to its
    steps, as ``--signal=USR1@120`` sends it; the job requeues itself, SLURM stops it and starts it
    again, and it resumes in its run directory ``logs/train/runs/<job id>``."""
    args = [*TINY, "evaluate=false", "logger=none", "trainer.max_epochs=30"]
    full = tmp_path / "full"
    train(compose_cfg("train", args, full))
    log = tmp_path / "job.out"
    command = " ".join([sys.executable, str(ROOT / "train.py"), *args, f"paths.log_dir={tmp_path / 'logs'}"])
    job = subprocess.run(["sbatch", "--parsable", "--requeue", "--cpus-per-task=2", f"--chdir={tmp_path}",
                          f"--output={log}", "--open-mode=append", "--job-name=train", f"--wrap=srun {command}"],
                         capture_output=True, text=True, check=True).stdout.strip()
    runs = tmp_path / "logs" / "train" / "runs"
    last = wait_for("a last.ckpt", lambda: next(runs.glob("*/checkpoints/last.ckpt"), None), timeout=180)
    assert job_info(job)["JobState"] == "RUNNING"
    run = last.parents[1]
    assert run.name == job  # the run directory is named by the job id: the requeued job will find it
    subprocess.run(["scancel", "--signal=USR1", job], check=True)
    wait_for("the requeue", lambda: job_info(job)["Restarts"] == "1", timeout=60)
    assert read_checkpoint(last)["epoch"] < 29  # stopped before the end
    info = wait_for("the job's end", lambda: (i := job_info(job))["JobState"] in ("COMPLETED", "FAILED") and i,
                    timeout=240)
    out = log.read_text()
    assert info["JobState"] == "COMPLETED" and info["Restarts"] == "1", out[-3000:]
    assert [d.name for d in runs.iterdir()] == [job]
    a, b = read_checkpoint(full / "checkpoints" / "last.ckpt"), read_checkpoint(last)
    assert a["epoch"] == b["epoch"] == 29 and a["global_step"] == b["global_step"]
    for k, v in a["state_dict"].items():
        assert torch.equal(v, b["state_dict"][k]), k
    assert f"requeueing SLURM job {job}" in out and "training stopped by SIGTERM" in out
    assert f"Restoring states from the checkpoint path at {last}" in out  # the second start resumed


def test_evaluation_signalled_before_its_time_limit_is_requeued_and_reuses_its_mapped_images(
        slurm, tiny_ckpt, tmp_path):
    """A 1-job ``hydra/launcher=slurm_cpu`` evaluation: SIGUSR1 while it maps; the requeued job reruns
    submitit's pickled job in the same job directory and continues from ``scores.h5.partial``."""
    args = [f"ckpt_path={tiny_ckpt}", "inversion.steps=10", "logger=none", "+data.eval_batch_size=32",
            "+data.eval_train_samples=0", "trainer.enable_progress_bar=false"]
    full = tmp_path / "full"
    evaluate(compose_cfg("evaluate", args, full))
    sweep = tmp_path / "sweep"
    log = open(tmp_path / "launcher.log", "w")
    proc = subprocess.Popen([sys.executable, "evaluate.py", "-m", "hydra/launcher=slurm_cpu", *args,
                             f"hydra.sweep.dir={sweep}"], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        partial = sweep / "0" / "scores.h5.partial"
        wait_for(f"{partial}", partial.exists, timeout=180, proc=proc)
        job = next((sweep / ".submitit").glob("*/*_submitted.pkl")).parent.name
        subprocess.run(["scancel", "--signal=USR1", job], check=True)
        assert proc.wait(300) == 0, (tmp_path / "launcher.log").read_text()[-3000:]
    finally:
        proc.kill()
    out = "".join(p.read_text() for p in (sweep / ".submitit" / job).glob("*_log.*"))
    assert job_info(job)["Restarts"] == "1", out[-3000:]
    assert f"requeueing SLURM job {job}" in out and "evaluation stopped by SIGTERM" in out
    assert re.search(r"resuming from .*scores.h5.partial: [1-9][0-9]* images already mapped", out)
    [row] = read_summary(sweep)
    assert row["status"] == "COMPLETED"
    a, b = read_scores(full / "scores.h5"), read_scores(sweep / "0" / "scores.h5")
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert json.loads((full / "metrics.json").read_text()) == json.loads((sweep / "0" / "metrics.json").read_text())
    assert not (sweep / "0" / "scores.h5.partial").exists()


def _ddp_job(tmp_path, extra=(), env=None):
    """Start ``train.py -m`` with DDP_TRAIN as one SLURM job of 2 tasks (gloo), one core each."""
    sweep = tmp_path / "sweep"
    log = open(tmp_path / "launcher.log", "w")
    proc = subprocess.Popen([sys.executable, "train.py", "-m", "hydra/launcher=slurm_cpu",
                             "hydra.launcher.tasks_per_node=2", "hydra.launcher.cpus_per_task=1", *DDP_TRAIN, *extra,
                             f"hydra.sweep.dir={sweep}"], cwd=ROOT, env={**os.environ, **PROBE_ENV, **(env or {})},
                            stdout=log, stderr=subprocess.STDOUT)
    return proc, sweep


def _same_weights(a, b):
    a, b = read_checkpoint(a), read_checkpoint(b)
    assert a["epoch"] == b["epoch"] and a["global_step"] == b["global_step"]
    for k, v in a["state_dict"].items():
        assert torch.equal(v, b["state_dict"][k]), k


def test_a_two_task_ddp_job_trains_and_evaluates_like_two_local_processes(slurm, ddp_run, tmp_path):
    """``hydra.launcher.tasks_per_node=2``: SLURM starts the two processes (Lightning reads the ranks
    from SLURM); they draw different z, and the job's weights, scores and metrics equal those of the
    same two processes started locally by Lightning."""
    proc, sweep = _ddp_job(tmp_path)
    try:
        assert proc.wait(300) == 0, (tmp_path / "launcher.log").read_text()[-3000:]
    finally:
        proc.kill()
    job = next((sweep / ".submitit").glob("*/*_submitted.pkl")).parent.name
    out = "".join(p.read_text() for p in (sweep / ".submitit" / job).glob("*_log.*"))
    assert job_info(job)["NumTasks"] == "2" and "SLURM auto-requeueing enabled" not in out
    run = sweep / "0"
    assert not (run / "train_ddp_process_1.log").exists()  # no process started by Lightning
    [row] = read_summary(sweep)
    assert row["status"] == "COMPLETED"
    _same_weights(ddp_run / "checkpoints" / "last.ckpt", run / "checkpoints" / "last.ckpt")
    assert json.loads((run / "metrics.json").read_text()) == json.loads((ddp_run / "metrics.json").read_text())
    a, b = read_scores(ddp_run / "scores.h5"), read_scores(run / "scores.h5")
    for k in [k for k in a if not k.startswith("@")]:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    for r in (0, 1):
        here, local = (torch.load(d / "probe" / f"rank{r}.pt") for d in (run, ddp_run))
        assert all(torch.equal(x, y) for x, y in zip(here["z"], local["z"])) and len(here["z"]) == 12
    zero, one = (torch.load(run / "probe" / f"rank{r}.pt") for r in (0, 1))
    assert all(torch.cdist(a, b).min() > 0.1 for a, b in zip(zero["z"], one["z"]))


def test_a_two_task_ddp_job_signalled_mid_training_is_requeued_and_ends_with_the_uninterrupted_weights(
        slurm, ddp_run, tmp_path):
    """SIGUSR1 to both tasks (as ``--signal=USR1@120`` sends it) after the first epoch: task 0
    requeues the job, task 1 leaves it to task 0 (no Lightning handler anywhere); SLURM's SIGTERM stops
    both at the same batch; the job starts again and resumes from last.ckpt."""
    proc, sweep = _ddp_job(tmp_path, ["evaluate=false"], env={"ANOGAN_PROBE_SLEEP": "0.5"})
    try:
        last = sweep / "0" / "checkpoints" / "last.ckpt"
        wait_for(f"{last}", last.exists, timeout=240, proc=proc)
        job = next((sweep / ".submitit").glob("*/*_submitted.pkl")).parent.name
        subprocess.run(["scancel", "--signal=USR1", job], check=True)
        wait_for("the requeue", lambda: job_info(job)["Restarts"] == "1", timeout=60)
        assert read_checkpoint(last)["epoch"] < 2  # stopped before the end
        assert proc.wait(300) == 0, (tmp_path / "launcher.log").read_text()[-3000:]
    finally:
        proc.kill()
    out = "".join(p.read_text() for p in (sweep / ".submitit" / job).glob("*_log.*"))
    assert f"requeueing SLURM job {job}" in out and f"task 0 of SLURM job {job} requeues it" in out
    assert out.count("training stopped by SIGTERM") == 2 and "SLURM auto-requeueing enabled" not in out
    assert f"Restoring states from the checkpoint path at {last}" in out
    _same_weights(ddp_run / "checkpoints" / "last.ckpt", last)
