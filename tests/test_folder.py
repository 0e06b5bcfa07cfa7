"""data=folder and data=mvtec on generated trees (no download): counts, labels, masks, channels, files
read once, a tiny run's AUROCs against scores.h5, a sweep over categories, and bad trees refused."""

import csv
import json
import re

import numpy as np
import pytest
import torch
from conftest import ROOT, TINY, assert_aurocs_match_scores, compose_cfg, run_script
from PIL import Image
from trees import image, make_folders, make_mvtec, save, save_mask

from anogan.data import SPLITS
from anogan.metrics.localization import window_max
from anogan.data.folder import FolderDataModule, MVTecDataModule
from anogan.data.scans import ScanError, resolve_recipe
from anogan.data.transforms import mask_to_size
from anogan.errors import InputError


def items(dataset):
    return [dataset[i] for i in range(len(dataset))]


def test_mvtec_layout_keeps_the_official_split_every_defect_anomalous_and_colour(tmp_path):
    make_mvtec(tmp_path, size=(40, 40), colour=True, n_train=24, n_good=6, defects={"scratch": 4, "hole": 3})
    dm = MVTecDataModule(root=str(tmp_path), category="widget", image_size=32, channels=3, val_fraction=0.25)
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (18, 6, 13)  # val: 25 % of train/good
    test = items(dm.test_set)
    assert [int(it["label"]) for it in test] == [0] * 6 + [1] * 7  # test/good, then hole/, scratch/
    assert all(it["image"].shape == (3, 32, 32) and it["mask"].shape == (32, 32) for it in test)
    assert all(not it["mask"].any() for it in test[:6]) and all(it["mask"].any() for it in test[6:])
    # the red defect: colour kept (R differs from G inside the mask), as the generated mask says
    it = test[6]
    first = sorted((tmp_path / "widget" / "ground_truth" / "hole").iterdir())[0]
    assert torch.equal(it["mask"], mask_to_size(np.array(Image.open(first)) > 0, 32))  # its own mask file
    assert (it["image"][0] - it["image"][1])[it["mask"]].mean() > 1.0
    indices = [int(it["index"]) for d in (dm.train_set, dm.val_set, dm.test_set) for it in items(d)]
    assert sorted(indices) == list(range(37))  # every image once, one index each
    assert all(int(it["split"]) == SPLITS["val"] and int(it["label"]) == 0 for it in items(dm.val_set))


def test_grey_16_bit_folders_of_a_size_not_a_training_size_resized_or_cut_into_patches(tmp_path, caplog):
    dirs = {k: str(v) for k, v in make_folders(tmp_path, size=(37, 45), bits=16, mask_suffix="_mask").items()}
    dm = FolderDataModule(**dirs, mask_suffix="_mask", image_size=32, channels=1, val_fraction=0.1,
                          test_fraction=0.2)
    with caplog.at_level("WARNING"):
        dm.setup()
    assert "the 45x37 images are stretched to 32x32 (data.image_size)" in caplog.text  # said, not silent
    assert "data.patch_size=<pixels>" in caplog.text
    caplog.clear()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (14, 2, 4 + 5)
    test = items(dm.test_set)
    assert sum(int(it["label"]) for it in test) == 5 and all(it["image"].shape == (1, 32, 32) for it in test)
    raw = np.array(Image.open(sorted((tmp_path / "normal").iterdir())[0]))
    assert raw.dtype == np.uint16 and raw.max() > 255  # 16 bit kept: its range reaches the model's [-1, 1]
    assert all(float(it["image"].max()) <= 1 and float(it["image"].min()) >= -1 for it in test)
    assert "patch_size" not in dm.recipe  # non-square images: data=scans cannot cut them the same way
    # and so data=scans refuses such a checkpoint, naming the fix, instead of scoring square crops
    assert dm.recipe["whole_image"] == [37, 45]
    with pytest.raises(ScanError, match=r"whole 37x45 images resized to 32x32.*evaluate.py data=folder.*"
                                        r"data.patch_size=<pixels>"):
        resolve_recipe(dm.recipe, {}, 32)
    # patches as prepare cuts them: a 37x45 image with 16-pixel patches, stride 8 -> 4 x 5 positions
    cut = FolderDataModule(**dirs, mask_suffix="_mask", image_size=32, channels=1, patch_size=16,
                           min_anomalous_pixels=5)
    with caplog.at_level("WARNING"):
        cut.setup()
    assert "stretched" not in caplog.text  # square patches keep the aspect ratio
    assert len(cut.train_set) + len(cut.val_set) + len(cut.test_set) == 25 * 20
    patches = items(cut.test_set)
    anomalous = [it for it in patches if int(it["label"]) == 1]
    assert anomalous and all(int(it["mask"].sum()) >= 5 * 4 for it in anomalous)  # 5 pixels, resized 16 -> 32
    assert all(int(it["mask"].sum()) < 5 * 4 for it in patches if int(it["label"]) == 0)
    assert cut.recipe["patch_size"] == 16 and cut.recipe["stride"] == 8


