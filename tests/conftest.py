"""Shared fixtures. Tests that need many real faces use ../shared/data/utkface and skip where it is absent; the
rest run on a fresh clone, on generated faces (``synthetic_utk_dir``) or on two real photos that ship with the
dependencies (scikit-image's astronaut, matplotlib's Grace Hopper) and images made from them (``photo_chip``)."""

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


# Where dlib's HOG detector puts the face (x0, y0, x1, y1) in the astronaut photo and in Grace Hopper's portrait.
ASTRONAUT_BOX = (175, 76, 265, 166)
HOPPER_BOX = (161, 137, 376, 352)


@pytest.fixture(scope="session")
def hopper():
    """Grace Hopper's portrait (public domain, US Navy; matplotlib's sample data): a second real person (600x512)."""
    import numpy as np
    from matplotlib import cbook
    from PIL import Image

    return np.asarray(Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).convert("RGB"))


def photo_chip(photo, box, size: int, *, zoom: float = 1.5, shift: tuple[float, float] = (0, 0), flip: bool = False):
    """A UTKFace-like chip of a real photo: a square ``zoom`` times the face box wide, centred on the face (moved
    by ``shift`` box widths), resized to ``size`` px and mirrored when ``flip``; uint8 [size, size, 3]."""
    import numpy as np
    from PIL import Image

    x0, y0, x1, y1 = box
    side = zoom * (x1 - x0)
    cx, cy = (x0 + x1) / 2 + shift[0] * (x1 - x0), (y0 + y1) / 2 + shift[1] * (x1 - x0)
    crop = (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)
    chip = np.asarray(Image.fromarray(photo).resize((size, size), Image.Resampling.LANCZOS, box=crop))
    return np.ascontiguousarray(chip[:, ::-1]) if flip else chip


def write_synthetic_faces(root: Path, n: int, *, size: int = 64, seed: int = 0) -> Path:
    """``n`` generated face-like JPEGs named the UTKFace way (``age_gender_race_date.jpg.chip.jpg``) in ``root``.

    Each is a skin-toned ellipse with eyes and a mouth on a random background; the age (1-90, spread
    evenly), gender and race in the name are drawn from ``seed``, and older faces are drawn greyer and
    darker so an age signal exists. They serve everything that needs no real face (data pipeline, training
    loop, eval mechanics), not face detection: dlib's HOG detector fires on many of these cartoons (213 of 240
    at 64 px with its 2x upsampling; some at 128 px), so they are no stand-in for "a photo without a face".
    """
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        age = 1 + (i * 89) // max(1, n - 1)
        gender, race = int(rng.integers(0, 2)), int(rng.integers(0, 5))
        fade = age / 90
        bg = tuple(int(v) for v in rng.integers(0, 256, 3))
        skin = tuple(int(c * (1 - 0.3 * fade) + 128 * 0.3 * fade) for c in (224 - 30 * race, 172 - 20 * race, 140))
        image = Image.new("RGB", (size, size), bg)
        draw = ImageDraw.Draw(image)
        s = size / 64
        draw.ellipse([14 * s, 8 * s, 50 * s, 58 * s], fill=skin)
        for x in (24, 40):
            draw.ellipse([(x - 3) * s, 26 * s, (x + 3) * s, 30 * s], fill=(40, 30, 30))
        draw.line([26 * s, 45 * s, 38 * s, 45 * s], fill=(150 - int(60 * fade), 60, 60), width=max(1, int(2 * s)))
        pixels = np.asarray(image, dtype=np.int16) + rng.integers(-12, 13, (size, size, 3))
        stamp = 20170100000000000 + i * 7919
        name = f"{age}_{gender}_{race}_{stamp}.jpg.chip.jpg"
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(root / name, quality=92)
    return root


@pytest.fixture(scope="session")
def synthetic_utk_dir(tmp_path_factory) -> Path:
    """240 generated UTKFace-named faces (64 px): a dataset folder that exists on every clone."""
    return write_synthetic_faces(tmp_path_factory.mktemp("synthetic_utk"), 240)


@pytest.fixture(scope="session")
def synth_cache32(synthetic_utk_dir, tmp_path_factory) -> Path:
    """A 32 px cache (faceage prepare, split 0.8/0.1/0.1) of the 240 generated faces."""
    from faceage.data.prepare import PrepareConfig, prepare

    out = tmp_path_factory.mktemp("synth_cache") / "cache32"
    cfg = PrepareConfig(dataset="utkface", root=synthetic_utk_dir, out=out, size=32, workers=1, progress=False)
    prepare(cfg, log=lambda message: None)
    return out


def tiny_train(scheme: str, steps: int, **changes) -> dict:
    """The ``train`` section of a tiny run on ``synth_cache32``: batch 4, no workers, logging, samples and a
    checkpoint at the last step."""
    section = {"scheme": scheme, "image_size": 32, "batch_size": 4, "steps": steps, "num_workers": 0}
    section |= {"log_every": 1, "sample_every": steps, "checkpoint_every": steps, "sample_rows": 2}
    return section | changes


# A RAGAN small enough to run in milliseconds on a CPU; random weights, 32 px, the 5-group acgan5 scheme.
TINY_RAGAN_CONFIG = {
    "image_size": 32,
    "num_groups": 5,
    "channels": 4,
    "max_channels": 16,
    "downsamples": 2,
    "skip_factors": [2],
    "style_dim": 16,
    "modulator_layers": 1,
    "bottleneck_blocks": 1,
    "d_channels": 4,
    "d_max_channels": 16,
}


@pytest.fixture(scope="session")
def tiny_ragan_dir(tmp_path_factory) -> Path:
    """A released model folder (safetensors + config.json) holding a tiny randomly initialised RAGAN."""
    import torch

    from faceage.groups import get_scheme
    from faceage.models import get_model
    from faceage.models.pretrained import save_pretrained

    torch.manual_seed(0)
    generator = get_model("ragan").build_generator(TINY_RAGAN_CONFIG)
    meta = {
        "model": "ragan",
        "model_config": TINY_RAGAN_CONFIG,
        "scheme": get_scheme("acgan5").to_dict(),
        "image_size": 32,
        "align": {"preset": "utkface"},
    }
    return save_pretrained(tmp_path_factory.mktemp("tiny_ragan") / "tiny", generator, meta)


@pytest.fixture
def one_thread():
    """Run the test on one torch thread: tiny models are fastest that way, above all on a shared CPU."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def register_test_generator(name: str, forward):
    """Register model ``name`` whose generator computes ``forward(x, target)`` and holds one unused parameter,
    so that it saves and loads like a trained one; returns the generator's class."""
    import torch
    from torch import nn

    from faceage.models.registry import register_model

    class Generator(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.unused = nn.Parameter(torch.zeros(1))

        def forward(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            return forward(x, target)

    @register_model(name)
    class Model:
        @staticmethod
        def build_generator(model_config: dict) -> nn.Module:
            return Generator()

    return Generator


# A registered 'generator' that returns its input (model name ``eval-test-identity``): every eval metric then has
# a known value.
IdentityGenerator = register_test_generator("eval-test-identity", lambda x, target: x)
