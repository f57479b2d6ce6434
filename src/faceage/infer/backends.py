"""Ways to run a generator: eager torch (fp32 or bf16 autocast) or an exported ONNX file.

Both take and return NumPy arrays so the rest of inference does not care which one runs:
``backend(images float32 [B,3,S,S] in [-1,1], targets float32 [B]) -> float32 [B,3,S,S] in [-1,1]``, where a
target is a float group position (``AgeScheme.position``: 6.25 is a quarter of the way from group 6 to group 7).

The torch backend also splits ageing one face to several targets in two: ``faces = backend.encode(images,
sources)`` once per face, then ``backend.render(faces[i], targets)`` per (face, target) pair. For a generator with
the latent contract (:func:`fits_latents`: Age-cGAN) ``encode`` is its costly per-face step (encode, fit the latent
to the face at its source age) and ``render`` decodes; for any other generator ``encode`` only converts the images
and ``render`` runs the whole network. A backend without ``encode`` (ONNX: one exported forward graph) is called
per pair.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from faceage.precision import PRECISIONS, autocast, resolve_precision


def check_batch(images: np.ndarray, targets: np.ndarray) -> None:
    """Raise ValueError unless ``images`` is ``[B,3,S,S]`` and ``targets`` holds one group position per image."""
    images, targets = np.asarray(images), np.asarray(targets)
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be a [B, 3, S, S] batch (channels first, in [-1, 1]), got shape {images.shape}")
    if targets.shape != (images.shape[0],):
        raise ValueError(f"need one target group per image: {images.shape[0]} images, targets of shape {targets.shape}")
    if targets.dtype == bool or not (
        np.issubdtype(targets.dtype, np.integer) or np.issubdtype(targets.dtype, np.floating)
    ):
        raise TypeError(f"targets must be float group positions (or integer group indices), got dtype {targets.dtype}")


def fits_latents(generator: torch.nn.Module) -> bool:
    """Whether ``generator`` has the optional latent contract (see ``FaceAgingModel.build_generator``):
    ``encode_faces(x, source_positions) -> latents``, ``render(latents, targets) -> images`` and
    ``source_position``, the group position an input face is taken to be at when its age is not given."""
    return all(hasattr(generator, name) for name in ("encode_faces", "render", "source_position"))


class TorchBackend:
    """Runs a torch generator eagerly on its device, in fp32 or under bf16 autocast.

    ``precision`` is "auto" (bf16 only where it is faster: see :mod:`faceage.precision`), "fp32" or "bf16";
    ``precision`` then holds what was picked and ``precision_why`` why. The generator is switched (in place)
    to channels-last memory format: oneDNN and cuDNN convolutions run 2-3x faster on it than on the default
    layout, with the same results up to float rounding.
    """

    name = "torch"

    def __init__(self, generator: torch.nn.Module, precision: str = "auto") -> None:
        param = next(generator.parameters(), None)
        self.device = param.device if param is not None else torch.device("cpu")
        self.precision, self.precision_why = resolve_precision(precision, self.device)
        self.generator = generator.eval().to(memory_format=torch.channels_last)
        self.latents = fits_latents(generator)

    def __call__(self, images: np.ndarray, targets: np.ndarray) -> np.ndarray:
        check_batch(images, targets)
        y = self.render(self.encode(images), targets)
        assert y.shape == images.shape, f"generator returned {y.shape} for input {images.shape}"
        return y

    def encode(self, images: np.ndarray, sources: np.ndarray | None = None) -> torch.Tensor:
        """What :meth:`render` needs of each face, on the device: the latents ``encode_faces`` fits to faces at
        group positions ``sources`` [B] (None: the generator's ``source_position``), or for a generator without
        the latent contract the images themselves."""
        x = self._tensor(images).contiguous(memory_format=torch.channels_last)
        if not self.latents:
            return x
        s = torch.full((len(x),), self.generator.source_position) if sources is None else self._tensor(sources)
        with torch.inference_mode(), autocast(self.precision, self.device):
            return self.generator.encode_faces(x, s.to(self.device))

    def render(self, faces: torch.Tensor, targets: np.ndarray) -> np.ndarray:
        """Faces from :meth:`encode` (one per target) at group positions ``targets``: float32 [B,3,S,S]."""
        t = self._tensor(targets)
        with torch.inference_mode(), autocast(self.precision, self.device):
            if self.latents:
                y = self.generator.render(faces, t)
            else:
                y = self.generator(faces.contiguous(memory_format=torch.channels_last), t)
        return y.float().cpu().numpy()

    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).to(self.device)


class OnnxBackend:
    """Runs an ONNX generator exported by ``faceage export --onnx`` with onnxruntime (always fp32)."""

    name = "onnx"

    def __init__(self, path: str | Path, device: str | torch.device = "cpu", precision: str = "auto") -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; known: {', '.join(PRECISIONS)}")
        if precision == "bf16":
            raise ValueError("the onnx backend runs the exported fp32 graph; use precision 'fp32' or 'auto'")
        try:
            import onnxruntime as ort
        except ImportError:
            raise ImportError("the onnx backend needs onnxruntime: pip install 'faceage[onnx]'") from None
        providers = ["CPUExecutionProvider"]
        if torch.device(device).type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        self.path = Path(path)
        self.precision, self.precision_why = "fp32", "the exported ONNX graph is fp32"
        self.session = ort.InferenceSession(str(self.path), providers=providers)
        self.inputs = [i.name for i in self.session.get_inputs()]
        # Files exported before float ages take int64 group indices: they can still age to a whole group.
        self.integer_targets = self.session.get_inputs()[1].type == "tensor(int64)"

    def __call__(self, images: np.ndarray, targets: np.ndarray) -> np.ndarray:
        check_batch(images, targets)
        targets = np.asarray(targets)
        if self.integer_targets and not np.array_equal(targets, np.round(targets)):
            raise ValueError(
                f"{self.path} takes whole age groups only (int64 targets, an export from before float ages), got "
                f"positions {targets.tolist()}; export the model again with `faceage export --onnx`"
            )
        feed = {
            self.inputs[0]: np.ascontiguousarray(images, dtype=np.float32),
            self.inputs[1]: np.ascontiguousarray(targets, dtype=np.int64 if self.integer_targets else np.float32),
        }
        (y,) = self.session.run(None, feed)
        if y.shape != images.shape:  # a hand-made or foreign .onnx file, not one of faceage export's
            raise ValueError(f"ONNX model {self.path} returned shape {y.shape} for input {images.shape}")
        return y
