"""Shared layers: equalised linear maps, modulated convolutions and residual blocks.

Every method imports these instead of copying them. They are written for speed on CPUs as much as GPUs:
plain ``F.conv2d`` calls (fast in bf16 through oneDNN/AMX and cuDNN), no grouped convolutions, no
normalisation layers with running statistics, and nothing that branches on tensor values, so generators
built from them trace to ONNX.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# Residual branches are summed and scaled by 1/sqrt(2) so the variance of activations stays constant.
_RES_SCALE = 1 / math.sqrt(2)


def leaky_relu(x: torch.Tensor) -> torch.Tensor:
    """The activation used throughout: LeakyReLU(0.2)."""
    return F.leaky_relu(x, 0.2)


class _ChannelsLastGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad.contiguous(memory_format=torch.channels_last)


def channels_last_grad(x: torch.Tensor) -> torch.Tensor:
    """The identity, whose backward hands the gradient on in channels-last layout when ``x`` has it.

    Reductions (a mean, a flatten) hand back gradients in the standard layout. Where such a gradient meets a
    channels-last activation, every backward kernel below it takes a strided slow path: 10x slower for
    ``leaky_relu`` on this CPU. Wrap a feature map read both by convolutions and by a reduction.
    """
    if x.dim() != 4 or not x.requires_grad or not x.is_contiguous(memory_format=torch.channels_last):
        return x
    return _ChannelsLastGrad.apply(x)


def two_hot(target: torch.Tensor, num_groups: int) -> torch.Tensor:
    """Age condition vectors [B, num_groups] of float group positions [B] (or int64 group indices).

    Position ``6.25`` is 0.75 of group 6 plus 0.25 of group 7; an integer position is the one-hot vector of
    that group. Every method conditions on this (as a vector, a tiled map or a blend of learned
    embeddings), so ``--to 37`` means 37 years, between the groups that bracket it. Traces to ONNX.
    """
    t = target.float().clamp(0, num_groups - 1)
    low = t.floor().clamp(max=num_groups - 2)
    frac = (t - low)[:, None]
    groups = torch.arange(num_groups, device=t.device, dtype=torch.float32)[None, :]
    low = low[:, None]
    return (groups == low).float() * (1 - frac) + (groups == low + 1).float() * frac


class AgeEmbedding(nn.Module):
    """A learned vector per age group, blended between neighbouring groups for a float position.

    State-dict compatible with ``nn.Embedding(num_groups, dim)`` (one ``weight`` [num_groups, dim]).
    """

    def __init__(self, num_groups: int, dim: int) -> None:
        super().__init__()
        self.num_groups = num_groups
        self.weight = nn.Parameter(torch.randn(num_groups, dim))

    def forward(self, target: torch.Tensor) -> torch.Tensor:
        return two_hot(target, self.num_groups) @ self.weight


class EqualLinear(nn.Module):
    """A linear layer with StyleGAN's equalised learning rate: weights ~ N(0, 1) scaled at run time.

    ``bias_init`` lets style affines start at 1, so that modulation begins as the identity.
    """

    def __init__(self, in_dim: int, out_dim: int, *, bias_init: float = 0.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim))
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init)))
        self.scale = 1 / math.sqrt(in_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.scale, self.bias)


class EqualConv2d(nn.Module):
    """A convolution with equalised learning rate, so one Adam learning rate suits every layer."""

    def __init__(
        self, in_ch: int, out_ch: int, kernel_size: int, *, stride: int = 1, padding: int | None = None
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_ch, in_ch, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_ch))
        self.scale = 1 / math.sqrt(in_ch * kernel_size * kernel_size)
        self.stride = stride
        self.padding = kernel_size // 2 if padding is None else padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.scale, self.bias, stride=self.stride, padding=self.padding)


class ModulatedConv2d(nn.Module):
    """StyleGAN2's modulated convolution: a style vector scales the input channels of one shared kernel.

    Instead of building one kernel per sample (a grouped convolution, slow on CPUs), the input is scaled
    by the per-sample style ``s``, convolved with the shared kernel, and the output is demodulated by
    ``1 / ||w * s||`` per sample and output channel. The result is mathematically the same as StyleGAN2's
    weight demodulation and runs as a single ordinary convolution.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, style_dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_ch, in_ch, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_ch))
        self.affine = EqualLinear(style_dim, in_ch, bias_init=1.0)
        self.scale = 1 / math.sqrt(in_ch * kernel_size * kernel_size)
        self.padding = kernel_size // 2

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        s = self.affine(style)  # [B, in_ch]: this layer's modulation parameters
        w = self.weight * self.scale
        # ||w * s||^2 for every (sample, output channel), in fp32 even under autocast.
        demod = torch.rsqrt(s.float().square() @ w.float().square().sum(dim=(2, 3)).t() + 1e-8)
        # The .to(dtype) casts keep products in the activations' dtype (bf16 under autocast): mixing in an
        # fp32 vector would promote whole feature maps to fp32.
        out = F.conv2d(scale_channels(x, s.to(x.dtype)), w, padding=self.padding)
        return scale_channels(out, demod.to(out.dtype), self.bias.to(out.dtype))


