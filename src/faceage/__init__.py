"""faceage: face age transformation — train, evaluate and run face-aging GANs on real photos."""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"

if TYPE_CHECKING:  # pragma: no cover
    from faceage.infer.ager import Ager


def load(
    name_or_path: str | None = None, device: str | None = None, *, backend: str | None = None, precision: str = "fp32"
) -> Ager:
    """Load an ager: the bundled model by default, or a model name / checkpoint / exported folder / .onnx file."""
    from faceage.infer.ager import load as _load

    return _load(name_or_path, device=device, backend=backend, precision=precision)