def test_masks_without_a_suffix_and_rgb_images_read_as_grey_with_one_channel(tmp_path):
    dirs = {k: str(v) for k, v in make_folders(tmp_path, size=(30, 30), colour=True, mask_suffix="").items()}
    dm = FolderDataModule(**dirs, image_size=32, channels=1)
    dm.setup()
    test = items(dm.test_set)
    assert all(it["image"].shape == (1, 32, 32) for it in test)
    assert [bool(it["mask"].any()) for it in test] == [bool(it["label"]) for it in test]
    colour = FolderDataModule(**dirs, image_size=32, channels=3)
    colour.setup()
    x = colour.test_set[0]["image"]
    assert x.shape == (3, 32, 32) and not torch.equal(x[0], x[2])  # colour, not grey repeated


def test_every_file_is_read_once_however_many_epochs(tmp_path, monkeypatch):
    import anogan.data.folder as folder

    dirs = {k: str(v) for k, v in make_folders(tmp_path, size=(20, 20), mask_suffix="").items()}
    reads = []
    real = folder.read_pages
    monkeypatch.setattr(folder, "read_pages", lambda path, **kw: reads.append(path) or real(path, **kw))
    dm = FolderDataModule(**dirs, image_size=32, channels=1, batch_size=4)
    dm.setup()
    assert reads == []  # setup reads headers only
    for _ in range(3):
        for _ in dm.train_dataloader():
            pass
    for _ in dm.test_dataloader():
        pass
    assert len(reads) == len(set(reads)) and len(reads) > 0


def _no_images(root):
    (root / "normal").mkdir()
    (root / "normal" / "notes.txt").write_text("x")
    return {}, r"normal: no PNG, JPEG or TIFF image in it or its sub-folders"


def _orphan_mask(root):
    save_mask(root / "masks" / "zz.png", np.zeros((24, 24), bool))
    return {}, r"masks/zz\.png: a mask without an image .* remove the mask"


def _missing_mask(root):
    (root / "masks" / "a01.png").unlink()
    return {}, r"abnormal/a01\.png: anomalous image without a mask .* add .*masks/a01\.png"


def _mixed_sizes(root):
    save(root / "normal" / "n99.png", image(np.random.default_rng(0), (30, 24), False)[0])
    return {}, r"n99\.png is 24x30 but .*n00\.png is 24x24: .* data\.patch_size=<pixels>"


def _unreadable(root):
    (root / "abnormal" / "a02.png").write_bytes(b"not a png")
    return {}, r"abnormal/a02\.png: cannot read the image .* replace or remove the file"


def _too_small(root):
    return {"patch_size": 32}, r"24x24 image is smaller than data.patch_size=32; use data.patch_size=24"


def _shared_mask(root):
    save(root / "normal_test" / "a00.png", image(np.random.default_rng(0), (24, 24), False)[0])
    return {"normal_test_dir": str(root / "normal_test")}, r"masks/a00\.png: the mask of two images"


BAD_TREES = [_no_images, _orphan_mask, _missing_mask, _mixed_sizes, _unreadable, _too_small, _shared_mask]


@pytest.mark.parametrize("make_bad", BAD_TREES)
def test_bad_trees_are_refused_with_one_line_naming_the_path_and_the_fix(tmp_path, make_bad):
    if make_bad is not _no_images:
        make_folders(tmp_path, size=(24, 24), n_normal=6, n_abnormal=3)
    extra, message = make_bad(tmp_path)
    dirs = {"normal_dir": tmp_path / "normal", "abnormal_dir": tmp_path / "abnormal", "mask_dir": tmp_path / "masks"}
    with pytest.raises(InputError) as err:
        FolderDataModule(**{k: str(v) for k, v in dirs.items()}, image_size=32, channels=1, **extra).setup()
    assert re.search(message, str(err.value)) and "\n" not in str(err.value), str(err.value)


@pytest.mark.parametrize("setting, message", [
    ({"stride": 0}, r"^data\.stride=0: expected >= 1$"),
    ({"normalise": "global"}, r"^data\.normalise=global: expected none .* or image"),
    ({"test_fraction": 1.0}, r"^data\.test_fraction=1.0 must lie in \(0, 1\)$"),
])
def test_bad_folder_settings_are_named_by_their_config_key(tmp_path, setting, message):
    with pytest.raises(InputError, match=message):
        FolderDataModule(normal_dir=str(tmp_path), abnormal_dir=str(tmp_path), **setting)


def test_evaluate_on_val_refuses_a_validation_split_of_normal_images_only(tmp_path):
    """Folders hold out normal images only for validation: no AUROC is defined there, said where the
    setting enters, with the settings that work."""
    dm = FolderDataModule(**make_folders(tmp_path), image_size=32, evaluate_on="val")
    with pytest.raises(InputError, match=r"data.evaluate_on=val: the validation split of FolderDataModule holds "
                                         r"\d+ image\(s\) with labels \[0\].*use data.evaluate_on=test"):
        dm.setup()


