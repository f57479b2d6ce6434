"""The Python API for ageing photos: ``load(name_or_path)`` then ``ager.age(image, to=70)``.

A whole photo is aged face by face: detect, align the way the model's training faces were aligned, run
the generator, colour-match and paste each face back with a feathered mask. An already aligned crop
(``aligned=True``) is resized to the model's resolution, aged and resized back. Nothing here imports
the training package.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from faceage.groups import AgeScheme
from faceage.infer.backends import OnnxBackend, TorchBackend
from faceage.infer.paste import match_colour, paste_faces
from faceage.infer.resolve import ModelNotFoundError, resolve_model
from faceage.infer.strip import progression_strip

ImageLike = Image.Image | np.ndarray
Target = int | str
BACKENDS = ("torch", "onnx")
DEFAULT_ALIGN_PRESET = "utkface"


class NoFaceError(ValueError):
    """A photo has no detectable face, so there is nothing to age."""


@dataclass
class AgedPhoto:
    """One photo aged to several targets: one output image per target and how many faces were aged."""

    images: list[Image.Image]
    faces: int


@dataclass
class _Prepared:
    photo: np.ndarray  # the input, HxWx3 uint8
    crops: np.ndarray  # [F,S,S,3] uint8 faces at the model's resolution
    aligned: list | None  # faceage.face.Aligned per face; None when the input was an aligned crop
    masks: list[np.ndarray]  # feathered SxS mask per face (whole photos only)


def to_array(image: ImageLike) -> np.ndarray:
    """An HxWx3 uint8 RGB array from a PIL image (EXIF orientation applied) or an array (gray/RGBA accepted)."""
    if isinstance(image, Image.Image):
        return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise ValueError(f"image arrays must be uint8 RGB, got dtype {arr.dtype}")
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise ValueError(f"image arrays must be HxWx3 (RGB), got shape {arr.shape}")
    return np.ascontiguousarray(arr[..., :3])


def _align_preset(align: dict | str | None) -> str:
    if isinstance(align, dict):
        return str(align.get("preset", DEFAULT_ALIGN_PRESET))
    return align or DEFAULT_ALIGN_PRESET


class Ager:
    """A face-aging generator with its age scheme and face alignment: photos in, aged photos out."""

    def __init__(self, backend: TorchBackend | OnnxBackend, meta: dict, source: str = "", batch_size: int = 16):
        self.backend = backend
        self.meta = meta
        self.source = source
        self.batch_size = batch_size
        self.scheme = AgeScheme.from_dict(meta["scheme"])
        self.image_size = int(meta["image_size"])
        self.align_preset = _align_preset(meta.get("align"))

    def __repr__(self) -> str:
        return (
            f"Ager({self.source or self.meta.get('model')!s}, {self.image_size}px, scheme={self.scheme.name}, "
            f"backend={self.backend.name}/{self.backend.precision})"
        )

    @property
    def labels(self) -> list[str]:
        """The model's age groups, youngest first."""
        return self.scheme.labels

    def group(self, to: Target) -> int:
        """The group index for an age in years (``70``) or a group label (``"30-39"``) of this model."""
        try:
            return self.scheme.parse(to)
        except ValueError as e:
            raise ValueError(f"bad target age {to!r}: {e}") from None

    def age(self, image: ImageLike, to: Target, *, aligned: bool = False, largest: bool = False) -> Image.Image:
        """``image`` with its faces (or the largest) aged to ``to``; same size as the input."""
        return self.transform(image, [to], aligned=aligned, largest=largest).images[0]

    def age_many(
        self,
        images: Sequence[ImageLike],
        targets: Sequence[Target],
        *,
        aligned: bool = False,
        largest: bool = False,
    ) -> list[list[Image.Image]]:
        """Several images to several targets in shared generator batches; ``result[i][j]`` is image i at target j.

        Raises :class:`NoFaceError` when any photo has no face (use :meth:`transform` per photo to go on).
        """
        groups = [self.group(t) for t in targets]
        prepared = [self._prepare(to_array(im), aligned, largest) for im in images]
        counts = [len(p.crops) for p in prepared]
        generated = self.generate(np.concatenate([p.crops for p in prepared]), groups)
        splits = np.split(generated, np.cumsum(counts)[:-1])
        return [self._finish(p, g) for p, g in zip(prepared, splits, strict=True)]

    def transform(
        self, image: ImageLike, targets: Sequence[Target], *, aligned: bool = False, largest: bool = False
    ) -> AgedPhoto:
        """One image to several targets, with the number of faces that were aged."""
        groups = [self.group(t) for t in targets]
        prepared = self._prepare(to_array(image), aligned, largest)
        return AgedPhoto(self._finish(prepared, self.generate(prepared.crops, groups)), faces=len(prepared.crops))

    def progression(self, image: ImageLike, *, aligned: bool = False) -> Image.Image:
        """A labelled strip of the face (the largest one in a photo) aged to every group of the model."""
        prepared = self._prepare(to_array(image), aligned, largest=True)
        generated = self.generate(prepared.crops[:1], list(range(self.scheme.num_groups)))[0]
        tiles = [np.clip(np.rint(g), 0, 255).astype(np.uint8) for g in generated]
        return progression_strip(tiles, self.labels)

    def generate(self, crops: np.ndarray, groups: Sequence[int]) -> np.ndarray:
        """Aligned crops ``[F,S,S,3]`` uint8 aged to each group: ``[F,T,S,S,3]`` float32 in 0..255."""
        s = self.image_size
        assert crops.shape[1:] == (s, s, 3), f"crops must be [F,{s},{s},3], got {crops.shape}"
        faces = np.repeat(np.arange(len(crops)), len(groups))
        targets = np.tile(np.asarray(groups, dtype=np.int64), len(crops))
        out = np.empty((len(faces), s, s, 3), dtype=np.float32)
        for i in range(0, len(faces), self.batch_size):
            x = crops[faces[i : i + self.batch_size]].astype(np.float32).transpose(0, 3, 1, 2) / 127.5 - 1
            y = self.backend(x, targets[i : i + self.batch_size])
            out[i : i + len(y)] = (np.clip(y, -1, 1).transpose(0, 2, 3, 1) + 1) * 127.5
        return out.reshape(len(crops), len(groups), s, s, 3)

    def _prepare(self, photo: np.ndarray, aligned: bool, largest: bool) -> _Prepared:
        s = self.image_size
        if aligned:
            crop = photo if photo.shape[:2] == (s, s) else _resize(photo, s, s)
            return _Prepared(photo, crop[None], None, [])
        from faceage.face import align, detect, face_mask

        faces = detect(photo, largest=largest)
        if not faces:
            raise NoFaceError("no face found (pass --aligned if the image is already an aligned face crop)")
        aligned_faces = [align(photo, f.landmarks, s, preset=self.align_preset) for f in faces]
        masks = [face_mask(a.landmarks, s) for a in aligned_faces]
        return _Prepared(photo, np.stack([a.image for a in aligned_faces]), aligned_faces, masks)

    def _finish(self, prepared: _Prepared, generated: np.ndarray) -> list[Image.Image]:
        h, w = prepared.photo.shape[:2]
        outputs = []
        for j in range(generated.shape[1]):
            if prepared.aligned is None:
                crop = np.clip(np.rint(generated[0, j]), 0, 255).astype(np.uint8)
                outputs.append(Image.fromarray(crop if crop.shape[:2] == (h, w) else _resize(crop, w, h)))
                continue
            pieces = [
                (a.matrix, m, match_colour(generated[f, j], a.image, m))
                for f, (a, m) in enumerate(zip(prepared.aligned, prepared.masks, strict=True))
            ]
            outputs.append(Image.fromarray(paste_faces(prepared.photo, pieces)))
        return outputs


