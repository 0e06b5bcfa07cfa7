"""Issue 12: every path that ended in a silently wrong number, or trusted a file it should not, now
refuses with the fix or computes the right value. Grouped by the issue's items."""

from __future__ import annotations

import json
import warnings

import h5py
import numpy as np
import pytest
import torch
from conftest import TINY, assert_aurocs_match_scores, compose_cfg
from omegaconf import OmegaConf, open_dict

from anogan.callbacks import read_scores
from anogan.metrics.detection import pixel_auroc_metric
from anogan.callbacks.score_file import ScoreFile, _settings
from anogan.data import SPLITS, HDF5DataModule, IDXDataModule
from anogan.data.hdf5 import inspect_hdf5
from anogan.data.patches import PrepareError, prepare_arrays, prepare_folder
from anogan.models.encoder import EncoderTraining
from anogan.models.inversion import Inversion, load_gan
from anogan.nets import Encoder
from anogan.engine.pipeline import evaluate_checkpoint, train
from anogan.runtime.checkpoints import (
    AtomicCheckpointIO,
    CheckpointError,
    check_resume_data,
    gan_identity,
    read_checkpoint,
)
from anogan.runtime.checks import NonFiniteLossError
from anogan.engine.stages import stage_scorers
from anogan.errors import InputError

EVAL = ["inversion.steps=2", "logger=none", "trainer.enable_progress_bar=false"]


