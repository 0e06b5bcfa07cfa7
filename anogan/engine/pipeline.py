"""What ``train.py`` and ``evaluate.py`` do, as functions that tests call too."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from anogan.engine.cli import evaluation_overrides, print_summary, quiet_lightning
from anogan.runtime.distributed import build_trainer, cudnn_benchmark
from anogan.runtime.checkpoints import (
    LAST,
    CheckpointError,
    check_architecture,
    check_resume_data,
    checkpoint_plugins,
    read_checkpoint,
    resolve_ckpt_path,
)
from anogan.runtime.checks import check_data_size, check_image_shape
from anogan.runtime.preemption import requeue_on_signal, stopped_by_sigterm
from anogan.runtime.seeding import EpochSeed
from anogan.data.scans import is_scans, scans_datamodule
from anogan.models.baselines import baseline_scorers, check_baselines
from anogan.models.encoder import check_mode
from anogan.models.inversion import Inversion, check_precision, check_settings, load_gan
from anogan.engine.stages import fit_stages, stage_scorers
from anogan.errors import InputError

log = logging.getLogger(__name__)


class StoreConfig(L.Callback):
    """Put the resolved run config into every checkpoint, so that evaluation can rebuild the data."""

    def __init__(self, cfg: DictConfig):
        self.config = OmegaConf.to_container(cfg, resolve=True)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        checkpoint["anogan_config"] = self.config
        # how the training images were made (HDF5 attributes): data=scans reads new scans the same way
        checkpoint["anogan_data"] = getattr(trainer.datamodule, "recipe", None)


def instantiate_list(cfg: DictConfig | None) -> list[Any]:
    """Instantiate every entry with a ``_target_`` of a config group such as callbacks/ or logger/."""
    if not cfg:
        return []
    return [instantiate(c) for c in cfg.values() if isinstance(c, DictConfig) and "_target_" in c]


def print_config(cfg: DictConfig, save_to: str | Path | None = None) -> None:
    """Print the resolved config as a tree (rich) and save it beside the outputs."""
    from rich.console import Console
    from rich.syntax import Syntax
    from rich.tree import Tree

    tree = Tree("config", guide_style="dim")
    for key, value in cfg.items():
        text = OmegaConf.to_yaml(value, resolve=True) if isinstance(value, DictConfig) else str(value)
        tree.add(str(key)).add(Syntax(text, "yaml"))
    Console().print(tree)
    if save_to is not None:
        with open(save_to, "w") as f:
            Console(file=f, width=120).print(tree)


def seed(cfg: DictConfig) -> None:
    from anogan.engine.sweep import check_ddp_launch

    quiet_lightning()
    check_ddp_launch(cfg)  # before any work: DDP processes that a multirun cannot start
    requeue_on_signal()  # under SLURM: SIGUSR1 before the time limit requeues the job
    L.seed_everything(cfg.seed, workers=True)


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit the GAN on the normal training images; then the stages after it (encoder, aCAE) and, when
    ``cfg.evaluate``, the evaluation, all in one run directory.

    Returns the metrics (training losses, and the evaluation's AUROCs when it ran)."""
    seed(cfg)
    output_dir = Path(cfg.paths.output_dir)
    check_train_config(cfg)
    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), output_dir)
    print_config(cfg, output_dir / "config_tree.log")
    datamodule, model = instantiate(cfg.data), instantiate(cfg.model)
    if ckpt_path is not None:
        check_resume(cfg, ckpt_path, model)
    loggers = instantiate_list(cfg.get("logger"))
    metrics = fit_gan(cfg, model, datamodule, ckpt_path, loggers)
    last = output_dir / LAST
    fit_stages(cfg, last, datamodule)  # f-AnoGAN's encoder, aCAE: when configured (encoder=, acae=)
    if cfg.get("evaluate"):
        metrics.update(evaluate_checkpoint(cfg, last, cfg.data, loggers))
    print_summary(output_dir, last, "train", cfg.trainer.get("max_epochs"),
                  evaluation_overrides(cfg) if cfg.get("evaluate") else None)
    return metrics


def check_train_config(cfg: DictConfig) -> None:
    """Refuse, before the GAN trains (not hours later), a data source that cannot train and the settings
    of the stages and the evaluation that would fail after it (InputError)."""
    if str(cfg.data.get("_target_", "")).endswith("ScansDataModule"):
        raise InputError("data=scans scores new, unlabelled scans with a trained GAN: python evaluate.py "
                         "ckpt_path=<run>/checkpoints/last.ckpt data=scans data.path=<folder>; train on "
                         "data=hdf5 (patches of python -m anogan.data.prepare), data=folder or data=mvtec")
    if cfg.get("encoder"):
        check_mode(cfg.encoder.get("module", {}).get("mode", "izi_f"))
    if cfg.get("evaluate"):
        check_settings(cfg.inversion.lam, cfg.inversion.steps, cfg.inversion.get("record_steps"),
                       cfg.inversion.get("lr"), cfg.inversion.get("init", "random"))
        check_precision(cfg.inversion.get("precision", "32-true"))
        check_baselines(cfg.get("baselines"), bool(cfg.get("encoder")))


