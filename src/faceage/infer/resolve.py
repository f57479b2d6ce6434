"""Find a model from what the user typed: nothing (the bundled model), a name, or a path.

A name is looked up in ``paths.models_dirs()`` as a released folder (``NAME/`` with ``model.safetensors``
and ``config.json``), an ONNX file (``NAME.onnx``) or a training checkpoint (``NAME.pt``).
"""

from __future__ import annotations

from pathlib import Path

from faceage import paths
from faceage.models.pretrained import is_pretrained_dir

# The bundled model's folder name under ``paths.BUNDLED_WEIGHTS_DIR``.
DEFAULT_MODEL = "default"
MODEL_SUFFIXES = (".pt", ".onnx")

HOW_TO_GET_ONE = (
    "train one (`faceage prepare --dataset utkface --root DIR --size 128 --out CACHE`, then "
    "`faceage train --config ragan_utk128 --data CACHE --out RUN`) and export it with "
    "`faceage export --model RUN/checkpoints/last.pt --safetensors ~/.faceage/models/NAME` (then use --model NAME), "
    "or pass --model PATH to a checkpoint .pt, an exported folder or an .onnx file"
)


class ModelNotFoundError(FileNotFoundError):
    """No model matches what was asked for; the message says where faceage looked and how to get one."""


def _is_model(path: Path) -> bool:
    return is_pretrained_dir(path) or (path.is_file() and path.suffix in MODEL_SUFFIXES)


def available_models() -> list[str]:
    """Names that ``--model NAME`` would find, in search order."""
    names: list[str] = []
    for folder in paths.models_dirs():
        if folder.is_dir():
            for entry in sorted(folder.iterdir()):
                name = entry.stem if entry.is_file() else entry.name
                if _is_model(entry) and name not in names:
                    names.append(name)
    return names


def resolve_model(name_or_path: str | Path | None) -> Path:
    """The file or folder holding the model asked for; raises :class:`ModelNotFoundError` with advice."""
    if name_or_path is None:
        path = paths.BUNDLED_WEIGHTS_DIR / DEFAULT_MODEL
        if is_pretrained_dir(path):
            return path
        raise ModelNotFoundError(f"no bundled model is installed (looked for {path}); {HOW_TO_GET_ONE}")
    path = Path(name_or_path).expanduser()
    if path.exists():
        return path
    text = str(name_or_path)
    if "/" in text or "\\" in text or path.suffix in MODEL_SUFFIXES or text.startswith("."):
        raise ModelNotFoundError(f"no model at {path}; {HOW_TO_GET_ONE}")
    for folder in paths.models_dirs():
        for candidate in (folder / text, *(folder / f"{text}{s}" for s in MODEL_SUFFIXES)):
            if _is_model(candidate):
                return candidate
    searched = ", ".join(str(d) for d in paths.models_dirs())
    known = ", ".join(available_models()) or "none"
    raise ModelNotFoundError(f"no model named {text!r} in {searched} (available: {known}); {HOW_TO_GET_ONE}")
