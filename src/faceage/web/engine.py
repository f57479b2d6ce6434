"""What the web app does, without Gradio: read an upload safely, find its faces, age them with any installed
method, within limits and a deadline. Nothing here writes to disk.

Ageing is the inference core's (``faceage.load``, ``Ager.detect``, ``Ager.stream``) on faces detected once
per upload: moving the slider re-runs the generator and the paste, not the detector, and one face of several
can be aged alone.
"""

from __future__ import annotations

import concurrent.futures
import io
import math
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from faceage.web import MAX_MEGAPIXELS, MAX_UPLOAD_MB, TIMEOUT_S

if TYPE_CHECKING:  # pragma: no cover
    from faceage.face import Face
    from faceage.infer.ager import Ager

FORMATS = ("JPEG", "PNG", "WEBP")  # the formats the page accepts, as Pillow names them
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".jpe", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".heic", ".avif"}
BUNDLED = "default (bundled)"  # how the page names the bundled model
MB = 2**20  # what the page, and Gradio's own upload check, call a megabyte


class WebError(Exception):
    """A problem the user can fix; its message is shown in the page as it is."""


@dataclass(frozen=True)
class Limits:
    """What one request may ask for: upload size, photo size, wall time."""

    max_upload_mb: float = MAX_UPLOAD_MB
    max_megapixels: float = MAX_MEGAPIXELS
    timeout_s: float = TIMEOUT_S
    max_ages: int = 12  # ages in one progression strip

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * MB)


@dataclass
class Upload:
    """A photo in memory and its faces (largest first), as one browser session uploaded it."""

    name: str
    photo: np.ndarray  # HxWx3 uint8, EXIF orientation applied
    faces: list[Face]


def read_photo(data: bytes, name: str, limits: Limits) -> np.ndarray:
    """The photo in an uploaded file's bytes as HxWx3 uint8 RGB, upright; :class:`WebError` says what is wrong.

    The format and the pixel count are checked from the header, before any pixel is decoded; decoding is
    faceage's own (``faceage.data.imageio``: 16-bit, CMYK and transparent photos, EXIF orientation).
    """
    from faceage.data.imageio import ImageError, ImageTooLargeError, open_rgb

    if len(data) > limits.max_upload_bytes:
        raise WebError(f"{name} is {len(data) / MB:.1f} MB; the limit is {limits.max_upload_mb:g} MB per photo.")
    kind = _format(data, name, limits)
    if kind is None and Path(name).suffix.lower() in IMAGE_SUFFIXES:
        raise WebError(f"could not read {name}: the file is damaged or not really an image.")
    if kind not in FORMATS:
        what = f"a {kind} image" if kind else "not a supported format"
        raise WebError(f"{name} is {what}; upload a JPEG, PNG or WebP photo.")
    try:
        image, _ = open_rgb(data, name=name, max_pixels=int(limits.max_megapixels * 1e6))
    except ImageTooLargeError as e:
        raise WebError(_too_many_pixels(name, e.size, limits)) from None
    except ImageError:
        raise WebError(f"could not read {name}: the file is damaged or cut short.") from None
    return np.asarray(image)


