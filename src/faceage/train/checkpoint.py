"""Training checkpoints: plain data written atomically, read back with ``torch.load(weights_only=True)``.

A checkpoint is a dict::

    format_version, model, model_config, scheme, image_size, align   # the meta of faceage.models.pretrained
    networks    {"generator": state_dict, "generator_ema": state_dict, "discriminator": state_dict, ...}
    optimizers  {name: optimizer state_dict}
    step        optimisation steps done
    rng         one dict of RNG states per DDP process (torch, numpy, python, cuda)
    config      the resolved run config (faceage.train.config.RunConfig.to_dict())

No pickled code, no numpy arrays: everything is tensors, numbers, strings, lists and dicts.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from faceage.utils import atomic_open

FORMAT_VERSION = 1
LAST = "last.pt"


def save_checkpoint(path: str | Path, state: dict) -> Path:
    """Write ``state`` to ``path`` atomically (a crash mid-write leaves the previous checkpoint intact)."""
    path = Path(path)
    with atomic_open(path, "wb") as f:
        torch.save({"format_version": FORMAT_VERSION, **state}, f)
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint written by :func:`save_checkpoint`, checking its format version."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    state = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        found = state.get("format_version") if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"{path}: not a faceage training checkpoint of format {FORMAT_VERSION} (found {found})")
    return state


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
