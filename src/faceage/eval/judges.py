"""The face recogniser and detector that judge outputs, chosen by measurement.

Each image (output or real face) goes through dlib's own pipeline up to the face chip: HOG detection
(which also gives the "face still detected" share), the 5-point landmark model and
``dlib.get_face_chip`` (150 px, padding 0.25), falling back to the whole image when no face is found,
as ``faceage.face.identity.dlib_embeddings(aligned=True)`` does. The 128-D descriptor of the chip then
comes from the PyTorch port ``DlibResNet`` in batches, because dlib's recogniser is the slow part.

Measured on this project's shared 2-core CPU, 128 px UTKFace chips: dlib's recogniser ~140 ms per chip,
the port ~13 ms in fp32 (the same descriptors to 1e-6) and ~5 ms in bf16 (within ~0.01 of dlib's;
the same-person threshold is 0.6). HOG without upsampling takes ~10 ms a face, with dlib's 2x pyramid
~35 ms, and finds the same 98-99 % of real chips, so faces are searched from the detector's 80 px
window up (a face fills most of a 128 px chip). Every run re-checks the port against dlib on a few
real chips and reports it (``embedding_check``).
"""

from __future__ import annotations

import numpy as np
import torch

from faceage.face.detection import as_rgb, detect, shape_predictor
from faceage.face.identity import CHIP_PADDING, dlib_chip_embeddings, torch_chip_embeddings
from faceage.face.resnet import INPUT_SIZE, DlibResNet

# Smallest face side searched for: dlib's HOG window, so no upsampling is needed (see module docstring).
DETECT_MIN_FACE = 80
DETECTOR_NAME = f"dlib HOG frontal face detector, faces >= {DETECT_MIN_FACE} px (no upsampling)"


def face_chip(image: np.ndarray) -> tuple[np.ndarray, bool]:
    """dlib's 150x150 chip of the largest face (whole image when none is found) and whether one was found.

    ``faceage.face.identity.face_chip`` with the detector limited to faces of at least
    ``DETECT_MIN_FACE`` pixels and plain HOG (no CNN confirmation, no landmark-layout check: ``verify=False``),
    which is what makes it fast enough for thousands of outputs and is the detector the report names.
    """
    import dlib

    rgb = as_rgb(image)
    faces = detect(rgb, detector="hog", largest=True, landmarks=5, min_face=DETECT_MIN_FACE, verify=False)
    box = faces[0].box if faces else (0, 0, rgb.shape[1] - 1, rgb.shape[0] - 1)
    rect = dlib.rectangle(*(int(round(v)) for v in box))
    chip = dlib.get_face_chip(rgb, shape_predictor(5)(rgb, rect), size=INPUT_SIZE, padding=CHIP_PADDING)
    return chip, bool(faces)


class FaceJudge:
    """Images -> (dlib face descriptors [N,128] from the PyTorch port, face found [N] bool)."""

    def __init__(self, device: torch.device | str = "cpu", bf16: bool = True, batch_size: int = 64) -> None:
        self.bf16 = bf16
        self.batch_size = batch_size
        self.net = DlibResNet.from_dlib().to(torch.device(device)).to(memory_format=torch.channels_last)
        self.name = (
            f"dlib face descriptors: dlib's 150 px chips (5-point landmarks, padding {CHIP_PADDING}), "
            f"recogniser run by its PyTorch port DlibResNet ({'bf16' if bf16 else 'fp32'})"
        )

    def chips(self, images: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
        pairs = [face_chip(img) for img in images]
        return [c for c, _ in pairs], np.array([f for _, f in pairs], dtype=bool)

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        chips, found = self.chips(images)
        emb = torch_chip_embeddings(chips, self.net, batch_size=self.batch_size, bf16=self.bf16)
        return emb, found

    def check(self, images: np.ndarray) -> dict:
        """How far the port's descriptors are from dlib's own on the same chips (the bulk backend's error)."""
        chips, _ = self.chips(images)
        ours = torch_chip_embeddings(chips, self.net, batch_size=self.batch_size, bf16=self.bf16)
        d = np.linalg.norm(ours - dlib_chip_embeddings(chips), axis=1)
        return {"faces": int(len(d)), "mean_distance": float(d.mean()), "max_distance": float(d.max())}
