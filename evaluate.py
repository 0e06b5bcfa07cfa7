"""Map and score a test set with a trained GAN: ``python evaluate.py ckpt_path=... [overrides]``."""

import sys

import hydra
from omegaconf import DictConfig

from anogan.cli import data_field_overrides
from anogan.pipeline import evaluate


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> float:
    return evaluate(cfg)["test/auroc/anomaly"]


if __name__ == "__main__":
    sys.argv = data_field_overrides(sys.argv)  # data.<field>=... edits the checkpoint's data config
    main()
