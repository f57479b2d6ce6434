"""Identity: dlib descriptors of whole images and the differentiable identity loss on two real people."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from faceage.face import align, detect
from faceage.face.identity import (
    NoFaceError,
    dlib_embeddings,
    embedding_distance,
    identity_loss,
    same_person,
    torch_embeddings,
)
from faceage.face.resnet import DlibResNet


@pytest.fixture(scope="module")
def net() -> DlibResNet:
    return DlibResNet.from_dlib()


def _crop(image: np.ndarray, size: int = 128) -> np.ndarray:
    return align(image, detect(image, largest=True)[0].landmarks, size, "utkface").image


def _tensor(*crops: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def _another_photo_of(image: np.ndarray) -> np.ndarray:
    """The same person in a different image: rotated, rescaled and JPEG-compressed."""
    h, w = image.shape[:2]
    rotated = (
        Image.fromarray(image).rotate(8, resample=Image.Resampling.BICUBIC).resize((w * 420 // 512, h * 420 // 512))
    )
    buffer = io.BytesIO()
    rotated.save(buffer, format="JPEG", quality=60)
    return np.asarray(Image.open(buffer).convert("RGB"))


@pytest.fixture(scope="module")
def faces(astronaut, hopper) -> dict[str, np.ndarray]:
    """utkface-preset crops of two people (the astronaut, Grace Hopper), each from two different images."""
    return {
        "astronaut": _crop(astronaut),
        "astronaut_again": _crop(_another_photo_of(astronaut)),
        "other": _crop(hopper),
        "other_again": _crop(_another_photo_of(hopper)),
    }


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_identity_loss_is_lower_for_the_same_person(net, faces, metric):
    x = _tensor(faces["astronaut"], faces["other"]).requires_grad_(True)
    same = _tensor(faces["astronaut_again"], faces["other_again"])
    different = _tensor(faces["other_again"], faces["astronaut_again"])
    loss_same = identity_loss(x, same, net, metric=metric)
    loss_different = identity_loss(x, different, net, metric=metric)
    assert loss_same.item() < 0.5 * loss_different.item()
    loss_same.backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert identity_loss(x, x, net, metric=metric).item() < 1e-3


def test_identity_loss_under_bf16_autocast_and_a_chip_box(net, faces):
    x = _tensor(faces["astronaut"]).requires_grad_(True)
    y = _tensor(faces["astronaut_again"])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = identity_loss(x, y, net, box=(0.05, 0.05, 0.95, 0.95))
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(x.grad).all()
    with pytest.raises(ValueError, match="unknown identity metric"):
        identity_loss(x, y, net, metric="arcface")


def test_dlib_embeddings_of_aligned_crops_and_photos(net, faces, astronaut):
    crops = [faces["astronaut"], faces["astronaut_again"], faces["other"]]
    ref = dlib_embeddings(crops, aligned=True)
    assert ref.shape == (3, 128) and ref.dtype == np.float32
    assert same_person(ref[0], ref[1]) and not same_person(ref[0], ref[2])
    assert np.abs(torch_embeddings(crops, net, aligned=True) - ref).max() < 1e-3
    from_photo = dlib_embeddings([astronaut], aligned=False)[0]
    assert embedding_distance(from_photo, ref[0]) < 0.3, "the photo and its utkface crop give the same person"
    blank = np.full((128, 128, 3), 100, np.uint8)
    with pytest.raises(NoFaceError, match="image 1"):
        dlib_embeddings([astronaut, blank], aligned=False)
    assert dlib_embeddings([blank], aligned=True).shape == (1, 128), "an aligned crop is used even undetected"
