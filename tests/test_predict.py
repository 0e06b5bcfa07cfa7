"""data=scans: unlabelled scans cut into patches read like the training data, mapped, stitched back into
whole-scan maps, scored, flagged; resumable; and on the phantom at least as good as the patch maps."""

import csv
import json
import re

import h5py
import lightning as L
import numpy as np
import pytest
import torch
from conftest import ROOT, compose_cfg, run_script
from PIL import Image

from anogan.callbacks import read_scores
from anogan.data import SPLITS
from anogan.data.hdf5 import inspect_hdf5
from anogan.data.patches import PatchOptions, positions, prepare_folder
from anogan.data.scans import ScanError, ScansDataModule, list_scans
from anogan.engine.pipeline import evaluate
from anogan.callbacks.maps import parse_reduce, read_patch_threshold, read_run_calibration
from anogan.data.stitch import image_score, stitch
from anogan.metrics.localization import pixel_auroc, window_max_at
from anogan.errors import InputError, MissingInputError


# -- stitching -------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape,p,stride", [((50, 77), 16, 8), ((32, 32), 32, 16), ((45, 100), 32, 13)])
def test_constant_patch_maps_stitch_to_a_constant_map_without_seams_and_borders_covered(shape, p, stride):
    pos = positions(shape, PatchOptions(patch_size=p, stride=stride), np.random.default_rng(0), "test")
    out = stitch(np.full((len(pos), p, p), 3.25, np.float32), pos, shape)
    assert out.shape == shape and out.dtype == np.float32
    assert np.isfinite(out).all()  # the grid reaches the last row and column
    np.testing.assert_array_equal(out, 3.25)


def test_stitching_averages_overlaps_and_leaves_uncovered_pixels_undefined():
    maps = np.stack([np.full((4, 4), 1.0), np.full((4, 4), 3.0)])
    out = stitch(maps, [(0, 0), (0, 2)], (6, 8))
    assert out[0, 0] == 1.0 and out[0, 2] == 2.0 and out[0, 5] == 3.0  # overlap: the mean
    assert np.isnan(out[5]).all() and np.isnan(out[:, 7]).all()  # no patch: NaN, not 0
    with pytest.raises(ValueError, match="leaves the 6x8 map"):
        stitch(maps, [(0, 0), (3, 2)], (6, 8))


def test_the_consensus_map_takes_the_smallest_covering_patch_where_enough_patches_cover_a_pixel():
    from anogan.data.stitch import Stitcher

    # three 4x4 patches: a mapping failure (9) over the first, a lesion (5) at pixel (1, 3) in all of them
    maps = np.ones((3, 4, 4))
    maps[0] = 9.0
    maps[0, 1, 3] = maps[1, 1, 1] = maps[2, 1, 0] = 5.0
    st = Stitcher((6, 8)).add(maps, [(0, 0), (0, 2), (0, 3)])
    low = st.consensus(1)
    assert low[1, 3] == 5.0 and low[0, 0] == 9.0 and low[0, 2] == 1.0  # min of 9 and 1 where both cover
    assert np.isnan(low[5]).all()  # uncovered: NaN, not 0
    three = st.consensus(3)
    assert np.isfinite(three).sum() == 4 * 1 and three[1, 3] == 5.0  # only x = 3 is under all three patches
    assert np.isnan(three[:, :3]).all() and np.isnan(three[:, 4:]).all()
    assert st.consensus(2, crop=(2, 3)).shape == (2, 3)
    assert st.result()[1, 3] == pytest.approx((5 + 5 + 5) / 3) and st.result()[0, 2] == pytest.approx(5.0)


def test_the_border_band_is_named_as_unscored_or_scored_on_the_patches_placed_there():
    """A 10x10 lesion at rows 2-11 of a 128x128 scan lies in the band one stride wide that only 2 patches
    cover (1 at the corners), fewer than scan_min_votes = 3. By default the band is not scored, and the
    scan's scan_scored_region says so (rows 16-111); with scan_border=include the consensus there is over
    the patches the grid places, and the scan score finds the lesion."""
    from anogan.callbacks.maps import region_text, summarise
    from anogan.data.scans import Scan
    from anogan.data.stitch import ScanAssembler, grid_coverage

    opts = PatchOptions(patch_size=32, stride=16)
    pos = np.array(positions((128, 128), opts, np.random.default_rng(0), "test"))
    lesion = np.zeros((128, 128))
    lesion[2:12, 60:70] = 1.0  # G cannot draw it: high in every patch that holds it
    maps = np.stack([lesion[y : y + 32, x : x + 32] for y, x in pos])
    coverage = grid_coverage((128, 128), opts)
    assert coverage[0, 0] == 1 and coverage[0, 64] == 2 and coverage[64, 64] == 4 and coverage[5, 5] == 1
    scan = Scan("s", None, 0, (128, 128), 1, np.dtype(np.uint8))

    def scored(border: bool, n: int = len(pos)):
        assembler = ScanAssembler([(128, 128)], np.zeros(n, int), pos[-n:, 0], pos[-n:, 1], opts, 3, border)
        (stitched,) = assembler.add(np.arange(n), maps[-n:], np.zeros(n))
        return stitched, summarise(scan, stitched, 1.0, 7, 3)

    stitched, result = scored(border=False)
    assert result.scan_score == 0.0 and region_text(result.region) == "16-111 16-111"  # the lesion is outside
    assert np.isnan(stitched.consensus[:16]).all() and np.isfinite(stitched.consensus[16:112, 16:112]).all()
    stitched, result = scored(border=True)
    assert result.scan_score == pytest.approx(1.0) and 2 <= result.scan_score_at[0] <= 11
    assert np.isfinite(stitched.consensus).all() and region_text(result.region) == "0-127 0-127"
    # where the foreground test skipped a patch, a pixel still needs the votes its grid position allows:
    # without patch (0, 0), rows 0-15 of columns 16-31 keep 1 of the 2 patches the grid places there
    stitched, _ = scored(border=True, n=len(pos) - 1)
    assert np.isnan(stitched.consensus[:16, 16:32]).all() and np.isfinite(stitched.consensus[:16, 32:]).all()


