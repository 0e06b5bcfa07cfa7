"""The one-class benchmark as a multirun (classes x seeds), its aggregated table, and the baselines
scored on the same images (anogan/models/baselines.py, anogan/engine/sweep.py)."""

import csv
import json

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from conftest import ROOT, TINY, run_script
from test_data import write_idx
from test_sweep import _fake_job

from anogan.models.baselines import EncoderKNN, FeatureKNN, LatentKNN, PixelBaselines, baseline_scorers, knn_distance
from anogan.nets import Discriminator, Encoder
from anogan.engine.sweep import benchmark_rows, write_summary
from anogan.errors import InputError


def _idx_set(root, n_train=40, n_test=12):
    """Ten classes, class c a bright band at rows 2c+3..2c+8 over noise: easy for the pixel baselines."""
    rng = np.random.default_rng(0)

    def images(n):
        classes = np.arange(n * 10) % 10
        x = rng.integers(0, 60, (n * 10, 28, 28))
        for i, c in enumerate(classes):
            x[i, 2 * c + 3: 2 * c + 9] += 180
        return x, classes

    (tr, tr_c), (te, te_c) = images(n_train), images(n_test)
    root.mkdir()
    for name, arr in {"train-images-idx3-ubyte": tr, "train-labels-idx1-ubyte": tr_c,
                      "t10k-images-idx3-ubyte": te, "t10k-labels-idx1-ubyte": te_c}.items():
        write_idx(root / f"{name}.gz", arr, gz=True)


def test_knn_distance_is_the_kth_smallest_euclidean_distance():
    g = torch.Generator().manual_seed(0)
    q, ref = torch.randn(7, 5, generator=g), torch.randn(23, 5, generator=g)
    full = torch.cdist(q, ref).sort(1).values
    for k in (1, 3):
        torch.testing.assert_close(knn_distance(q, ref, k, chunk=4), full[:, k - 1])
    with pytest.raises(InputError, match="baselines.knn=24"):
        knn_distance(q, ref, 24)
    # a list of k: one pass, one column per k
    torch.testing.assert_close(knn_distance(q, ref, [1, 3, 10], chunk=5), full[:, [0, 2, 9]])
    for bad in ([], [0, 2], [2.5], [True]):
        with pytest.raises(InputError, match=r"baselines.knn=.*e.g. baselines.knn=1"):
            knn_distance(q, ref, bad)


def test_pixel_pca_equals_scikit_learn_reconstruction_error():
    from sklearn.decomposition import PCA

    g = torch.Generator().manual_seed(1)
    train, test = torch.rand(50, 1, 6, 6, generator=g) * 2 - 1, torch.rand(9, 1, 6, 6, generator=g) * 2 - 1
    scores = PixelBaselines(train, pca_components=4)(test)
    pca = PCA(n_components=4, random_state=0).fit(train.flatten(1).double().numpy())
    flat = test.flatten(1).double().numpy()
    want = ((flat - pca.inverse_transform(pca.transform(flat))) ** 2).sum(1)
    np.testing.assert_allclose(scores["pixel_pca"].numpy(), want, rtol=1e-4)
    torch.testing.assert_close(scores["pixel_knn"], torch.cdist(test.flatten(1), train.flatten(1)).min(1).values)
    assert torch.all(PixelBaselines(train, 4)(train[:5])["pixel_knn"] == 0)  # a training image is its own 1-NN
    with pytest.raises(InputError, match="baselines.pca_components=40"):
        PixelBaselines(train, pca_components=40)


def test_feature_knn_uses_the_discriminator_features():
    D = Discriminator(image_size=28, channels=1, width=4).eval()
    g = torch.Generator().manual_seed(2)
    train, test = torch.rand(20, 1, 28, 28, generator=g), torch.rand(3, 1, 28, 28, generator=g)
    with torch.no_grad():
        want = torch.cdist(D.features(test), D.features(train)).min(1).values
    torch.testing.assert_close(FeatureKNN(D, train)(test)["feature_knn"], want)


