"""Identity: dlib's 128-D face descriptors as the reference, the PyTorch port for batches and losses.

Descriptors are computed the way dlib intends: fit the 5-point landmark model to the face, cut a
150x150 chip with ``dlib.get_face_chip`` (padding 0.25) and run the ResNet on it. With
``aligned=True`` the whole image is taken to be the face: the face is still detected inside it to
place the landmark model, and when the detector finds nothing the landmark model is run on the
full-image rectangle (on UTKFace chips dlib's own box covers almost the whole chip, so this changes
the descriptor by ~0.05, far below the 0.6 same-person threshold). Descriptors are not normalised;
two faces are the same person when their Euclidean distance is below 0.6.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from faceage.face.detection import as_rgb, detect, shape_predictor
from faceage.face.resnet import DLIB_THRESHOLD, INPUT_SIZE, DlibResNet, default_model_path

CHIP_PADDING = 0.25
METRICS = ("cosine", "l2")


class NoFaceError(ValueError):
    """No face was found in an input that had to contain one."""


@functools.cache
def _recognizer():
    import dlib

    return dlib.face_recognition_model_v1(str(default_model_path()))


def face_chip(image: np.ndarray, *, aligned: bool = False, detector: str = "hog") -> np.ndarray | None:
    """dlib's 150x150 chip of the largest face (uint8 RGB), or None when there is no face and not ``aligned``."""
    import dlib

    rgb = as_rgb(image)
    # dlib's own descriptor pipeline (detector + 5 landmarks + chip), without faceage's non-face checks: the
    # descriptor judges whatever dlib calls a face, as dlib's reference would.
    faces = detect(rgb, detector=detector, largest=True, landmarks=5, verify=False)
    if faces:
        box = faces[0].box
    elif aligned:
        box = (0, 0, rgb.shape[1] - 1, rgb.shape[0] - 1)
    else:
        return None
    rect = dlib.rectangle(*(int(round(v)) for v in box))
    shape = shape_predictor(5)(rgb, rect)
    return dlib.get_face_chip(rgb, shape, size=INPUT_SIZE, padding=CHIP_PADDING)


def _chips(images: Sequence[np.ndarray] | np.ndarray, aligned: bool) -> list[np.ndarray]:
    chips = []
    for i, image in enumerate(images):
        chip = face_chip(image, aligned=aligned)
        if chip is None:
            raise NoFaceError(f"no face found in image {i}")
        chips.append(chip)
    return chips


def dlib_embeddings(images: Sequence[np.ndarray] | np.ndarray, aligned: bool = True) -> np.ndarray:
    """dlib's descriptors [N, 128] (float32) of the largest face in each image; NoFaceError when one has none."""
    chips = _chips(images, aligned)
    if not chips:
        return np.zeros((0, 128), np.float32)
    return np.array([np.array(d) for d in _recognizer().compute_face_descriptor(chips)], dtype=np.float32)


def dlib_chip_embeddings(chips: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
    """dlib's descriptors [N, 128] of ready-made 150x150 chips (as from ``face_chip``)."""
    if len(chips) == 0:
        return np.zeros((0, 128), np.float32)
    chips = [np.ascontiguousarray(c) for c in chips]
    return np.array([np.array(d) for d in _recognizer().compute_face_descriptor(chips)], dtype=np.float32)


def chips_to_tensor(chips: Sequence[np.ndarray] | np.ndarray) -> torch.Tensor:
    """uint8 N x 150 x 150 x 3 chips -> float [N, 3, 150, 150] in [0, 255], the port's input."""
    return torch.from_numpy(np.stack(list(chips))).permute(0, 3, 1, 2).float()


@torch.no_grad()
def torch_chip_embeddings(
    chips: Sequence[np.ndarray] | np.ndarray,
    net: DlibResNet,
    *,
    batch_size: int = 32,
    bf16: bool = False,
) -> np.ndarray:
    """Descriptors [N, 128] of 150x150 chips with the PyTorch port, batched on the net's device."""
    device = next(net.parameters()).device
    out = []
    for start in range(0, len(chips), batch_size):
        x = chips_to_tensor(chips[start : start + batch_size]).to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            out.append(net(x).float().cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, 128), np.float32)


def torch_embeddings(
    images: Sequence[np.ndarray] | np.ndarray, net: DlibResNet, aligned: bool = True, **kwargs
) -> np.ndarray:
    """Like ``dlib_embeddings`` but the descriptors come from the PyTorch port (``net``)."""
    return torch_chip_embeddings(_chips(images, aligned), net, **kwargs)


def embedding_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """dlib's Euclidean distance between descriptors (same person below 0.6)."""
    return np.linalg.norm(np.asarray(a, np.float64) - np.asarray(b, np.float64), axis=-1)


def same_person(a: np.ndarray, b: np.ndarray, threshold: float = DLIB_THRESHOLD) -> bool:
    return bool(embedding_distance(a, b) < threshold)


def to_chip(x: torch.Tensor, box: tuple[float, float, float, float] | None = None) -> torch.Tensor:
    """Images in [-1, 1] [B, 3, H, W] -> the port's input: the ``box`` (fractions x0, y0, x1, y1) resized to 150."""
    assert x.ndim == 4 and x.shape[1] == 3, f"expected [B, 3, H, W] images, got {tuple(x.shape)}"
    if box is not None:
        h, w = x.shape[2:]
        x0, y0 = max(0, round(box[0] * w)), max(0, round(box[1] * h))
        x1, y1 = min(w, round(box[2] * w)), min(h, round(box[3] * h))
        x = x[:, :, y0:y1, x0:x1]
    if x.shape[2:] != (INPUT_SIZE, INPUT_SIZE):
        x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False, antialias=True)
    return (x + 1.0) * 127.5


def identity_loss(
    x: torch.Tensor,
    y: torch.Tensor,
    net: DlibResNet,
    *,
    metric: str = "cosine",
    box: tuple[float, float, float, float] | None = None,
) -> torch.Tensor:
    """Mean identity distance between two batches of face images in [-1, 1] (differentiable in both).

    ``metric`` "cosine" gives 1 - cosine similarity of the descriptors, "l2" dlib's Euclidean
    distance. ``box`` is the part of the image that dlib's chip would show (``AlignPreset.chip_box``);
    by default the whole image. Pass ``y.detach()`` when only ``x`` should be pulled towards ``y``.
    """
    if metric not in METRICS:
        raise ValueError(f"unknown identity metric {metric!r}; known: {', '.join(METRICS)}")
    assert x.shape == y.shape, (x.shape, y.shape)
    ex = net(to_chip(x, box)).float()
    ey = net(to_chip(y, box)).float()
    if metric == "cosine":
        return (1.0 - F.cosine_similarity(ex, ey, dim=1)).mean()
    return ((ex - ey).pow(2).sum(dim=1) + 1e-12).sqrt().mean()
