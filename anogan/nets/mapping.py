"""Fast copies of frozen G and D for the mapping: the same functions, computed with fewer and faster
kernels. Used only by ``anogan.models.inversion``'s step loop; the trained networks are never modified.

* eval-mode BatchNorm is folded into the (transposed) convolution before it;
* the layers that oneDNN runs slowly on CPU become matrix products: the grey-image layers (a
  convolution with one input channel, a transposed convolution with one output channel) as
  unfold/fold + matmul, G's projection of the 1x1 latent and D's logit layer over the whole feature
  map as a single matmul. On a 2-core CPU these four layers took a third of a mapping step.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from anogan.nets import family_of


def _pairs(conv: nn.Module) -> tuple[tuple[int, int], ...]:
    return tuple(tuple(getattr(conv, a)) for a in ("kernel_size", "stride", "padding", "dilation"))


def _plain(conv: nn.Module) -> bool:
    return conv.groups == 1 and conv.padding_mode == "zeros" and not isinstance(conv.padding, str)


class _Fallback(nn.Module):
    """Keeps the original layer for inputs the fast path does not cover. ``channels_last``: inputs
    and outputs in that memory format, read and written without a layout copy."""

    def __init__(self, conv: nn.Module, channels_last: bool = False):
        super().__init__()
        self.conv, self.channels_last = conv, channels_last
        self.register_buffer("bias", None if conv.bias is None else conv.bias.detach().view(1, -1, 1, 1))

    def _out(self, out: torch.Tensor) -> torch.Tensor:
        return out if self.bias is None else out + self.bias


class GreyConv(_Fallback):
    """Conv2d with one input channel as unfold + matmul: (B, 1, H, W) -> (B, O, H', W')."""

    def __init__(self, conv: nn.Conv2d, channels_last: bool = False):
        super().__init__(conv, channels_last)
        w = conv.weight.detach().reshape(conv.out_channels, -1)  # (O, kh kw)
        self.register_buffer("w", w.t().contiguous() if channels_last else w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = _pairs(self.conv)
        B, _, H, W = x.shape
        size = ((H + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (W + 2 * pw - dw * (kw - 1) - 1) // sw + 1)
        cols = F.unfold(x, (kh, kw), (dh, dw), (ph, pw), (sh, sw))  # (B, kh kw, L)
        if self.channels_last:
            return self._out((cols.transpose(1, 2) @ self.w).view(B, *size, -1).permute(0, 3, 1, 2))
        return self._out((self.w @ cols).view(B, -1, *size))


class GreyConvTranspose(_Fallback):
    """ConvTranspose2d with one output channel as matmul + fold: (B, C, H, W) -> (B, 1, H', W')."""

    def __init__(self, conv: nn.ConvTranspose2d, channels_last: bool = False):
        super().__init__(conv, channels_last)
        w = conv.weight.detach().reshape(conv.in_channels, -1)  # (C, kh kw)
        self.register_buffer("w", w if channels_last else w.t().contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = _pairs(self.conv)
        B, C, H, W = x.shape
        size = ((H - 1) * sh - 2 * ph + dh * (kh - 1) + 1, (W - 1) * sw - 2 * pw + dw * (kw - 1) + 1)
        if self.channels_last:
            cols = (x.permute(0, 2, 3, 1).reshape(B, H * W, C) @ self.w).transpose(1, 2)
        else:
            cols = self.w @ x.flatten(2)  # (B, kh kw, L)
        return self._out(F.fold(cols, size, (kh, kw), (dh, dw), (ph, pw), (sh, sw)))


class LatentProjection(_Fallback):
    """A transposed convolution (padding 0) of a 1x1 input, G's first layer, as one matmul:
    (B, C, 1, 1) -> (B, O, kh, kw)."""

    def __init__(self, conv: nn.ConvTranspose2d, channels_last: bool = False):
        super().__init__(conv, channels_last)
        w = conv.weight.detach()  # (C, O, kh, kw)
        w = w.permute(0, 2, 3, 1) if channels_last else w
        self.register_buffer("w", w.reshape(conv.in_channels, -1).contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (1, 1):
            return self.conv(x)
        out, (kh, kw) = x.flatten(1) @ self.w, self.conv.kernel_size
        if self.channels_last:
            return self._out(out.view(-1, kh, kw, self.conv.out_channels).permute(0, 3, 1, 2))
        return self._out(out.view(-1, self.conv.out_channels, kh, kw))


class WholeMapConv(_Fallback):
    """A convolution (padding 0) whose kernel covers its whole input, D's logit layer, as one matmul:
    (B, C, k, k) -> (B, O, 1, 1)."""

    def __init__(self, conv: nn.Conv2d, channels_last: bool = False):
        super().__init__(conv, channels_last)
        w = conv.weight.detach()  # (O, C, kh, kw)
        w = w.permute(0, 2, 3, 1) if channels_last else w
        self.register_buffer("w", w.reshape(conv.out_channels, -1).t().contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != tuple(self.conv.kernel_size):
            return self.conv(x)
        flat = x.permute(0, 2, 3, 1).reshape(len(x), -1) if self.channels_last else x.flatten(1)
        return self._out((flat @ self.w).view(len(x), -1, 1, 1))


def fold_batchnorm(net: nn.Module) -> nn.Module:
    """Fold, in place, every eval-mode BatchNorm that follows a (transposed) convolution inside an
    ``nn.Sequential`` into that convolution's weight and bias; returns ``net``."""
    for seq in [mod for mod in net.modules() if isinstance(mod, nn.Sequential)]:
        keys = list(seq._modules)
        for conv_key, bn_key in zip(keys, keys[1:]):
            conv, bn = seq._modules.get(conv_key), seq._modules[bn_key]
            if isinstance(conv, (nn.Conv2d, nn.ConvTranspose2d)) and isinstance(bn, nn.BatchNorm2d):
                seq._modules[conv_key] = fuse_conv_bn_eval(conv, bn, transpose=isinstance(conv, nn.ConvTranspose2d))
                del seq._modules[bn_key]
    return net