def test_a_list_of_k_names_one_score_per_k_for_pixels_features_latents_and_encoder_features():
    g = torch.Generator().manual_seed(3)
    train, test = torch.rand(30, 1, 28, 28, generator=g) * 2 - 1, torch.rand(4, 1, 28, 28, generator=g) * 2 - 1
    D = Discriminator(image_size=28, channels=1, width=4).eval()
    E = Encoder(image_size=28, channels=1, z_dim=6, width=4).eval()
    with torch.no_grad():
        spaces = {"pixel_knn": (test.flatten(1), train.flatten(1)),
                  "feature_knn": (D.features(test), D.features(train)), "latent_knn": (E(test), E(train)),
                  "encoder_knn": (E.features(test), E.features(train))}
    got = {**PixelBaselines(train, 4, knn=[1, 5])(test), **FeatureKNN(D, train, [1, 5])(test),
           **LatentKNN(E, train, [1, 5])(test), **EncoderKNN(E, train, [1, 5])(test)}
    assert set(got) == {"pixel_pca", "pixel_knn", "pixel_knn5", "feature_knn", "feature_knn5",
                        "latent_knn", "latent_knn5", "encoder_knn", "encoder_knn5"}
    assert E.features(test).shape == (4, 4 * 2 * 7 * 7)  # E's last block (width 4 doubled, 7 x 7), not z (6)
    for name, (q, ref) in spaces.items():
        d = torch.cdist(q.double(), ref.double()).sort(1).values.float()
        torch.testing.assert_close(got[name], d[:, 0])
        torch.testing.assert_close(got[f"{name}5"], d[:, 4])
    assert torch.all(LatentKNN(E, train)(train[:3])["latent_knn"] < 1e-4)  # its own latent (float rounding)


@pytest.mark.parametrize("key", ["latent_knn", "encoder_knn"])
def test_knn_in_the_encoders_spaces_without_an_encoder_is_refused_before_mapping(key):
    cfg = OmegaConf.create({key: True, "knn": 1, "pca_components": 2})
    data = type("DM", (), {"train_set": [{"image": torch.zeros(1, 28, 28)}] * 4})()
    with pytest.raises(InputError, match=f"baselines.{key}=true needs f-AnoGAN's encoder.*encoder=izif"):
        baseline_scorers(cfg, data, Discriminator(image_size=28, channels=1, width=4))


@pytest.mark.parametrize("overrides, message", [
    (["baselines=pixel", "baselines.latent_knn=true"], "needs f-AnoGAN's encoder E"),
    (["baselines=pixel", "baselines.encoder_knn=true"], "baselines.encoder_knn=true needs f-AnoGAN's encoder E"),
    (["baselines=pixel", "baselines.knn=0"], r"baselines.knn=0 must be an integer .* >= 1"),
    (["baselines=pixel", "baselines.knn=2.5"], r"baselines.knn=2.5 must be an integer"),
    (["baselines=pixel", "baselines.knn='10'"], r"baselines.knn='10' must be an integer"),
    (["baselines=pixel", "baselines.pca_components=0"], r"baselines.pca_components=0 must be a positive"),
    (["+baselines.latent_knn=true", "encoder=izif"], r"without the baselines group: add baselines=pixel"),
])
def test_bad_baselines_settings_are_refused_before_training(tmp_path, overrides, message):
    import re

    proc = run_script(["train.py", *TINY, *overrides, f"hydra.run.dir={tmp_path / 'run'}"], cwd=ROOT, check=False)
    assert proc.returncode != 0 and re.search(message, proc.stderr + proc.stdout), proc.stderr[-2000:]
    assert not (tmp_path / "run" / "checkpoints").exists()  # refused before any training


