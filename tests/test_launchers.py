"""Launchers that see the GPUs: the local launcher gives each job its own GPU (none on a CPU machine,
never CUDA_VISIBLE_DEVICES="" on a GPU machine), and the SLURM preset asks for trainer.devices GPUs."""

import pytest
import submitit
from conftest import CONF
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import get_class

from anogan.runtime import launchers
from anogan.runtime.launchers import check_slurm_gpus, job_gpus, visible_gpus


def _launcher(tmp_path, overrides):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("evaluate", ["ckpt_path=x.ckpt", f"hydra.sweep.dir={tmp_path / 'sweep'}", *overrides],
                      return_hydra_config=True)
    launcher = get_class(cfg.hydra.launcher._target_)(**{k: v for k, v in cfg.hydra.launcher.items()
                                                         if k != "_target_"})
    launcher.setup(hydra_context=None, task_function=None, config=cfg)
    return cfg, launcher


def test_each_job_gets_its_own_gpu_round_robin_and_none_without_gpus():
    assert job_gpus(3, None, [0, 1]) == [(0,), (1,), (0,)]
    assert job_gpus(2, None, []) == [(), ()]  # a CPU machine: every job on the CPU
    assert job_gpus(2, 2, [4, 5, 6, 7]) == [(4, 5), (6, 7)]
    assert job_gpus(2, 0, [0, 1]) == [(), ()]  # asked for: no GPU
    with pytest.raises(ValueError, match=r"hydra.launcher.gpus_per_node=3 but 2 GPU\(s\) are visible"):
        job_gpus(1, 3, [0, 1])


def test_the_visible_gpus_are_the_sweeps_own(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert visible_gpus() == [2, 3]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert visible_gpus() == []
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-5e3c")
    with pytest.raises(ValueError, match="list them by index"):
        visible_gpus()


@pytest.mark.parametrize("gpus, extra, seen", [
    ([0, 1], [], ["0", "1", "0"]),            # a 2-GPU machine: one GPU per job, not all on GPU 0
    ([], [], ["", "", ""]),                   # a CPU machine: no GPU, as before
    ([0, 1, 2, 3], ["hydra.launcher.gpus_per_node=2"], ["0,1", "2,3", "0,1"]),
])
def test_the_local_launcher_exports_each_jobs_gpus(tmp_path, monkeypatch, gpus, extra, seen):
    """CUDA_VISIBLE_DEVICES of each job of hydra/launcher=local, as submitit's local executor exports it
    to the job's process (start_controller), for 3 jobs; the processes themselves are not started."""
    cfg, launcher = _launcher(tmp_path, ["hydra/launcher=local", *extra])
    assert cfg.hydra.launcher.gpus_per_node == (2 if extra else None)
    monkeypatch.setattr(launchers, "visible_gpus", lambda: gpus)
    exported = []

    def start_controller(folder, command, cuda_devices="", **kw):
        exported.append(cuda_devices)
        import subprocess
        import sys

        return subprocess.Popen([sys.executable, "-c", "pass"])

    monkeypatch.setattr(submitit.local.local, "start_controller", start_controller)
    monkeypatch.setattr(submitit.local.local.LocalJob, "results", lambda job: ["done"])
    assert launcher.launch([["inversion.lam=0.1"], ["inversion.lam=0.2"], ["inversion.lam=0.3"]], 0) == ["done"] * 3
    assert exported == seen


def test_the_slurm_preset_asks_for_trainer_devices_gpus_and_refuses_another_count(tmp_path):
    cfg, _ = _launcher(tmp_path, ["hydra/launcher=slurm", "trainer=ddp", "trainer.devices=4"])
    assert cfg.hydra.launcher.gpus_per_node == 4 and cfg.hydra.launcher.tasks_per_node == 4
    cfg, _ = _launcher(tmp_path, ["hydra/launcher=slurm"])
    assert cfg.hydra.launcher.gpus_per_node == cfg.trainer.devices == 1
    cfg, launcher = _launcher(tmp_path, ["hydra/launcher=slurm", "hydra.launcher.gpus_per_node=4"])
    with pytest.raises(ValueError, match=r"gpus_per_node=4 but trainer.devices=1.*set trainer.devices=4"):
        launcher.launch([["inversion.lam=0.1"]], 0)  # refused before anything is submitted
    assert not (tmp_path / "sweep").exists()
    cfg, _ = _launcher(tmp_path, ["hydra/launcher=slurm_cpu"])
    assert cfg.hydra.launcher.gpus_per_node is None
    check_slurm_gpus(None, 1)  # a CPU partition asks for no GPU, whatever trainer.devices
