"""Checks run through the public inference API, the path a user's photo takes: ``faceage.load(model).age(...)``.

- **grayscale in, grayscale out**: test faces turned grey (``L`` -> RGB) and aged with ``aligned=True``; an
  output with a chroma (max - min of R, G, B) above ``GRAY_MAX_CHROMA`` anywhere has put colour into a
  black-and-white photo;
- **fine detail kept**: a photo upscaled to ``DETAIL_SIDE`` px (Lanczos) is aged to each target in photo mode
  (detect, align, generate, paste back); the high-pass correlation of input and output over the detected face's
  box says whether pores, hair and edges survive, next to what a plain round trip through the model's
  resolution (the face box down to ``image_size`` px and back up) keeps, and the unchanged input (1.0). A
  Lanczos upscale has little detail of its own (the astronaut's face is ~90 px in the 512 px original), so the
  check runs again with seeded grain added to the upscaled photo, detail that only a full-resolution paste keeps.

Nothing here knows how inference works inside: when ``faceage.infer`` changes, these checks measure the change.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from PIL import Image

from faceage.eval import metrics as M

GRAY_MAX_CHROMA = 3  # the largest chroma a grayscale output may show anywhere (JPEG-free uint8 round trip)
DETAIL_SIDE = 2048
DETAIL_TARGET = 0.85  # fine detail kept: high-pass correlation of input and output over the face box
DETAIL_GRAIN = 6.0  # std (levels) of the grain added for the second detail check


def to_gray(face: np.ndarray) -> np.ndarray:
    """A uint8 HxWx3 face as a grayscale photo stored in RGB (``L`` -> RGB, as a scanned black-and-white print)."""
    return np.asarray(Image.fromarray(np.asarray(face)).convert("L").convert("RGB"))


def grayscale_check(ager, faces: np.ndarray, targets: list[str]) -> dict:
    """Age each of ``faces`` (uint8 [K,S,S,3] aligned crops), made grey, to each target; chroma of the outputs."""
    t0 = time.perf_counter()
    chromas = []
    for face in faces:
        gray = to_gray(face)
        chromas += [M.max_chroma(np.asarray(ager.age(gray, to=t, aligned=True))) for t in targets]
    chromas = np.array(chromas)
    return {
        "faces": int(len(faces)),
        "targets": list(targets),
        "outputs": int(len(chromas)),
        "limit": GRAY_MAX_CHROMA,
        "max_chroma": int(chromas.max()),
        "mean_max_chroma": float(chromas.mean()),
        "share_gray": float(np.mean(chromas <= GRAY_MAX_CHROMA)),
        "inputs_max_chroma": int(max(M.max_chroma(to_gray(f)) for f in faces)),
        "real_faces_median_max_chroma": float(np.median([M.max_chroma(f) for f in faces])),
        "seconds": round(time.perf_counter() - t0, 1),
    }


def upscale(photo: np.ndarray, side: int = DETAIL_SIDE) -> np.ndarray:
    """``photo`` resized (Lanczos) so that its long side is ``side`` px."""
    h, w = photo.shape[:2]
    k = side / max(h, w)
    size = (max(1, round(w * k)), max(1, round(h * k)))
    return np.asarray(Image.fromarray(photo).resize(size, Image.Resampling.LANCZOS))


def face_box(photo: np.ndarray) -> tuple[int, int, int, int]:
    """The largest detected face's box (x0, y0, x1, y1), clipped to the photo; ValueError when none is found."""
    from faceage.face.detection import detect

    faces = detect(photo, largest=True, landmarks=5)
    if not faces:
        raise ValueError("the detail check found no face in its photo")
    h, w = photo.shape[:2]
    x0, y0, x1, y1 = faces[0].box
    return max(0, int(x0)), max(0, int(y0)), min(w, int(np.ceil(x1))), min(h, int(np.ceil(y1)))


def round_trip(region: np.ndarray, size: int) -> np.ndarray:
    """``region`` down to ``size`` px and back up (Lanczos both ways): what pasting a low-resolution face keeps."""
    h, w = region.shape[:2]
    small = Image.fromarray(region).resize((size, size), Image.Resampling.LANCZOS)
    return np.asarray(small.resize((w, h), Image.Resampling.LANCZOS))


def add_grain(photo: np.ndarray, strength: float, seed: int = 0) -> np.ndarray:
    """``photo`` with seeded grey Gaussian grain (std ``strength`` levels per pixel): sensor noise and pores, the
    fine detail a camera photo has and a Lanczos upscale does not."""
    noise = np.random.default_rng(seed).normal(0.0, strength, photo.shape[:2])[..., None]
    return np.clip(photo.astype(np.float32) + noise, 0, 255).round().astype(np.uint8)


def detail_check(
    ager,
    photo: np.ndarray | str | Path,
    targets: list[str],
    side: int = DETAIL_SIDE,
    grain: float | None = DETAIL_GRAIN,
) -> dict:
    """Fine detail kept when ``photo`` (upscaled to ``side`` px) is aged to each target in photo mode; with
    ``grain``, again on the upscaled photo with grain added (an upscale has little detail of its own to keep:
    on it even a round trip through the model's resolution keeps most of the high-pass)."""
    t0 = time.perf_counter()
    if not isinstance(photo, np.ndarray):
        photo = np.asarray(Image.open(photo).convert("RGB"))
    big = upscale(photo, side)
    box = face_box(big)
    result = {"photo_side": side, "face_box": list(box), "target": DETAIL_TARGET}
    result["upscaled"] = _detail(ager, big, box, targets)
    if grain:
        result["grain"] = grain
        result["upscaled_grain"] = _detail(ager, add_grain(big, grain), box, targets)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    return result


def _detail(ager, big: np.ndarray, box: tuple[int, int, int, int], targets: list[str]) -> dict:
    x0, y0, x1, y1 = box
    face = big[y0:y1, x0:x1]
    per_target = {}
    for t in targets:
        out = np.asarray(ager.age(big, to=t, largest=True))
        if out.shape != big.shape:
            raise ValueError(f"ageing a {big.shape} photo to {t} returned {out.shape}")
        per_target[str(t)] = M.highpass_correlation(face, out[y0:y1, x0:x1])
    values = list(per_target.values())
    return {
        "per_target": per_target,
        "min": float(min(values)),
        "mean": float(np.mean(values)),
        "round_trip_size": int(ager.image_size),
        "round_trip": M.highpass_correlation(face, round_trip(face, int(ager.image_size))),
        "unchanged": M.highpass_correlation(face, face),
    }