def test_benchmark_rows_aggregate_seeds_and_the_class_mean(tmp_path):
    sweep = tmp_path / "sweep"
    aurocs = {("[0]", 0): 0.8, ("[0]", 1): 0.9, ("[3]", 0): 0.6, ("[3]", 1): 0.7, ("[3]", 2): 0.65}
    for num, ((c, s), a) in enumerate(aurocs.items()):
        _fake_job(sweep, num, ["experiment=x", f"data.normal_classes={c}", f"seed={s}"],
                  {"lam": 0.1, "steps": 2, "scores": {"anomaly": {"auroc": a}, "pixel_knn": {"auroc": 1 - a}}})
    _fake_job(sweep, 9, ["experiment=x", "data.normal_classes=[0]", "seed=2"], None, status="FAILED")
    write_summary(sweep)
    rows = {(r["normal_classes"], r["score"]): r for r in benchmark_rows(
        [dict(r) for r in csv.DictReader(open(sweep / "summary.csv"))])}
    assert rows[("[0]", "anomaly")]["n"] == 2 and rows[("[0]", "anomaly")]["mean"] == pytest.approx(0.85)
    assert rows[("[0]", "anomaly")]["std"] == pytest.approx(np.std([0.8, 0.9], ddof=1))
    assert rows[("[3]", "anomaly")]["n"] == 3 and rows[("[3]", "anomaly")]["mean"] == pytest.approx(0.65)
    # the class mean: seeds 0 and 1 completed both classes (seed 2 only class 3, its class-0 job failed)
    mean = rows[("mean", "anomaly")]
    assert mean["n"] == 2 and mean["mean"] == pytest.approx(np.mean([0.7, 0.8]))
    assert mean["std"] == pytest.approx(np.std([0.7, 0.8], ddof=1))
    assert rows[("mean", "pixel_knn")]["mean"] == pytest.approx(1 - np.mean([0.7, 0.8]))
    md = (sweep / "benchmark.md").read_text()
    assert "| [0] | 0.850 ± 0.071 | 0.150 ± 0.071 |" in md and "1 failed" in md
    with open(sweep / "benchmark.csv") as f:
        assert sum(1 for _ in csv.DictReader(f)) == 6


@pytest.mark.slow
def test_benchmark_multirun_two_classes_two_seeds(tmp_path):
    """``python train.py -m experiment=fashion_mnist_benchmark`` on a tiny IDX set: 2 classes x 2 seeds
    as four jobs, the aggregated table, and the baselines reproduced by evaluate.py."""
    _idx_set(tmp_path / "idx")
    sweep = tmp_path / "sweep"
    tiny = [o for o in TINY if not o.startswith("data.eval_train_samples")]
    proc = run_script(["train.py", "-m", "experiment=fashion_mnist_benchmark", "data.normal_classes=[0],[3]",
                       "seed=0,1", *tiny, "trainer.max_epochs=1", "encoder.max_epochs=1",
                       f"data.root={tmp_path / 'idx'}", "data.download=false", "baselines.pca_components=5",
                       f"hydra.sweep.dir={sweep}"], cwd=ROOT)
    tail = proc.stdout.strip().splitlines()[-5:]  # the closing lines name the sweep dir and its tables
    assert tail[0] == f"Sweep directory: {sweep}" and any("benchmark.md" in line for line in tail), tail
    assert not (sweep / "auroc_heatmap.png").exists()  # one (lam, steps): no lam x steps figure
    with open(sweep / "summary.csv") as f:
        jobs = list(csv.DictReader(f))
    assert len(jobs) == 4 and all(j["status"] == "COMPLETED" for j in jobs)
    assert {(j["data.normal_classes"], j["seed"]) for j in jobs} == {("[0]", "0"), ("[0]", "1"), ("[3]", "0"),
                                                                     ("[3]", "1")}
    with open(sweep / "benchmark.csv") as f:
        table = {(r["normal_classes"], r["score"]): r for r in csv.DictReader(f)}
    scores = {s for _, s in table}
    assert {"anomaly", "fanogan", "pixel_pca", "pixel_knn", "pixel_knn10", "feature_knn", "latent_knn",
            "latent_knn10", "encoder_knn", "encoder_knn10"} <= scores
    for s in scores:
        per_class = [float(table[(c, s)]["mean"]) for c in ("[0]", "[3]")]
        assert int(table[("mean", s)]["n"]) == 2
        assert float(table[("mean", s)]["mean"]) == pytest.approx(np.mean(per_class), abs=1e-6)
    assert float(table[("mean", "pixel_knn")]["mean"]) > 0.95  # the pixel baselines see the bands
    # every job scored all 120 test images, the baselines on the same ones
    metrics = json.loads((sweep / "0" / "metrics.json").read_text())
    assert metrics["n_normal"] + metrics["n_anomalous"] == 120
    # the "Evaluate again" command job 1 (seed 1) printed carries the preset's evaluation settings:
    # run as printed, evaluate.py reproduces every AUROC of the job, the mapping's and the baselines'
    printed = {a[0].split("=", 1)[1]: a for a in printed_evaluate_commands(proc.stdout)}
    again_cmd = printed[str(sweep / "1" / "checkpoints" / "last.ckpt")]
    assert {"baselines=pixel", "baselines.latent_knn=true", "baselines.encoder_knn=true", "baselines.knn=[1,10]",
            "inversion.seed=1",
            "inversion.reference=false"} <= set(again_cmd), again_cmd
    out = tmp_path / "again"
    run_script(["evaluate.py", *again_cmd, "trainer.enable_progress_bar=false", f"hydra.run.dir={out}"], cwd=ROOT)
    again = json.loads((out / "metrics.json").read_text())["scores"]
    job = json.loads((sweep / "1" / "metrics.json").read_text())["scores"]
    assert set(again) == set(job)
    for s in job:
        assert again[s]["auroc"] == pytest.approx(job[s]["auroc"], abs=1e-6), s