def _format(data: bytes, name: str, limits: Limits) -> str | None:
    """The image format named in the file's header (``"JPEG"``), or None when it is not an image Pillow knows."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.format
    except Image.DecompressionBombError:  # a header claiming more than ~179 megapixels
        raise WebError(_too_many_pixels(name, None, limits)) from None
    except Exception:  # Pillow raises many types on bytes that are not an image it knows
        return None


def _too_many_pixels(name: str, size: tuple[int, int] | None, limits: Limits) -> str:
    what = f"{size[0]}×{size[1]} pixels ({size[0] * size[1] / 1e6:.1f} megapixels)" if size else "far too many pixels"
    return (
        f"{name} is {what}; the limit is {limits.max_megapixels:g} megapixels. Downscale the photo and upload it again."
    )


def take_upload(payload: Any, folder: Path, limits: Limits) -> tuple[bytes, str]:
    """An uploaded file's bytes and its name as the user had it; the file is deleted at once, whatever is wrong.

    ``payload`` is Gradio's record of the upload (``path``, ``orig_name``); its path must lie inside ``folder``,
    the app's private upload folder, so a crafted request cannot make the app read or delete anything else.
    """
    record = payload if isinstance(payload, dict) else vars(payload)
    path = Path(str(record.get("path", ""))).resolve()
    if folder.resolve() not in path.parents or not path.is_file():
        raise WebError("that upload is not a file this server received; upload the photo again.")
    name = Path(str(record.get("orig_name") or path.name)).name
    try:
        size = path.stat().st_size
        if size > limits.max_upload_bytes:
            raise WebError(f"{name} is {size / MB:.1f} MB; the limit is {limits.max_upload_mb:g} MB per photo.")
        return path.read_bytes(), name
    finally:
        forget_file(path)


def open_upload(data: bytes, name: str, limits: Limits, ager: Ager) -> Upload:
    """Decode an uploaded photo and find its faces as ``ager`` would; :class:`WebError` when it cannot be used."""
    photo = read_photo(data, name, limits)
    faces = ager.detect(photo)
    if not faces:
        raise WebError(
            f"No face found in {name}. Try a photo where the face is frontal, well lit and at least about 80 "
            "pixels wide."
        )
    return Upload(Path(name).stem, photo, faces)


def forget_file(path: Path) -> None:
    """Delete an uploaded file and the folder Gradio made for it, if that folder is now empty."""
    path.unlink(missing_ok=True)
    try:
        path.parent.rmdir()
    except OSError:
        pass  # not empty (another upload) or already gone: the app's temporary folder goes at exit


class Methods:
    """The models the page offers, bundled ones first: loaded on first use, then kept.

    ``model`` (a name or a path, as ``faceage age --model`` takes) is selected first, and added when it is not
    one of the named models.
    """

    def __init__(self, model: str | None = None) -> None:
        from faceage import paths
        from faceage.infer.resolve import available_models, resolve_model

        self.sources: dict[str, str | None] = {}
        seen: set[Path] = set()
        if _bundled_model_exists():
            self.sources[BUNDLED] = None
            seen.add(resolve_model(None).resolve())
        names = available_models()
        for name in sorted(names, key=lambda n: resolve_model(n).parent != paths.BUNDLED_WEIGHTS_DIR):
            path = resolve_model(name).resolve()
            if path not in seen:
                self.sources[name] = name
                seen.add(path)
        self.default = next(iter(self.sources), None)
        if model is not None:
            path = resolve_model(model).resolve()
            self.default = next((k for k, v in self.sources.items() if resolve_model(v).resolve() == path), model)
            self.sources.setdefault(self.default, model)
        if self.default is None:
            raise WebError("no model is installed: train and export one, or pass --model PATH")
        self._agers: dict[str, Ager] = {}
        self._lock = threading.Lock()

    @property
    def labels(self) -> list[str]:
        return list(self.sources)

    def get(self, label: str) -> Ager:
        """The loaded model behind a label of :attr:`labels`."""
        import faceage

        if label not in self.sources:
            raise WebError(f"unknown method {label!r}; known: {', '.join(self.sources)}")
        with self._lock:
            if label not in self._agers:
                try:
                    self._agers[label] = faceage.load(self.sources[label])
                except (OSError, ValueError, RuntimeError, KeyError) as e:
                    raise WebError(f"could not load the method {label!r}: {e}") from None
            return self._agers[label]


def _bundled_model_exists() -> bool:
    from faceage.infer.resolve import ModelNotFoundError, resolve_model

    try:
        resolve_model(None)
    except ModelNotFoundError:
        return False
    return True


def between(ager: Ager, years: float) -> str:
    """Where an age lies among the method's age groups: ``"group 30-39"`` or ``"between 30-39 and 40-49"``."""
    position = ager.position(float(years))
    low = min(int(position), len(ager.labels) - 2)
    if position in (low, low + 1):
        return f"group {ager.labels[int(position)]}"
    return f"between {ager.labels[low]} and {ager.labels[low + 1]}"


def target_note(ager: Ager, years: float) -> str:
    """What the slider's age means for this model: the exact age, blended between the age groups around it."""
    return (
        f"{years:g} years → {between(ager, years)} (group position {ager.position(float(years)):.2f}): the method "
        "is given the age itself, between the age groups it was trained on."
    )


