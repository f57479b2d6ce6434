"""``faceage prepare``: decode, transform and cache a face dataset, incrementally and resumably.

1. The dataset's reader lists labelled records and the files or label rows it had to skip.
2. A fingerprint of every input (paths, sizes, mtimes, labels) and every setting decides whether there
   is anything to do; a second run with the same inputs stops there and says so.
3. Otherwise the work is planned in ``<out>/.partial/``: a staging memmap that workers fill in place,
   chunk by chunk, and one small JSON per finished chunk. Interrupt it at any point; the next run with
   the same inputs picks up after the last finished chunk. Files unchanged since the previous cache
   (same path, size and mtime, same pixel settings) are copied from it instead of decoded again.
4. Finalising drops skipped and duplicate images, assigns the split and writes the cache; the old
   manifest is removed first and the new one written last, so a half-written cache never looks done.

Per image: read the bytes, hash them (duplicates are found by content), decode (JPEG at reduced scale
when the output is small), reject photos smaller than ``min_size``, then apply the transform
(``faceage.data.transforms``: centre crop + resize, or face alignment) and write the row.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import io
import json
import multiprocessing
import os
import shutil
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from faceage import __version__
from faceage.data import cache as C
from faceage.data.imageio import ImageError, open_rgb
from faceage.data.records import MISSING, ReadResult, Record, Skip, read_dataset
from faceage.data.transforms import ImageTransform, SkipImage, build_transform
from faceage.utils import atomic_open, atomic_write_bytes, atomic_write_text

# Version of the rules that choose, label and split rows (duplicates, sizes, split hashing): part of
# the fingerprint, so bumping it makes existing caches update (reusing their pixels).
RULES_VERSION = 2
PARTIAL = ".partial"
LOCK = ".lock"
TOO_SMALL = "too small"
DUPLICATE = "duplicate"
CONFLICTING = "duplicate, conflicting labels"


@dataclass
class PrepareConfig:
    """Everything that decides what a cache holds, plus how hard to work on it."""

    dataset: str
    root: Path
    out: Path
    size: int = 128
    seed: int = 0
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)
    min_size: int = 32
    transform: str = "resize"
    transform_options: dict = field(default_factory=dict)
    workers: int = 2
    chunk_size: int = 128
    progress: bool = True


@dataclass
class PrepareResult:
    """What a prepare run did; ``status`` is ``up to date``, ``built`` or ``updated``."""

    status: str
    cache: Path
    files: int
    images: int
    splits: dict[str, int]
    skipped: dict[str, int]
    decoded: int = 0  # images decoded for this cache (over all runs, when resumed)
    reused: int = 0  # images copied unchanged from the previous cache
    resumed_chunks: int = 0  # chunks an interrupted run had already finished
    seconds: float = 0.0

    @property
    def report(self) -> Path:
        return self.cache / C.SKIPPED


def prepare(cfg: PrepareConfig, log: Callable[[str], None] | None = None) -> PrepareResult:
    """Bring the cache at ``cfg.out`` up to date with ``cfg.root``; see the module docstring."""
    log = log or _stderr
    start = time.perf_counter()
    cfg = _checked(cfg)
    cfg.out.mkdir(parents=True, exist_ok=True)
    with _lock(cfg.out):
        read = read_dataset(cfg.dataset, cfg.root)
        base = cfg.root if cfg.root.is_dir() else cfg.root.parent
        inputs = _Inputs.collect(read, base)
        fingerprint = _fingerprint(cfg, inputs)
        old = _manifest(cfg.out)
        partial = cfg.out / PARTIAL
        if old is not None and old["fingerprint"] == fingerprint:
            if partial.exists():
                shutil.rmtree(partial)
            return _result_from_manifest(cfg.out, old, "up to date")
        transform = build_transform(cfg.transform, cfg.size, cfg.transform_options)
        plan = _Plan.load(partial, fingerprint)
        resumed = 0
        if plan is None:
            plan = _Plan.create(partial, cfg, inputs, fingerprint, old, transform.masks, log)
        else:
            resumed = plan.done_count()
            log(f"resuming: {resumed} of {plan.num_chunks} chunks were already done")
        _run(cfg, plan, log)
        manifest = _finalize(cfg, base, inputs, plan, fingerprint, transform.info)
        shutil.rmtree(partial)
    status = "built" if old is None else "updated"
    result = _result_from_manifest(cfg.out, manifest, status)
    result.reused = plan.reused
    result.decoded = len(plan.items) - plan.reused
    result.resumed_chunks = resumed
    result.seconds = time.perf_counter() - start
    return result


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _checked(cfg: PrepareConfig) -> PrepareConfig:
    """A copy of ``cfg`` with absolute paths and normalised split fractions; refuses unusable settings."""
    if cfg.size < 8:
        raise ValueError(f"--size {cfg.size} is too small; use at least 8 px (typical: 128 or 256)")
    fractions = tuple(float(f) for f in cfg.split)
    if len(fractions) != 3 or min(fractions) < 0 or sum(fractions) <= 0:
        raise ValueError(f"--split must be three non-negative fractions train,val,test, got {cfg.split}")
    cfg = dataclasses.replace(
        cfg,
        root=Path(os.path.abspath(cfg.root)),
        out=Path(os.path.abspath(cfg.out)),
        split=tuple(f / sum(fractions) for f in fractions),
    )
    if cfg.root.is_dir() and (cfg.out == cfg.root or cfg.root in cfg.out.parents):
        # readers walk the root: the cache would become part of its own input
        raise ValueError(f"--out {cfg.out} is inside the dataset folder {cfg.root}; put the cache elsewhere")
    if cfg.out.is_dir() and any(p.name != LOCK for p in cfg.out.iterdir()):
        if not (cfg.out / C.MANIFEST).exists() and not (cfg.out / PARTIAL).exists():
            raise ValueError(f"--out {cfg.out} exists and is not a faceage cache; choose a new or empty folder")
    return cfg


@contextlib.contextmanager
def _lock(out: Path) -> Iterator[None]:
    """Refuse to run two prepares on one cache at once (POSIX advisory lock; no-op elsewhere)."""
    try:
        import fcntl
    except ImportError:  # Windows
        yield
        return
    with open(out / LOCK, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ValueError(f"another faceage prepare is writing {out}; wait for it to finish") from None
        yield


# --------------------------------------------------------------------------------------------------
# inputs and fingerprint


@dataclass
class _Inputs:
    """The records that exist on disk, with the relative path, size and mtime of each file."""

    records: list[Record]
    rel: list[str]
    sizes: list[int]
    mtimes: list[int]
    skipped: list[Skip]
    sources: list[tuple[str, int, int]]

    @classmethod
    def collect(cls, read: ReadResult, base: Path) -> _Inputs:
        inputs = cls([], [], [], [], list(read.skipped), [])
        for record in read.records:
            try:
                st = os.stat(record.path)
            except OSError as e:
                inputs.skipped.append(Skip(str(record.path), MISSING, e.strerror or str(e)))
                continue
            inputs.records.append(record)
            inputs.rel.append(_relative(record.path, base))
            inputs.sizes.append(st.st_size)
            inputs.mtimes.append(st.st_mtime_ns)
        for source in read.sources:
            st = os.stat(source)
            inputs.sources.append((str(source), st.st_size, st.st_mtime_ns))
        return inputs


def _relative(path: Path, base: Path) -> str:
    rel = os.path.relpath(path, base)
    return str(path) if rel == os.pardir or rel.startswith(os.pardir + os.sep) else rel


def _pixel_key(cfg: PrepareConfig) -> dict:
    """The settings that decide a row's pixels: rows may be reused from a cache with the same key."""
    return {
        "format_version": C.FORMAT_VERSION,
        "size": cfg.size,
        "min_size": cfg.min_size,
        "transform": cfg.transform,
        "transform_options": cfg.transform_options,
    }