def test_a_mvtec_category_that_is_not_there_names_the_ones_that_are(tmp_path):
    make_mvtec(tmp_path, n_train=2, n_good=1, defects={"cut": 1})
    with pytest.raises(InputError, match=r"data.category=nope: no folder .*; the categories there are widget"):
        MVTecDataModule(root=str(tmp_path), category="nope").setup()


def test_a_tiny_mvtec_run_scores_colour_images_and_its_pixel_auroc_matches_scores_h5(tmp_path):
    from sklearn.metrics import roc_auc_score

    from anogan.callbacks import read_scores
    from anogan.data.scans import ScansDataModule
    from anogan.engine.pipeline import evaluate, train

    make_mvtec(tmp_path / "mvtec", size=(40, 40), colour=True, n_train=24, n_good=4, defects={"cut": 3, "dot": 2})
    out = tmp_path / "run"
    cfg = compose_cfg("train", [*TINY, "data=mvtec", f"data.root={tmp_path / 'mvtec'}", "data.category=widget",
                                "data.image_size=32", "data.eval_train_samples=4", "logger=none"], out)
    train(cfg)
    metrics = assert_aurocs_match_scores(out)
    assert (metrics["n_normal"], metrics["n_anomalous"]) == (4, 5)
    rows = read_scores(out / "scores.h5")
    assert rows["generated"].shape[1:] == (3, 32, 32)  # colour images in, colour images out
    dm = MVTecDataModule(root=str(tmp_path / "mvtec"), category="widget", image_size=32, channels=3)
    dm.setup()
    masks = {int(it["index"]): it["mask"].numpy() for it in items(dm.test_set)}
    test = rows["split"] == SPLITS["test"]
    y = np.concatenate([masks[int(i)].ravel() for i in rows["index"][test]])
    want = roc_auc_score(y, rows["residual_map"][test].reshape(-1).astype(np.float64))
    assert metrics["pixel_auroc"] == pytest.approx(want, abs=1e-6)
    recipe = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["anogan_data"]
    assert recipe["patch_size"] == 40 and recipe["normalisation"] == "none"
    # data=scans reads new colour images exactly as training and evaluation did, and scores them
    scans = ScansDataModule(path=str(tmp_path / "mvtec" / "widget" / "test" / "cut"), training=recipe,
                            image_size=32, channels=3)
    scans.setup()
    assert len(scans.test_set) == 3
    assert torch.equal(scans.test_set[0]["image"], dm.test_set[4]["image"])  # test/good x4, then cut/000.png
    evaluate(compose_cfg("evaluate", [f"ckpt_path={out / 'checkpoints' / 'last.ckpt'}", "data=scans",
                                      f"data.path={tmp_path / 'mvtec' / 'widget' / 'test' / 'cut'}",
                                      "inversion.steps=2", "logger=none"], tmp_path / "scans"))
    assert len(list((tmp_path / "scans" / "maps").glob("*.npy"))) == 3
    # whole images, one patch each: the scan score takes the one vote there is (the patch's own map)
    for r in csv.DictReader(open(tmp_path / "scans" / "predictions.csv")):
        amap = np.load(tmp_path / "scans" / "maps" / f"{r['image']}.npy")
        assert float(r["scan_score"]) == pytest.approx(window_max(amap, 7), rel=1e-5)


def test_a_sweep_over_categories_writes_the_benchmark_table_and_a_missing_one_fails_in_one_line(tmp_path):
    root = tmp_path / "mvtec"
    for k, category in enumerate(("bottle", "cable")):
        make_mvtec(root, category=category, size=(24, 24), colour=True, n_train=12, n_good=3,
                   defects={"cut": 3}, seed=k)
    sweep = tmp_path / "sweep"
    proc = run_script(["train.py", "-m", *TINY, "trainer.max_epochs=1", "data=mvtec", f"data.root={root}",
                       "data.category=bottle,cable,nope", "data.image_size=32", "data.eval_train_samples=0",
                       "logger=none", f"hydra.sweep.dir={sweep}"], cwd=ROOT, check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: data.root=") and "data.category=nope" in \
        proc.stderr.strip().splitlines()[-1]
    with open(sweep / "summary.csv") as f:
        status = {r["data.category"]: r["status"] for r in csv.DictReader(f)}
    assert status == {"bottle": "COMPLETED", "cable": "COMPLETED", "nope": "FAILED"}
    assert "categories there are bottle, cable" in json.loads((sweep / "2" / "job_status.json").read_text())["error"]
    with open(sweep / "benchmark.csv") as f:
        table = {(r["category"], r["score"]): r for r in csv.DictReader(f)}
    for category in ("bottle", "cable", "mean"):
        assert float(table[(category, "anomaly")]["mean"]) >= 0 and (category, "pixel_auroc") in table
    pixel = [json.loads((sweep / str(j) / "metrics.json").read_text())["pixel_auroc"] for j in (0, 1)]
    assert float(table[("mean", "pixel_auroc")]["mean"]) == pytest.approx(np.mean(pixel), abs=1e-6)
    md = (sweep / "benchmark.md").read_text()
    assert "| category |" in md and "pixel_auroc" in md and "1 failed" in md