class _Payload:
    """Unpickling this runs code: it creates the directory ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return os.mkdir, (self.marker,)


def _eval_cfg(tmp_path, overrides=(), hdf5=None):
    """evaluate.py's config: the checkpoint's data (a 24-image test subset), or the HDF5 file ``hdf5``."""
    data = (["+data.eval_train_samples=4", "+data.test_subset=24"] if hdf5 is None else
            ["data=hdf5", f"data.path={hdf5}", "data.eval_train_samples=4"])
    return compose_cfg("evaluate", ["ckpt_path=unused", *EVAL, *data, *overrides], tmp_path)


def _stage_ckpt(tiny_ckpt, path, G=None, D=None):
    """An encoder.ckpt as EncoderTraining writes it, trained (here: initialised) against G, D."""
    G0, D0, _, _ = load_gan(tiny_ckpt)
    G, D = G or G0, D or D0
    module = EncoderTraining(G, D, Encoder(32, 1, G.z_dim, 8), lambda p: torch.optim.Adam(p))
    ckpt = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(ckpt)
    torch.save(ckpt, path)
    return path


# -- 1. checkpoint trust ---------------------------------------------------------------------------
def test_every_checkpoint_entry_point_refuses_a_code_running_pickle(tiny_ckpt, tmp_path):
    marker = tmp_path / "pwned"
    gan = torch.load(tiny_ckpt, map_location="cpu", weights_only=True)
    evil = tmp_path / "evil.ckpt"
    torch.save({**gan, "anogan_config": _Payload(marker)}, evil)
    stage = tmp_path / "evil_stage.ckpt"
    ckpt = torch.load(_stage_ckpt(tiny_ckpt, tmp_path / "encoder.ckpt"), weights_only=True)
    torch.save({**ckpt, "hyper_parameters": _Payload(marker)}, stage)
    G, D, _, _ = load_gan(tiny_ckpt)
    refused = r"holds Python objects .*weights_only=True"
    for name in ("encoder", "acae"):  # evaluate.py encoder_ckpt_path= / acae_ckpt_path=
        with pytest.raises(CheckpointError, match=refused):
            stage_scorers(_eval_cfg(tmp_path / name, [f"{name}_ckpt_path={stage}"]), tiny_ckpt, G, D)
    with pytest.raises(CheckpointError, match=refused):  # found beside ckpt_path
        (tmp_path / "run" / "checkpoints").mkdir(parents=True)
        (tmp_path / "run" / "checkpoints" / "encoder.ckpt").write_bytes(stage.read_bytes())
        stage_scorers(_eval_cfg(tmp_path / "beside"), tmp_path / "run" / "checkpoints" / "last.ckpt", G, D)
    with pytest.raises(CheckpointError, match=refused):  # what Lightning reads on resume, hpc_ckpt_* too
        AtomicCheckpointIO().load_checkpoint(evil, weights_only=False)
    cfg = compose_cfg("train", [*TINY, "logger=none", "evaluate=false", "trainer.max_epochs=1",
                                "+trainer.limit_train_batches=1", "+trainer.limit_val_batches=0"], tmp_path / "hpc")
    (tmp_path / "hpc" / "hpc_ckpt_1.ckpt").write_bytes(evil.read_bytes())
    with open_dict(cfg):
        cfg.trainer.default_root_dir = str(tmp_path / "hpc")
        cfg.ckpt_path = "hpc"  # what Lightning picks on SLURM when a hpc_ckpt exists
    from hydra.utils import instantiate

    from anogan.runtime.checkpoints import checkpoint_plugins

    trainer = instantiate(cfg.trainer, plugins=checkpoint_plugins(None), logger=False, callbacks=[])
    with pytest.raises(CheckpointError, match=refused):
        trainer.fit(instantiate(cfg.model), datamodule=instantiate(cfg.data), ckpt_path="hpc", weights_only=False)
    assert not marker.exists()


# -- 2. provenance ---------------------------------------------------------------------------------
def test_a_stage_checkpoint_of_other_gan_weights_is_refused_naming_both_files(tiny_ckpt, tmp_path):
    G, D, _, _ = load_gan(tiny_ckpt)
    good = _stage_ckpt(tiny_ckpt, tmp_path / "encoder.ckpt")
    encoder, scorers = stage_scorers(_eval_cfg(tmp_path / "a", [f"encoder_ckpt_path={good}"]), tiny_ckpt, G, D)
    assert encoder is not None and len(scorers) == 1
    G2, D2, _, _ = load_gan(tiny_ckpt)
    with torch.no_grad():
        next(G2.parameters()).view(-1)[0] += 1e-6  # the GAN trained again: any change counts
    assert gan_identity(G2, D2) != gan_identity(G, D)
    with pytest.raises(CheckpointError, match=rf"encoder.ckpt was trained against GAN weights .* not those of "
                       rf"{tiny_ckpt}.*python train.py encoder=izif ckpt_path=auto hydra.run.dir="):
        stage_scorers(_eval_cfg(tmp_path / "b", [f"encoder_ckpt_path={good}"]), tiny_ckpt, G2, D2)
    old = torch.load(good, weights_only=True)
    del old["anogan_gan_identity"]  # written before identities existed
    torch.save(old, tmp_path / "old.ckpt")
    with pytest.raises(CheckpointError, match="records no GAN identity"):
        stage_scorers(_eval_cfg(tmp_path / "c", [f"encoder_ckpt_path={tmp_path / 'old.ckpt'}"]), tiny_ckpt, G, D)


def test_scores_file_resume_key_holds_everything_that_changes_a_row(tiny_ckpt, tmp_path):
    G, D, prior, _ = load_gan(tiny_ckpt)

    class Trainer:
        class datamodule:
            config = {"_target_": "anogan.data.DigitsDataModule", "test_subset": 24, "num_workers": 0}

    base = _settings(Trainer, Inversion(G, D, prior=prior, steps=3))
    changed = {"early_stop": Inversion(G, D, prior=prior, steps=3, early_stop=True),
               "tol": Inversion(G, D, prior=prior, steps=3, tol=0.5),
               "patience": Inversion(G, D, prior=prior, steps=3, patience=3)}
    for key, module in changed.items():
        assert _settings(Trainer, module)[key] != base[key], key
    G2, D2, _, _ = load_gan(tiny_ckpt)
    with torch.no_grad():
        next(D2.parameters()).mul_(1.01)
    assert _settings(Trainer, Inversion(G2, D2, prior=prior, steps=3))["gan"] != base["gan"]
    Trainer.datamodule.config = {**Trainer.datamodule.config, "test_subset": 25}
    assert _settings(Trainer, Inversion(G, D, prior=prior, steps=3))["data"] != base["data"]
    Trainer.datamodule.config = {**Trainer.datamodule.config, "test_subset": 24, "num_workers": 2}
    assert _settings(Trainer, Inversion(G, D, prior=prior, steps=3)) == base  # loading only: same rows
    # a partial file of another data config is not resumed
    partial = tmp_path / "scores.h5.partial"
    with h5py.File(partial, "w") as f:
        f.create_dataset("index", data=np.arange(3))
        for k, v in {**base, "data": json.dumps({"test_subset": 25})}.items():
            f.attrs[k] = v
    sf = ScoreFile(tmp_path / "scores.h5")
    sf.settings = base
    assert not sf._matches(partial)
    with h5py.File(partial, "a") as f:
        f.attrs["data"] = base["data"]
    assert sf._matches(partial)


def test_resuming_training_with_other_data_is_named(tiny_ckpt, tmp_path):
    ckpt = read_checkpoint(tiny_ckpt)
    data = dict(ckpt["anogan_config"]["data"])
    check_resume_data(ckpt, tiny_ckpt, {**data, "num_workers": 2, "test_subset": 10})  # loading, evaluation
    with pytest.raises(CheckpointError, match=r"trained on other data .*data.normal_classes: checkpoint \[0\], "
                       r"configured \[1\].*start a new run without ckpt_path"):
        check_resume_data(ckpt, tiny_ckpt, {**data, "normal_classes": [1]})
    with pytest.raises(CheckpointError, match="data.val_fraction"):
        train(compose_cfg("train", [*TINY, f"ckpt_path={tiny_ckpt}", "data.val_fraction=0.3"], tmp_path))


# -- 3. metrics that are undefined or binned -------------------------------------------------------
def _hdf5(path, n=24, masks="empty", channels_last=False, dtype=np.uint8, size=32):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 200, (n, size, size)).astype(dtype)
    labels = np.arange(n) % 2
    with h5py.File(path, "w") as f:
        f.create_dataset("images", data=images[..., None].repeat(3, -1) if channels_last else images)
        f.create_dataset("labels", data=labels)
        f.create_dataset("split", data=np.where(np.arange(n) < n // 2, SPLITS["train"], SPLITS["test"]))
        if masks == "empty":
            f.create_dataset("masks", data=np.zeros((n, size, size), bool))
    return path


def test_pixel_auroc_without_an_anomalous_pixel_is_null_with_its_reason(tiny_ckpt, tmp_path):
    path = _hdf5(tmp_path / "empty_masks.h5", n=48)
    cfg = _eval_cfg(tmp_path / "eval", hdf5=path)
    evaluate_checkpoint(cfg, tiny_ckpt)
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["pixel_auroc"] is None  # torchmetrics gave 0.0
    assert "0 anomalous" in metrics["pixel_auroc_reason"]


def test_binned_pixel_auroc_is_within_0_01_of_the_exact_one_over_the_maps_range():
    from torchmetrics.classification import BinaryAUROC

    g = torch.Generator().manual_seed(0)
    masks = torch.rand(200_000, generator=g) < 0.1
    maps = (torch.rand(200_000, generator=g) * 1.2 + 0.8 * masks).clamp(0, 2).double()  # in [0, 2C], C = 1
    exact = float(pixel_auroc_metric(1)(maps, masks.long()))
    binned = float(pixel_auroc_metric(1, 200)(maps, masks.long()))
    old = float(BinaryAUROC(thresholds=200, normalization=None)(maps, masks.long()))  # bins over [0, 1]
    assert abs(binned - exact) < 0.01
    assert abs(old - exact) > 0.05  # what the binned AUROC used to be


# -- 4. data that enters wrong ---------------------------------------------------------------------
def test_whole_non_square_images_give_one_item_each(tmp_path):
    rng = np.random.default_rng(0)
    parts = {s: (rng.integers(0, 256, (n, 75, 100)).astype(np.uint8), np.arange(n) % 2)
             for s, n in (("train", 20), ("test", 34))}
    out = prepare_arrays(parts, tmp_path / "o.h5", [0], "npz:x.npz", progress=False)
    info = inspect_hdf5(out)
    assert info.n == 54 and info.size == 100  # was 108 rows: two overlapping patches per image
    with h5py.File(out) as f:
        np.testing.assert_array_equal(f["images"][20, 12:87, :], parts["test"][0][0])
        assert f["images"][20, :12].max() == 0 and "100x75" in f.attrs["padded_to_square"]


def _scan_folder(tmp_path, pages=5, mask_mode=None):
    from PIL import Image

    rng = np.random.default_rng(0)
    (tmp_path / "scans" / "v1").mkdir(parents=True)
    frames = [Image.fromarray(rng.integers(0, 255, (75, 100)).astype(np.uint8)) for _ in range(pages)]
    frames[0].save(tmp_path / "scans" / "v1" / "vol.tif", save_all=True, append_images=frames[1:])
    return frames


def test_every_page_of_a_multi_page_tiff_is_a_b_scan(tmp_path):
    _scan_folder(tmp_path, pages=5)
    out = prepare_folder(tmp_path / "scans", tmp_path / "o.h5", patch_size=32, stride=32, progress=False)
    assert inspect_hdf5(out).n == 5 * 12  # 5 pages of 3 x 4 patches (was the 12 of one page)


def test_palette_masks_are_read_by_index(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for vol in ("v0", "v1"):
        (tmp_path / "scans" / vol).mkdir(parents=True)
        Image.fromarray(rng.integers(50, 255, (64, 64)).astype(np.uint8)).save(tmp_path / "scans" / vol / "a.png")
    (tmp_path / "masks" / "v1").mkdir(parents=True)
    index = np.zeros((64, 64), np.uint8)
    index[:20, :20] = 1
    mask = Image.fromarray(index, mode="P")
    mask.putpalette([0, 0, 0, 255, 40, 40] + [0] * 762)  # index 1 drawn red: grey level 103
    mask.save(tmp_path / "masks" / "v1" / "a.png")
    out = prepare_folder(tmp_path / "scans", tmp_path / "o.h5", masks=tmp_path / "masks", patch_size=32,
                         stride=32, progress=False)
    with h5py.File(out) as f:
        assert f["masks"][()].sum() == 400 and f["labels"][()].tolist() == [0] * 4 + [1, 0, 0, 0]


def test_12_bit_scans_in_uint16_warn_with_the_range_and_the_fix(tmp_path):
    rng = np.random.default_rng(0)
    parts = {"train": (rng.integers(0, 4096, (8, 28, 28)).astype(np.uint16), np.zeros(8, int)),
             "test": (rng.integers(0, 4096, (8, 28, 28)).astype(np.uint16), np.arange(8) % 2)}
    with pytest.warns(UserWarning, match=r"span 0\.\.409\d of uint16's 0\.\.65535.*\[-1, -0\.87.*--normalise"):
        prepare_arrays(parts, tmp_path / "o.h5", [0], "npz:x", progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        prepare_arrays(parts, tmp_path / "g.h5", [0], "npz:x", progress=False, normalise="global")
    signed = {k: (v.astype(np.int16) - 2000, c) for k, (v, c) in parts.items()}
    with pytest.raises(PrepareError, match="signed int16 images; pass --normalise global"):
        prepare_arrays(signed, tmp_path / "s.h5", [0], "npz:x", progress=False)
    assert inspect_hdf5(prepare_arrays(signed, tmp_path / "s.h5", [0], "npz:x", progress=False,
                                       normalise="global")).n == 16


def test_every_source_repeats_grey_images_to_data_channels(tmp_path):
    from test_data import make_idx_dir

    make_idx_dir(tmp_path / "fm")
    dm = IDXDataModule(root=str(tmp_path / "fm"), download=False, normal_classes=[0], channels=3, image_size=32)
    dm.setup()
    image = dm.test_set[0]["image"]
    assert image.shape == (3, 32, 32) and torch.equal(image[0], image[2])
    h5 = HDF5DataModule(path=str(_hdf5(tmp_path / "g.h5")), channels=3, image_size=32)
    h5.setup()
    assert h5.test_set[0]["image"].shape == (3, 32, 32)


def test_hdf5_layouts_and_types_are_named_with_the_fix(tmp_path):
    with pytest.raises(InputError, match=r"channels-last \(N, H, W, C\).*np.moveaxis\(x, -1, 1\)"):
        inspect_hdf5(_hdf5(tmp_path / "cl.h5", channels_last=True))
    with pytest.raises(InputError, match=r"dtype int16 \(signed.*\(x - x.min\(\)\) / \(x.max\(\) - x.min\(\)\)"):
        inspect_hdf5(_hdf5(tmp_path / "i16.h5", dtype=np.int16))


def test_settings_outside_their_domain_are_refused_by_their_config_key(tiny_ckpt, tmp_path):
    G, D, _, _ = load_gan(tiny_ckpt)
    with pytest.raises(InputError, match=r"inversion.lr=-1 must be > 0"):
        Inversion(G, D, lr=-1)
    with pytest.raises(InputError, match=r"inversion.lr=-1"):  # train.py: before training
        train(compose_cfg("train", [*TINY, "inversion.lr=-1"], tmp_path / "t"))
    with pytest.raises(Exception, match=r"model.optimizer_d.lr=-0.1 must be > 0"):  # through Hydra's instantiate
        train(compose_cfg("train", [*TINY, "model.optimizer_d.lr=-0.1"], tmp_path / "d"))
    with pytest.raises(Exception, match=r"data.batch_size=0 must be an integer >= 1"):
        train(compose_cfg("train", [*TINY, "data.batch_size=0"], tmp_path / "b"))


def test_evaluation_names_resized_data_and_gives_channel_fixes_that_work_there(tiny_ckpt, tmp_path, caplog):
    path = _hdf5(tmp_path / "big.h5", size=40, masks=None, n=48)
    with caplog.at_level("WARNING"):
        evaluate_checkpoint(_eval_cfg(tmp_path / "e", hdf5=path),
                            tiny_ckpt)
    assert sum("holds 40x40 images; they are resized (bilinear) to the model's 32x32" in r.message
               for r in caplog.records) == 1
    rgb = tmp_path / "rgb.h5"
    with h5py.File(rgb, "w") as f:
        f.create_dataset("images", data=np.zeros((8, 3, 32, 32), np.uint8))
        f.create_dataset("labels", data=np.arange(8) % 2)
    with pytest.raises(InputError, match=r"holds 3-channel images but data.channels=1: .*or evaluate them with a "
                       "GAN trained at data.channels=3"):
        evaluate_checkpoint(_eval_cfg(tmp_path / "r", hdf5=rgb), tiny_ckpt)


# -- 5. stages that go wrong quietly ---------------------------------------------------------------
def test_the_encoder_stops_at_a_non_finite_loss_before_any_update(tiny_ckpt):
    G, D, _, _ = load_gan(tiny_ckpt)
    module = EncoderTraining(G, D, Encoder(32, 1, G.z_dim, 8), lambda p: torch.optim.Adam(p))
    x = torch.zeros(4, 1, 32, 32)
    x[1, 0, 3, 3] = float("nan")
    with pytest.raises(NonFiniteLossError, match=r"train/izif_loss is nan .*encoder.module.optimizer.lr"):
        module.training_step({"image": x}, 0)


# -- 6. every AUROC of metrics.json, recomputed independently ---------------------------------------
def test_metrics_json_aurocs_and_operating_points_match_scikit_learn_on_scores_h5(tiny_run):
    from sklearn.metrics import roc_curve

    metrics = assert_aurocs_match_scores(tiny_run)
    rows = read_scores(tiny_run / "scores.h5")
    test = rows["split"] == SPLITS["test"]
    y = rows["label"][test]
    for name, row in metrics["scores"].items():
        s = rows[f"scores/{name}"][test].astype(np.float64)
        fpr, tpr, thr = roc_curve(y, s, drop_intermediate=False)
        best = int(np.argmax(tpr - fpr))
        pred = s >= thr[best]
        tp, fp = int((pred & (y == 1)).sum()), int((pred & (y == 0)).sum())
        assert row["sensitivity"] - (1 - row["specificity"]) == pytest.approx(tpr[best] - fpr[best], abs=1e-9)
        assert row["threshold"] == pytest.approx(thr[best]), name
        assert row["sensitivity"] == pytest.approx(tp / int(y.sum())) and row["recall"] == row["sensitivity"]
        assert row["specificity"] == pytest.approx(1 - fp / int((1 - y).sum()))
        assert row["precision"] == pytest.approx(tp / (tp + fp))


def test_config_keys_used_in_hints_exist(tmp_path):
    """The hints above name config keys; they must be real ones."""
    cfg = compose_cfg("train", ["encoder=izif", "acae=dcgan"], tmp_path)
    for key in ("model.optimizer_g.lr", "model.optimizer_d.lr", "encoder.module.optimizer.lr",
                "acae.module.optimizer_ae.lr", "acae.module.optimizer_d.lr", "inversion.lr", "data.channels"):
        assert OmegaConf.select(cfg, key) is not None, key


def test_a_stored_data_config_that_would_run_code_is_refused(tiny_ckpt, tmp_path):
    """The checkpoint's data config is plain data that Hydra would instantiate: its _target_ is checked."""
    ckpt = torch.load(tiny_ckpt, map_location="cpu", weights_only=True)
    marker = tmp_path / "pwned"
    ckpt["anogan_config"]["data"] = {"_target_": "os.mkdir", "path": str(marker)}
    evil = tmp_path / "evil.ckpt"
    torch.save(ckpt, evil)
    with pytest.raises(CheckpointError, match=r"data._target_='os.mkdir' is not an anogan.data DataModule"):
        evaluate_checkpoint(compose_cfg("evaluate", ["ckpt_path=unused", *EVAL], tmp_path / "e"), evil)
    assert not marker.exists()