def test_window_max_at_names_the_centre_of_the_best_square():

    m = np.zeros((20, 30))
    m[5:8, 10:13] = 2.0
    assert window_max_at(m, 3) == (pytest.approx(2.0), (6, 11))
    m[6, 11] = np.nan  # the best square is no longer wholly covered
    value, (y, x) = window_max_at(m, 3)
    assert value == pytest.approx(np.nanmax([m[i - 1:i + 2, j - 1:j + 2].mean() for i in range(1, 19)
                                             for j in range(1, 29)]))
    assert np.isfinite(m[y - 1:y + 2, x - 1:x + 2]).all() and m[y - 1:y + 2, x - 1:x + 2].mean() == pytest.approx(value)
    assert window_max_at(np.full((5, 5), np.nan), 3) is None


def test_image_score_is_the_max_or_a_quantile_and_undefined_without_patches():
    s = np.array([1.0, 5.0, 2.0, 4.0])
    assert image_score(s, parse_reduce("max")) == 5.0
    assert image_score(s, parse_reduce(0.5)) == pytest.approx(3.0)
    assert image_score(np.array([]), 1.0) is None
    with pytest.raises(InputError, match="reduce='top'"):
        parse_reduce("top")


def test_pixel_auroc_of_whole_scans_and_null_without_anomalous_pixels():
    m = np.array([[0.1, 0.9], [np.nan, 0.2]])
    t = np.array([[False, True], [True, False]])
    r = pixel_auroc([m], [t])
    assert r["pixel_auroc"] == 1.0  # the uncovered (anomalous) pixel is left out, and counted
    assert (r["n_pixels"], r["n_uncovered_pixels"], r["n_uncovered_anomalous_pixels"]) == (4, 1, 1)
    r = pixel_auroc([m], [np.zeros_like(t)])
    assert r["pixel_auroc"] is None and "AUROC needs both" in r["reason"]


