"""Where faceage looks for data, caches and models.

Everything can be redirected with environment variables so that a shared machine, a CI runner or a
cluster job can point faceage at its own storage without editing code.
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
BUNDLED_WEIGHTS_DIR = PACKAGE_DIR / "weights"
CONFIGS_DIR = PACKAGE_DIR / "configs"
EXAMPLE_PHOTO = PACKAGE_DIR / "examples" / "astronaut.jpg"  # public domain (NASA); see examples/README.md


def home() -> Path:
    """faceage's own folder for downloaded or trained models (``FACEAGE_HOME``, default ``~/.faceage``)."""
    return Path(os.environ.get("FACEAGE_HOME", Path.home() / ".faceage")).expanduser()


def models_dirs() -> list[Path]:
    """Folders searched, in order, for a model given by name."""
    return [home() / "models", BUNDLED_WEIGHTS_DIR]


def data_root() -> Path:
    """Default root for datasets (``FACEAGE_DATA``, default ``../shared/data`` seen from the cwd)."""
    return Path(os.environ.get("FACEAGE_DATA", Path.cwd().parent / "shared" / "data")).expanduser()
