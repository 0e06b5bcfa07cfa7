"""The GPU tests: what holds on CUDA, and to which tolerance. Skipped, saying so, where no CUDA device is
present (tests/conftest.py); ``bash benchmarks/gpu.sh`` runs them with the GPU benchmarks.

On CUDA the CPU's bit-exact equalities become tolerances: cuDNN runs convolutions in TF32 by default
(``torch.backends.cudnn.allow_tf32``, a 10-bit mantissa) and picks its algorithm per batch shape
(``cudnn.benchmark``), so a batch of 8 and a batch of 1 sum in other orders. The tolerances below are
stated before any GPU run of this project (none was lent to its development): docs/performance.md
lists them, and a failure here is a finding to report, not a tolerance to widen silently.
"""

import json
from functools import partial

import lightning as L
import numpy as np
import pytest
import torch
from conftest import DDP_TRAIN, PROBE_ENV, ROOT, TINY, compose_cfg, fit_with_nan_from_batch_4, run_script

from anogan.callbacks import read_scores
from anogan.data import DigitsDataModule
from anogan.models.gan import GAN
from anogan.models.inversion import Inversion
from anogan.nets.mapping import mapping_copy
from anogan.nets import Discriminator, Generator, build
from anogan.engine.pipeline import evaluate

pytestmark = pytest.mark.gpu
GPU = "trainer.accelerator=gpu"
# mapping: 10 Adam steps through TF32 convolutions; scores of a batch vs one image at a time
MAPPING_RTOL, MAPPING_ATOL = 1e-2, 1e-3
# one forward pass of the fast copies vs the plain nets (TF32 in both, other kernels)
NETS_RTOL, NETS_ATOL = 1e-3, 1e-3
# bfloat16 autocast of G and D in the mapping vs float32 (8-bit mantissa)
BF16_RTOL = 5e-2


def _nets(size=32, width=8, z_dim=16):
    torch.manual_seed(0)
    return Generator(size, 1, z_dim, width).cuda().eval(), Discriminator(size, 1, width).cuda().eval()


def _queries(n=8, size=32):
    return (torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(1)) * 2 - 1).cuda()


