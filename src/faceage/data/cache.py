"""The prepared-dataset cache: faces as one memory-mapped uint8 array, labels as one small table.

Layout of a cache folder (written by ``faceage prepare``, read by :func:`open_cache`)::

    manifest.json      what was prepared, how, from which inputs (fingerprint); written last
    images_<S>.u8      raw uint8, N x S x S x 3 (RGB), row i is record i
    masks_<S>.u8       raw uint8, N x S x S, 0-255 (only when prepare produced masks, e.g. --align)
    meta.npz           one array per column: path, age, group, gender, race, identity, split, ...
    skipped.csv        file, reason, detail for every input left out

Raw arrays rather than an image database: opening is instant, a random batch is one fancy index into
the page cache, and every DataLoader worker shares the same memory. A folder without
``manifest.json`` is not a finished cache (prepare deletes it first when it rewrites a cache).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

FORMAT = "faceage-cache"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
META = "meta.npz"
SKIPPED = "skipped.csv"
SPLITS = ("train", "val", "test")
GENDERS = ("male", "female")  # stored as 0 / 1; -1 is unknown


def images_name(size: int) -> str:
    return f"images_{size}.u8"


def masks_name(size: int) -> str:
    return f"masks_{size}.u8"


class CacheError(ValueError):
    """A folder that is not a usable faceage cache."""


class FaceCache:
    """A prepared dataset on disk: images (and masks) memory-mapped, labels loaded as arrays."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        manifest_path = self.path / MANIFEST
        if not manifest_path.is_file():
            raise CacheError(
                f"{self.path} is not a finished faceage cache (no {MANIFEST}); "
                f"run `faceage prepare ... --out {self.path}` to create or finish it"
            )
        self.manifest: dict = json.loads(manifest_path.read_text())
        if self.manifest.get("format") != FORMAT or self.manifest.get("format_version") != FORMAT_VERSION:
            raise CacheError(
                f"{self.path}: cache format {self.manifest.get('format')} v{self.manifest.get('format_version')} "
                f"is not {FORMAT} v{FORMAT_VERSION}; re-run faceage prepare to rebuild it"
            )
        self.size: int = int(self.manifest["size"])
        self.n: int = int(self.manifest["n"])
        self._load_meta()
        self._check_file(images_name(self.size), 3)
        self.has_masks: bool = bool(self.manifest.get("masks"))
        if self.has_masks:
            self._check_file(masks_name(self.size), 1)
        self._images: np.memmap | None = None
        self._masks: np.memmap | None = None

    def _load_meta(self) -> None:
        with np.load(self.path / META, allow_pickle=False) as meta:
            cols = {k: meta[k] for k in meta.files}
        if len(cols["age"]) != self.n:
            raise CacheError(f"{self.path}: {META} has {len(cols['age'])} rows, manifest says {self.n}; re-run prepare")
        self.ages: np.ndarray = cols["age"].astype(np.float32)
        self.splits: np.ndarray = cols["split"]
        self.groups: np.ndarray = cols["group"]  # dataset's own age-group label per row, "" where it gives ages
        self.genders: np.ndarray = cols["gender"]
        self.races: np.ndarray = cols["race"]
        self.hashes: np.ndarray = cols["hash"]
        self.relpaths: np.ndarray = cols["path"]
        self.file_sizes: np.ndarray = cols["file_size"]
        self.mtimes: np.ndarray = cols["mtime_ns"]
        ids = cols["identity"]
        self.identities: np.ndarray | None = ids if (ids != "").any() else None

    def _check_file(self, name: str, channels: int) -> None:
        expected = self.n * self.size * self.size * channels
        path = self.path / name
        actual = path.stat().st_size if path.is_file() else -1
        if actual != expected:
            raise CacheError(
                f"{path}: {actual} bytes, expected {expected} ({self.n} x {self.size}^2 x {channels}); "
                "the cache is damaged or half-written: re-run faceage prepare"
            )

    def __len__(self) -> int:
        return self.n

    def __repr__(self) -> str:
        counts = ", ".join(f"{s} {int((self.splits == s).sum())}" for s in SPLITS)
        return f"FaceCache({str(self.path)!r}, {self.n} faces at {self.size} px: {counts})"

    @property
    def images(self) -> np.ndarray:
        """uint8 N x S x S x 3, memory-mapped read-only (opened on first use, per process)."""
        if self._images is None:
            self._images = self._map(images_name(self.size), (self.n, self.size, self.size, 3))
        return self._images

    @property
    def masks(self) -> np.ndarray | None:
        """uint8 N x S x S (0-255) when prepare produced face masks, else None."""
        if not self.has_masks:
            return None
        if self._masks is None:
            self._masks = self._map(masks_name(self.size), (self.n, self.size, self.size))
        return self._masks

    def _map(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        if self.n == 0:
            return np.zeros(shape, np.uint8)
        return np.memmap(self.path / name, dtype=np.uint8, mode="r", shape=shape)

    @property
    def paths(self) -> np.ndarray:
        """Source file of each row (absolute, as seen when the cache was prepared)."""
        root = self.manifest["root"]
        return np.array([os.path.join(root, p) for p in self.relpaths.tolist()])

    @property
    def align(self) -> dict | None:
        """How faces were aligned (written by prepare's transform), or None for plain resizing."""
        return self.manifest.get("align")

    @property
    def dataset(self) -> str:
        return self.manifest["dataset"]

    def indices(self, split: str) -> np.ndarray:
        """Row indices of ``split`` (train / val / test, or ``all``), ascending."""
        if split == "all":
            return np.arange(self.n)
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; use one of {', '.join(SPLITS)} or 'all'")
        return np.flatnonzero(self.splits == split)

    def __getstate__(self) -> dict:
        # Never pickle the memory maps (a spawned DataLoader worker would copy every image): reopen them.
        state = self.__dict__.copy()
        state["_images"] = state["_masks"] = None
        return state


def open_cache(path: str | os.PathLike) -> FaceCache:
    """Open a cache written by ``faceage prepare``."""
    return FaceCache(path)
