"""Training checkpoints: plain data written atomically, read back with ``torch.load(weights_only=True)``.

A checkpoint is a dict::

    format_version, model, model_config, scheme, image_size, align   # the meta of faceage.models.pretrained
    networks    {"generator": state_dict, "generator_ema": state_dict, "discriminator": state_dict, ...}
    optimizers  {name: optimizer state_dict}
    step        optimisation steps done
    images      images each process has read: its position in the data stream (faceage.train.data); older
                checkpoints lack it, and their position follows from step and their config's batch size
    rng         one dict of RNG states per DDP process (torch, numpy, python, cuda)
    config      the resolved run config (faceage.train.config.RunConfig.to_dict())

No pickled code, no numpy arrays: everything is tensors, numbers, strings, lists and dicts.

A run folder's ``checkpoints/`` holds ``last.pt`` and ``prev.pt``, the checkpoint before it. A save writes
a temporary file, fsyncs it, renames ``last.pt`` to ``prev.pt`` and the temporary file to ``last.pt``: a
crash at any moment leaves a complete ``last.pt`` or, between the two renames, a complete ``prev.pt``.
:func:`load_latest` resumes from ``last.pt`` and falls back on ``prev.pt``, with a warning naming both,
when ``last.pt`` is missing or damaged (truncated by a copy, overwritten by another program, a disk fault).
"""

from __future__ import annotations

import os
import random
import warnings
from pathlib import Path

import numpy as np
import torch

from faceage.utils import atomic_open

FORMAT_VERSION = 1
LAST = "last.pt"
PREVIOUS = "prev.pt"
DAMAGED_SUFFIX = ".damaged"


class CheckpointError(ValueError):
    """A checkpoint file that exists but cannot be read: truncated, overwritten, or not a faceage checkpoint."""


def save_checkpoint(path: str | Path, state: dict, *, previous: str | Path | None = None) -> Path:
    """Write ``state`` to ``path`` atomically; with ``previous``, the checkpoint it replaces is renamed there.

    A crash mid-write leaves the checkpoint being replaced intact. The temporary file of a write that a kill
    cut short is removed by the next write (one process writes a run's checkpoints).
    """
    path = Path(path)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        stale.unlink(missing_ok=True)
    with atomic_open(path, "wb", keep_previous=previous) as f:
        torch.save({"format_version": FORMAT_VERSION, **state}, f)
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint written by :func:`save_checkpoint`, checking its format version.

    A file that exists but does not load raises :class:`CheckpointError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except OSError:
        raise
    except Exception as e:  # torch reports a damaged file as RuntimeError, EOFError, UnpicklingError or KeyError
        cause = str(e).split(". ")[0].strip() or "file ends early"
        raise CheckpointError(
            f"{path} is damaged (truncated or overwritten) and cannot be read: {type(e).__name__}: {cause[:200]}"
        ) from None
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        found = state.get("format_version") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{path}: not a faceage training checkpoint of format {FORMAT_VERSION} (found {found})")
    return state


def has_checkpoint(folder: str | Path) -> bool:
    """Whether a run's ``checkpoints`` folder holds ``last.pt`` or ``prev.pt``."""
    return any((Path(folder) / name).is_file() for name in (LAST, PREVIOUS))


def load_latest(folder: str | Path, map_location: str | torch.device = "cpu") -> tuple[Path, dict] | None:
    """The checkpoint to resume from in a ``checkpoints`` folder, and its path; None when there is none.

    That is ``last.pt``. When it is missing (a crash fell between the two renames of a save) or damaged,
    it is ``prev.pt``, the one before, with a warning naming both: the run repeats the steps between them,
    and since resuming is exact it ends as it would have. Raises :class:`CheckpointError` when neither loads.
    """
    last, prev = Path(folder) / LAST, Path(folder) / PREVIOUS
    if not has_checkpoint(folder):
        return None
    problem = f"{last} is missing (a save was cut short)"
    if last.is_file():
        try:
            return last, load_checkpoint(last, map_location)
        except CheckpointError as e:
            problem = str(e)
    if not prev.is_file():
        raise CheckpointError(
            f"{problem}; there is no {prev} to fall back on: restore {last} from a copy, or start over with "
            "another --out"
        )
    try:
        state = load_checkpoint(prev, map_location)
    except CheckpointError as e:
        raise CheckpointError(f"{problem}; the previous checkpoint cannot be read either: {e}") from None
    message = f"{problem}; resuming from the previous checkpoint {prev} (step {state['step']}) instead"
    warnings.warn(message, stacklevel=2)
    return prev, state


def set_aside(path: str | Path) -> Path | None:
    """Rename a damaged checkpoint to ``<name>.damaged`` (kept for inspection, so the next save does not make
    it ``prev.pt``); returns the new path, or None when there is no such file."""
    path = Path(path)
    if not path.is_file():
        return None
    target = path.with_name(path.name + DAMAGED_SUFFIX)
    os.replace(path, target)
    return target


def rng_state() -> dict:
    """The RNG states of this process as plain data: torch (CPU and CUDA), numpy's global one, python's."""
    np_state = np.random.get_state(legacy=False)
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "python": random.getstate(),
    }


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` captured."""
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    np_state = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": "MT19937",
            "state": {"key": np_state["key"].numpy().astype(np.uint32), "pos": np_state["pos"]},
            "has_gauss": np_state["has_gauss"],
            "gauss": np_state["gauss"],
        }
    )
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def seed_everything(seed: int) -> None:
    """Seed torch (all devices), numpy's global RNG and python's ``random``."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)