def test_the_fix_named_for_a_stale_stage_checkpoint_works(tiny_run, tmp_path):
    """`python train.py encoder=izif ckpt_path=auto hydra.run.dir=<run>` keeps the finished GAN and trains
    the encoder again against it; evaluation then accepts it."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run / "checkpoints", run / "checkpoints")
    last = run / "checkpoints" / "last.ckpt"
    identity = gan_identity(*load_gan(last)[:2])
    _stage_ckpt(last, run / "checkpoints" / "encoder.ckpt", *load_gan(last)[:2])
    stale = torch.load(run / "checkpoints" / "encoder.ckpt", weights_only=True)
    stale["anogan_gan_identity"] = "0" * 64
    torch.save(stale, run / "checkpoints" / "encoder.ckpt")
    with pytest.raises(CheckpointError, match=rf"hydra.run.dir={run}"):
        stage_scorers(_eval_cfg(tmp_path / "a"), last, *load_gan(last)[:2])
    train(compose_cfg("train", [*TINY, "encoder=izif", "encoder.max_epochs=1", "ckpt_path=auto", "evaluate=false",
                                "logger=none"], run))
    G, D, _, _ = load_gan(last)
    assert gan_identity(G, D) == identity  # the GAN was not trained again
    encoder, _ = stage_scorers(_eval_cfg(tmp_path / "b"), last, G, D)
    assert encoder is not None
