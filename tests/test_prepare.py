"""The prepare command: scans and masks, MedMNIST .npz and IDX files to HDF5 patch files."""

import re
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from conftest import ROOT, assert_aurocs_match_scores, run_script
from PIL import Image
from test_data import make_idx_dir

from anogan.data import SPLITS, HDF5DataModule
from anogan.data.hdf5 import inspect_hdf5
from anogan.data.phantom import write_phantom
from anogan.data.patches import prepare_folder
from anogan.data.prepare import main
from anogan.errors import InputError


def read(path: Path) -> dict:
    with h5py.File(path, "r") as f:
        return {k: f[k][()] for k in f} | {"@" + k: v for k, v in f.attrs.items()}


@pytest.fixture(scope="module")
def phantom_dir(tmp_path_factory) -> Path:
    """3 training volumes, 1 healthy annotated and 2 fluid volumes, 2 scans each, 48x96."""
    return write_phantom(tmp_path_factory.mktemp("phantom"), healthy=3, healthy_test=1, fluid=2, scans=2,
                         height=48, width=96, blobs=(2, 3), seed=3)


def test_folder_round_trip_patches_labels_and_splits(phantom_dir, tmp_path):
    out = tmp_path / "p.h5"
    assert main(["folder", str(phantom_dir / "scans"), str(out), "--masks", str(phantom_dir / "masks"),
                 "--patch-size", "16", "--stride", "8", "--no-progress"]) == 0
    d = read(out)
    n = len(d["labels"])
    per_image = 5 * 11  # rows 0, 8, .., 32 and columns 0, 8, .., 80 of a 48x96 scan
    assert n == 6 * 2 * per_image and d["images"].dtype == np.uint8 and d["images"].shape[1:] == (16, 16)
    assert d["@patch_size"] == 16 and d["@stride"] == 8 and d["@normalisation"] == "none"
    assert d["@source"].startswith("folder:")
    volumes = list(d["@volumes"])
    row = 0
    for v, name in enumerate(volumes):
        for k in range(2):
            image = np.array(Image.open(phantom_dir / "scans" / name / f"{k:03d}.png"))
            mask_file = phantom_dir / "masks" / name / f"{k:03d}.png"
            mask = np.array(Image.open(mask_file)) > 0 if mask_file.exists() else None
            for y in range(0, 33, 8):
                for x in range(0, 81, 8):
                    np.testing.assert_array_equal(d["images"][row], image[y : y + 16, x : x + 16])
                    assert d["volume"][row] == v
                    if mask is None:  # volumes without annotation train, as in the paper
                        assert d["split"][row] == SPLITS["train"] and d["labels"][row] == 0
                    else:
                        m = mask[y : y + 16, x : x + 16]
                        np.testing.assert_array_equal(d["masks"][row], m)
                        assert d["split"][row] == SPLITS["test"] and d["labels"][row] == int(m.any())
                    row += 1
    assert row == n
    test = d["split"] == SPLITS["test"]
    assert 0 < d["labels"][test].sum() < test.sum()  # fluid and clean patches among the test patches
    assert not list(tmp_path.glob("*.tmp"))


def test_min_anomalous_pixels_and_min_foreground(phantom_dir, tmp_path):
    args = dict(masks=phantom_dir / "masks", patch_size=16, stride=8, progress=False)
    base = read(prepare_folder(phantom_dir / "scans", tmp_path / "a.h5", **args))
    strict = read(prepare_folder(phantom_dir / "scans", tmp_path / "b.h5", min_anomalous_pixels=20, **args))
    counts = base["masks"].reshape(len(base["masks"]), -1).sum(1)
    np.testing.assert_array_equal(strict["labels"], (counts >= 20).astype(int))
    assert strict["labels"].sum() < base["labels"].sum()
    fg = read(prepare_folder(phantom_dir / "scans", tmp_path / "c.h5", min_foreground=0.5,
                             foreground_threshold=0.3, **args))
    kept = ((base["images"] / 255.0 > 0.3).reshape(len(counts), -1).mean(1) >= 0.5)
    assert 0 < len(fg["labels"]) == kept.sum() < len(counts)
    np.testing.assert_array_equal(fg["images"], base["images"][kept])