def check_resume(cfg: DictConfig, ckpt_path: Path, model: L.LightningModule) -> None:
    """Resuming needs a checkpoint of the same nets and data config (CheckpointError, InputError)."""
    ckpt = read_checkpoint(ckpt_path)
    check_architecture(ckpt, ckpt_path, model)
    check_resume_data(ckpt, ckpt_path, OmegaConf.to_container(cfg.data, resolve=True))


def fit_gan(cfg: DictConfig, model: L.LightningModule, datamodule, ckpt_path: Path | None,
            loggers: list) -> dict[str, float]:
    """``Trainer.fit`` of the GAN (from ``ckpt_path`` when resuming); ``checkpoints/last.ckpt`` after
    every epoch. SIGTERM ends it with the resume command and exit status 143. Returns the last logged
    scalars (losses)."""
    output_dir = Path(cfg.paths.output_dir)
    callbacks = instantiate_list(cfg.get("callbacks")) + [StoreConfig(cfg), EpochSeed(cfg.seed)]
    plugins = checkpoint_plugins(instantiate(cfg.trainer.get("plugins")))
    trainer = build_trainer(cfg.trainer, callbacks=callbacks, logger=loggers or False, plugins=plugins,
                            benchmark=cudnn_benchmark(cfg))
    with stopped_by_sigterm("training", f"{output_dir / LAST} holds the last completed epoch; resume "
                            f"with ckpt_path=auto hydra.run.dir={output_dir}"):
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    log.info("training done: %s", output_dir / LAST)
    return {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}


def evaluation_data_config(cfg: DictConfig, stored: dict) -> DictConfig:
    """The data config of an evaluation: the checkpoint's, with ``cfg.data`` on top (a whole new
    source when it names a ``_target_``, else field overrides); sized for the checkpoint's nets.

    The checkpoint's config is data, not code: Hydra would instantiate any ``_target_`` in it, so one
    outside ``anogan.data`` is refused (CheckpointError) unless ``cfg.data`` replaces the source."""
    if stored.get("data") and not (cfg.get("data") is not None and "_target_" in cfg.data
                                   and cfg.data._target_ != stored["data"].get("_target_")):
        check_stored_targets(stored["data"], "data")
    if not stored.get("data"):
        if cfg.get("data") is None or "_target_" not in cfg.data:
            raise InputError(
                "the checkpoint holds no data config (it was not written by train.py); "
                "choose the data with data=<group>, e.g. data=digits"
            )
        data = cfg.data
    elif cfg.get("data") is None:
        data = OmegaConf.create(stored["data"])
    elif "_target_" in cfg.data and cfg.data._target_ != stored["data"]["_target_"]:
        data = cfg.data
    else:
        data = OmegaConf.merge(stored["data"], cfg.data)
    return data


