"""The sample-quality figure: G's samples against the normal training images (anogan.callbacks.SampleQuality)."""

from __future__ import annotations

import json
import logging

import torch
from sklearn.datasets import load_digits

from anogan.callbacks.samples import sample_quality


def _zeros() -> torch.Tensor:
    x = load_digits()
    zeros = torch.tensor(x.images[x.target == 0], dtype=torch.float32)[:, None] / 8 - 1  # [-1, 1]
    return zeros


def test_a_g_that_draws_the_class_scores_near_one_and_texture_far_above():
    zeros = _zeros()
    train, new = zeros[:150], zeros[150:]  # new: normal images G "draws" without having seen them
    good = sample_quality(new, train, held_out=60)
    assert good["reference"] == 90 and good["held_out"] == 60 and good["samples"] == len(new)
    assert 0.7 < good["ratio"] < 1.3, good
    texture = torch.rand(64, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert sample_quality(texture, train, held_out=60)["ratio"] > 2.0
    assert 0.8 < good["spread_ratio"] < 1.25
    blurred = zeros[150:].mean(0, keepdim=True).expand(16, -1, -1, -1)  # the mean zero, drawn 16 times
    collapsed = sample_quality(blurred, train, 60)
    assert collapsed["ratio"] < 1 and collapsed["spread_ratio"] == 0  # close, but no variety: collapse
    copies = sample_quality(train[:20], train, held_out=60)  # memorised training images: far below 1
    assert copies["ratio"] < 0.2


def test_too_few_training_images_give_no_ratio_with_the_reason():
    out = sample_quality(torch.zeros(4, 1, 8, 8), torch.zeros(1, 1, 8, 8), held_out=10)
    assert out["ratio"] is None and "1 training image(s)" in out["reason"]


def test_a_training_run_writes_the_figure_and_warns_about_an_untrained_g(tiny_run, caplog):
    """tiny_run trains 2 epochs: its G draws noise, which the figure must say."""
    result = json.loads((tiny_run / "sample_quality.json").read_text())
    assert result["samples"] == 256 and result["ratio"] > result["warn_ratio"] == 1.5
    from conftest import TINY, compose_cfg

    from anogan.engine.pipeline import train

    caplog.set_level(logging.WARNING, logger="anogan.callbacks.samples")
    cfg = compose_cfg("train", TINY + ["trainer.max_epochs=1", "evaluate=false"], tiny_run.parent / "sq_again")
    train(cfg)
    assert any("G has not learned the normal class" in r.getMessage() for r in caplog.records)