def test_random_patches_per_image_and_global_normalisation(phantom_dir, tmp_path):
    d = read(prepare_folder(phantom_dir / "scans", tmp_path / "r.h5", patch_size=16, per_image=7,
                            normalise="global", percentiles=(5, 95), progress=False))
    assert len(d["labels"]) == 12 * 7 and d["images"].dtype == np.float32
    assert d["images"].min() == 0 and d["images"].max() == 1 and d["@per_image"] == 7
    assert "masks" not in d and (d["split"] == SPLITS["train"]).all()  # no annotation: all training


def write_tiff16(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint16)).save(path)


def test_16_bit_scans_keep_their_range(tmp_path):
    ramp = (np.arange(32 * 32).reshape(32, 32) * 60).astype(np.uint16)  # 0 .. 61380, far above 255
    write_tiff16(tmp_path / "scans" / "v0" / "a.tif", ramp)
    write_tiff16(tmp_path / "scans" / "v0" / "b.tiff", ramp[::-1])
    d = read(prepare_folder(tmp_path / "scans", tmp_path / "raw.h5", patch_size=32, progress=False))
    assert d["images"].dtype == np.uint16
    np.testing.assert_array_equal(d["images"][0], ramp)
    n = read(prepare_folder(tmp_path / "scans", tmp_path / "norm.h5", patch_size=32, normalise="image",
                            percentiles=(0, 100), progress=False))
    np.testing.assert_allclose(n["images"][0], ramp / ramp.max(), atol=1e-6)  # monotone, no wrap-around
    dm = HDF5DataModule(path=str(tmp_path / "raw.h5"), image_size=32)
    dm.setup()  # one unannotated volume: both patches train; the DataModule maps 0..65535 to [-1, 1]
    image = dm.train_set[0]["image"][0]
    torch.testing.assert_close(image, torch.from_numpy(ramp.astype(np.float32)) / 65535 * 2 - 1)


def write_npz(path: Path, **override) -> dict:
    rng = np.random.default_rng(0)
    data = {f"{s}_images": rng.integers(0, 256, (n, 28, 28), dtype=np.uint8) for s, n in
            (("train", 30), ("val", 10), ("test", 20))}
    data |= {f"{s}_labels": (np.arange(n) % 4)[:, None] for s, n in (("train", 30), ("val", 10), ("test", 20))}
    data |= override
    np.savez(path, **{k: v for k, v in data.items() if v is not None})
    return data


def test_npz_round_trip(tmp_path):
    data = write_npz(tmp_path / "octmnist.npz")
    out = tmp_path / "o.h5"
    assert main(["npz", str(tmp_path / "octmnist.npz"), str(out), "--normal-classes", "3", "1", "--no-progress"]) == 0
    d = read(out)
    assert d["images"].shape == (60, 28, 28) and "volume" not in d
    np.testing.assert_array_equal(d["images"], np.concatenate([data[f"{s}_images"] for s in ("train", "val", "test")]))
    classes = np.concatenate([data[f"{s}_labels"][:, 0] for s in ("train", "val", "test")])
    np.testing.assert_array_equal(d["labels"], (~np.isin(classes, [1, 3])).astype(int))
    np.testing.assert_array_equal(d["split"], np.repeat([0, 1, 2], [30, 10, 20]))
    assert list(d["@normal_classes"]) == [3, 1]
    dm = HDF5DataModule(path=str(out), image_size=28)
    dm.setup()
    assert len(dm.train_set) == 15 and len(dm.val_set) == 10 and len(dm.test_set) == 20  # train: normal only


def test_idx_round_trip_with_patches(tmp_path):
    arrays = make_idx_dir(tmp_path / "idx", gz=True, n_train=12, n_test=6)
    out = tmp_path / "i.h5"
    assert main(["idx", str(tmp_path / "idx"), str(out), "--normal-classes", "0", "--patch-size", "14",
                 "--stride", "14", "--no-progress"]) == 0
    d = read(out)
    assert d["images"].shape == (18 * 4, 14, 14)
    np.testing.assert_array_equal(d["images"][1], arrays["train-images-idx3-ubyte"][0, :14, 14:])
    np.testing.assert_array_equal(d["labels"][::4], (arrays["train-labels-idx1-ubyte"].tolist()
                                                     + arrays["t10k-labels-idx1-ubyte"].tolist()) != np.array(0))
    np.testing.assert_array_equal(d["split"], np.repeat([0, 2], [48, 24]))