@pytest.mark.slow
def test_the_fanogan_release_preset_scores_in_one_pass_and_flags_its_g(tmp_path):
    """``experiment=fashion_mnist_benchmark_fanogan`` (one job, tiny budget): the released family (ResNet G
    and critic, WGAN-GP with 5 critic steps, the TF1 RMSProp encoder), no mapping (steps 0 from E(x)), the
    one-pass and baseline scores on every test image, and the sample-quality figure its summary row reads."""
    _idx_set(tmp_path / "idx")
    out = tmp_path / "run"
    run_script(["train.py", "experiment=fashion_mnist_benchmark_fanogan", "data.normal_classes=[3]", "seed=0",
                "trainer.max_epochs=1", "encoder.max_epochs=1", "model.generator.width=4",
                "model.discriminator.width=4", f"data.root={tmp_path / 'idx'}", "data.download=false",
                "baselines.pca_components=5", "data.eval_val_samples=0", f"hydra.run.dir={out}"], cwd=ROOT)
    cfg = OmegaConf.load(out / ".hydra" / "config.yaml")
    assert cfg.model.critic_iterations == 5 and cfg.model.generator._target_.endswith("ResNetGenerator")
    assert cfg.encoder.module.optimizer._target_.endswith("TF1RMSprop")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 0 and metrics["n_normal"] + metrics["n_anomalous"] == 120
    assert {"fanogan", "fanogan_latent", "feature_knn", "latent_knn10", "encoder_knn10",
            "pixel_knn"} <= set(metrics["scores"])
    from anogan.engine.sweep import job_row

    (out / "job_status.json").write_text(json.dumps({"status": "COMPLETED"}))
    row = job_row(out)
    quality = json.loads((out / "sample_quality.json").read_text())
    assert row["sample_nn_ratio"] == quality["ratio"] and row["g_learned"] == (quality["ratio"] <= 1.5)


def printed_evaluate_commands(stdout: str) -> list[list[str]]:
    """The arguments after ``python evaluate.py`` of every "Evaluate again" command in ``stdout``
    (the closing lines of train.py / evaluate.py; continued lines end with a backslash)."""
    import shlex

    lines, found = stdout.splitlines(), []
    for i, line in enumerate(lines):
        if line.startswith("Evaluate again"):
            words = []
            for cont in lines[i + 1:]:
                words.append(cont.removesuffix("\\").strip())
                if not cont.endswith("\\"):
                    break
            args = shlex.split(" ".join(words))
            assert args[:2] == ["python", "evaluate.py"], args
            found.append(args[2:])
    return found