def _resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    return np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.LANCZOS))


def load(
    name_or_path: str | Path | None = None,
    device: str | torch.device | None = None,
    *,
    backend: str | None = None,
    precision: str = "fp32",
) -> Ager:
    """An :class:`Ager` for the bundled model (``None``), a model name, a folder, a checkpoint or an .onnx file.

    ``backend`` is ``"torch"`` or ``"onnx"`` (default: onnx for an .onnx file, torch otherwise; with onnx a
    folder's ``model.onnx`` is used); ``precision="bf16"`` runs torch under bf16 autocast (faster on CPUs
    with AMX and on GPUs).
    """
    path = resolve_model(name_or_path)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    backend = backend or ("onnx" if path.suffix == ".onnx" else "torch")
    if backend == "onnx":
        from faceage.infer.export import read_onnx_meta

        onnx_path = path / "model.onnx" if path.is_dir() else path
        if onnx_path.suffix != ".onnx" or not onnx_path.is_file():
            raise ModelNotFoundError(
                f"{path} is not an ONNX model; export one with `faceage export --model {path} --onnx MODEL.onnx`"
            )
        if precision != "fp32":
            raise ValueError(f"the onnx backend runs the exported fp32 graph; precision {precision!r} is torch-only")
        return Ager(OnnxBackend(onnx_path, device), read_onnx_meta(onnx_path), source=str(onnx_path))
    if backend != "torch":
        raise ValueError(f"unknown backend {backend!r}; known: {', '.join(BACKENDS)}")
    if path.suffix == ".onnx":
        raise ValueError(f"{path} is an ONNX file: run it with backend 'onnx'")
    from faceage.models.pretrained import load_generator

    generator, meta = load_generator(path, device)
    return Ager(TorchBackend(generator, precision), meta, source=str(path))