def _bad_image(root: Path) -> tuple[list[str], str]:
    (root / "scans" / "v1" / "b.png").write_bytes(b"not a png")
    return [], r"b\.png: cannot read the image"


def _mask_size(root: Path) -> tuple[list[str], str]:
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(root / "masks" / "v1" / "a.png")
    return ["--masks", str(root / "masks")], r"masks/v1/a\.png: mask of size 12x10 .* must have the size of their image"


def _mask_values(root: Path) -> tuple[list[str], str]:
    Image.fromarray(np.full((40, 40), 128, np.uint8)).save(root / "masks" / "v1" / "a.png")
    return ["--masks", str(root / "masks")], r"masks/v1/a\.png: mask is not binary .* store 0 for background"


def _no_normal(root: Path) -> tuple[list[str], str]:
    return ["--min-foreground", "1.0", "--foreground-threshold", "0.99"], r"no normal patch for training"


def _too_small(root: Path) -> tuple[list[str], str]:
    return ["--patch-size", "64"], r"v0/a\.png: 40x40 image is smaller than --patch-size 64; use --patch-size 40"


def _exists(root: Path) -> tuple[list[str], str]:
    (root / "out.h5").write_bytes(b"precious")
    return [], r"out\.h5 exists; pass --overwrite"


@pytest.mark.parametrize("make_bad", [_bad_image, _mask_size, _mask_values, _no_normal, _too_small, _exists])
def test_bad_folder_input_gives_a_short_error_and_no_output(tmp_path, capsys, make_bad):
    rng = np.random.default_rng(0)
    for v in ("v0", "v1"):
        (tmp_path / "scans" / v).mkdir(parents=True)
        Image.fromarray(rng.integers(0, 256, (40, 40), dtype=np.uint8)).save(tmp_path / "scans" / v / "a.png")
    (tmp_path / "masks" / "v1").mkdir(parents=True)
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(tmp_path / "masks" / "v1" / "a.png")
    extra, message = make_bad(tmp_path)
    out = tmp_path / "out.h5"
    before = out.read_bytes() if out.exists() else None
    code = main(["folder", str(tmp_path / "scans"), str(out), "--patch-size", "16", "--no-progress", *extra])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and len(err.splitlines()) == 1
    assert re.search(message, err), err
    assert (out.read_bytes() if out.exists() else None) == before  # nothing written, nothing replaced
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("override, message", [
    ({"train_images": None, "train_labels": None}, r"expected MedMNIST keys train_images, train_labels"),
    ({"train_labels": None}, r"has train_images but not train_labels"),
])
def test_npz_without_the_expected_keys(tmp_path, capsys, override, message):
    write_npz(tmp_path / "x.npz", **override)
    assert main(["npz", str(tmp_path / "x.npz"), str(tmp_path / "o.h5"), "--normal-classes", "0"]) == 2
    err = capsys.readouterr().err
    assert "x.npz" in err and re.search(message, err)
    assert not (tmp_path / "o.h5").exists()


def test_overwrite_replaces_the_output(tmp_path):
    write_npz(tmp_path / "x.npz")
    (tmp_path / "o.h5").write_bytes(b"old")
    assert main(["npz", str(tmp_path / "x.npz"), str(tmp_path / "o.h5"), "--normal-classes", "0",
                 "--overwrite", "--no-progress"]) == 0
    assert inspect_hdf5(tmp_path / "o.h5").n == 60


def test_module_entry_point(tmp_path):
    write_npz(tmp_path / "x.npz")
    proc = run_script(["-m", "anogan.data.prepare", "npz", str(tmp_path / "x.npz"), str(tmp_path / "o.h5"),
                       "--normal-classes", "0", "--patch-size", "14"], cwd=ROOT)
    assert "wrote" in proc.stdout and "540 patches of 14x14 (144 normal, 396 anomalous)" in proc.stdout


def test_patient_wise_split_never_shares_a_volume(phantom_dir, tmp_path):
    out = prepare_folder(phantom_dir / "scans", tmp_path / "v.h5", masks=phantom_dir / "masks", split="none",
                         patch_size=16, stride=16, progress=False)
    assert "split" not in read(out)
    for seed in range(3):
        dm = HDF5DataModule(path=str(out), image_size=16, seed=seed, test_fraction=0.34, val_fraction=0.17)
        dm.setup()
        vol = read(out)["volume"]
        sets = [set(vol[ds.rows].tolist()) for ds in (dm.train_set, dm.val_set, dm.test_set)]
        assert all(sets) and not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])


