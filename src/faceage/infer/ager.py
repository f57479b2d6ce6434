"""The Python API for ageing photos: ``load(name_or_path)`` then ``ager.age(image, to=70)``.

A target is an age in years, which the generator gets as a float group position between the two groups around
it (``to=37`` is 37 years, not "30-39"), or a group label (``to="30-39"``: exactly that group).

A whole photo is aged face by face: detect, align the way the model's training faces were aligned, run
the generator, colour-match, and add the model's change (aged crop minus input crop) to the photo through a
feathered mask. The change is upsampled to the photo's own resolution and added to the photo's own pixels,
so a face bigger than the model's crop keeps its skin and hair detail instead of coming back as a soft
upscale. An already aligned crop (``aligned=True``) is resized to the model's resolution and aged; a crop
bigger than that gets the change upsampled to its size the same way. A grayscale photo (every pixel
R = G = B, give or take ``GRAY_CHROMA``) is aged in luminance and comes back grayscale. Nothing here imports
the training package.

Each face crop is encoded once (``backend.encode``: for Age-cGAN, E(x) and the latent fitted to the face at its
source age, the costly step) and rendered at every target from that (``backend.render``); other generators run
whole per (face, target) pair.

Memory: a photo is decoded once; what is kept per face is its aligned crop and mask, and outputs are made
one target at a time (:meth:`Ager.stream`), so ageing a 24 MP photo to ten ages holds one full-resolution
output at a time, not ten.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from faceage import MAX_PIXELS
from faceage.data.imageio import check_pixels, read_image
from faceage.groups import AgeScheme
from faceage.infer.backends import OnnxBackend, TorchBackend
from faceage.infer.paste import LUMA, match_colour, paste_faces_to_image
from faceage.infer.resolve import ModelNotFoundError, resolve_model
from faceage.infer.strip import progression_strip
from faceage.precision import PRECISIONS

ImageLike = Image.Image | np.ndarray | str | os.PathLike
Target = int | float | str
BACKENDS = ("torch", "onnx")
DEFAULT_ALIGN_PRESET = "utkface"
# Target ages above this are typing mistakes, not ages (every age past the last bound is its open group).
MAX_TARGET_AGE = 120
# A photo whose pixels all have max(R,G,B) - min(R,G,B) at most this is grayscale (JPEG leaves 1-2 of chroma).
GRAY_CHROMA = 2
# PIL modes that hold a grayscale picture: an input in one of them comes back as an "L" image.
GRAY_MODES = ("1", "L", "LA", "La", "I", "I;16", "F")
# The model's change is blurred by this many crop pixels before it is enlarged to the photo (see _smooth_change):
# on the astronaut at 2048 px, fine detail kept (high-pass correlation) is 0.69 unblurred, 0.86 at 0.5, 0.95 at 0.8.
CHANGE_SIGMA = 0.8
# The dlib HOG score a detection needs to be aged (detect's threshold; dlib's own default). Detections below
# faceage.face.detection.SURE_SCORE must also be confirmed by the CNN, and all need a face's landmark layout.
DETECT_THRESHOLD = 0.0


class NoFaceError(ValueError):
    """A photo has no detectable face, so there is nothing to age."""


@dataclass
class AgedPhoto:
    """One photo aged to several targets: one output image per target and how many faces were aged."""

    images: list[Image.Image]
    faces: int


@dataclass
class AgedStream:
    """One photo aged to several targets lazily: iterating ``images`` makes each target's output in turn.

    Faces are found (and :class:`NoFaceError` raised) when the stream is made; each output is pasted and
    returned only when asked for (the generator runs on a batch of targets at a time: small aligned crops),
    so at most one full-resolution output exists at a time.
    """

    images: Iterator[Image.Image]
    faces: int


@dataclass
class _Prepared:
    photo: np.ndarray  # the input, HxWx3 uint8
    crops: np.ndarray  # [F,S,S,3] uint8 faces at the model's resolution
    aligned: list | None  # faceage.face.Aligned per face; None when the input was an aligned crop
    masks: list[np.ndarray]  # feathered SxS mask per face (whole photos only)
    gray: bool = False  # the photo is grayscale: outputs are made grayscale too
    mode: str = "RGB"  # the PIL mode of the outputs: "L" for an input PIL image in a gray mode


def to_array(image: ImageLike, max_pixels: int | None = None) -> np.ndarray:
    """An HxWx3 uint8 RGB array from a PIL image (EXIF orientation applied), an image file or an array.

    Arrays may be HxW gray, HxWx1, HxWx3 or HxWx4 (alpha dropped), uint8. ``max_pixels`` refuses bigger
    images (:class:`~faceage.data.imageio.ImageTooLargeError`) before a file or a lazily opened PIL image
    is decoded.
    """
    if isinstance(image, str | os.PathLike):
        return read_image(image, max_pixels=max_pixels)
    if isinstance(image, Image.Image):
        check_pixels(getattr(image, "filename", "") or "PIL image", image.size, max_pixels)
        return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
    if not isinstance(image, np.ndarray) and not hasattr(image, "__array__"):
        raise TypeError(
            f"an image is a PIL image, an HxWx3 uint8 array or an image file path, got {type(image).__name__}"
        )
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise ValueError(
            f"image arrays must be uint8 (0-255), got dtype {arr.dtype}; "
            "convert floats in [0, 1] with (a * 255).round().astype(np.uint8)"
        )
    if arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] == 1):
        arr = np.repeat(arr.reshape(*arr.shape[:2], 1), 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        hint = "; channels go last: a.transpose(1, 2, 0)" if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) else ""
        raise ValueError(f"image arrays must be HxWx3 (RGB), HxWx4 or HxW (gray), got shape {arr.shape}{hint}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"the image is empty: shape {arr.shape}")
    check_pixels("image array", (arr.shape[1], arr.shape[0]), max_pixels)
    return np.ascontiguousarray(arr[..., :3])


def _read(image: ImageLike, max_pixels: int | None) -> tuple[np.ndarray, str]:
    """:func:`to_array` and the PIL mode outputs should have: "L" for a PIL image in a gray mode, else "RGB"."""
    gray_mode = isinstance(image, Image.Image) and image.mode in GRAY_MODES
    return to_array(image, max_pixels), "L" if gray_mode else "RGB"


def is_gray(photo: np.ndarray, tolerance: int = GRAY_CHROMA) -> bool:
    """Whether every pixel of an HxWx3 uint8 image has ``max(R,G,B) - min(R,G,B) <= tolerance``.

    A sparse sample is looked at first (a colour photo is told apart at once), then every row in bands, so no
    full-size temporary is made.
    """

    def chroma(x: np.ndarray) -> int:
        return int((x.max(axis=-1).astype(np.int16) - x.min(axis=-1)).max(initial=0))

    if chroma(photo[::7, ::7]) > tolerance:
        return False
    return all(chroma(photo[i : i + 256]) <= tolerance for i in range(0, photo.shape[0], 256))


def _as_age(to: Target) -> float | None:
    """The age in years a target names, or None when it is a group label."""
    if isinstance(to, int | float | np.number):
        return float(to)
    text = str(to).strip()
    return float(text) if re.fullmatch(r"\d+(\.\d+)?", text) else None


def _align_preset(align: dict | str | None) -> str:
    if isinstance(align, dict):
        return str(align.get("preset", DEFAULT_ALIGN_PRESET))
    return align or DEFAULT_ALIGN_PRESET


class Ager:
    """A face-aging generator with its age scheme and face alignment: photos in, aged photos out."""

    def __init__(
        self,
        backend: TorchBackend | OnnxBackend,
        meta: dict,
        source: str = "",
        batch_size: int = 16,
        max_pixels: int | None = MAX_PIXELS,
        detect_threshold: float = DETECT_THRESHOLD,
        source_age: float | None = None,
    ):
        missing = sorted({"scheme", "image_size"} - set(meta))
        if missing:
            raise ValueError(
                f"model {source or meta.get('model')} has no {', '.join(missing)} in its meta; re-export it"
            )
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if max_pixels is not None and (not isinstance(max_pixels, int) or max_pixels < 1):
            raise ValueError(f"max_pixels must be a positive integer or None (no limit), got {max_pixels!r}")
        self.backend = backend
        self.meta = meta
        self.source = source
        self.batch_size = batch_size
        self.max_pixels = max_pixels
        self.detect_threshold = float(detect_threshold)
        self.scheme = AgeScheme.from_dict(meta["scheme"])
        self.image_size = int(meta["image_size"])
        self.align_preset = _align_preset(meta.get("align"))
        self.source_age = source_age
        self.source_position = None if source_age is None else self._source_position(source_age)

    def _source_position(self, age: float) -> float:
        """The group position of ``source_age``, for a generator that reconstructs the face at its age."""
        if not getattr(self.backend, "latents", False):
            raise ValueError(
                f"source_age={age!r}: model {self.source or self.meta.get('model')} "
                f"({getattr(self.backend, 'name', 'plain')} backend) "
                "ages the photo directly, without reconstructing the face at its age first (Age-cGAN with the torch "
                "backend does); leave source_age out"
            )
        if isinstance(age, bool) or not isinstance(age, int | float) or not 0 <= age <= MAX_TARGET_AGE:
            raise ValueError(f"bad source_age {age!r}: an age in years from 0 to {MAX_TARGET_AGE}")
        return self.scheme.position(float(age))

    def __repr__(self) -> str:
        return (
            f"Ager({self.source or self.meta.get('model')!s}, {self.image_size}px, scheme={self.scheme.name}, "
            f"backend={self.backend.name}/{self.backend.precision})"
        )

    @property
    def labels(self) -> list[str]:
        """The model's age groups, youngest first."""
        return self.scheme.labels

    def position(self, to: Target) -> float:
        """The generator's condition for a target: a float group position (:meth:`AgeScheme.position`).

        An age in years interpolates between the groups around it (``37`` is 6.25 in ``ffhq10``: a quarter of the
        way from 30-39 to 40-49); a group label (``"30-39"``) is exactly that group.
        """
        return self._parse(to, self.scheme.parse_position)

    def group(self, to: Target) -> int:
        """The group index an age in years (``70``) falls in, or that of a group label (``"30-39"``)."""
        return self._parse(to, self.scheme.parse)

    def _parse(self, to: Target, parse: Callable[[Target], float]) -> float:
        """``parse(to)`` after checking the target's type and age; a bad target is a ValueError naming it."""
        self._check_type(to)
        try:
            value = parse(to)
        except ValueError as e:
            raise ValueError(f"bad target age {to!r}: {e}") from None
        self._check_age(to)
        return value

    def label(self, to: Target) -> str:
        """How an output is named: an age by its years (``"37"``), a group by its label (``"30-39"``)."""
        position = self.position(to)
        age = _as_age(to)
        return self.labels[int(position)] if age is None else f"{age:g}"

    def positions(self, targets: Iterable[Target]) -> list[float]:
        """Group positions of several targets (a list of ages or labels, not one bare target)."""
        if isinstance(targets, str | bytes) or not isinstance(targets, Iterable):
            raise TypeError(
                f"targets must be a list of ages or group labels, got {type(targets).__name__} {targets!r}; "
                f"for one target write [{targets!r}]"
            )
        positions = [self.position(t) for t in targets]
        if not positions:
            raise ValueError(f"no targets given: pass at least one age (70) or group label ({self.labels[-1]!r})")
        return positions

    def _check_type(self, to: Target) -> None:
        if isinstance(to, bool) or not isinstance(to, int | float | str | np.number):
            raise TypeError(
                f"a target is one age in years (70) or one group label ({self.labels[-1]!r}), got "
                f"{type(to).__name__} {to!r}; for several targets use transform(), stream() or age_many()"
            )

    def _check_age(self, to: Target) -> None:
        age = _as_age(to)
        if age is not None and not (math.isfinite(age) and 0 <= age <= MAX_TARGET_AGE):
            raise ValueError(
                f"bad target age {to!r}: ages go from 0 to {MAX_TARGET_AGE} years; groups: {', '.join(self.labels)}"
            )

    def age(
        self, image: ImageLike, to: Target, *, aligned: bool = False, largest: bool = False, faces: list | None = None
    ) -> Image.Image:
        """``image`` with its faces (or the largest) aged to ``to``; same size as the input."""
        return next(self.stream(image, [to], aligned=aligned, largest=largest, faces=faces).images)

    def age_many(
        self,
        images: Sequence[ImageLike],
        targets: Sequence[Target],
        *,
        aligned: bool = False,
        largest: bool = False,
    ) -> list[list[Image.Image]]:
        """Several images to several targets in shared generator batches; ``result[i][j]`` is image i at target j.

        The result holds every output at once; for big photos and many targets prefer :meth:`stream`, which
        makes one output at a time. Raises :class:`NoFaceError` when any photo has no face (use
        :meth:`stream` per photo to go on).
        """
        positions = self.positions(targets)
        one_image = isinstance(images, str | os.PathLike | Image.Image)
        if one_image or (isinstance(images, np.ndarray) and images.ndim != 4):  # a 4-d array is a batch
            raise TypeError("age_many takes a list of images; for one image use age() or stream(), or pass [image]")
        prepared = [self._prepare(*_read(im, self.max_pixels), aligned, largest) for im in images]
        if not prepared:
            raise ValueError("no images given: age_many needs a list of at least one image")
        counts = [len(p.crops) for p in prepared]
        generated = self.generate(np.concatenate([p.crops for p in prepared]), positions)
        splits = np.split(generated, np.cumsum(counts)[:-1])
        return [
            [self._render(p, g[:, j]) for j in range(len(positions))] for p, g in zip(prepared, splits, strict=True)
        ]

    def transform(
        self, image: ImageLike, targets: Sequence[Target], *, aligned: bool = False, largest: bool = False
    ) -> AgedPhoto:
        """One image to several targets, with the number of faces that were aged (all outputs held at once)."""
        aged = self.stream(image, targets, aligned=aligned, largest=largest)
        return AgedPhoto(list(aged.images), faces=aged.faces)

    def stream(
        self,
        image: ImageLike,
        targets: Sequence[Target],
        *,
        aligned: bool = False,
        largest: bool = False,
        faces: list | None = None,
    ) -> AgedStream:
        """One image to several targets, one output at a time: ``for out in ager.stream(img, [20, 70]).images``.

        The photo is decoded and its faces found and aligned once, here; each output is made when asked for
        (the generator runs on as many targets at once as fill a batch), so memory does not grow with the
        number of targets. ``faces`` (``faceage.face.Face`` objects, e.g. from an earlier ``detect``) are aged
        instead of detecting them again.
        """
        positions = self.positions(targets)
        prepared = self._prepare(*_read(image, self.max_pixels), aligned, largest, faces)
        return AgedStream(self._outputs(prepared, positions), faces=len(prepared.crops))

    def progression(
        self, image: ImageLike, targets: Sequence[Target] | None = None, *, aligned: bool = False
    ) -> Image.Image:
        """A strip of the face (the largest one in a photo) aged to each target, each tile labelled as
        :meth:`label` names it: any list of ages (``[5, 20, 37, 70]``) or labels; by default every group."""
        targets = self.labels if targets is None else targets
        positions = self.positions(targets)
        prepared = self._prepare(*_read(image, self.max_pixels), aligned, largest=True)
        generated = self.generate(prepared.crops[:1], positions)[0]
        if prepared.gray:
            generated = np.repeat(generated @ LUMA[:, None], 3, axis=-1)
        tiles = [np.clip(np.rint(g), 0, 255).astype(np.uint8) for g in generated]
        strip = progression_strip(tiles, [self.label(t) for t in targets])
        return strip.convert("L") if prepared.mode == "L" else strip

    def detect(self, photo: np.ndarray, largest: bool = False) -> list:
        """The faces :meth:`age` would age in ``photo`` (HxWx3 uint8), largest first; see ``faceage.face.detect``."""
        from faceage.face import detect

        return detect(photo, largest=largest, threshold=self.detect_threshold)

    def generate(self, crops: np.ndarray, positions: Sequence[float]) -> np.ndarray:
        """Aligned crops ``[F,S,S,3]`` uint8 aged to each group position (:meth:`position`; a group index is
        that group): ``[F,T,S,S,3]`` float32 in 0..255."""
        return self._age_faces(self.encode(crops), self._checked_positions(positions))

    def encode(self, crops: np.ndarray) -> torch.Tensor:
        """Aligned crops ``[F,S,S,3]`` uint8 as the backend renders them, in batches: for a generator with the latent
        contract each face's fitted latent (once per face, at ``source_age``), else the crops as tensors."""
        s = self.image_size
        crops = np.asarray(crops)
        if crops.dtype != np.uint8 or crops.ndim != 4 or crops.shape[1:] != (s, s, 3):
            raise ValueError(
                f"crops must be uint8 [F, {s}, {s}, 3] aligned faces at the model's resolution, got {crops.dtype} "
                f"{crops.shape}; age(image, to, aligned=True) resizes a crop of another size"
            )
        faces = []
        for i in range(0, len(crops), self.batch_size):
            x = crops[i : i + self.batch_size].astype(np.float32).transpose(0, 3, 1, 2) / 127.5 - 1
            sources = None if self.source_position is None else np.full(len(x), self.source_position, np.float32)
            encode = getattr(self.backend, "encode", None)  # ONNX or a plain callable: no per-face step
            faces.append(torch.from_numpy(x) if encode is None else encode(x, sources))
        return torch.cat(faces)

    def _checked_positions(self, positions: Sequence[float]) -> np.ndarray:
        targets = np.asarray(positions)
        n = self.scheme.num_groups
        numeric = np.issubdtype(targets.dtype, np.integer) or np.issubdtype(targets.dtype, np.floating)
        if targets.ndim != 1 or not len(targets) or not numeric:
            raise ValueError(f"positions must be a non-empty list of group positions, got {positions!r}")
        if not (np.isfinite(targets).all() and targets.min() >= 0 and targets.max() <= n - 1):
            raise ValueError(
                f"group positions must be 0..{n - 1} ({', '.join(self.labels)}), got {list(positions)}; "
                "ager.position(70) maps an age to its position"
            )
        return targets.astype(np.float32)

    def _age_faces(self, faces: torch.Tensor, targets: np.ndarray) -> np.ndarray:
        """Encoded faces (:meth:`encode`) rendered at each target, ``batch_size`` pairs at a time: [F,T,S,S,3]."""
        s, n = self.image_size, len(faces)
        which = np.repeat(np.arange(n), len(targets))
        targets = np.tile(targets, n)
        out = np.empty((len(which), s, s, 3), dtype=np.float32)
        for i in range(0, len(which), self.batch_size):
            y = self._render_pairs(faces[which[i : i + self.batch_size]], targets[i : i + self.batch_size])
            assert y.shape[1:] == (3, s, s), f"generator returned {y.shape} for {s} px faces"
            out[i : i + len(y)] = (np.clip(y, -1, 1).transpose(0, 2, 3, 1) + 1) * 127.5
        return out.reshape(n, -1, s, s, 3)

    def _render_pairs(self, faces: torch.Tensor, targets: np.ndarray) -> np.ndarray:
        """One batch of (encoded face, target) pairs through the backend: float32 [B,3,S,S] in [-1, 1]."""
        render = getattr(self.backend, "render", None)
        return self.backend(faces.numpy(), targets) if render is None else render(faces, targets)

    def _prepare(
        self, photo: np.ndarray, mode: str, aligned: bool, largest: bool, faces: list | None = None
    ) -> _Prepared:
        s = self.image_size
        gray = is_gray(photo)
        if aligned:
            crop = photo if photo.shape[:2] == (s, s) else _resize(photo, s, s)
            return _Prepared(photo, crop[None], None, [], gray, mode)
        from faceage.face import align, face_mask

        faces = self.detect(photo, largest=largest) if faces is None else list(faces)
        if not faces:
            raise NoFaceError("no face found (pass --aligned / aligned=True if the image is an aligned face crop)")
        aligned_faces = [align(photo, f.landmarks, s, preset=self.align_preset) for f in faces]
        masks = [face_mask(a.landmarks, s) for a in aligned_faces]
        return _Prepared(photo, np.stack([a.image for a in aligned_faces]), aligned_faces, masks, gray, mode)

    def _outputs(self, prepared: _Prepared, positions: list[float]) -> Iterator[Image.Image]:
        """Each target's output in turn; the faces are encoded once, then rendered at as many targets at once as
        fill one batch."""
        faces = self.encode(prepared.crops)
        per_batch = max(1, self.batch_size // len(prepared.crops))
        for start in range(0, len(positions), per_batch):
            generated = self._age_faces(faces, self._checked_positions(positions[start : start + per_batch]))
            for j in range(generated.shape[1]):
                yield self._render(prepared, generated[:, j])

    def _render(self, prepared: _Prepared, generated: np.ndarray) -> Image.Image:
        """The output for one target from its generated faces ``[F,S,S,3]`` float: a crop or a pasted photo.

        Whole photos: each face's change (colour-matched output minus input crop) is warped to the photo's
        grid and added to its pixels through the feathered mask (:func:`~faceage.infer.paste.blend_face`).
        """
        if prepared.aligned is None:
            out = Image.fromarray(_aged_crop(prepared.photo, prepared.crops[0], generated[0], prepared.gray))
        else:
            pieces = [
                (a.matrix, m, _smooth_change(match_colour(generated[f], a.image, m) - a.image, a.matrix))
                for f, (a, m) in enumerate(zip(prepared.aligned, prepared.masks, strict=True))
            ]
            out = paste_faces_to_image(prepared.photo, pieces, residual=True, gray=prepared.gray)
        return out.convert("L") if prepared.mode == "L" else out


def _aged_crop(chip: np.ndarray, crop: np.ndarray, generated: np.ndarray, gray: bool) -> np.ndarray:
    """An aligned chip aged: the generator's output when the chip is no bigger than the model's crop, else the
    chip plus the change (output minus input crop) upsampled to the chip's size, so its own detail is kept."""
    h, w = chip.shape[:2]
    s = crop.shape[0]
    if h * w <= s * s:
        out = np.clip(np.rint(generated), 0, 255).astype(np.uint8)
        out = out if out.shape[:2] == (h, w) else _resize(out, w, h)
        return _gray_rgb(out) if gray else out
    change = _smooth_change(generated - crop, scale=min(h, w) / s)
    up = np.stack([_resize_float(change[..., c], w, h) for c in range(3)], axis=2)
    out = np.clip(chip + up, 0, 255)
    out = np.repeat(out @ LUMA[:, None], 3, axis=2) if gray else out
    return np.rint(out).astype(np.uint8)


def _smooth_change(change: np.ndarray, matrix: np.ndarray | None = None, scale: float | None = None) -> np.ndarray:
    """The model's change, blurred just enough to be resampled to the photo's grid without artefacts.

    ``scale`` is photo pixels per crop pixel (from ``matrix``). Enlarged, the generator's pixel-level noise would
    be drawn as the crop's pixel grid (stripes) over the photo's own detail: from twice the model's resolution
    up the change gets a ``CHANGE_SIGMA`` crop-pixel blur (ramped in from none at 1x, where the output is shown
    at its own resolution). Shrunk (scale < 1) it is low-passed first, as any downsampling should be.
    """
    from scipy.ndimage import gaussian_filter

    if scale is None:
        scale = 1.0 / float(np.hypot(*matrix[0, :2]))
    sigma = CHANGE_SIGMA * min(max(scale - 1, 0.0), 1.0) if scale >= 1 else 0.5 * math.sqrt(1 / scale**2 - 1)
    if sigma < 0.05:
        return change.astype(np.float32)
    return gaussian_filter(change.astype(np.float32), (sigma, sigma, 0), mode="nearest")


def _gray_rgb(image: np.ndarray) -> np.ndarray:
    """An HxWx3 uint8 image turned to its luminance in all three channels."""
    return np.repeat(np.rint(image.astype(np.float32) @ LUMA[:, None]).astype(np.uint8), 3, axis=2)


def _resize_float(channel: np.ndarray, width: int, height: int) -> np.ndarray:
    image = Image.fromarray(np.ascontiguousarray(channel, dtype=np.float32), mode="F")
    return np.asarray(image.resize((width, height), Image.Resampling.BICUBIC))


def _resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    return np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.LANCZOS))