def _fast_layer(mod: nn.Module, channels_last: bool) -> nn.Module | None:
    if isinstance(mod, nn.ConvTranspose2d) and _plain(mod) and mod.output_padding == (0, 0):
        if mod.padding == (0, 0) and mod.dilation == (1, 1):
            return LatentProjection(mod, channels_last)
        if mod.out_channels == 1:
            return GreyConvTranspose(mod, channels_last)
    elif isinstance(mod, nn.Conv2d) and _plain(mod):
        if mod.in_channels == 1:
            return GreyConv(mod, channels_last)
        if mod.padding == (0, 0) and mod.dilation == (1, 1):
            return WholeMapConv(mod, channels_last)
    return None


# devices on which the fast copies were measured faster than the plain nets (docs/performance.md); elsewhere
# (CUDA: cuDNN, not oneDNN) the mapping uses plain copies until benchmarks/gpu.sh measures them
FAST_DEVICES = ("cpu",)


def mapping_copy(net: nn.Module, channels_last: bool = False, fast: bool = True) -> nn.Module:
    """A frozen, eval-mode copy of ``net`` computing the same function faster (see the module
    docstring); in the channels_last memory format if asked. The fast layers serve the DCGAN family,
    on which they were measured; a net of another family (f-AnoGAN's ResNet), or any net with
    ``fast=False``, is copied as it is."""
    if family_of(net) != "dcgan" or not fast:
        net = copy.deepcopy(net).eval()
        return (net.to(memory_format=torch.channels_last) if channels_last else net).requires_grad_(False)
    net = fold_batchnorm(copy.deepcopy(net).eval())
    for parent in list(net.modules()):
        for name, child in list(parent._modules.items()):
            fast = _fast_layer(child, channels_last) if child is not None else None
            if fast is not None:
                parent._modules[name] = fast
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    return net.requires_grad_(False)
