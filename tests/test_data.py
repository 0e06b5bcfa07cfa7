import gzip
import struct
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from anogan.data import SPLITS, DigitsDataModule, HDF5DataModule, IDXDataModule, sources
from anogan.data.sources import DEBIAN_FASHION_MNIST, load_digits_arrays, locate_idx_files, read_idx
from anogan.errors import InputError, MissingInputError


def items(dataset):
    return [dataset[i] for i in range(len(dataset))]


def test_digits_one_class_splits():
    dm = DigitsDataModule(normal_classes=[3, 5], image_size=28, seed=1)
    dm.setup()
    _, classes = load_digits_arrays()
    train = items(dm.train_set)
    assert train and all(classes[int(it["index"])] in (3, 5) for it in train)
    assert all(it["image"].shape == (1, 28, 28) and it["image"].min() >= -1 and it["image"].max() <= 1
               for it in train[:5])
    for ds, split in ((dm.val_set, "val"), (dm.test_set, "test")):
        its = items(ds)
        assert {int(it["split"]) for it in its} == {SPLITS[split]}
        for it in its:
            assert int(it["label"]) == int(classes[int(it["index"])] not in (3, 5))
    rows = [{int(it["index"]) for it in items(ds)} for ds in (dm.train_set, dm.val_set, dm.test_set)]
    assert not (rows[0] & rows[1]) and not (rows[0] & rows[2]) and not (rows[1] & rows[2])
    assert len(rows[2]) == round(0.2 * 1797)
    # deterministic from the seed, different for another seed
    dm2 = DigitsDataModule(normal_classes=[3, 5], image_size=28, seed=1)
    dm2.setup()
    assert torch.equal(dm2.test_set.rows, dm.test_set.rows)
    dm3 = DigitsDataModule(normal_classes=[3, 5], image_size=28, seed=2)
    dm3.setup()
    assert not torch.equal(dm3.test_set.rows, dm.test_set.rows)


def test_test_loader_serves_test_split_then_a_training_sample():
    dm = DigitsDataModule(image_size=28, eval_train_samples=10, eval_batch_size=512)
    dm.setup()
    batch = next(iter(dm.test_dataloader()))
    split = batch["split"]
    assert int((split == SPLITS["test"]).sum()) == len(dm.test_set)
    assert int((split == SPLITS["train"]).sum()) == 10
    assert (batch["label"][split == SPLITS["train"]] == 0).all()


def test_evaluate_on_val_scores_the_labelled_validation_split_and_calibrates_on_nothing():
    """data.evaluate_on=val: the validation split (all classes, labelled) takes the test split's place in the
    test loader, served as split = test so that every metric describes it; no normal validation sample is
    added for calibration (those images are the scored ones); training and validation are unchanged."""
    ref = DigitsDataModule(normal_classes=[3], image_size=28, seed=1)
    ref.setup()
    dm = DigitsDataModule(normal_classes=[3], image_size=28, seed=1, evaluate_on="val", eval_train_samples=10,
                          eval_batch_size=2000)
    dm.setup()
    batch = next(iter(dm.test_dataloader()))
    test = batch["split"] == SPLITS["test"]
    assert torch.equal(batch["index"][test], ref.val_set.rows)
    assert torch.equal(batch["label"][test], ref.val_set.labels) and set(batch["label"][test].tolist()) == {0, 1}
    assert not (batch["split"] == SPLITS["val"]).any() and int((batch["split"] == SPLITS["train"]).sum()) == 10
    assert torch.equal(dm.train_set.rows, ref.train_set.rows) and int(dm.val_set[0]["split"]) == SPLITS["val"]
    assert len(dm.val_sample()) == 0 and len(ref.val_sample()) > 0
    # data.test_subset draws from the split scored
    sub = DigitsDataModule(normal_classes=[3], image_size=28, seed=1, evaluate_on="val", test_subset=50)
    sub.setup()
    assert len(sub.test_set) == 50 and set(sub.test_set.dataset.rows.tolist()) == set(ref.val_set.rows.tolist())
    with pytest.raises(InputError, match=r"data.evaluate_on='tset': expected test \(the test split\) or val"):
        DigitsDataModule(evaluate_on="tset")


def test_unknown_normal_class_is_named():
    dm = DigitsDataModule(normal_classes=[12])
    with pytest.raises(InputError, match=r"normal_classes=\[12\].*no image of class \[12\]"):
        dm.setup()


def write_idx(path: Path, array: np.ndarray, gz: bool) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    (gzip.open if gz else open)(path, "wb").write(data)


def make_idx_dir(root: Path, gz: bool = True, n_train: int = 60, n_test: int = 30) -> dict:
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)),
        "train-labels-idx1-ubyte": np.arange(n_train) % 3,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)),
        "t10k-labels-idx1-ubyte": np.arange(n_test) % 3,
    }
    root.mkdir(parents=True, exist_ok=True)
    for name, arr in arrays.items():
        write_idx(root / (name + (".gz" if gz else "")), arr, gz)
    return arrays


