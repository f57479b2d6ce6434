"""Released weights: a folder with ``model.safetensors`` (generator state dict) and ``config.json``.

``config.json`` is plain data::

    {"format_version": 1, "model": "ragan", "model_config": {...}, "scheme": {"name", "lower"},
     "image_size": 128, "align": {...}, ...}

The generator is rebuilt with ``get_model(model).build_generator(model_config)``, so loading needs no
pickled code and no training machinery.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save

from faceage.models.registry import get_model
from faceage.utils import atomic_write_bytes, atomic_write_text

FORMAT_VERSION = 1
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


def save_pretrained(folder: str | Path, generator: torch.nn.Module, meta: dict, *, half: bool = False) -> Path:
    """Write ``generator``'s weights and ``meta`` (must name ``model`` and ``model_config``) to ``folder``.

    ``half`` stores floating-point tensors as float16, half the bytes; loading copies them into the float32
    generator, so only the weights' rounding (a relative 5e-4) changes, not the arithmetic."""
    missing = {"model", "model_config", "scheme", "image_size"} - set(meta)
    if missing:
        raise ValueError(f"pretrained meta is missing {sorted(missing)}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in generator.state_dict().items()}
    if half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    atomic_write_bytes(folder / WEIGHTS_NAME, save(state))
    atomic_write_text(folder / CONFIG_NAME, json.dumps({"format_version": FORMAT_VERSION, **meta}, indent=2))
    return folder


def is_pretrained_dir(path: str | Path) -> bool:
    path = Path(path)
    return (path / WEIGHTS_NAME).is_file() and (path / CONFIG_NAME).is_file()


def load_pretrained(folder: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict]:
    """Rebuild the generator saved in ``folder``; returns ``(generator in eval mode, meta)``."""
    folder = Path(folder)
    if not is_pretrained_dir(folder):
        raise FileNotFoundError(f"{folder} is not a faceage model folder (needs {WEIGHTS_NAME} and {CONFIG_NAME})")
    try:
        meta = json.loads((folder / CONFIG_NAME).read_text())
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
        raise ValueError(f"{folder / CONFIG_NAME} is not valid JSON ({e}); export the model again") from None
    if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
        version = meta.get("format_version") if isinstance(meta, dict) else None
        raise ValueError(f"{folder}: format_version {version} is not {FORMAT_VERSION}")
    _check_meta(meta, folder / CONFIG_NAME)
    generator = _build(meta, folder / CONFIG_NAME)
    try:
        state = load_file(str(folder / WEIGHTS_NAME), device="cpu")
    except Exception as e:  # safetensors raises its own SafetensorError on a damaged file
        raise ValueError(f"{folder / WEIGHTS_NAME} is not a readable safetensors file ({e})") from None
    generator.load_state_dict(state)
    return generator.to(device).eval(), meta


def load_generator(path: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict]:
    """A generator from an exported folder or a training checkpoint (``.pt``), with its meta.

    A checkpoint is plain data (see ``faceage.train.checkpoint``) holding the same meta keys as
    ``config.json`` plus ``networks``; its EMA generator is preferred when present. A file that is not a
    faceage model raises ValueError naming it; weights that do not fit the architecture, RuntimeError.
    """
    path = Path(path)
    if path.is_dir():
        return load_pretrained(path, device)
    if not path.is_file():
        raise FileNotFoundError(f"no model at {path}: expected an exported folder or a checkpoint .pt file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle, zip and torch's weights-only unpickler each raise their own types
        raise ValueError(f"{path} is not a faceage checkpoint ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    try:
        meta = {k: ckpt[k] for k in ("model", "model_config", "scheme", "image_size")}
        networks = ckpt["networks"]
    except (KeyError, TypeError) as e:
        raise ValueError(f"{path} is not a faceage checkpoint (missing {e})") from None
    meta["align"] = ckpt.get("align")
    if "critics" in ckpt:  # frozen age/gender networks it trained against (faceage eval will not judge with them)
        meta["critics"] = ckpt["critics"]
    weights = networks.get("generator_ema", networks.get("generator")) if isinstance(networks, dict) else None
    if weights is None:
        raise ValueError(f"{path} holds no generator weights (networks: {sorted(networks or [])})")
    generator = _build(meta, path)
    generator.load_state_dict(weights)
    return generator.to(device).eval(), meta


def _check_meta(meta: dict, where: Path) -> None:
    missing = sorted({"model", "model_config", "scheme", "image_size"} - set(meta))
    if missing:
        raise ValueError(f"{where} lacks {', '.join(missing)}; export the model again")


def _build(meta: dict, where: Path) -> torch.nn.Module:
    """The (untrained) generator that ``meta`` describes; an unknown model name or config fails naming ``where``."""
    try:
        return get_model(meta["model"]).build_generator(meta["model_config"])
    except KeyError as e:  # get_model's message lists the known models
        raise ValueError(f"{where}: {e.args[0]}") from None
    except TypeError as e:  # a config key this version does not know
        raise ValueError(f"{where}: model_config does not fit {meta['model']!r} ({e})") from None
