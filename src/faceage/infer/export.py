"""Export a generator to ONNX, with its meta (scheme, image size, alignment) inside the file.

The ONNX graph takes ``image`` (float32 [B,3,S,S] in [-1,1]) and ``target`` (float32 [B] group position:
``AgeScheme.position``, so 37 years is 6.25 in ``ffhq10``, between groups 6 and 7) and returns ``aged`` (float32
[B,3,S,S]); the batch size is free. The meta dict that ``config.json`` holds
for a released folder is stored as JSON in the model's ``metadata_props`` under ``faceage.meta``, so the
one file is enough to age photos with ``faceage age --model OUT.onnx``.

A generator with a per-face latent fitting (``set_latent_fitting``: Age-cGAN) is exported with the fitting off
(:func:`plain_forward`): the file holds its encoder's latent E(x) decoded by G, and its meta says
``"latent_mode": "none"``. The fitting (autograd steps per face) stays in Python, with the checkpoint or folder.
"""

from __future__ import annotations

import copy
import json
import logging
import warnings
from pathlib import Path

import numpy as np
import torch

from faceage.utils import atomic_write_bytes

META_KEY = "faceage.meta"
INPUT_NAMES = ["image", "target"]
OUTPUT_NAMES = ["aged"]
DEFAULT_OPSET = 18


def plain_forward(generator: torch.nn.Module) -> torch.nn.Module:
    """``generator`` itself, or for one with a per-face latent fitting a copy with the fitting off (mode "none"):
    the forward graph an ONNX file can hold."""
    if not hasattr(generator, "set_latent_fitting"):
        return generator
    plain = copy.deepcopy(generator)
    plain.set_latent_fitting(mode="none")
    return plain


def export_onnx(generator: torch.nn.Module, meta: dict, path: str | Path, *, opset: int = DEFAULT_OPSET) -> Path:
    """Trace ``generator`` (fp32, CPU; :func:`plain_forward`) to an ONNX file at ``path`` with a dynamic batch and
    ``meta`` embedded."""
    try:
        import onnxscript  # noqa: F401  (torch's ONNX exporter needs it)
    except ImportError:
        raise ImportError("ONNX export needs onnx and onnxscript: pip install 'faceage[onnx]'") from None
    if hasattr(generator, "set_latent_fitting"):
        meta = {**meta, "latent_mode": "none"}
    generator = plain_forward(generator).float().cpu().eval()
    size = int(meta["image_size"])
    num_groups = len(meta["scheme"]["lower"])
    x = torch.zeros(2, 3, size, size)
    t = torch.tensor([0.0, num_groups - 1.5], dtype=torch.float32)  # a whole group and a blend of two
    batch = torch.export.Dim("batch", min=1, max=4096)
    # The exporter logs that torchvision ops are unavailable and warns about its own internals: not our concern.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*axis name: batch will not be used.*")
        warnings.filterwarnings("ignore", category=FutureWarning)
        program = torch.onnx.export(
            generator,
            (x, t),
            dynamo=True,
            verbose=False,
            input_names=INPUT_NAMES,
            output_names=OUTPUT_NAMES,
            dynamic_shapes=({0: batch}, {0: batch}),
            opset_version=opset,
        )
    proto = program.model_proto
    entry = proto.metadata_props.add()
    entry.key = META_KEY
    entry.value = json.dumps(meta)
    path = Path(path)
    atomic_write_bytes(path, proto.SerializeToString())
    return path


def read_onnx_meta(path: str | Path) -> dict:
    """The faceage meta stored in an ONNX file by :func:`export_onnx`; ValueError for other files."""
    try:
        import onnx
    except ImportError:
        raise ImportError("reading .onnx models needs onnx and onnxruntime: pip install 'faceage[onnx]'") from None
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf raises its own DecodeError (and others) on bytes that are not a model
        raise ValueError(f"{path} is not a readable ONNX file ({type(e).__name__}: {e})") from None
    for entry in proto.metadata_props:
        if entry.key == META_KEY:
            try:
                return json.loads(entry.value)
            except ValueError:
                raise ValueError(f"{path}: its {META_KEY} entry is not JSON; export it again") from None
    raise ValueError(f"{path} has no faceage meta; export it with `faceage export --model MODEL --onnx {path}`")


def onnx_max_error(generator: torch.nn.Module, path: str | Path, *, batch: int = 3, seed: int = 0) -> float:
    """Largest absolute difference between eager fp32 torch and onnxruntime on random faces and fractional targets."""
    from faceage.infer.backends import OnnxBackend, TorchBackend

    meta = read_onnx_meta(path)
    size, num_groups = int(meta["image_size"]), len(meta["scheme"]["lower"])
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, size=(batch, 3, size, size)).astype(np.float32)
    t = rng.uniform(0, num_groups - 1, size=batch).astype(np.float32)
    expected = TorchBackend(plain_forward(generator).float().cpu(), "fp32")(x, t)
    return float(np.abs(OnnxBackend(path)(x, t) - expected).max())
