"""faceage: face age transformation — train, evaluate and run face-aging GANs on real photos."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# The most pixels a photo to be aged may have; bigger ones are refused before they are decoded. A 24 MP
# camera photo (6000x4000) fits with headroom, as do 48-61 MP sensors. Raise it with ``max_pixels=`` (Python)
# or ``--max-pixels`` (CLI). Also ``faceage.infer.MAX_PIXELS``; defined here so ``import faceage`` needs no torch.
MAX_PIXELS = 64_000_000

if TYPE_CHECKING:  # pragma: no cover
    from faceage.infer.ager import Ager


def load(name_or_path: str | None = None, device: str | None = None, **options: Any) -> Ager:
    """Load an ager: the bundled model by default, or a model name / checkpoint / exported folder / .onnx file.

    ``options`` are :func:`faceage.infer.load`'s: ``backend`` ("torch" or "onnx"), ``precision`` ("auto",
    the default, picks bf16 autocast only where it is faster: CUDA, CPUs with AMX; else fp32), ``max_pixels``
    (the largest photo it will decode, default :data:`MAX_PIXELS`; None: no limit of faceage's own) and
    ``detect_threshold`` (the dlib HOG score a detection needs to be aged).
    """
    from faceage.infer.ager import load as _load

    return _load(name_or_path, device=device, **options)