# -- inputs and normalisation ----------------------------------------------------------------------
def _save(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def _scans(root, rng, n=2, shape=(40, 70), dtype=np.uint8):
    top = np.iinfo(dtype).max
    for k in range(n):
        _save(root / "vol" / f"{k}.png", rng.integers(0, top, shape, dtype=dtype))


def test_colour_scans_are_read_as_grey_with_a_warning_and_jpeg_only_folders_name_the_fix(tmp_path, caplog):
    from anogan.data.scans import read_scan

    rng = np.random.default_rng(1)
    (tmp_path / "rgb").mkdir()
    rgb = rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb" / "a.png")
    with caplog.at_level("WARNING"):
        (scan,) = list_scans(tmp_path / "rgb")
    assert "a.png is a colour (RGB) image: scored as grey" in caplog.text
    assert scan.channels == 1 and read_scan(scan).shape == (20, 30)
    np.testing.assert_array_equal(read_scan(scan), np.array(Image.fromarray(rgb).convert("L")))
    (tmp_path / "jpg").mkdir()
    Image.fromarray(rgb).save(tmp_path / "jpg" / "b.jpg")
    with pytest.raises(ScanError, match=r"no PNG or TIFF image .*found only \.jpg files: convert them"):
        list_scans(tmp_path / "jpg")


def test_inputs_folder_multipage_tiff_hdf5_and_single_image(tmp_path):
    rng = np.random.default_rng(0)
    _scans(tmp_path / "scans", rng)
    pages = [Image.fromarray(rng.integers(0, 255, (30, 50), dtype=np.uint8)) for _ in range(3)]
    pages[0].save(tmp_path / "scans" / "volume.tif", save_all=True, append_images=pages[1:])
    names = [s.name for s in list_scans(tmp_path / "scans")]
    assert names == ["vol/0", "vol/1", "volume_p000", "volume_p001", "volume_p002"]
    with h5py.File(tmp_path / "new.h5", "w") as f:
        f["images"] = rng.integers(0, 255, (2, 20, 90), dtype=np.uint8)  # no labels
    h5 = list_scans(tmp_path / "new.h5")
    assert [(s.name, s.shape) for s in h5] == [("new_00000", (20, 90)), ("new_00001", (20, 90))]
    assert [s.name for s in list_scans(tmp_path / "scans" / "vol" / "1.png")] == ["1"]
    # masks named with a suffix (MVTec AD's <name>_mask.png): found with data.mask_suffix, refused without
    (tmp_path / "masks" / "vol").mkdir(parents=True)
    Image.fromarray(np.zeros((30, 50), np.uint8)).save(tmp_path / "masks" / "vol" / "1_mask.png")
    with pytest.raises(ScanError, match=r"data.masks=.*vol: no mask matches a scan .*data.mask_suffix=<suffix>"):
        list_scans(tmp_path / "scans" / "vol", tmp_path / "masks" / "vol")
    found = list_scans(tmp_path / "scans" / "vol", tmp_path / "masks" / "vol", mask_suffix="_mask")
    assert [(s.name, s.mask) for s in found] == [("0", None), ("1", tmp_path / "masks" / "vol" / "1_mask.png")]
    # a scan smaller than a patch is padded for the patches, its map cropped back: one patch
    dm = ScansDataModule(str(tmp_path / "new.h5"), training={"normalisation": "none"}, image_size=32)
    dm.setup()
    assert len(dm.test_set) == 2 * 5 and dm.test_set[0]["image"].shape == (1, 32, 32)  # x: 0, 16, 32, 48, 58


def test_scan_patches_equal_the_training_patches_of_the_same_scan(tmp_path):
    """The same pixels prepared for training (global percentiles) and read as a new scan give the same
    model input: the normalisation is the training data's, from the recipe recorded with it."""
    from anogan.data import HDF5DataModule

    rng = np.random.default_rng(1)
    _scans(tmp_path / "scans", rng, n=3, shape=(48, 64), dtype=np.uint16)
    prepare_folder(tmp_path / "scans", tmp_path / "p.h5", patch_size=32, stride=16, normalise="global",
                   split="none", progress=False)
    train = HDF5DataModule(path=str(tmp_path / "p.h5"), image_size=32, test_fraction=0.0, val_fraction=0.0)
    train.setup()
    assert train.recipe["normalisation"] == "global" and len(train.recipe["scale"]) == 2
    dm = ScansDataModule(str(tmp_path / "scans"), training=train.recipe, image_size=32)
    dm.setup()
    assert dm.opts.stride == 16 and len(dm.test_set) == len(train.train_set) == inspect_hdf5(tmp_path / "p.h5").n
    for i in (0, 7, len(dm.test_set) - 1):  # same order: scan by scan, row by row
        torch.testing.assert_close(dm.test_set[i]["image"], train.train_set[i]["image"])


def test_scans_that_cannot_match_the_training_data_are_refused_with_the_fix(tmp_path):
    rng = np.random.default_rng(2)
    _scans(tmp_path / "s16", rng, dtype=np.uint16)
    recorded = {"normalisation": "none", "dtype": "uint8", "patch_size": 32, "source": "p.h5"}
    with pytest.raises(ScanError, match="convert the scans to uint8"):
        ScansDataModule(str(tmp_path / "s16"), training=recorded, image_size=32).setup()
    with pytest.raises(ScanError, match=r"data.normalise=image but .* normalise=none .* drop data.normalise"):
        ScansDataModule(str(tmp_path / "s16"), training=recorded, normalise="image")
    with pytest.raises(ScanError, match="drop data.patch_size"):
        ScansDataModule(str(tmp_path / "s16"), training=recorded, patch_size=64)
    with pytest.raises(ScanError, match=r"data.scale=\[low,high\]"):
        ScansDataModule(str(tmp_path / "s16"), training={"normalisation": "global"})
    with pytest.raises(ScanError, match=re.escape("no recipe in the checkpoint and its HDF5 file gone.h5")):
        ScansDataModule(str(tmp_path / "s16"), training={"source_path": "gone.h5"})
    with h5py.File(tmp_path / "rgb.h5", "w") as f:
        f["images"] = rng.integers(0, 255, (2, 3, 40, 40), dtype=np.uint8)
    with pytest.raises(ScanError, match="3-channel scan.* trained on 1-channel"):
        ScansDataModule(str(tmp_path / "rgb.h5"), training={"normalisation": "none"}, channels=1).setup()
    with pytest.raises(ScanError, match="does not exist"):
        ScansDataModule(str(tmp_path / "nope"), training={"normalisation": "none"}).setup()
    _scans(tmp_path / "grey", np.random.default_rng(0), n=1)
    with pytest.raises(ScanError, match="data.normal_path=.*nope does not exist"):
        ScansDataModule(str(tmp_path / "grey"), normal_path=str(tmp_path / "nope"),
                        training={"normalisation": "none"}).setup()
    with pytest.raises(ScanError, match="data.normal_path=.* is data.path itself"):
        ScansDataModule(str(tmp_path / "grey"), normal_path=str(tmp_path / "grey" / "."),
                        training={"normalisation": "none"}).setup()
    _scans(tmp_path / "nest" / "sub", np.random.default_rng(1), n=1)  # data.path holds the normal folder
    with pytest.raises(ScanError, match=r"data.normal_path=.*sub: 1 of its scans \(e.g. .*0.png\) are also scans "
                                        r"of data.path=.*nest; .*pass a separate folder"):
        ScansDataModule(str(tmp_path / "nest"), normal_path=str(tmp_path / "nest" / "sub"),
                        training={"normalisation": "none"}).setup()
    _save(tmp_path / "dark" / "0.png", np.zeros((40, 40), np.uint8))  # no tissue: no patch passes
    with pytest.raises(ScanError, match="data.normal_path=.*dark: no patch of its scans passes the foreground"):
        ScansDataModule(str(tmp_path / "grey"), normal_path=str(tmp_path / "dark"), min_foreground=0.5,
                        foreground_threshold=0.1, training={"normalisation": "none"}).setup()


def test_calibrated_thresholds_come_from_the_checkpoints_run(tiny_run, tmp_path):
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    cal = read_run_calibration(tiny_run / "checkpoints" / "last.ckpt", "anomaly")
    assert cal == read_run_calibration(tiny_run / "metrics.json", "anomaly")
    assert cal["image_threshold"] == metrics["scores"]["anomaly"]["calibrated"]["threshold"]
    assert cal["pixel_threshold"] == metrics["pixel_calibration"]["threshold"]
    assert (cal["region_threshold"], cal["region_window"]) == (metrics["region_calibration"]["threshold"], 7)
    assert "normal validation images" in cal["source"]
    assert read_run_calibration(tmp_path / "run" / "checkpoints" / "last.ckpt", "anomaly") == {}  # no metrics.json
    (tmp_path / "old.json").write_text(json.dumps({"scores": {"anomaly": {"threshold": 1.0}}}))
    assert read_run_calibration(tmp_path / "old.json", "anomaly") == {}  # written before calibration existed


def test_threshold_from_a_labelled_evaluation(tiny_run, tmp_path):
    value, where = read_patch_threshold(tiny_run / "metrics.json", "anomaly")
    assert value == json.loads((tiny_run / "metrics.json").read_text())["scores"]["anomaly"]["threshold"]
    assert "Youden" in where
    rows = read_scores(tiny_run / "scores.h5")
    q, _ = read_patch_threshold(tiny_run / "scores.h5", "anomaly", 0.9)
    assert q == pytest.approx(np.quantile(rows["scores/anomaly"][rows["split"] == 0], 0.9))
    assert read_patch_threshold(None, "anomaly")[0] is None
    with pytest.raises(InputError, match="no score 'nope'"):
        read_patch_threshold(tiny_run / "metrics.json", "nope")
    with pytest.raises(MissingInputError, match="threshold_from=.*missing.json does not exist"):
        read_patch_threshold(tmp_path / "missing.json", "anomaly")


# -- end to end ------------------------------------------------------------------------------------
def _predict_cfg(ckpt, scans, out, extra=()):
    return compose_cfg("evaluate", [f"ckpt_path={ckpt}", "data=scans", f"data.path={scans}", "inversion.steps=3",
                                    "logger=none", "trainer.enable_progress_bar=false", "data.eval_batch_size=8",
                                    *extra], out)


class _Crash(L.Callback):
    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if batch_idx == 1:
            raise RuntimeError("killed")


def _consensus_score(maps, pos, shape, min_votes=3, window=7):
    """The scan score computed here from the patch maps: per pixel the minimum over the >= min_votes
    covering patches (a stack with NaN), then the best window mean by brute force."""
    stack = np.full((len(maps), *shape), np.nan)
    for k, (y, x) in enumerate(pos):
        stack[k, y : y + maps.shape[1], x : x + maps.shape[2]] = maps[k]
    votes = np.isfinite(stack).sum(0)
    low = np.where(votes >= min_votes, np.nanmin(np.where(np.isfinite(stack), stack, np.inf), 0), np.nan)
    means = [low[i : i + window, j : j + window].mean() for i in range(shape[0] - window + 1)
             for j in range(shape[1] - window + 1)]
    return np.nanmax(means)


def test_scans_get_maps_predictions_and_flags_and_a_killed_run_resumes(tiny_run, tmp_path, monkeypatch, capsys,
                                                                      caplog):
    from anogan.engine import pipeline

    rng = np.random.default_rng(3)
    _scans(tmp_path / "scans", rng, n=3, shape=(40, 70))
    _scans(tmp_path / "normal", rng, n=2, shape=(40, 70))  # known-normal scans: they calibrate the scan flag
    ckpt = tiny_run / "checkpoints" / "last.ckpt"
    extra = [f"prediction_callbacks.maps.threshold_from={tiny_run}/metrics.json", f"data.normal_path={tmp_path}/normal"]
    clean = tmp_path / "clean"
    with caplog.at_level("WARNING"):
        result = evaluate(_predict_cfg(ckpt, tmp_path / "scans", clean, extra))
    assert "test/auroc/anomaly" not in result  # no labels, no AUROC
    # 2 normal scans are too few for a conformal threshold at 0.05: null, no scan flagged, and the log says so
    assert "scan_threshold is null, so scan_flagged flags no scan" in caplog.text and "at least 19" in caplog.text
    closing = capsys.readouterr().out.split("Run directory:")[-1]  # the closing lines name the outputs
    outputs = ("predictions.csv", "normal_scans.csv", "maps/", "scores.h5")
    assert all(f"  {name}" in closing for name in outputs), closing
    rows = list(csv.DictReader(open(clean / "predictions.csv")))
    assert [r["image"] for r in rows] == ["vol/0", "vol/1", "vol/2"]
    threshold = json.loads((tiny_run / "metrics.json").read_text())["scores"]["anomaly"]["threshold"]
    patches = read_scores(clean / "scores.h5")
    assert len(patches["index"]) == 5 * 2 * 4  # per scan rows y = 0, 8 and columns x = 0, 16, 32, 38
    # the normal scans' patches come after the test scans' (whose indices, hence initial z, are unchanged)
    split_of = dict(zip(patches["index"].tolist(), patches["split"].tolist()))
    assert [split_of[i] for i in range(40)] == [SPLITS["test"]] * 24 + [SPLITS["val"]] * 16
    pos = positions((40, 70), PatchOptions(patch_size=32, stride=16), np.random.default_rng(0), "test")
    order = np.argsort(patches["index"])
    patch_maps = patches["residual_map"][order].astype(np.float64)
    normal = list(csv.DictReader(open(clean / "normal_scans.csv")))
    assert [r["image"] for r in normal] == ["vol/0", "vol/1"] and not (clean / "maps" / "vol" / "3.npy").exists()
    for k, r in enumerate(normal):
        assert float(r["scan_score"]) == pytest.approx(_consensus_score(patch_maps[24 + 8 * k : 32 + 8 * k], pos,
                                                                         (40, 70)), rel=1e-5)
    normal_scores = np.array([float(r["scan_score"]) for r in normal])
    # each normal scan's p-value against the other one: 1 / 1 for the lower, 1 / 2 ... (#{normal >= s} / n)
    assert sorted(float(r["scan_p_value"]) for r in normal) == [0.5, 1.0]
    assert all(float(r["image_p_value"]) in (0.5, 1.0) and r["image_score"] for r in normal)
    for k, r in enumerate(rows):
        amap = np.load(clean / "maps" / "vol" / f"{k}.npy")
        assert amap.shape == (40, 70) and amap.dtype == np.float32 and np.isfinite(amap).all()
        assert (clean / "maps" / "vol" / f"{k}.png").stat().st_size > 5000
        own = np.arange(k * 8, (k + 1) * 8)
        scores = patches["scores/anomaly"][np.isin(patches["index"], own)]
        assert float(r["image_score"]) == pytest.approx(scores.max(), rel=1e-5)
        # the patch columns say what they are; the old names keep their old values for one release
        assert float(r["patch_threshold"]) == pytest.approx(threshold, rel=1e-5)
        assert r["threshold"] == r["patch_threshold"]
        assert int(r["patches_above_threshold"]) == int((scores > threshold).sum())
        assert int(r["any_patch_flagged"]) == int((scores > threshold).any())
        assert int(r["flagged"]) == int(scores.max() >= threshold)
        assert int(r["n_above_threshold"]) == int((scores >= threshold).sum())
        assert len(r["top_patches"].split("; ")) == 5
        # the scan decision: the best 7x7 mean of the consensus map, its p-value against the normal scans
        assert float(r["scan_score"]) == pytest.approx(_consensus_score(patch_maps[own], pos, (40, 70)), rel=1e-5)
        y, x = (int(v) for v in r["scan_score_at"].split())
        assert 3 <= y < 40 - 3 and 3 <= x < 70 - 3
        s = float(r["scan_score"])
        assert float(r["scan_p_value"]) == pytest.approx((1 + (normal_scores >= s).sum()) / 3, rel=1e-6)
        assert r["scan_threshold"] == "" and r["scan_flagged"] == "0" and "the flag needs >= 19" in r["note"]
        # 3 of the grid's patches cover rows 0-39 of columns 38-47 and rows 8-31 of columns 16-63: its bounding box
        assert r["scan_scored_region"] == "0-39 16-63"
        normal_image = [patches["scores/anomaly"][np.isin(patches["index"], np.arange(24 + 8 * j, 32 + 8 * j))].max()
                        for j in range(2)]
        assert float(r["image_p_value"]) == pytest.approx((1 + (np.array(normal_image) >= scores.max()).sum()) / 3,
                                                          rel=1e-5)
    assert list(rows[0])[:9] == ["image", "height", "width", "patches", "scan_score", "scan_p_value",
                                 "scan_threshold", "scan_flagged", "scan_score_at"]  # the scan decision first
    # scores.h5: a p-value per patch and score against the normal scans' patches (split val)
    val = patches["split"] == SPLITS["val"]
    for name in ("anomaly", "residual"):
        s = patches[f"scores/{name}"].astype(np.float64)
        want = (1 + (s[val][None, :] >= s[:, None]).sum(1)) / (val.sum() + 1)
        np.testing.assert_allclose(patches[f"p_value/{name}"], want, rtol=1e-6)
    # killed after two batches, then the same command: the same files, the mapped patches reused
    resumed = tmp_path / "resumed"
    cfg = _predict_cfg(ckpt, tmp_path / "scans", resumed, extra)
    real = pipeline.instantiate_list
    monkeypatch.setattr(pipeline, "instantiate_list",
                        lambda c: real(c) + ([_Crash()] if c is cfg.prediction_callbacks else []))
    with pytest.raises(RuntimeError, match="killed"):
        evaluate(cfg)
    assert len(read_scores(resumed / "scores.h5.partial")["index"]) == 16
    assert not (resumed / "predictions.csv").exists()
    monkeypatch.setattr(pipeline, "instantiate_list", real)
    from anogan.models.inversion import Inversion

    mapped, original = [], Inversion.map_batch
    monkeypatch.setattr(Inversion, "map_batch", lambda self, x, i: mapped.append(len(x)) or original(self, x, i))
    evaluate(_predict_cfg(ckpt, tmp_path / "scans", resumed, extra))
    assert sum(mapped) == 40 - 16  # the first two batches came from scores.h5.partial
    assert list(csv.DictReader(open(resumed / "predictions.csv"))) == rows
    assert list(csv.DictReader(open(resumed / "normal_scans.csv"))) == normal
    for k in range(3):
        np.testing.assert_allclose(np.load(resumed / "maps" / "vol" / f"{k}.npy"),
                                   np.load(clean / "maps" / "vol" / f"{k}.npy"), rtol=1e-6)


@pytest.mark.slow
def test_stitched_maps_of_phantom_scans_beat_the_patch_maps(tmp_path):
    """The phantom's test volumes (never seen by the GAN), scored as whole scans by the entry point:
    the stitched maps' pixel AUROC is at least the patch-level one of the labelled evaluation."""
    from test_oct_phantom import SMALL

    from anogan.data.phantom import main as write_phantom_cli
    from anogan.engine.pipeline import train

    run = tmp_path / "run"
    train(compose_cfg("train", [*SMALL, f"data.path={tmp_path}/patches.h5"], run))
    patch_level = json.loads((run / "metrics.json").read_text())["pixel_auroc"]
    ckpt = run / "checkpoints" / "last.ckpt"
    assert write_phantom_cli([str(tmp_path / "phantom"), "--ckpt", str(ckpt), "--test-only", "--normal", "1"]) == 0
    out = tmp_path / "pred"
    run_script(["evaluate.py", f"ckpt_path={ckpt}", "data=scans", f"data.path={tmp_path}/phantom/scans",
                f"data.masks={tmp_path}/phantom/masks", f"data.normal_path={tmp_path}/phantom/normal",
                "inversion.steps=30", "inversion.reference=false",
                f"prediction_callbacks.maps.threshold_from={run}/metrics.json",
                "logger=none", "trainer.enable_progress_bar=false", f"hydra.run.dir={out}"], cwd=ROOT)
    rows = list(csv.DictReader(open(out / "predictions.csv")))
    assert len(rows) == 9 and rows[0]["image"] == "fluid_006/000"  # 2 fluid + 1 healthy test volume, 3 scans
    assert all((out / "maps" / f"{r['image']}.npy").is_file() for r in rows)
    stitched = json.loads((out / "map_metrics.json").read_text())
    assert stitched["n_scans"] == 9 and stitched["n_anomalous_pixels"] > 100
    assert stitched["pixel_auroc"] >= patch_level >= 0.7
    threshold = json.loads((run / "metrics.json").read_text())["scores"]["anomaly"]["threshold"]
    assert all(int(r["flagged"]) == int(float(r["image_score"]) >= threshold) for r in rows)
    # scan-level: the map metrics and the scan decision against the normal scans
    assert stitched["pixel_auprc"] > 3 * stitched["n_anomalous_pixels"] / stitched["n_pixels"]
    assert 0.3 < stitched["pixel_aupro"] <= 1 and stitched["pixel_at_calibrated"]["dice"] is not None
    scan = stitched["scan"]
    assert (scan["n_abnormal"], scan["n_normal"]) == (6, 3) and scan["scan_score_auroc"] is not None
    normal = np.array([float(r["scan_score"]) for r in csv.DictReader(open(out / "normal_scans.csv"))])
    assert len(normal) == 3  # one normal volume of 3 scans, never seen by the GAN and not among the scored
    cal = stitched["calibration"]
    # 3 normal scans are too few for a flag at 0.05 (it needs 19): no threshold, no scan flagged, p-values
    assert cal["scan_threshold"] is None and "at least 19" in cal["scan_threshold_reason"]
    assert cal["n_normal_scans"] == 3 and all(r["scan_flagged"] == "0" for r in rows)
    assert all(float(r["scan_p_value"]) == pytest.approx((1 + (normal >= float(r["scan_score"])).sum()) / 4, rel=1e-5)
               for r in rows)
    assert scan["at_flag"]["threshold"] is None and scan["at_flag"]["specificity"] == 1.0
    assert cal["pixel_threshold"] == stitched["pixel_at_calibrated"]["threshold"]
    assert "normal scans" in cal["pixel_source"]
    # benchmarks/scan_decision.py, run from elsewhere, rebuilds the same rule from scores.h5
    proc = run_script([str(ROOT / "benchmarks" / "scan_decision.py"), str(out)], cwd=tmp_path,
                      env={"PYTHONPATH": str(ROOT)})
    rule = next(line for line in proc.stdout.splitlines() if "ScanMaps' rule" in line)
    assert float(rule.split("scan AUROC")[1].split()[0]) == pytest.approx(scan["scan_score_auroc"], abs=6e-4)


def test_encoder_one_pass_maps_are_taken_at_z_equal_to_e_of_x():
    """inversion.init=encoder inversion.steps=0: f-AnoGAN's one pass (no optimisation) for whole scans."""
    from anogan.nets import scores as S
    from anogan.models.encoder import FAnoGAN
    from anogan.models.inversion import Inversion
    from anogan.nets import Discriminator, Encoder, Generator

    torch.manual_seed(0)
    G, D, E = Generator(32, 1, 16, 8), Discriminator(32, 1, 8), Encoder(32, 1, 16, 8)
    model = Inversion(G, D, steps=0, init="encoder", encoder=E, scorers=[FAnoGAN(E, G, D)])
    x = torch.rand(4, 1, 32, 32) * 2 - 1
    out = model.map_batch(x, torch.arange(4))
    with torch.no_grad():
        gez = G.eval()(E.eval()(x))
    torch.testing.assert_close(out["residual_map"], S.residual_map(x, gez))
    assert "fanogan" in out["scores"] and (out["steps_taken"] == 0).all()
    with pytest.raises(InputError, match="or 0 with inversion.init=encoder"):
        Inversion(G, D, steps=0)


def test_the_scan_flag_is_the_conformal_threshold_of_19_normal_scans(tiny_run, tmp_path, caplog):
    """19 normal scans, the fewest for scan_target_fpr 0.05: the threshold is the ceil(20 * 0.95) = 19-th
    smallest normal scan score (their largest), a scan is flagged when its p-value (1 + #{normal >= s}) / 20
    is <= 0.05, i.e. when it scores above every normal scan; map_metrics.json records the rule."""
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(8)
    for k in range(4):
        _save(tmp_path / "scans" / f"{k}.png", rng.integers(0, 255, (40, 70), dtype=np.uint8))
        _save(tmp_path / "masks" / f"{k}.png", ((rng.random((40, 70)) < 0.02) * (k % 2)).astype(np.uint8) * 255)
    for k in range(19):
        _save(tmp_path / "normal" / f"{k:02d}.png", rng.integers(0, 255, (40, 48), dtype=np.uint8))
    out = tmp_path / "run"
    with caplog.at_level("INFO"):
        evaluate(_predict_cfg(tiny_run / "checkpoints" / "last.ckpt", tmp_path / "scans", out,
                              [f"data.normal_path={tmp_path}/normal", f"data.masks={tmp_path}/masks"]))
    normal = np.array([float(r["scan_score"]) for r in csv.DictReader(open(out / "normal_scans.csv"))])
    assert normal.size == 19  # 4 patches each: rows 8-31 of columns 16-31 under all 4
    metrics = json.loads((out / "map_metrics.json").read_text())
    cal = metrics["calibration"]
    assert cal["scan_threshold"] == pytest.approx(normal.max(), rel=1e-5) and cal["scan_rank"] == 19
    assert (cal["n_normal_scans"], cal["n_normal_scans_scored"], cal["n_normal_scans_needed"]) == (19, 19, 19)
    assert "conformal" in cal["rule"] and "exchangeable" in cal["rule"]
    assert "scan flag calibrated on 19 normal scans" in caplog.text
    rows = list(csv.DictReader(open(out / "predictions.csv")))
    for r in rows:
        s, p = float(r["scan_score"]), float(r["scan_p_value"])
        assert p == pytest.approx((1 + (normal >= s).sum()) / 20, rel=1e-6)
        assert int(r["scan_flagged"]) == int(s > cal["scan_threshold"]) == int(p <= 0.05)
    flagged = np.array([int(r["scan_flagged"]) for r in rows])
    labels = np.array([k % 2 for k in range(4)])
    flag = metrics["scan"]["at_flag"]
    assert flag["threshold"] == cal["scan_threshold"] and flag["n_scans"] == 4
    assert flag["specificity"] == pytest.approx(1 - flagged[labels == 0].mean())
    assert flag["sensitivity"] == pytest.approx(flagged[labels == 1].mean())
    scores = np.array([float(r["scan_score"]) for r in rows])
    assert metrics["scan"]["scan_score_auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-9)
    assert metrics["scan"]["scan_score_n_left_out"] == 0 and not metrics["scan"]["scan_score_degenerate"]


def test_a_partial_score_file_of_other_scans_is_not_reused(tiny_run, tmp_path, monkeypatch):
    from anogan.engine import pipeline
    from anogan.models.inversion import Inversion

    rng = np.random.default_rng(4)
    _scans(tmp_path / "scans", rng, n=3, shape=(40, 70))
    ckpt, out = tiny_run / "checkpoints" / "last.ckpt", tmp_path / "run"
    cfg = _predict_cfg(ckpt, tmp_path / "scans", out)
    real = pipeline.instantiate_list
    monkeypatch.setattr(pipeline, "instantiate_list",
                        lambda c: real(c) + ([_Crash()] if c is cfg.prediction_callbacks else []))
    with pytest.raises(RuntimeError, match="killed"):
        evaluate(cfg)
    monkeypatch.setattr(pipeline, "instantiate_list", real)
    _save(tmp_path / "scans" / "vol" / "0.png", rng.integers(0, 255, (40, 70), dtype=np.uint8))  # new pixels
    mapped, original = [], Inversion.map_batch
    monkeypatch.setattr(Inversion, "map_batch", lambda self, x, i: mapped.append(len(x)) or original(self, x, i))
    evaluate(_predict_cfg(ckpt, tmp_path / "scans", out))
    assert sum(mapped) == 24  # every patch mapped again: the partial file held other scans' rows
    rows = list(csv.DictReader(open(out / "predictions.csv")))
    # without data.normal_path nothing calibrates the scan flag: a scan score, but no threshold and no flag
    assert all(r["scan_score"] and r["scan_threshold"] == "" and r["scan_flagged"] == "" for r in rows)
    assert not (out / "normal_scans.csv").exists()


def test_a_scan_gets_the_same_initial_z_and_map_whatever_other_scans_are_scored_with_it(tiny_run, tmp_path):
    import shutil

    _scans(tmp_path / "many", np.random.default_rng(7), n=3, shape=(40, 70))
    (tmp_path / "one" / "vol").mkdir(parents=True)
    shutil.copy(tmp_path / "many" / "vol" / "2.png", tmp_path / "one" / "vol" / "2.png")
    ckpt = tiny_run / "checkpoints" / "last.ckpt"
    for name in ("many", "one"):
        evaluate(_predict_cfg(ckpt, tmp_path / name, tmp_path / f"run_{name}"))
    many, one = read_scores(tmp_path / "run_many" / "scores.h5"), read_scores(tmp_path / "run_one" / "scores.h5")
    assert sorted(one["index"].tolist()) == list(range(8)) and sorted(many["index"].tolist()) == list(range(24))
    mine = np.isin(many["index"], np.arange(16, 24))  # vol/2 is the third scan there: rows 16-23
    order_many, order_one = np.argsort(many["index"][mine]), np.argsort(one["index"])
    np.testing.assert_array_equal(many["z"][mine][order_many], one["z"][order_one])
    np.testing.assert_allclose(np.load(tmp_path / "run_many" / "maps" / "vol" / "2.npy"),
                               np.load(tmp_path / "run_one" / "maps" / "vol" / "2.npy"), rtol=1e-5, atol=1e-6)


def test_scan_decision_settings_out_of_range_are_refused_before_mapping(tiny_run, tmp_path, monkeypatch):
    from anogan.models.inversion import Inversion

    _scans(tmp_path / "scans", np.random.default_rng(6), n=1, shape=(40, 70))
    ckpt = tiny_run / "checkpoints" / "last.ckpt"
    mapped = []
    monkeypatch.setattr(Inversion, "map_batch", lambda self, x, i: mapped.append(len(x)))
    with pytest.raises(InputError, match=r"scan_min_votes=3, but patches of 32 pixels at stride 32 cover a pixel "
                                         r"inside the scan 1 time\(s\); pass "
                                         r"prediction_callbacks.maps.scan_min_votes=1"):
        evaluate(_predict_cfg(ckpt, tmp_path / "scans", tmp_path / "a",
                              ["data.stride=32", "prediction_callbacks.maps.scan_min_votes=3", "logger=csv"]))
    assert not (tmp_path / "a" / "csv").exists()  # refused before the Trainer's logger wrote anything
    from anogan.engine.errors import input_error

    for k, (setting, message) in enumerate([("scan_target_fpr=1.5", "scan_target_fpr=1.5 must lie in (0, 1)"),
                                            ("scan_window=0", "scan_window=0 must be an integer >= 1"),
                                            ("scan_window=41", "scan_window=41 is larger than every scan")]):
        with pytest.raises(Exception) as refused:  # Hydra wraps what the callback's constructor raised
            out = tmp_path / f"b{k}"
            evaluate(_predict_cfg(ckpt, tmp_path / "scans", out, [f"prediction_callbacks.maps.{setting}"]))
        assert message in str(input_error(refused.value))
    assert mapped == [] and not list(tmp_path.glob("*/predictions.csv"))


def test_float_scans_outside_the_unit_range_are_refused(tmp_path):
    with h5py.File(tmp_path / "f.h5", "w") as f:
        f["images"] = np.full((1, 40, 40), 1.5, np.float32)
    with pytest.raises(ScanError, match=r"outside \[0, 1\]; rescale"):
        ScansDataModule(str(tmp_path / "f.h5"), training={"normalisation": "none"}).setup()


@pytest.mark.slow
def test_ddp_scoring_of_scans_equals_one_process(tiny_run, tmp_path):
    """trainer=ddp on CPU (two gloo processes): the same maps, predictions, scan flags and pixel AUROC as one
    process; 21 + 10 patches, an odd count, so the DistributedSampler repeats one (it is counted once)."""
    rng = np.random.default_rng(5)
    for k, shape in enumerate([(40, 70), (32, 120), (50, 40)]):  # 8 + 7 + 6 patches
        _save(tmp_path / "scans" / f"{k}.png", rng.integers(0, 255, shape, dtype=np.uint8))
        _save(tmp_path / "masks" / f"{k}.png", (rng.random(shape) < 0.05).astype(np.uint8) * 255)
    _save(tmp_path / "normal" / "n.png", rng.integers(0, 255, (40, 70), dtype=np.uint8))  # 8 patches
    _save(tmp_path / "normal" / "small.png", rng.integers(0, 255, (32, 48), dtype=np.uint8))  # 2, overlapping once
    args = [f"ckpt_path={tiny_run}/checkpoints/last.ckpt", "data=scans", f"data.path={tmp_path}/scans",
            f"data.masks={tmp_path}/masks", f"data.normal_path={tmp_path}/normal", "inversion.steps=3", "logger=none",
            "trainer.enable_progress_bar=false", "data.eval_batch_size=4"]
    run_script(["evaluate.py", *args, f"hydra.run.dir={tmp_path}/one"], cwd=ROOT)
    run_script(["evaluate.py", *args, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
                f"hydra.run.dir={tmp_path}/ddp"], cwd=ROOT)
    one, ddp = tmp_path / "one", tmp_path / "ddp"
    assert (ddp / "train_ddp_process_1.log").exists()  # Lightning started the second process
    for name in ("predictions.csv", "normal_scans.csv"):
        assert list(csv.DictReader(open(ddp / name))) == list(csv.DictReader(open(one / name))), name
    # 2 normal scans: too few for a threshold at 0.05, so no scan is flagged; their p-values rank the scans
    assert all(r["scan_flagged"] == "0" and r["scan_p_value"] for r in csv.DictReader(open(one / "predictions.csv")))
    # 32 x 48: two patches, at most 2 cover a pixel: no scan score (empty, with the reason), not calibrated on
    normal = {r["image"]: r for r in csv.DictReader(open(one / "normal_scans.csv"))}
    assert normal["small"]["scan_score"] == "" and "covered by >= 3 patches" in normal["small"]["note"]
    assert normal["small"]["scan_scored_region"] == "" and normal["n"]["scan_scored_region"] == "0-39 16-63"
    for k in range(3):
        np.testing.assert_allclose(np.load(ddp / "maps" / f"{k}.npy"), np.load(one / "maps" / f"{k}.npy"), rtol=1e-5)
    a, b = (json.loads((d / "map_metrics.json").read_text()) for d in (one, ddp))
    assert a["pixel_auroc"] == pytest.approx(b["pixel_auroc"]) and a["n_pixels"] == 40 * 70 + 32 * 120 + 50 * 40
    for key in ("pixel_auprc", "pixel_best_dice", "pixel_aupro"):
        assert a[key] == pytest.approx(b[key], rel=1e-5), key
    assert a["scan"]["n_abnormal"] == b["scan"]["n_abnormal"] == 3
    assert a["calibration"] == b["calibration"] and a["calibration"]["scan_threshold"] is None
    assert (a["calibration"]["n_normal_scans"], a["calibration"]["n_normal_scans_scored"]) == (2, 1)
    assert "at least 19" in a["calibration"]["scan_threshold_reason"]
    assert sorted(read_scores(ddp / "scores.h5")["index"].tolist()) == list(range(21 + 10))