def scale_channels(x: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x [B,C,H,W] * scale [B,C] (+ bias [C])``, broadcast over the pixels.

    On a channels-last tensor this runs on a ``[B, H*W, C]`` view: the same arithmetic, but CPU kernels
    broadcast along the innermost axis about twice as fast as over a 4-D channels-last layout.
    """
    b, c, h, w = x.shape
    if x.is_contiguous() or not x.is_contiguous(memory_format=torch.channels_last):
        out = x * scale[:, :, None, None]
        return out if bias is None else out + bias[None, :, None, None]
    flat = x.permute(0, 2, 3, 1).reshape(b, h * w, c)
    flat = flat * scale[:, None, :] if bias is None else torch.addcmul(bias[None, None, :], flat, scale[:, None, :])
    return flat.reshape(b, h, w, c).permute(0, 3, 1, 2)


class DownBlock(nn.Module):
    """Halve the resolution with a strided 3x3 convolution, then a residual 3x3 convolution.

    Both convolutions run at the output resolution — four times cheaper than convolving first and
    pooling after, which matters on CPUs.
    """

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.down = EqualConv2d(in_ch, out_ch, 3, stride=2)
        self.conv = EqualConv2d(out_ch, out_ch, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = leaky_relu(self.down(x))
        return (h + leaky_relu(self.conv(h))) * _RES_SCALE


class ModulatedResBlock(nn.Module):
    """A modulated 3x3 convolution at the input resolution, 2x nearest upsampling (when ``up``), then a
    residual modulated 3x3 convolution; both are modulated by the same style vector.

    Changing the channel count before upsampling keeps the wide input off the high-resolution grid.
    """

    def __init__(self, in_ch: int, out_ch: int, style_dim: int, *, up: bool = True) -> None:
        super().__init__()
        self.conv1 = ModulatedConv2d(in_ch, out_ch, 3, style_dim)
        self.conv2 = ModulatedConv2d(out_ch, out_ch, 3, style_dim)
        self.up = up

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        h = leaky_relu(self.conv1(x, style))
        if self.up:
            h = F.interpolate(h, scale_factor=2.0, mode="nearest")
        return (h + leaky_relu(self.conv2(h, style))) * _RES_SCALE


class AdaIN(nn.Module):
    """Instance normalisation whose per-channel gain and shift are learned affine maps of a condition vector.

    With a one-hot age the condition makes it a conditional instance norm; with a style vector, AdaIN. The gain
    starts at 1 plus a random term, so a freshly built network already responds to its condition.
    """

    def __init__(self, channels: int, cond_dim: int) -> None:
        super().__init__()
        self.gain = EqualLinear(cond_dim, channels, bias_init=1.0)
        self.shift = EqualLinear(cond_dim, channels)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return instance_norm(x, self.gain(cond), self.shift(cond))


def instance_norm(x: torch.Tensor, gain: torch.Tensor | None = None, shift: torch.Tensor | None = None) -> torch.Tensor:
    """Instance normalisation of ``x`` [B,C,H,W], then a per-sample gain and shift [B,C] when given.

    Statistics in fp32 from the first two moments (``torch.var_mean`` runs 8x slower on CPUs); one multiply-add
    in ``x``'s dtype and memory layout (``F.instance_norm`` hands a channels-last map back in the standard layout,
    and converting back and forth cost about a tenth of a CPU training step).
    """
    x32 = x.float()
    mean = x32.mean(dim=(2, 3))
    var = (x32.square().mean(dim=(2, 3)) - mean.square()).clamp(min=0)
    scale = torch.rsqrt(var + 1e-5)
    if gain is not None:
        scale = scale * gain.float()
    offset = -mean * scale
    if shift is not None:
        offset = offset + shift.float()
    return x * scale.to(x.dtype)[:, :, None, None] + offset.to(x.dtype)[:, :, None, None]


class AdaINResBlock(nn.Module):
    """A 3x3 convolution + AdaIN at the input resolution, 2x nearest upsampling (when ``up``), then a residual
    3x3 convolution + AdaIN: :class:`faceage.nn.layers.ModulatedResBlock`'s layout with AdaIN instead."""

    def __init__(self, in_ch: int, out_ch: int, style_dim: int, *, up: bool = True) -> None:
        super().__init__()
        self.conv1, self.norm1 = EqualConv2d(in_ch, out_ch, 3), AdaIN(out_ch, style_dim)
        self.conv2, self.norm2 = EqualConv2d(out_ch, out_ch, 3), AdaIN(out_ch, style_dim)
        self.up = up

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        h = leaky_relu(self.norm1(self.conv1(x), style))
        if self.up:
            h = F.interpolate(h, scale_factor=2.0, mode="nearest")
        return (h + leaky_relu(self.norm2(self.conv2(h), style))) * _RES_SCALE
