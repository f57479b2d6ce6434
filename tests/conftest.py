"""Shared fixtures. Tests that need real faces use ../shared/data/utkface and skip where it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
UTKFACE_DIR = Path(os.environ.get("FACEAGE_UTKFACE", ROOT.parent / "shared" / "data" / "utkface"))


@pytest.fixture(scope="session")
def utkface_dir() -> Path:
    """The shared UTKFace folder; the test is skipped when it is not present (a fresh user clone)."""
    if not UTKFACE_DIR.is_dir():
        pytest.skip(f"UTKFace not found at {UTKFACE_DIR} (set FACEAGE_UTKFACE to point at it)")
    return UTKFACE_DIR


@pytest.fixture(scope="session")
def astronaut():
    """scikit-image's astronaut photo: a real, redistributable face with background (512x512 RGB)."""
    skdata = pytest.importorskip("skimage.data")
    return skdata.astronaut()
