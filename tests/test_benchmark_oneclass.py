"""The Fashion-MNIST one-class benchmark on a tiny budget: two classes of a small IDX set, few steps."""

import csv
import importlib.util

import numpy as np
import pytest
from conftest import ROOT, TINY
from test_data import write_idx


def _benchmark():
    spec = importlib.util.spec_from_file_location("fashion_mnist_oneclass",
                                                  ROOT / "benchmarks" / "fashion_mnist_oneclass.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _idx_set(root, n_train=40, n_test=12):
    """Ten classes, class c a bright band at rows 2c..2c+5 over noise: easy for the pixel baselines."""
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


def test_benchmark_runs_two_classes_and_writes_its_table(tmp_path, monkeypatch):
    bench = _benchmark()
    _idx_set(tmp_path / "idx")
    out = tmp_path / "bench"
    args = ["--out", str(out), "--classes", "0", "3", "--test-subset", "80", *TINY, "trainer.max_epochs=1",
            "data.image_size=28", f"data.root={tmp_path / 'idx'}", "data.download=false", "data.eval_train_samples=0"]
    rows = bench.main(args)
    assert sorted(rows) == [0, 3]
    with open(out / "auroc.csv") as f:
        table = list(csv.reader(f))
    assert table[0] == ["class", "name", "AnoGAN", "GAN_R", "f-AnoGAN", "aCAE", "PCA", "1-NN"]
    assert [r[0] for r in table[1:]] == ["0", "3", "mean"] and table[2][1] == "Dress"
    values = np.array([[float(v) for v in r[2:]] for r in table[1:]])
    assert ((values >= 0) & (values <= 1)).all()
    np.testing.assert_allclose(values[2], values[:2].mean(0), atol=1e-4)
    assert (values[:2, -2:] > 0.95).all()  # PCA and 1-NN see the bands
    for c in (0, 3):
        assert (out / f"class_{c}" / "checkpoints" / "encoder.ckpt").is_file()
        assert (out / f"class_{c}" / "figures" / "roc_models.png").is_file()
    md = (out / "auroc.md").read_text()
    assert "| mean (2 classes) |" in md and "80 test images" in md and "trainer.max_epochs=1" in md

    # a second call finds every class done: nothing is trained again, the table is the same
    from anogan import pipeline

    monkeypatch.setattr(pipeline, "train", lambda cfg: pytest.fail("class trained again"))
    assert bench.main(args) == rows


def test_benchmark_rejects_unknown_classes(tmp_path):
    with pytest.raises(SystemExit):
        _benchmark().main(["--out", str(tmp_path), "--classes", "10"])