def load(
    name_or_path: str | Path | None = None,
    device: str | torch.device | None = None,
    *,
    backend: str | None = None,
    precision: str = "auto",
    max_pixels: int | None = MAX_PIXELS,
    detect_threshold: float = DETECT_THRESHOLD,
    source_age: float | None = None,
    latent_mode: str | None = None,
    latent_steps: int | None = None,
    latent_lr: float | None = None,
) -> Ager:
    """An :class:`Ager` for the bundled model (``None``), a model name, a folder, a checkpoint or an .onnx file.

    ``backend`` is ``"torch"`` or ``"onnx"`` (default: onnx for an .onnx file, torch otherwise; with onnx a
    folder's ``model.onnx`` is used). ``precision`` is "auto" (bf16 autocast on CUDA and on CPUs with AMX,
    where it is faster; fp32 elsewhere and with onnx), "fp32" or "bf16" (torch only); ``repr(ager)`` shows
    what was picked. ``max_pixels`` (default :data:`MAX_PIXELS`, None for no limit of faceage's own) refuses
    bigger photos before decoding them; above Pillow's own guard (``PIL.Image.MAX_IMAGE_PIXELS``, ~179 MP)
    raise that too. ``detect_threshold`` is the dlib HOG score a detection needs to be aged (default 0.0).

    Age-cGAN (a generator with the latent contract, torch backend) first reconstructs each face at its age, then
    re-ages it: ``source_age`` is that age in years (default: the model's own, 29), ``latent_mode`` how the latent
    is fitted to the face ("none": the encoder's E(x) as it is; "pixel"; "identity": dlib's descriptor distance),
    ``latent_steps`` and ``latent_lr`` the fitting's Adam steps and step size (default: the model's). For other
    models, or an ONNX file (which holds E(x) decoded, no fitting), giving any of them is an error.
    """
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; known: {', '.join(BACKENDS)}")
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; known: {', '.join(PRECISIONS)}")
    device = _device(device)
    path = resolve_model(name_or_path)
    backend = backend or ("onnx" if path.suffix == ".onnx" else "torch")
    if backend == "onnx":
        from faceage.infer.export import read_onnx_meta

        onnx_path = path / "model.onnx" if path.is_dir() else path
        if onnx_path.suffix != ".onnx" or not onnx_path.is_file():
            raise ModelNotFoundError(
                f"{path} is not an ONNX model; export one with `faceage export --model {path} --onnx MODEL.onnx`"
            )
        if precision == "bf16":
            raise ValueError("the onnx backend runs the exported fp32 graph; precision 'bf16' is torch-only")
        meta = read_onnx_meta(onnx_path)
        knobs = {"latent_mode": latent_mode, "latent_steps": latent_steps, "latent_lr": latent_lr}
        _no_latent_knobs(onnx_path, source_age=source_age, **knobs)
        return Ager(
            OnnxBackend(onnx_path, device, precision),
            meta,
            source=str(onnx_path),
            max_pixels=max_pixels,
            detect_threshold=detect_threshold,
        )
    if path.suffix == ".onnx":
        raise ValueError(f"{path} is an ONNX file: run it with backend 'onnx'")
    from faceage.models.pretrained import load_generator

    generator, meta = load_generator(path, device)
    name = f"{path} ({meta.get('model')})"
    _apply_latent_fitting(generator, name, mode=latent_mode, steps=latent_steps, lr=latent_lr)
    return Ager(
        TorchBackend(generator, precision),
        meta,
        source=str(path),
        max_pixels=max_pixels,
        detect_threshold=detect_threshold,
        source_age=source_age,
    )