def test_dataloader_with_two_workers_reads_the_file(phantom_dir, tmp_path):
    out = prepare_folder(phantom_dir / "scans", tmp_path / "w.h5", masks=phantom_dir / "masks",
                         patch_size=16, stride=8, progress=False)
    d = read(out)
    dm = HDF5DataModule(path=str(out), image_size=16, num_workers=2, eval_batch_size=50, eval_train_samples=0)
    dm.setup()
    assert dm.test_set._file is None  # nothing opened in the main process before the workers start
    seen = 0
    for batch in dm.test_dataloader():
        rows = batch["index"].numpy()
        expected = torch.from_numpy(d["images"][rows].astype(np.float32)) / 255 * 2 - 1
        torch.testing.assert_close(batch["image"][:, 0], expected)
        assert torch.equal(batch["mask"], torch.from_numpy(d["masks"][rows]))
        assert torch.equal(batch["label"], torch.from_numpy(d["labels"][rows]))
        seen += len(rows)
    assert seen == int((d["split"] == SPLITS["test"]).sum())


def test_schema_attributes_are_checked(tmp_path):
    write_npz(tmp_path / "x.npz")
    out = tmp_path / "o.h5"
    assert main(["npz", str(tmp_path / "x.npz"), str(out), "--normal-classes", "0", "--no-progress"]) == 0
    assert inspect_hdf5(out).size == 28
    with h5py.File(out, "a") as f:
        f.attrs["patch_size"] = 64
    with pytest.raises(InputError, match=r"o\.h5: attribute patch_size=64 but the images are 28x28"):
        inspect_hdf5(out)


def test_oct_paper_preset_runs_on_a_prepared_folder(tmp_path):
    """The README's path: scans and masks -> prepare -> experiment=oct_paper (a tiny budget here)."""
    from conftest import TINY, compose_cfg

    from anogan.engine.pipeline import train

    root = write_phantom(tmp_path / "oct", healthy=2, healthy_test=1, fluid=1, scans=2, height=96, width=128,
                         blobs=(3, 4), seed=1)
    out = tmp_path / "patches.h5"
    assert main(["folder", str(root / "scans"), str(out), "--masks", str(root / "masks"), "--no-progress",
                 "--normalise", "global", "--min-foreground", "0.2"]) == 0
    cfg = compose_cfg("train", ["experiment=oct_paper", f"data.path={out}", *TINY, "trainer.max_epochs=1",
                                "inversion.steps=2", "logger=none", "data.eval_train_samples=4"], tmp_path / "run")
    assert (cfg.data.image_size, cfg.inversion.lam, cfg.inversion.steps) == (64, 0.1, 2)
    assert cfg.data.num_workers == 2 and cfg.data._target_ == "anogan.data.HDF5DataModule"
    train(cfg)
    metrics = assert_aurocs_match_scores(tmp_path / "run")
    info = inspect_hdf5(out)
    assert metrics["n_normal"] + metrics["n_anomalous"] == int((info.split == SPLITS["test"]).sum())
    assert isinstance(metrics["pixel_auroc"], float)  # masks with fluid pixels: defined (null otherwise)
    assert (tmp_path / "run" / "figures" / "anomaly_grid.png").exists()


def test_oct_paper_preset_has_the_papers_settings(tmp_path):
    from conftest import compose_cfg

    cfg = compose_cfg("train", ["experiment=oct_paper", "data.path=x.h5"], tmp_path)
    assert (cfg.data.image_size, cfg.inversion.lam, cfg.inversion.steps, cfg.trainer.max_epochs) == (64, 0.1, 500, 20)


@pytest.mark.parametrize("option, value", [("--patch-size", "0"), ("--stride", "-2"), ("--min-foreground", "1.5"),
                                           ("--min-anomalous-pixels", "0")])
def test_bad_options_are_named(phantom_dir, tmp_path, capsys, option, value):
    assert main(["folder", str(phantom_dir / "scans"), str(tmp_path / "o.h5"), option, value]) == 2
    assert f"{option} {value}" in capsys.readouterr().err and not (tmp_path / "o.h5").exists()
