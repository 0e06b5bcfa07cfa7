"""Map and score a test set with a trained GAN: ``python evaluate.py ckpt_path=... [overrides]``; new,
unlabelled scans: ``python evaluate.py ckpt_path=... data=scans data.path=DIR`` (maps, predictions.csv)."""

import sys

import hydra
from omegaconf import DictConfig

from anogan.engine.cli import data_field_overrides
from anogan.engine.cli import run_main
from anogan.engine.pipeline import evaluate


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> float | None:
    return evaluate(cfg).get("test/auroc/anomaly")  # None for data=scans (no labels)


if __name__ == "__main__":
    sys.argv = data_field_overrides(sys.argv)  # data.<field>=... edits the checkpoint's data config
    run_main(main)  # bad input or settings: one line, exit status 2 (anogan/engine/cli.py)