def _apply_latent_fitting(generator: torch.nn.Module, name: str, **knobs: str | int | float | None) -> None:
    """Apply the latent-fitting knobs given (``mode``, ``steps``, ``lr``; None: the model's own) through the
    generator's ``set_latent_fitting``; ValueError naming the model when it fits no latent."""
    given = {k: v for k, v in knobs.items() if v is not None}
    if not given:
        return
    if not hasattr(generator, "set_latent_fitting"):
        raise ValueError(
            f"model {name} fits no latent per face: latent_{', latent_'.join(given)} apply to Age-cGAN only; "
            "leave them out"
        )
    generator.set_latent_fitting(**given)


def _no_latent_knobs(path: Path, **knobs: str | int | float | None) -> None:
    """Refuse latent-fitting knobs for an ONNX file: it holds one forward graph, with no per-face fitting."""
    given = [k for k, v in knobs.items() if v is not None]
    if given:
        raise ValueError(
            f"{', '.join(given)} given for the ONNX file {path}: it runs one forward graph (for Age-cGAN, E(x) decoded "
            "with no latent fitting, which stays in Python); use the torch backend (the checkpoint or folder)"
        )


def _device(device: str | torch.device | None) -> torch.device:
    """``device`` checked (a typo or an absent GPU fails here, clearly); None: cuda when available, else cpu."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} asked for, but this torch sees no CUDA device; use cpu")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"device {str(device)!r} does not exist: {torch.cuda.device_count()} CUDA device(s)")
    return device
