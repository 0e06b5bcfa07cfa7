"""python -m anogan.export and python -m anogan.score_onnx (anogan/engine/export.py, anogan/engine/onnx_detector.py):
the exported file computes the evaluation's numbers (onnxruntime against PyTorch and against scores.h5, DCGAN and
ResNet, grey and colour, batch 1 and 37), carries the run's thresholds and normal scores, scores a folder without
torch as evaluate.py data=scans does, and refuses what it cannot score in one line."""

from __future__ import annotations

import csv
import json
import re
import shutil
from functools import partial
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from conftest import ROOT, TINY, compose_cfg, run_script
from hydra.core.global_hydra import GlobalHydra
from PIL import Image
from trees import image

from anogan.engine.export import OnePassScorer, export_run, export_scorers, run_metadata
from anogan.engine.onnx_detector import MAP, OnnxDetector
from anogan.errors import InputError

# relative tolerance of "equal numbers"; map pixels near 0 also get an absolute 1e-6 (|x - G(E(x))| of two
# float32 images differs by ~1e-7 between two correct summation orders there; the maps lie in [0, 2C])
RTOL, MAP_ATOL = 1e-4, 1e-6
SCORES = ["fanogan", "fanogan_latent", "acae_residual", "acae_discrimination", "acae_anomaly"]
EXPORT_RUN = [*TINY, "encoder=izif", "encoder.max_steps=10", "acae=dcgan", "acae.max_epochs=1", "logger=none",
              "data.val_fraction=0.2",  # 28 normal validation images: >= 19 for a conformal threshold at 0.05
              "inversion.init=encoder", "inversion.steps=0"]


def assert_equal_numbers(got: dict, want: dict) -> None:
    for name, w in want.items():
        np.testing.assert_allclose(got[name], w, rtol=RTOL, atol=MAP_ATOL if name == MAP else 0, err_msg=name)


def eager(scorers, images: torch.Tensor) -> dict[str, np.ndarray]:
    """PyTorch's numbers: the scorers' own ``scores_and_map`` (what the evaluation runs), in eval mode."""
    module = OnePassScorer(scorers)
    with torch.no_grad():
        return dict(zip([*module.names(images), MAP], (t.numpy() for t in module(images))))


def one_at_a_time(detector: OnnxDetector, images: np.ndarray) -> dict[str, np.ndarray]:
    parts = [detector(images[i : i + 1]) for i in range(len(images))]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def one_line_error(proc) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