@pytest.mark.parametrize("gz", [True, False])
def test_idx_reader_reads_tiny_files(tmp_path, gz):
    arrays = make_idx_dir(tmp_path, gz)
    suffix = ".gz" if gz else ""
    images = read_idx(tmp_path / f"train-images-idx3-ubyte{suffix}")
    assert images.shape == (60, 28, 28) and images.dtype == np.uint8
    np.testing.assert_array_equal(images, arrays["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(read_idx(tmp_path / f"t10k-labels-idx1-ubyte{suffix}"), np.arange(30) % 3)


def test_idx_reader_rejects_a_truncated_file(tmp_path):
    make_idx_dir(tmp_path, gz=False)
    p = tmp_path / "t10k-images-idx3-ubyte"
    p.write_bytes(p.read_bytes()[:-10])
    with pytest.raises(InputError, match="truncated"):
        read_idx(p)


def test_idx_datamodule_standard_protocol(tmp_path):
    arrays = make_idx_dir(tmp_path / "fm")
    dm = IDXDataModule(dataset="mnist", root=str(tmp_path / "fm"), download=False, normal_classes=[1],
                       image_size=28, val_fraction=0.2)
    dm.setup()
    train_classes = arrays["train-labels-idx1-ubyte"]
    assert all(train_classes[int(it["index"])] == 1 for it in items(dm.train_set))
    assert len(dm.train_set) + len(dm.val_set) < 60  # 20 % held out, other classes dropped
    test = items(dm.test_set)
    assert len(test) == 30  # the whole test file
    expected = (arrays["t10k-labels-idx1-ubyte"] != 1).astype(int)
    assert [int(it["label"]) for it in test] == expected.tolist()
    img = arrays["t10k-images-idx3-ubyte"][0].astype(np.float32) / 255 * 2 - 1
    torch.testing.assert_close(test[0]["image"][0], torch.from_numpy(img))  # 0..255 -> [-1, 1]


def test_missing_idx_files_error_lists_files_places_and_fix(tmp_path, monkeypatch):
    def no_network(url, dest):
        raise OSError("network unreachable")

    monkeypatch.setattr(sources, "_download", no_network)
    with pytest.raises(MissingInputError) as err:
        locate_idx_files("mnist", tmp_path / "nowhere")
    msg = str(err.value)
    assert "train-images-idx3-ubyte" in msg and "t10k-labels-idx1-ubyte" in msg
    assert str(tmp_path / "nowhere") in msg and "network unreachable" in msg and "data.root" in msg


@pytest.mark.skipif(not DEBIAN_FASHION_MNIST.is_dir(),
                    reason="Debian's dataset-fashion-mnist is not installed (apt-get install -y dataset-fashion-mnist)")
def test_debian_fashion_mnist_files(tmp_path):
    files = locate_idx_files("fashion_mnist", tmp_path, download=False)
    assert all(str(p).startswith(str(DEBIAN_FASHION_MNIST)) for p in files.values())
    images, classes = sources.load_idx_split(files, "test")
    assert images.shape == (10000, 28, 28) and sorted(np.unique(classes)) == list(range(10))
    assert np.bincount(classes).tolist() == [1000] * 10


def write_h5(path: Path, n: int = 40, **overrides) -> dict:
    rng = np.random.default_rng(0)
    data = {
        "images": rng.integers(0, 256, (n, 32, 32)).astype(np.uint8),
        "labels": (np.arange(n) % 4 == 0).astype(np.int64),
        "masks": np.zeros((n, 32, 32), dtype=bool),
    }
    data["masks"][data["labels"] == 1, 5:9, 5:9] = True
    data.update(overrides)
    with h5py.File(path, "w") as f:
        for k, v in data.items():
            if v is not None:
                f.create_dataset(k, data=v)
    return data


def test_hdf5_round_trip(tmp_path):
    data = write_h5(tmp_path / "d.h5")
    dm = HDF5DataModule(path=str(tmp_path / "d.h5"), image_size=32, seed=0, num_workers=0)
    dm.setup()
    seen = []
    for ds in (dm.train_set, dm.val_set, dm.test_set):
        for it in items(ds):
            row = int(it["index"])
            seen.append(row)
            expected = torch.from_numpy(data["images"][row].astype(np.float32)) / 255 * 2 - 1
            torch.testing.assert_close(it["image"][0], expected)
            assert int(it["label"]) == data["labels"][row]
            assert torch.equal(it["mask"], torch.from_numpy(data["masks"][row]))
    # every row is used once, except anomalous rows of the training pool (training is normal-only)
    assert len(seen) == len(set(seen)) and set(range(40)) - set(seen) <= set(np.flatnonzero(data["labels"]))
    assert all(int(it["label"]) == 0 for it in items(dm.train_set))


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"labels": None}, r"'labels' is missing"),
        ({"labels": np.zeros(39, dtype=np.int64)}, r"'labels' has shape \(39,\); expected \(40,\)"),
        ({"labels": np.where(np.arange(40) == 17, 3, 0)}, r"'labels' must be 0 or 1, found 3 at row 17"),
        ({"images": np.full((40, 32, 32), 0.5, np.float32).copy()}, None),
        ({"masks": np.zeros((40, 16, 16), bool)}, r"'masks' has shape \(40, 16, 16\)"),
        ({"images": np.zeros((40, 32, 32), np.int32)}, r"'images' has dtype int32"),
    ],
)
def test_bad_hdf5_files_are_reported_with_file_dataset_and_row(tmp_path, overrides, message):
    path = tmp_path / "bad.h5"
    write_h5(path, **overrides)
    dm = HDF5DataModule(path=str(path), image_size=32)
    if message is None:  # floats in [0, 1] are valid
        dm.setup()
        return
    with pytest.raises(InputError, match=message) as err:
        dm.setup()
    assert str(path) in str(err.value)


def test_hdf5_nan_is_reported_with_its_row(tmp_path):
    images = np.full((40, 32, 32), 0.5, np.float32)
    images[23, 4, 4] = np.nan
    write_h5(tmp_path / "nan.h5", images=images)
    with pytest.raises(InputError, match=r"'images' holds NaN or inf at row 23"):
        HDF5DataModule(path=str(tmp_path / "nan.h5")).setup()


def test_hdf5_missing_file_names_the_setting(tmp_path):
    with pytest.raises(MissingInputError, match="data.path"):
        HDF5DataModule(path=str(tmp_path / "absent.h5")).setup()
