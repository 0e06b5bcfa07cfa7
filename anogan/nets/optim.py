"""TensorFlow 1's RMSProp, the optimiser of f-AnoGAN's released encoder training (tSchlegl/f-AnoGAN,
``z_encoding_izif.py``: ``tf.train.RMSPropOptimizer(learning_rate=5e-5)``), which PyTorch's
``torch.optim.RMSprop`` does not reproduce: TF1 starts the mean-square accumulator at 1 (PyTorch at 0),
adds epsilon inside the square root (PyTorch outside) and defaults to decay 0.9 and epsilon 1e-10
(PyTorch: alpha 0.99, eps 1e-8). From zero, PyTorch's first steps are about lr / sqrt(1 - alpha) = 10 x lr
per weight; from one, TF1's stay about lr x |gradient| until the accumulator has decayed (~100 steps).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

__all__ = ["TF1RMSprop"]


class TF1RMSprop(torch.optim.Optimizer):
    """RMSProp as TF1's ``RMSPropOptimizer`` (no momentum, not centred), per parameter w with gradient g:

        ms <- decay * ms + (1 - decay) * g^2        (ms starts at 1)
        w  <- w - lr * g / sqrt(ms + eps)

    (TensorFlow's ``ApplyRMSProp`` kernel with momentum 0.) ``lr`` > 0, ``decay`` in [0, 1), ``eps`` >= 0;
    ValueError naming the argument otherwise. Defaults: TF1's (decay 0.9, eps 1e-10) and the official
    encoder's learning rate 5e-5."""

    def __init__(self, params: Iterable, lr: float = 5e-5, decay: float = 0.9, eps: float = 1e-10):
        if not lr > 0:
            raise ValueError(f"lr={lr} must be > 0")
        if not 0 <= decay < 1:
            raise ValueError(f"decay={decay} must lie in [0, 1)")
        if not eps >= 0:
            raise ValueError(f"eps={eps} must be >= 0")
        super().__init__(params, dict(lr=lr, decay=decay, eps=eps))

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["ms"] = torch.ones_like(p, memory_format=torch.preserve_format)
                ms = state["ms"]
                ms.mul_(group["decay"]).addcmul_(p.grad, p.grad, value=1 - group["decay"])
                p.addcdiv_(p.grad, ms.add(group["eps"]).sqrt_(), value=-group["lr"])
        return loss