# -- both families, grey and colour: nets built here, E after a few izi_f steps ----------------------
def trained_scorers(family: str, channels: int, acae: bool):
    """(scorers, 37 test images): G and D with BatchNorm statistics as after training, f-AnoGAN's E after
    10 Adam steps of its izi_f loss (``EncoderTraining.loss``) on 64 textured images, the aCAE as built;
    images (37, C, 32, 32) in [-1, 1] of the same kind."""
    from anogan.data.transforms import to_model_range
    from anogan.models.acae import ACAEScores
    from anogan.models.encoder import EncoderTraining, FAnoGAN
    from anogan.nets import AdversarialAutoencoder, build

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    pixels = np.stack([image(rng, (32, 32), channels == 3)[0] for _ in range(64 + 37)])
    x = to_model_range(np.moveaxis(pixels, -1, 1) if channels == 3 else pixels, 32)
    G = build(family, "generator", image_size=32, channels=channels, z_dim=16, width=8)
    D = build(family, "discriminator", image_size=32, channels=channels, width=8)
    for m in [*G.modules(), *D.modules()]:
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    training = EncoderTraining(G, D, optimizer=partial(torch.optim.Adam, lr=1e-3),
                               prior="normal" if family == "resnet" else "uniform")
    opt = training.configure_optimizers()
    for _ in range(10):
        loss = training.loss(x[:64]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    scorers = [FAnoGAN(training.encoder, G, D)]
    if acae:
        scorers.append(ACAEScores(AdversarialAutoencoder(32, channels, 16, 8), lam=0.1))
    return scorers, x[64:]


@pytest.mark.slow
@pytest.mark.parametrize("family,channels", [("dcgan", 3), ("resnet", 1), ("resnet", 3)])
def test_onnxruntime_equals_pytorch_for_both_families_grey_and_colour_at_batch_1_and_37(tmp_path, family, channels):
    """(DCGAN grey goes through train.py below.) Every score and the map, batch 37 and image by image."""
    scorers, test = trained_scorers(family, channels, acae=family == "dcgan")
    reading = {"normalisation": {"normalisation": "none"}}  # as run_metadata records a training recipe
    path, check = export_scorers(scorers, 32, channels, tmp_path / "detector.onnx", reading)
    detector = OnnxDetector(path)
    want = eager(scorers, test)
    assert detector.scores == [k for k in want if k != MAP] and (len(want) == 6) == (family == "dcgan")
    assert_equal_numbers(detector(test.numpy(), batch_size=37), want)
    assert_equal_numbers(one_at_a_time(detector, test.numpy()), want)
    assert check < RTOL and want[MAP].shape == (37, 32, 32) and want["fanogan"].std() > 0
    # without a run's evaluation: no threshold, no p-value (NaN), not 0
    out = detector(test.numpy()[:2])
    assert all(v is None for v in detector.flags(out).values())
    assert all(np.isnan(v).all() for v in detector.p_values(out).values())
    # another size or channel count: one line naming the shape the file takes
    other = 1 if channels == 3 else 3
    for bad in (np.zeros((2, other, 32, 32), np.float32), np.zeros((2, channels, 28, 28), np.float32)):
        with pytest.raises(InputError, match=rf"but detector.onnx scores batches \(B, {channels}, 32, 32\)") as e:
            detector(bad)
        assert "\n" not in str(e.value)
    if channels == 3:  # a grey image file for a colour GAN
        grey = tmp_path / "grey.png"
        Image.fromarray(np.zeros((32, 32), np.uint8)).save(grey)
        with pytest.raises(InputError, match=r"grey.png: 32x32 pixels with 1 channel\(s\), but detector.onnx scores "
                                             r"32x32 images with 3 channel\(s\)"):
            detector.read_image(grey)


# -- a train.py run: GAN, encoder, aCAE; evaluated in one pass (init=encoder, steps=0); exported -----
@pytest.fixture(scope="module")
def exported_run(tmp_path_factory) -> tuple[Path, str]:
    """(run directory, stdout of python -m anogan.export) of a tiny train.py run with encoder=izif acae=dcgan."""
    from anogan.engine.pipeline import train

    out = tmp_path_factory.mktemp("exported_run")
    train(compose_cfg("train", EXPORT_RUN, out))
    GlobalHydra.instance().clear()
    proc = run_script(["-m", "anogan.export", f"ckpt_path={out / 'checkpoints' / 'last.ckpt'}"], cwd=ROOT)
    return out, proc.stdout


def _scores_h5(run: Path) -> dict:
    from anogan.callbacks import read_scores

    return read_scores(run / "scores.h5")


@pytest.mark.slow
def test_the_export_command_writes_one_file_with_the_runs_thresholds_normal_scores_and_reading(exported_run):
    from anogan.data import SPLITS
    from anogan.data.scans import training_recipe
    from anogan.models.inversion import load_gan
    from anogan.runtime.checkpoints import gan_identity, read_checkpoint

    run, stdout = exported_run
    files = sorted(p.name for p in run.glob("*.onnx"))
    assert files == ["detector.onnx"]
    detector = OnnxDetector(run / "detector.onnx")
    meta = detector.meta
    metrics = json.loads((run / "metrics.json").read_text())
    rows = _scores_h5(run)
    assert detector.scores == SCORES and (detector.image_size, detector.channels) == (32, 1)
    for name in SCORES:
        assert meta["thresholds"][name] == metrics["scores"][name]["calibrated"]
        threshold = metrics["scores"][name]["calibrated"]["threshold"]
        assert threshold is not None and detector.thresholds[name] == threshold
        normal = (rows["split"] == SPLITS["val"]) & (rows["label"] == 0)
        np.testing.assert_array_equal(detector.normal_scores[name], rows[f"scores/{name}"][normal].astype(np.float64))
    assert meta["normal_scores"]["n"] == int(normal.sum()) > 0
    # this evaluation mapped in one pass (init=encoder, steps=0): its pixel and region thresholds are of this map
    for key in ("pixel_calibration", "region_calibration"):
        assert meta[key]["threshold"] == metrics[key]["threshold"] and meta[key]["applies_to_residual_map"] is True
    ckpt = read_checkpoint(run / "checkpoints" / "last.ckpt")
    G, D, _, _ = load_gan(ckpt)
    assert meta["gan_identity"] == gan_identity(G, D)
    recipe = training_recipe(ckpt)
    assert {k: meta["normalisation"][k] for k in recipe} == recipe and detector.normalisation.normalise == "none"
    assert meta["anogan_version"] == __import__("anogan").__version__ and "mapping" in meta["not_exported"]
    assert meta["residual_map"]["of"].startswith("f-AnoGAN: |x - G(E(x))|")
    assert f"wrote {run / 'detector.onnx'}" in stdout and "python -m anogan.score_onnx" in stdout
    assert re.search(r"fanogan: threshold [\d.e-]+ \(target FPR 0.05", stdout), stdout


def _run_images(run: Path):
    """(images (N, 1, 32, 32), split (N,), index (N,)) of every image the run's evaluation scored."""
    from hydra.utils import instantiate

    from anogan.runtime.checkpoints import read_checkpoint

    data = read_checkpoint(run / "checkpoints" / "last.ckpt")["anogan_config"]["data"]
    dm = instantiate(data)
    dm.setup("test")
    batches = list(dm.test_dataloader())
    return (torch.cat([b["image"] for b in batches]), torch.cat([b["split"] for b in batches]).numpy(),
            torch.cat([b["index"] for b in batches]).numpy())


@pytest.mark.slow
def test_exported_scores_and_maps_equal_pytorch_and_the_evaluations_scores_h5(exported_run):
    """Every image of the evaluation (test, and the train and val samples): onnxruntime at batch 37 and 1
    against the PyTorch scorers, and against the rows of scores.h5 that the evaluation wrote."""
    from anogan.engine.export import run_scorers

    run, _ = exported_run
    images, split, index = _run_images(run)
    detector = OnnxDetector(run / "detector.onnx")
    lam = json.loads((run / "metrics.json").read_text())["lam"]
    scorers, _, _ = run_scorers(run / "checkpoints" / "last.ckpt", lam=lam)
    want = eager(scorers, images)
    got = detector(images.numpy(), batch_size=37)
    assert_equal_numbers(got, want)
    assert_equal_numbers(one_at_a_time(detector, images.numpy()), want)
    rows = _scores_h5(run)
    order = {(s, i): r for r, (s, i) in enumerate(zip(rows["split"].tolist(), rows["index"].tolist()))}
    at = np.array([order[(s, i)] for s, i in zip(split.tolist(), index.tolist())])
    assert len(at) == len(rows["index"]) > 37
    evaluation = {name: rows[f"scores/{name}"][at] for name in SCORES} | {MAP: rows["residual_map"][at]}
    assert_equal_numbers(got, evaluation)


def _write_scans(folder: Path, images: torch.Tensor) -> None:
    """The images as 8-bit files: PNGs, one TIFF and a two-page TIFF (two scans, as data=scans reads it)."""
    pixels = np.rint((images[:, 0].numpy() + 1) / 2 * 255).astype(np.uint8)
    for i in range(len(pixels) - 3):
        Image.fromarray(pixels[i]).save(folder / ("sub" if i % 2 else ".") / f"s{i:02d}.png")
    Image.fromarray(pixels[-3]).save(folder / "single.tif")
    first, second = Image.fromarray(pixels[-2]), Image.fromarray(pixels[-1])
    first.save(folder / "volume.tif", save_all=True, append_images=[second])


@pytest.mark.slow
def test_score_onnx_without_torch_equals_evaluate_data_scans_on_the_same_images(exported_run, tmp_path):
    """The folder scored by python -m anogan.score_onnx (torch never imported) and by python evaluate.py
    data=scans (patch = image = 32 px, one patch per image; one-pass maps: init=encoder, steps=0): every
    one-pass score equals the scans evaluation's scores.h5 row of the image, fanogan also its predictions.csv
    image_score and flag, the maps its maps/*.npy; p-values against the run's normal validation scores."""
    from anogan.data import SPLITS
    from anogan.data.scans import list_scans
    from anogan.engine.pipeline import evaluate

    run, _ = exported_run
    images, split, _ = _run_images(run)
    scans = tmp_path / "scans"
    (scans / "sub").mkdir(parents=True)
    _write_scans(scans, images[split == SPLITS["test"]][:12])
    out = tmp_path / "onnx_out"
    argv = [str(run / "detector.onnx"), str(scans), str(out)]
    code = (f"import sys; from anogan.score_onnx import main; rc = main({argv!r}); "
            "heavy = {'torch', 'lightning', 'hydra', 'h5py', 'scipy', 'sklearn'} & "
            "{m.split('.')[0] for m in sys.modules}; assert not heavy, heavy; sys.exit(rc)")
    proc = run_script(["-c", code], cwd=ROOT)
    assert "scored 12 image(s)" in proc.stdout and "p-values against" in proc.stdout
    ours = list(csv.DictReader(open(out / "predictions.csv")))
    evaluate(compose_cfg("evaluate", [f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", "data=scans",
                                      f"data.path={scans}", "inversion.init=encoder", "inversion.steps=0",
                                      "prediction_callbacks.maps.score=fanogan", "logger=none"], tmp_path / "eval"))
    names = [s.name for s in list_scans(scans)]  # the scans' order = their rows in scores.h5 (one patch each)
    theirs = {r["image"]: r for r in csv.DictReader(open(tmp_path / "eval" / "predictions.csv"))}
    rows = _scores_h5(tmp_path / "eval")
    assert len(ours) == len(names) == len(theirs) == len(rows["index"]) == 12
    assert sorted((r["file"], r["page"]) for r in ours if r["file"] == "volume.tif") == [("volume.tif", "0"),
                                                                                          ("volume.tif", "1")]
    detector = OnnxDetector(run / "detector.onnx")
    by_name = {Path(r["map"]).with_suffix("").as_posix().removeprefix("maps/"): r for r in ours}
    assert sorted(by_name) == sorted(names)
    for row_index, name in zip(rows["index"], names):
        ours_row, their_row = by_name[name], theirs[name]
        for score in SCORES:
            assert float(ours_row[score]) == pytest.approx(float(rows[f"scores/{score}"][row_index]), rel=RTOL), score
            normal = detector.normal_scores[score]
            s = np.float32(ours_row[score])
            assert float(ours_row[f"{score}_p_value"]) == pytest.approx((1 + (normal >= s).sum()) / (len(normal) + 1))
            assert ours_row[f"{score}_flagged"] == str(int(s > detector.thresholds[score]))
        assert float(ours_row["fanogan"]) == pytest.approx(float(their_row["image_score"]), rel=RTOL)
        assert ours_row["fanogan_flagged"] == their_row["any_patch_flagged"] and their_row["score"] == "fanogan"
        png = Image.open(out / ours_row["map"])
        decoded = np.asarray(png, np.float64) * 2 / 65535  # 16-bit: value / 65535 * 2C, C = 1
        assert png.mode.startswith("I;16") and json.loads(png.text["anogan"])["file"] == ours_row["file"]
        np.testing.assert_allclose(decoded, np.load(tmp_path / "eval" / "maps" / f"{name}.npy"), atol=2 / 65535)


@pytest.mark.slow
def test_score_onnx_refuses_images_of_another_size_in_one_line_and_writes_nothing(exported_run, tmp_path):
    run, _ = exported_run
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(folder / "a.png")
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(folder / "b.jpg")
    proc = run_script(["-m", "anogan.score_onnx", str(run / "detector.onnx"), str(folder), str(tmp_path / "out")],
                      cwd=ROOT, check=False)
    line = one_line_error(proc)
    assert re.search(r"b.jpg: 28x28 pixels with 1 channel\(s\), but detector.onnx scores 32x32 images with 1 "
                     r"channel\(s\).*resize or convert the images to 32x32", line), line
    assert not (tmp_path / "out").exists()
    not_onnx = tmp_path / "x.onnx"
    not_onnx.write_text("no model")
    line = one_line_error(run_script(["-m", "anogan.score_onnx", str(not_onnx), str(folder), str(tmp_path / "o")],
                                     cwd=ROOT, check=False))
    assert "is not an ONNX model onnxruntime can run" in line


@pytest.mark.slow
def test_a_run_without_encoder_or_acae_and_an_evaluation_of_other_weights_are_refused_in_one_line(
        exported_run, tmp_path, capsys):
    from anogan.export import main

    run, _ = exported_run
    bare = tmp_path / "bare" / "checkpoints"
    bare.mkdir(parents=True)
    shutil.copy(run / "checkpoints" / "last.ckpt", bare / "last.ckpt")  # the GAN alone, no stage beside it
    assert main([f"ckpt_path={bare / 'last.ckpt'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nothing scores in one pass" in err[0]
    assert f"python train.py encoder=izif ckpt_path=auto hydra.run.dir={tmp_path / 'bare'}" in err[0]
    assert not list((tmp_path / "bare").glob("*.onnx"))
    assert main([f"ckpt={run}"]) == 2 and "'ckpt=" in capsys.readouterr().err
    # an evaluation whose scores.h5 belongs to other GAN weights: its thresholds are not this detector's
    other = tmp_path / "other"
    other.mkdir()
    for name in ("metrics.json", "scores.h5"):
        shutil.copy(run / name, other / name)
    with h5py.File(other / "scores.h5", "a") as f:
        f.attrs["gan"] = "0" * 64
    with pytest.raises(InputError, match="scores.h5 was written with other GAN weights than the checkpoint's"):
        export_run(run / "checkpoints" / "last.ckpt", tmp_path / "x.onnx", evaluation=other)
    assert not (tmp_path / "x.onnx").exists()
    # no evaluation at all: thresholds and normal scores are null with the reason, never 0
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    meta = run_metadata(ckpt, run, SCORES, {}, {}, "no metrics.json and scores.h5", {"gan": "g", "scorers": []},
                        "f-AnoGAN: |x - G(E(x))|")
    assert all(meta["thresholds"][k] == {"threshold": None, "reason": "no metrics.json and scores.h5"} for k in SCORES)
    assert meta["normal_scores"] == {"reason": "no metrics.json and scores.h5"}


@pytest.mark.slow
def test_the_export_benchmark_prints_onnxruntime_over_pytorch(tmp_path):
    proc = run_script([str(ROOT / "benchmarks" / "export.py"), "--sizes", "16", "--batch", "4", "--rounds", "1"],
                      cwd=tmp_path, env={"PYTHONPATH": str(ROOT)})
    line = proc.stdout.strip().splitlines()[-1]
    values = dict(word.split("=") for word in line.split())
    assert float(values["ratio_16px"]) == pytest.approx(
        float(values["onnxruntime_16px_img_s"]) / float(values["pytorch_16px_img_s"]), rel=0.01)
    assert "16px batch 4" in proc.stdout