def _settings(cfg: PrepareConfig) -> dict:
    dataset = {"dataset": cfg.dataset, "root": str(cfg.root), "seed": cfg.seed, "split": cfg.split}
    return {**_pixel_key(cfg), **dataset, "rules_version": RULES_VERSION}


def _fingerprint(cfg: PrepareConfig, inputs: _Inputs) -> str:
    h = hashlib.sha256(json.dumps(_settings(cfg), sort_keys=True).encode())
    for r, rel, size, mtime in zip(inputs.records, inputs.rel, inputs.sizes, inputs.mtimes, strict=True):
        h.update(json.dumps([rel, size, mtime, r.age, r.gender, r.identity, r.race, r.split, r.group]).encode())
    h.update(json.dumps([[s.path, s.reason, s.detail] for s in inputs.skipped]).encode())
    h.update(json.dumps(inputs.sources).encode())
    return h.hexdigest()


def _manifest(out: Path) -> dict | None:
    try:
        manifest = json.loads((out / C.MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return manifest if manifest.get("format_version") == C.FORMAT_VERSION else None


# --------------------------------------------------------------------------------------------------
# the plan: what to compute, in chunks, in <out>/.partial/


@dataclass
class _Plan:
    """One row per record: decode ``path``, or copy row ``reuse`` of the previous cache."""

    folder: Path
    fingerprint: str
    size: int
    masks: bool
    chunk_size: int
    items: list[tuple[str, int, str]]  # (path, row in previous cache or -1, its content hash)
    reused: int = 0

    @property
    def num_chunks(self) -> int:
        return -(-len(self.items) // self.chunk_size)

    def chunk_file(self, k: int) -> Path:
        return self.folder / "chunks" / f"{k:06d}.json"

    def done_count(self) -> int:
        return sum(self.chunk_file(k).exists() for k in range(self.num_chunks))

    def staging(self, what: str) -> Path:
        return self.folder / f"{what}.u8"

    @classmethod
    def load(cls, folder: Path, fingerprint: str) -> _Plan | None:
        try:
            d = json.loads((folder / "plan.json").read_text())
        except (OSError, ValueError):
            return None
        if d.get("fingerprint") != fingerprint:
            return None
        d["items"] = [tuple(item) for item in d["items"]]
        return cls(folder, **d)

    @classmethod
    def create(
        cls, folder: Path, cfg: PrepareConfig, inputs: _Inputs, fingerprint: str, old: dict | None, masks: bool, log
    ) -> _Plan:
        if folder.exists():
            shutil.rmtree(folder)
        (folder / "chunks").mkdir(parents=True)
        reuse = _reusable_rows(cfg, old)
        items = []
        for path, rel, size, mtime in zip(inputs.records, inputs.rel, inputs.sizes, inputs.mtimes, strict=True):
            row, digest = reuse.get((rel, size, mtime), (-1, ""))
            items.append((str(path.path), row, digest))
        plan = cls(folder, fingerprint, cfg.size, masks, cfg.chunk_size, items)
        plan.reused = sum(row >= 0 for _, row, _ in items)
        if old is None:
            log(f"building cache: {len(items)} images to decode")
        else:
            log(f"updating cache: {len(items) - plan.reused} images to decode, {plan.reused} unchanged")
        n, s = len(items), cfg.size
        if n:
            np.memmap(plan.staging("images"), np.uint8, "w+", shape=(n, s, s, 3)).flush()
            if masks:
                np.memmap(plan.staging("masks"), np.uint8, "w+", shape=(n, s, s)).flush()
        fields = {k: getattr(plan, k) for k in ("fingerprint", "size", "masks", "chunk_size", "items", "reused")}
        atomic_write_text(folder / "plan.json", json.dumps(fields))
        return plan


def _reusable_rows(cfg: PrepareConfig, old: dict | None) -> dict[tuple[str, int, int], tuple[int, str]]:
    """Rows of the previous cache whose source file is unchanged, when its pixels were made the same way."""
    if old is None or old.get("pixel_key") != _pixel_key(cfg):
        return {}
    try:
        previous = C.open_cache(cfg.out)
    except (C.CacheError, OSError, KeyError):
        return {}
    keys = zip(previous.relpaths.tolist(), previous.file_sizes.tolist(), previous.mtimes.tolist(), strict=True)
    return {key: (i, digest) for i, (key, digest) in enumerate(zip(keys, previous.hashes.tolist(), strict=True))}


# --------------------------------------------------------------------------------------------------
# running the chunks (in worker processes)


def _run(cfg: PrepareConfig, plan: _Plan, log: Callable[[str], None]) -> None:
    from tqdm import tqdm

    todo = [k for k in range(plan.num_chunks) if not plan.chunk_file(k).exists()]
    if not todo:
        return
    n_todo = sum(len(_chunk(plan, k)) for k in todo)
    old = cfg.out / C.images_name(cfg.size)
    context = {
        "images": str(plan.staging("images")),
        "masks": str(plan.staging("masks")) if plan.masks else None,
        "shape": (len(plan.items), cfg.size, cfg.size),
        "transform": (cfg.transform, cfg.size, cfg.transform_options),
        "min_size": cfg.min_size,
        "old": str(old) if plan.reused else None,
        "old_masks": str(cfg.out / C.masks_name(cfg.size)) if plan.reused and plan.masks else None,
    }
    tasks = ((k, k * plan.chunk_size, _chunk(plan, k)) for k in todo)
    workers = max(1, min(cfg.workers, len(todo)))
    with contextlib.ExitStack() as stack:
        if workers > 1:  # start the pool before tqdm starts its monitor thread: fork after threads is unsafe
            pool = stack.enter_context(multiprocessing.get_context().Pool(workers, _init_worker, (context,)))
            done = pool.imap_unordered(_process_chunk, tasks)
        else:
            _init_worker(context, ignore_sigint=False)
            stack.callback(_WORKER.clear)
            done = map(_process_chunk, tasks)
        bar = stack.enter_context(
            tqdm(total=n_todo, unit="img", desc="prepare", file=sys.stderr, disable=not cfg.progress, smoothing=0.05)
        )
        try:
            for k, results in done:
                atomic_write_text(plan.chunk_file(k), json.dumps(results))
                bar.update(len(results))
        except KeyboardInterrupt:
            bar.close()
            log(
                f"interrupted: {plan.done_count()} of {plan.num_chunks} chunks are saved in {plan.folder}; "
                "run the same command again to resume"
            )
            raise


def _chunk(plan: _Plan, k: int) -> list[tuple[str, int, str]]:
    return plan.items[k * plan.chunk_size : (k + 1) * plan.chunk_size]


# Per-process state of a worker: open memmaps and the transform (built once per process).
_WORKER: dict = {}


def _init_worker(context: dict, ignore_sigint: bool = True) -> None:
    if ignore_sigint:  # the parent handles Ctrl-C and terminates the pool
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    n, s, _ = context["shape"]
    _WORKER.clear()
    _WORKER["transform"] = build_transform(*context["transform"])
    _WORKER["min_size"] = context["min_size"]
    _WORKER["images"] = np.memmap(context["images"], np.uint8, "r+", shape=(n, s, s, 3))
    _WORKER["masks"] = np.memmap(context["masks"], np.uint8, "r+", shape=(n, s, s)) if context["masks"] else None
    if context["old"]:
        _WORKER["old"] = np.memmap(context["old"], np.uint8, "r").reshape(-1, s, s, 3)
    if context["old_masks"]:
        _WORKER["old_masks"] = np.memmap(context["old_masks"], np.uint8, "r").reshape(-1, s, s)


def _process_chunk(task: tuple[int, int, list]) -> tuple[int, list[list[str]]]:
    """Fill rows ``start...`` of the staging arrays; returns ``[status, hash, detail]`` per row."""
    k, start, items = task
    results = [_process_one(start + j, *item) for j, item in enumerate(items)]
    # Pixels reach the disk before the chunk is recorded as done, so a resumed run can trust them.
    _WORKER["images"].flush()
    if _WORKER["masks"] is not None:
        _WORKER["masks"].flush()
    return k, results


def _process_one(row: int, path: str, reuse: int, digest: str) -> list[str]:
    w = _WORKER
    if reuse >= 0:
        w["images"][row] = w["old"][reuse]
        if w["masks"] is not None:
            w["masks"][row] = w["old_masks"][reuse]
        return ["ok", digest, ""]
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        return ["unreadable", "", e.strerror or str(e)]
    digest = hashlib.blake2b(data, digest_size=16).hexdigest()
    transform: ImageTransform = w["transform"]
    try:
        image, (width, height) = open_rgb(data, reduce_to=transform.decode_size, name=path)
        if min(width, height) < w["min_size"]:
            return [TOO_SMALL, digest, f"{width}x{height} px, below the minimum of {w['min_size']} px"]
        face, mask = transform.fn(np.asarray(image))
    except (ImageError, SkipImage) as e:
        return [e.reason, digest, e.detail]
    size = w["images"].shape[1]
    if face.shape != (size, size, 3) or face.dtype != np.uint8:
        raise ValueError(f"transform returned {face.dtype} {face.shape} for {path}, expected uint8 {(size, size, 3)}")
    w["images"][row] = face
    if w["masks"] is not None:
        w["masks"][row] = _mask_u8(mask, size, path)
    return ["ok", digest, ""]


def _mask_u8(mask: np.ndarray | None, size: int, path: str) -> np.ndarray:
    if mask is None or mask.shape != (size, size):
        got = None if mask is None else mask.shape
        raise ValueError(f"transform promised masks but returned {got} for {path}, expected {(size, size)}")
    if mask.dtype == np.uint8:
        return mask
    return np.clip(np.rint(mask * 255.0), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------------
# finalising: drop skipped and duplicate rows, split, write the cache files


def _finalize(
    cfg: PrepareConfig, base: Path, inputs: _Inputs, plan: _Plan, fingerprint: str, align: dict | None
) -> dict:
    results = [r for k in range(plan.num_chunks) for r in json.loads(plan.chunk_file(k).read_text())]
    skipped = list(inputs.skipped)
    copies: dict[str, list[int]] = {}
    for i, (status, digest, detail) in enumerate(results):
        if status == "ok":
            copies.setdefault(digest, []).append(i)
        else:
            skipped.append(Skip(str(inputs.records[i].path), status, detail))
    keep = sorted(_drop_duplicates(copies.values(), inputs, skipped))
    records = [inputs.records[i] for i in keep]
    splits = assign_splits(records, [inputs.rel[i] for i in keep], cfg.split, cfg.seed)

    (cfg.out / C.MANIFEST).unlink(missing_ok=True)  # from here on the folder is not a finished cache
    _write_rows(plan.staging("images"), cfg.out / C.images_name(cfg.size), keep, len(results), cfg.size**2 * 3)
    if plan.masks:
        _write_rows(plan.staging("masks"), cfg.out / C.masks_name(cfg.size), keep, len(results), cfg.size**2)
    _write_meta(cfg.out / C.META, records, splits, inputs, keep, [results[i][1] for i in keep])
    _write_skipped(cfg.out / C.SKIPPED, skipped)
    manifest = {
        "format": C.FORMAT,
        "format_version": C.FORMAT_VERSION,
        "faceage_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "dataset": cfg.dataset,
        "root": str(base),
        "size": cfg.size,
        "n": len(keep),
        "masks": plan.masks,
        "align": align,
        "settings": _settings(cfg),
        "pixel_key": _pixel_key(cfg),
        "fingerprint": fingerprint,
        "counts": {
            "files": len(inputs.records) + len(inputs.skipped),
            "splits": {s: int((splits == s).sum()) for s in C.SPLITS},
            "skipped": dict(Counter(s.reason for s in skipped).most_common()),
        },
    }
    _remove_stale(cfg.out, keep_names={C.images_name(cfg.size), C.masks_name(cfg.size) if plan.masks else ""})
    atomic_write_text(cfg.out / C.MANIFEST, json.dumps(manifest, indent=2) + "\n")
    return manifest


def _drop_duplicates(groups, inputs: _Inputs, skipped: list[Skip]) -> Iterator[int]:
    """One row per distinct file content. Copies that agree on the labels keep the first (in path
    order); copies that disagree (UTKFace has photos filed under two ages) are all dropped, since
    nothing says which label is right."""
    for rows in groups:
        first = rows[0]
        labels = {_labels(inputs.records[i]) for i in rows}
        if len(labels) == 1:
            yield first
            for i in rows[1:]:
                skipped.append(Skip(str(inputs.records[i].path), DUPLICATE, f"same bytes as {inputs.rel[first]}"))
            continue
        for i in rows:
            others = ", ".join(f"{inputs.rel[j]} ({_describe(inputs.records[j])})" for j in rows if j != i)
            detail = f"labelled {_describe(inputs.records[i])} but the same bytes as {others}"
            skipped.append(Skip(str(inputs.records[i].path), CONFLICTING, detail))


def _labels(r: Record) -> tuple:
    return (r.age, r.gender, r.race, r.identity, r.group)


def _describe(r: Record) -> str:
    parts = [
        f"age {r.age:g}",
        r.gender,
        None if r.race is None else f"race {r.race}",
        r.identity and f"id {r.identity}",
    ]
    return " ".join(p for p in parts if p)


def assign_splits(
    records: Sequence[Record], rel_paths: Sequence[str], fractions: Sequence[float], seed: int
) -> np.ndarray:
    """train / val / test per record: the dataset's own split where it has one, else by seeded hash.

    Each identity (or, without identities, each file) draws a number in [0, 1) from a hash of the seed
    and its key, and lands in train, val or test by the fractions. So all photos of one person share a
    split, the split never depends on the order of files, and adding files never moves old ones.
    """
    edges = np.cumsum(fractions) / np.sum(fractions)
    out = np.empty(len(records), dtype="<U5")
    for i, (record, rel) in enumerate(zip(records, rel_paths, strict=True)):
        if record.split is not None:
            out[i] = record.split
            continue
        key = f"id:{record.identity}" if record.identity is not None else f"file:{rel}"
        u = int.from_bytes(hashlib.blake2b(f"{seed}\0{key}".encode(), digest_size=8).digest(), "big") / 2**64
        out[i] = C.SPLITS[min(int(np.searchsorted(edges, u, side="right")), 2)]
    return out


def _write_rows(staging: Path, dest: Path, keep: list[int], n: int, row_bytes: int) -> None:
    """Write the kept rows of the staging array to ``dest`` (a hard link when every row is kept)."""
    tmp = dest.with_name(f".{dest.name}.tmp")
    tmp.unlink(missing_ok=True)
    if not keep:
        atomic_write_bytes(dest, b"")
        return
    if len(keep) == n:
        try:
            os.link(staging, tmp)
            os.replace(tmp, dest)
            return
        except OSError:  # a filesystem without hard links: copy below
            tmp.unlink(missing_ok=True)
    src = np.memmap(staging, np.uint8, "r", shape=(n, row_bytes))
    with atomic_open(dest, "wb") as f:
        for i in range(0, len(keep), 1024):
            f.write(np.ascontiguousarray(src[keep[i : i + 1024]]).data)


def _write_meta(
    path: Path, records: list[Record], splits: np.ndarray, inputs: _Inputs, keep: list[int], hashes: list[str]
) -> None:
    columns = {
        "path": np.array([inputs.rel[i] for i in keep], dtype=str),
        "age": np.array([r.age for r in records], dtype=np.float32),
        "group": np.array([r.group or "" for r in records], dtype=str),
        "gender": np.array([C.GENDERS.index(r.gender) if r.gender else -1 for r in records], dtype=np.int8),
        "race": np.array([-1 if r.race is None else r.race for r in records], dtype=np.int8),
        "identity": np.array([r.identity or "" for r in records], dtype=str),
        "split": splits.astype(str),
        "file_size": np.array([inputs.sizes[i] for i in keep], dtype=np.int64),
        "mtime_ns": np.array([inputs.mtimes[i] for i in keep], dtype=np.int64),
        "hash": np.array(hashes, dtype=str),
    }
    buffer = io.BytesIO()
    np.savez(buffer, **columns)
    atomic_write_bytes(path, buffer.getvalue())


def _write_skipped(path: Path, skipped: list[Skip]) -> None:
    with atomic_open(path, "w") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "reason", "detail"])
        for s in sorted(skipped, key=lambda s: (s.reason, s.path)):
            writer.writerow([s.path, s.reason, s.detail])


def _remove_stale(out: Path, keep_names: set[str]) -> None:
    """Arrays of an earlier size or a masks file a new run no longer writes."""
    for pattern in ("images_*.u8", "masks_*.u8"):
        for path in out.glob(pattern):
            if path.name not in keep_names:
                path.unlink()


def _result_from_manifest(out: Path, manifest: dict, status: str) -> PrepareResult:
    counts = manifest["counts"]
    return PrepareResult(
        status=status,
        cache=out,
        files=counts["files"],
        images=manifest["n"],
        splits=counts["splits"],
        skipped=counts["skipped"],
    )


# --------------------------------------------------------------------------------------------------
# resampling a finished cache to another size (no decoding, no face detection)

RESAMPLE_FILTER = "Pillow LANCZOS"
RESAMPLE_ROWS = 1024  # rows read, resampled and written at a time


def resample_cache(source: Path, out: Path, size: int) -> PrepareResult:
    """A copy of the cache at ``source`` with its faces (and masks) resampled to ``size`` px, antialiased: every
    row, label and split kept, no photo decoded or face detected again (an aligned face keeps its framing, as
    alignment scales with the crop). The manifest says where it came from (``resampled_from``); re-running with
    the same source and size does nothing."""
    start = time.perf_counter()
    source, out = Path(os.path.abspath(source)), Path(os.path.abspath(out))
    src = C.open_cache(source)
    _check_resample(src, out, size)
    manifest = _resampled_manifest(src, size)
    out.mkdir(parents=True, exist_ok=True)
    with _lock(out):
        old = _manifest(out)
        if old is not None and old.get("fingerprint") == manifest["fingerprint"]:
            return _result_from_manifest(out, old, "up to date")
        (out / C.MANIFEST).unlink(missing_ok=True)  # from here on the folder is not a finished cache
        _resample_rows(src.images, out / C.images_name(size), size)
        if src.masks is not None:
            _resample_rows(src.masks, out / C.masks_name(size), size)
        for name in (C.META, C.SKIPPED):
            atomic_write_bytes(out / name, (source / name).read_bytes())
        _remove_stale(out, keep_names={C.images_name(size), C.masks_name(size) if src.has_masks else ""})
        atomic_write_text(out / C.MANIFEST, json.dumps(manifest, indent=2) + "\n")
    result = _result_from_manifest(out, manifest, "built" if old is None else "updated")
    result.seconds = time.perf_counter() - start
    return result


def _check_resample(src: C.FaceCache, out: Path, size: int) -> None:
    if size < 8:
        raise ValueError(f"--size {size} is too small; use at least 8 px (typical: 64 or 128)")
    if size == src.size:
        raise ValueError(f"{src.path} already holds {size} px faces: give another --size to resample it")
    if out == src.path:
        raise ValueError(f"--out {out} is the cache being resampled; give a new folder")
    if out.is_dir() and any(p.name != LOCK for p in out.iterdir()) and not (out / C.MANIFEST).exists():
        raise ValueError(f"--out {out} exists and is not a faceage cache; choose a new or empty folder")


def _resampled_manifest(src: C.FaceCache, size: int) -> dict:
    """The source's manifest at the new size: its counts, settings and labels, plus where it came from. The
    fingerprint and pixel key differ from those of a cache prepared at ``size``, so a later ``faceage prepare``
    into the same folder rebuilds it from the photos rather than taking these pixels for decoded ones."""
    m = src.manifest
    origin = {"cache": str(src.path), "size": src.size, "fingerprint": m.get("fingerprint"), "filter": RESAMPLE_FILTER}
    fingerprint = hashlib.sha256(json.dumps(["resampled", origin, size], sort_keys=True).encode()).hexdigest()
    return {
        **m,
        "faceage_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "size": size,
        "align": None if m.get("align") is None else {**m["align"], "size": size},
        "settings": {**m.get("settings", {}), "size": size},
        "pixel_key": {**m.get("pixel_key", {}), "size": size, "resampled_from": src.size},
        "fingerprint": fingerprint,
        "resampled_from": origin,
    }


def _resample_rows(images: np.ndarray, dest: Path, size: int) -> None:
    """Write ``images`` (N x S x S [x 3] uint8) resampled to ``size`` px to ``dest``, a block of rows at a time."""
    from PIL import Image

    with atomic_open(dest, "wb") as f:
        for i in range(0, len(images), RESAMPLE_ROWS):
            block = np.asarray(images[i : i + RESAMPLE_ROWS])
            small = [np.asarray(Image.fromarray(a).resize((size, size), Image.Resampling.LANCZOS)) for a in block]
            if small:
                f.write(np.ascontiguousarray(np.stack(small)).data)