def check_stored_targets(node, where: str) -> None:
    """Every ``_target_`` of a config read from a checkpoint must name an ``anogan.data`` class:
    instantiating another one (e.g. ``os.system``) would run code that came with the file."""
    if isinstance(node, dict):
        target = node.get("_target_")
        if target is not None and not str(target).startswith("anogan.data."):
            raise CheckpointError(
                f"the checkpoint's stored config {where}._target_={target!r} is not an anogan.data "
                "DataModule, and instantiating it could run code that came with the file; choose the "
                "data yourself with data=<group> (e.g. data=digits or data=hdf5 data.path=...)"
            )
        for k, v in node.items():
            check_stored_targets(v, f"{where}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            check_stored_targets(v, f"{where}[{i}]")


def evaluate_checkpoint(cfg: DictConfig, ckpt_path: str | Path, data_cfg: DictConfig | None = None,
                        loggers: list | None = None) -> dict[str, float]:
    """Map and score the test set (plus a training sample) with the GAN of ``ckpt_path``; write
    metrics.json, scores.h5 and figures/ into the run directory; return the logged metrics.
    ``data_cfg``: the data config to use (train.py's); None: the checkpoint's, with ``cfg.data`` on top."""
    G, D, prior, stored = load_gan(ckpt_path)
    encoder, scorers = stage_scorers(cfg, ckpt_path, G, D)  # f-AnoGAN's encoder, aCAE: found beside the GAN
    data = evaluation_data(cfg, ckpt_path, data_cfg, stored, G)
    datamodule = evaluation_datamodule(data, ckpt_path, G)
    scorers += baseline_scorers(cfg.get("baselines"), datamodule, D, encoder)  # kNN / PCA baselines: baselines=pixel
    model = Inversion(G, D, prior=prior, encoder=encoder, scorers=scorers,
                      **OmegaConf.to_container(cfg.inversion, resolve=True))
    callbacks = evaluation_callbacks(cfg, datamodule, is_scans(data))
    trainer = evaluation_trainer(cfg, callbacks, loggers)
    out = Path(cfg.paths.output_dir)
    with stopped_by_sigterm("evaluation", f"the images mapped so far are kept in {out}/scores.h5.partial; "
                            f"run the same command with hydra.run.dir={out} to resume"):
        trainer.test(model, datamodule=datamodule, verbose=False)  # AnomalyMetrics prints the table
    return {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")}


def evaluation_data(cfg: DictConfig, ckpt_path: str | Path, data_cfg: DictConfig | None, stored: dict,
                    G) -> DictConfig:
    """The evaluation's data config (``data_cfg``, else ``evaluation_data_config``), sized for G
    (``image_size``, ``channels``); sizes asked for on the command line that G cannot take are refused."""
    nets = {"generator": dict(G.config)}
    if data_cfg is None and cfg.get("data") is not None and "_target_" not in cfg.data:
        check_data_size(cfg.data, nets, ckpt_path)  # sizes asked for on the command line
    data = data_cfg if data_cfg is not None else evaluation_data_config(cfg, stored)
    return OmegaConf.merge(data, {"image_size": G.config["image_size"], "channels": G.config["channels"]})


def evaluation_datamodule(data: DictConfig, ckpt_path: str | Path, G):
    """The DataModule of ``data``, set up for testing; its images checked against G's shape. data=scans
    (unlabelled scans: stitched maps and predictions, ``anogan/data/scans.py``) reads them with the
    training's recipe stored in the checkpoint."""
    datamodule = scans_datamodule(data, ckpt_path) if is_scans(data) else instantiate(data)
    datamodule.config = OmegaConf.to_container(data, resolve=True)  # part of scores.h5's resume key
    datamodule.setup("test")
    check_image_shape(datamodule.test_dataloader().dataset[0]["image"], {"generator": dict(G.config)},
                      f"data {data._target_}")
    return datamodule


def evaluation_callbacks(cfg: DictConfig, datamodule, scans: bool) -> list:
    """The evaluation's callbacks (``prediction_callbacks`` for data=scans); settings of theirs that
    depend on the data are refused here, before the Trainer writes anything."""
    callbacks = instantiate_list(cfg.get("prediction_callbacks" if scans else "evaluation_callbacks"))
    for callback in callbacks:
        if hasattr(callback, "check_data"):
            callback.check_data(datamodule)
    return callbacks


def evaluation_trainer(cfg: DictConfig, callbacks: list, loggers: list | None) -> L.Trainer:
    """The training's trainer settings, but never its precision: the mapping optimises z in float32,
    and its G and D follow ``inversion.precision`` (``Inversion.autocast``); ``inference_mode=False``
    (gradients on z); cuDNN's autotuner only where the batch shapes are fixed (early_stop shrinks the
    batch as mappings stop)."""
    if str(cfg.trainer.get("precision", "32-true")) not in ("32-true", "32"):
        log.warning("trainer.precision=%s applies to training only: the mapping runs in float32; set "
                    "inversion.precision=bf16-mixed to run G and D under bf16 autocast", cfg.trainer.precision)
    return build_trainer(  # nothing to checkpoint in a test loop (and no litmodels tip)
        cfg.trainer, inference_mode=False, callbacks=callbacks, logger=loggers or False, enable_checkpointing=False,
        precision="32-true", benchmark=cudnn_benchmark(cfg, fixed_shapes=not cfg.inversion.get("early_stop")),
    )


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """``evaluate.py``: evaluate ``cfg.ckpt_path`` with the inversion settings of ``cfg``."""
    if OmegaConf.is_missing(cfg, "ckpt_path") or not cfg.ckpt_path:
        raise InputError("ckpt_path is missing: python evaluate.py ckpt_path=<run dir>/checkpoints/last.ckpt")
    seed(cfg)
    print_config(cfg, Path(cfg.paths.output_dir) / "config_tree.log")
    metrics = evaluate_checkpoint(cfg, cfg.ckpt_path, loggers=instantiate_list(cfg.get("logger")))
    print_summary(cfg.paths.output_dir, cfg.ckpt_path, "evaluate")
    return metrics