def age_faces(ager: Ager, photo: np.ndarray, faces: Sequence[Face], targets: Sequence[float]) -> list[Image.Image]:
    """``photo`` with ``faces`` (found at upload) aged to each target age in years, exactly: one image per target.

    This is ``Ager.stream`` on faces detected once per upload, so the page ages exactly as ``faceage age`` does.
    """
    return list(ager.stream(photo, [float(t) for t in targets], faces=list(faces)).images)


def close_up_box(face: Face, shape: tuple[int, ...], zoom: float = 2.0) -> tuple[int, int, int, int]:
    """A square ``(x0, y0, x1, y1)`` around a face, ``zoom`` times its detected box, inside the photo if it fits."""
    x0, y0, x1, y1 = face.box
    side = min(max(x1 - x0, y1 - y0) * zoom, shape[0], shape[1])
    cx = min(max((x0 + x1) / 2, side / 2), shape[1] - side / 2)
    cy = min(max((y0 + y1) / 2, side / 2), shape[0] - side / 2)
    return round(cx - side / 2), round(cy - side / 2), round(cx + side / 2), round(cy + side / 2)


def close_up(photo: np.ndarray | Image.Image, box: tuple[int, int, int, int], size: int = 256) -> np.ndarray:
    """The ``box`` of ``photo`` resized to ``size`` x ``size``, HxWx3 uint8."""
    image = photo if isinstance(photo, Image.Image) else Image.fromarray(photo)
    return np.asarray(image.crop(box).resize((size, size), Image.Resampling.LANCZOS))


def parse_ages(text: str, limits: Limits) -> list[float]:
    """Ages in years, exactly as typed, from ``"5, 20, 37.5 70"``; :class:`WebError` for anything else."""
    words = text.replace(",", " ").split()
    if not words:
        raise WebError("type the ages for the strip, e.g. 5, 20, 40, 70")
    try:
        ages = [float(w) for w in words]
    except ValueError:
        raise WebError(f"ages must be numbers of years, e.g. 5, 20, 40, 70; got {text!r}") from None
    if any(not math.isfinite(a) or a < 0 or a > 120 for a in ages):
        raise WebError(f"ages must be between 0 and 120 years; got {text!r}")
    if len(ages) > limits.max_ages:
        raise WebError(f"at most {limits.max_ages} ages in one strip; got {len(ages)}")
    return ages


def cpu_cores() -> int:
    """The CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class Runner:
    """Runs heavy work on ``workers`` threads, so at most that many requests compute at once, each with a deadline.

    A request that misses its deadline gets a :class:`WebError`; its work cannot be interrupted, but it keeps its
    worker until it ends, so the number of computations running never exceeds ``workers``.
    """

    def __init__(self, workers: int, timeout_s: float) -> None:
        self.workers = workers
        self.timeout_s = timeout_s
        self._pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="faceage-web")

    def __call__(self, fn: Callable[..., Any], *args: Any) -> Any:
        future = self._pool.submit(fn, *args)
        try:
            return future.result(timeout=self.timeout_s)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise WebError(
                f"This took longer than the {self.timeout_s:g} s limit per request. Try a smaller photo, fewer "
                "ages or a single face."
            ) from None

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class Sessions:
    """Each browser session's upload, in memory only: dropped when its tab closes, when a new photo replaces
    it, after ``ttl_s`` idle seconds, or when more than ``capacity`` sessions hold one (oldest first)."""

    def __init__(self, ttl_s: float = 900.0, capacity: int = 16) -> None:
        self.ttl_s = ttl_s
        self.capacity = capacity
        self._uploads: OrderedDict[str, tuple[float, Upload]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            self._expire()
            return len(self._uploads)

    def put(self, key: str, upload: Upload) -> None:
        with self._lock:
            self._uploads.pop(key, None)
            self._uploads[key] = (time.monotonic(), upload)
            self._expire()

    def get(self, key: str) -> Upload:
        with self._lock:
            self._expire()
            if key not in self._uploads:
                raise WebError("Upload a photo first (or use the example photo).")
            self._uploads.move_to_end(key)
            upload = self._uploads[key][1]
            self._uploads[key] = (time.monotonic(), upload)
            return upload

    def drop(self, key: str) -> None:
        with self._lock:
            self._uploads.pop(key, None)

    def _expire(self) -> None:
        now = time.monotonic()
        while self._uploads and (
            len(self._uploads) > self.capacity or now - next(iter(self._uploads.values()))[0] > self.ttl_s
        ):
            self._uploads.popitem(last=False)