@pytest.mark.parametrize("objective", ["dcgan", "wgangp"])
@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed", "16-mixed"])
def test_gan_training_steps_on_cuda_keep_float32_finite_weights(objective, precision):
    """16-mixed trains with a GradScaler (WGAN-GP's penalty per PyTorch's AMP recipe)."""
    L.seed_everything(0)
    family = "resnet" if objective == "wgangp" else "dcgan"
    G = build(family, "generator", image_size=16, channels=1, z_dim=16, width=8)
    D = build(family, "discriminator", image_size=16, channels=1, width=8)
    opt = partial(torch.optim.Adam, lr=1e-4, betas=(0.0, 0.9))
    gan = GAN(G, D, opt, opt, prior="normal", objective=objective, critic_iterations=2)
    before = {k: v.clone() for k, v in gan.state_dict().items()}
    trainer = L.Trainer(accelerator="gpu", devices=1, precision=precision, max_epochs=1, limit_train_batches=6,
                        limit_val_batches=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.fit(gan, datamodule=DigitsDataModule(image_size=16, batch_size=16))
    assert (getattr(trainer.precision_plugin, "scaler", None) is not None) == (precision == "16-mixed")
    after = gan.state_dict()
    for k, v in after.items():
        if v.is_floating_point():
            assert v.dtype == torch.float32 and torch.isfinite(v).all(), k
    assert any(not torch.equal(after[k].cpu(), before[k].cpu()) for k in after)


def test_a_non_finite_loss_on_cuda_stops_training_before_a_checkpoint_holds_it(tmp_path):
    """The deferred form of the loss guard (docs/performance.md): read before each checkpoint."""
    opt = partial(torch.optim.Adam, lr=2e-4, betas=(0.5, 0.999))
    gan = GAN(Generator(28, 1, 16, 8), Discriminator(28, 1, 8), opt, opt)
    _, message = fit_with_nan_from_batch_4(gan, tmp_path, accelerator="gpu")
    assert message.startswith("train/d_loss is nan at training step 3: training stopped (checked every 100")


def test_the_mapping_of_a_batch_equals_one_image_at_a_time_on_cuda_within_tolerance():
    G, D = _nets()
    x, index = _queries(), torch.arange(8)
    batched = Inversion(G, D, steps=10, seed=0).map_batch(x, index)["scores"]
    single = [Inversion(G, D, steps=10, seed=0).map_batch(x[i:i + 1], index[i:i + 1])["scores"] for i in range(8)]
    for name, value in batched.items():
        torch.testing.assert_close(value, torch.cat([s[name] for s in single]), rtol=MAPPING_RTOL,
                                   atol=MAPPING_ATOL, msg=lambda m, n=name: f"{n}: {m}")


def test_the_fast_copies_compute_the_plain_nets_functions_on_cuda():
    G, D = _nets()
    z = torch.rand(8, 16, device="cuda") * 2 - 1
    with torch.no_grad():
        for channels_last in (False, True):
            fast_g, fast_d = (mapping_copy(net, channels_last, fast=True) for net in (G, D))
            gz = G(z)
            torch.testing.assert_close(fast_g(z), gz, rtol=NETS_RTOL, atol=NETS_ATOL)
            torch.testing.assert_close(fast_d.features(gz), D.features(gz), rtol=NETS_RTOL, atol=NETS_ATOL)
            torch.testing.assert_close(fast_d(gz), D(gz), rtol=NETS_RTOL, atol=NETS_ATOL)


def test_the_mapping_uses_plain_copies_on_cuda_until_the_fast_ones_are_measured_faster():
    G, D = _nets()
    nets = Inversion(G, D, steps=1)._mapping_nets()
    assert all(type(a) is type(b) for net, copy in zip((G, D), nets)
               for a, b in zip(net.modules(), copy.modules()))  # no layer replaced, no BatchNorm folded


def test_a_bf16_mapping_on_cuda_keeps_z_and_scores_float32_near_fp32():
    G, D = _nets()
    x, index = _queries(), torch.arange(8)
    fp32 = Inversion(G, D, steps=10, seed=0).map_batch(x, index)
    bf16 = Inversion(G, D, steps=10, seed=0, precision="bf16-mixed").map_batch(x, index)
    assert bf16["z"].dtype == torch.float32 and bf16["generated"].dtype == torch.float32
    for name in ("residual", "anomaly"):
        assert bf16["scores"][name].dtype == torch.float32
        torch.testing.assert_close(bf16["scores"][name], fp32["scores"][name], rtol=BF16_RTOL, atol=0)


def test_an_evaluation_on_cuda_resumes_from_its_partial_file(tiny_ckpt, tmp_path, monkeypatch):
    """The rows of a killed evaluation's committed batches are reused, the others mapped again; the
    result equals an uninterrupted run's within the mapping's GPU tolerance."""
    import h5py

    args = [f"ckpt_path={tiny_ckpt}", "inversion.steps=3", "logger=none", "+data.eval_train_samples=0",
            "trainer.enable_progress_bar=false", "+data.eval_batch_size=64", GPU]
    evaluate(compose_cfg("evaluate", args, tmp_path / "clean"))
    out = tmp_path / "resumed"
    evaluate(compose_cfg("evaluate", args, out))
    (out / "scores.h5").rename(out / "scores.h5.partial")
    with h5py.File(out / "scores.h5.partial", "a") as f:  # as if killed after two batches
        f.attrs["rows"] = 128
    mapped = []
    original = Inversion.map_batch
    monkeypatch.setattr(Inversion, "map_batch", lambda self, x, i: mapped.append(len(x)) or original(self, x, i))
    evaluate(compose_cfg("evaluate", args, out))
    clean, resumed = read_scores(tmp_path / "clean" / "scores.h5"), read_scores(out / "scores.h5")
    assert sum(mapped) == len(clean["index"]) - 128
    np.testing.assert_array_equal(resumed["index"], clean["index"])
    np.testing.assert_allclose(resumed["scores/anomaly"], clean["scores/anomaly"], rtol=MAPPING_RTOL,
                               atol=MAPPING_ATOL)


def test_a_local_multirun_on_a_gpu_machine_runs_its_jobs_on_the_gpus(tiny_ckpt, tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_script(["evaluate.py", "-m", "hydra/launcher=local", f"ckpt_path={tiny_ckpt}", "inversion.lam=0.1,0.5",
                "inversion.steps=2", "logger=none", "+data.test_subset=40", "+data.eval_train_samples=0",
                "trainer.enable_progress_bar=false", GPU, f"hydra.sweep.dir={sweep}"], cwd=ROOT)
    proc_out = "".join(p.read_text() for p in sweep.glob(".submitit/*/*_log.*"))
    for job in ("0", "1"):  # trainer.accelerator=gpu fails in a job that sees no GPU
        assert (sweep / job / "metrics.json").is_file(), proc_out[-3000:]
    assert "CUDA_VISIBLE_DEVICES=0)" in proc.stdout + proc.stderr  # the launcher's log of job 0's GPU


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="DDP with NCCL needs 2 GPUs")
def test_ddp_training_with_nccl_on_two_gpus_finishes_and_evaluates(tmp_path):
    args = [a for a in DDP_TRAIN if a != "trainer.accelerator=cpu"]
    run_script(["train.py", *args, GPU, f"hydra.run.dir={tmp_path}"], cwd=ROOT, env=PROBE_ENV)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["n_normal"] + metrics["n_anomalous"] == 40


def test_the_scans_benchmark_maps_on_cuda(tmp_path):
    proc = run_script(["benchmarks/scans.py", "--device", "cuda", "--scans", "1", "--steps", "2", "--batch", "64",
                       "--scan-size", "96", "128"], cwd=ROOT)
    assert "device=cuda" in proc.stdout and "predict_over_mapping_time=" in proc.stdout


def test_training_on_cuda_through_the_config_with_bf16(tmp_path):
    from anogan.engine.pipeline import train

    train(compose_cfg("train", [*TINY, GPU, "trainer.precision=bf16-mixed", "logger=none", "inversion.steps=2",
                                "data.test_subset=40"], tmp_path))
    rows = read_scores(tmp_path / "scores.h5")
    assert {v.dtype for k, v in rows.items() if not k.startswith("@") and v.dtype.kind == "f"} == {np.dtype("float32")}
