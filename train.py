"""Train the AnoGAN GAN on normal images, then evaluate it: ``python train.py [overrides]``."""

import hydra
from omegaconf import DictConfig

from anogan.engine.cli import run_main
from anogan.engine.pipeline import train


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    metrics = train(cfg)
    return metrics.get("test/auroc/anomaly")


if __name__ == "__main__":
    run_main(main)  # bad input or settings: one line, exit status 2 (anogan/engine/cli.py)
