"""``faceage export``: ONNX with its meta inside, matching eager torch; checkpoint EMA to a released folder."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import faceage
from faceage.cli import main
from faceage.infer.backends import OnnxBackend, TorchBackend
from faceage.infer.export import read_onnx_meta
from faceage.models.pretrained import load_pretrained


@pytest.fixture(scope="module")
def exported(tiny_ragan_dir, tmp_path_factory):
    """A training checkpoint (EMA differs from the raw generator) exported to ONNX and a released folder."""
    tmp = tmp_path_factory.mktemp("export")
    generator, meta = load_pretrained(tiny_ragan_dir)
    meta = {k: v for k, v in meta.items() if k != "format_version"}
    ema = {k: v * 0.9 for k, v in generator.state_dict().items()}
    ckpt = {**meta, "networks": {"generator": generator.state_dict(), "generator_ema": ema}, "step": 10}
    torch.save(ckpt, tmp / "run.pt")
    argv = ["export", "--model", str(tmp / "run.pt"), "--onnx", str(tmp / "g.onnx"), "--safetensors", str(tmp / "rel")]
    assert main(argv) == 0
    return tmp, meta, ema


def test_safetensors_folder_holds_the_ema_generator(exported):
    tmp, meta, ema = exported
    generator, loaded_meta = load_pretrained(tmp / "rel")
    assert all(torch.equal(generator.state_dict()[k], ema[k]) for k in ema)
    assert {k: loaded_meta[k] for k in meta} == meta


def test_half_stores_float16_at_half_the_size_and_loads_as_float32(exported):
    from safetensors.torch import load_file

    tmp, _, ema = exported
    assert main(["export", "--model", str(tmp / "run.pt"), "--safetensors", str(tmp / "half"), "--half"]) == 0
    stored = load_file(str(tmp / "half" / "model.safetensors"))
    assert {v.dtype for v in stored.values() if v.is_floating_point()} == {torch.float16}
    full, half = (tmp / name / "model.safetensors" for name in ("rel", "half"))
    assert half.stat().st_size < 0.55 * full.stat().st_size
    generator, _ = load_pretrained(tmp / "half")
    for k, v in generator.state_dict().items():
        assert v.dtype == torch.float32 and torch.equal(v, ema[k].half().float()), k


def test_onnx_carries_meta_and_matches_torch(exported):
    tmp, meta, _ = exported
    assert read_onnx_meta(tmp / "g.onnx") == meta
    torch_backend = TorchBackend(load_pretrained(tmp / "rel")[0], "fp32")
    onnx_backend = OnnxBackend(tmp / "g.onnx")
    rng = np.random.default_rng(0)
    for batch in (1, 5):  # the batch dimension is dynamic
        x = rng.uniform(-1, 1, (batch, 3, 32, 32)).astype(np.float32)
        t = rng.integers(0, 5, batch).astype(np.int64)
        assert np.abs(onnx_backend(x, t) - torch_backend(x, t)).max() < 1e-3


def test_onnx_takes_fractional_positions_like_torch(exported):
    """The graph's target is a float32 group position: a blend of two groups matches torch and is neither group."""
    import onnxruntime as ort

    tmp, _, _ = exported
    (target_input,) = [i for i in ort.InferenceSession(str(tmp / "g.onnx")).get_inputs() if i.name == "target"]
    assert target_input.type == "tensor(float)"
    torch_backend = TorchBackend(load_pretrained(tmp / "rel")[0], "fp32")
    onnx_backend = OnnxBackend(tmp / "g.onnx")
    x = np.repeat(np.random.default_rng(2).uniform(-1, 1, (1, 3, 32, 32)).astype(np.float32), 3, axis=0)
    t = np.array([2.0, 2.15, 3.0], np.float32)  # 31-40, 37 years in acgan5, 41-50
    ours = onnx_backend(x, t)
    assert np.abs(ours - torch_backend(x, t)).max() < 1e-3
    assert np.abs(ours[1] - ours[0]).max() > 1e-2 and np.abs(ours[1] - ours[2]).max() > 1e-2
    crop = np.random.default_rng(3).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    by_onnx = np.asarray(faceage.load(tmp / "g.onnx").age(crop, 37, aligned=True)).astype(int)
    by_torch = np.asarray(faceage.load(tmp / "rel", device="cpu", precision="fp32").age(crop, 37, aligned=True)).astype(
        int
    )
    assert np.abs(by_onnx - by_torch).max() <= 1


def test_an_onnx_file_with_int64_targets_still_ages_to_whole_groups(tmp_path):
    """Files exported before float ages take int64 group indices: whole groups run, a blend says to re-export."""
    import onnx
    from onnx import TensorProto, helper

    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, 8, 8])
    target = helper.make_tensor_value_info("target", TensorProto.INT64, ["batch"])
    aged = helper.make_tensor_value_info("aged", TensorProto.FLOAT, ["batch", 3, 8, 8])
    graph = helper.make_graph([helper.make_node("Identity", ["image"], ["aged"])], "old", [image, target], [aged])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), tmp_path / "old.onnx")
    backend = OnnxBackend(tmp_path / "old.onnx")
    x = np.random.default_rng(0).uniform(-1, 1, (2, 3, 8, 8)).astype(np.float32)
    np.testing.assert_array_equal(backend(x, np.array([1.0, 4.0], np.float32)), x)
    with pytest.raises(ValueError, match=r"whole age groups only .*got positions \[1.0, 2.5\]; export the model again"):
        backend(x, np.array([1.0, 2.5], np.float32))


def test_age_with_the_onnx_backend(exported, capsys):
    tmp, _, _ = exported
    crop = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    expected = np.asarray(faceage.load(tmp / "rel", device="cpu", precision="fp32").age(crop, 40, aligned=True)).astype(
        int
    )
    assert faceage.load(tmp / "g.onnx").backend.name == "onnx"
    from PIL import Image

    Image.fromarray(crop).save(tmp / "face.png")
    argv = ["age", str(tmp / "face.png"), "--to", "40", "--aligned", "--backend", "onnx"]
    assert main([*argv, "--model", str(tmp / "g.onnx"), "--out", str(tmp / "o"), "--json"]) == 0
    (result,) = json.loads(capsys.readouterr().out)
    assert np.abs(np.asarray(Image.open(result["output"])).astype(int) - expected).max() <= 1


def test_export_errors(exported, capsys):
    tmp, _, _ = exported
    assert main(["export", "--model", str(tmp / "run.pt")]) == 2
    assert "--onnx" in capsys.readouterr().err
    assert main(["export", "--model", str(tmp / "run.pt"), "--onnx", str(tmp / "h.onnx"), "--half"]) == 2
    assert "--half applies to --safetensors DIR" in capsys.readouterr().err
    assert main(["export", "--model", str(tmp / "run.pt"), "--onnx", str(tmp / "g.bin")]) == 2
    assert "must end in .onnx" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="faceage export --model"):
        faceage.load(tmp / "rel", backend="onnx")
    (tmp / "file").write_text("")
    assert main(["export", "--model", str(tmp / "run.pt"), "--safetensors", str(tmp / "file")]) == 2
    assert f"--safetensors {tmp / 'file'} is a file; give a folder" in capsys.readouterr().err


def test_onnx_precision_and_bad_onnx_files(exported, capsys):
    tmp, _, _ = exported
    ager = faceage.load(tmp / "g.onnx")  # precision auto: the exported graph is fp32
    assert ager.backend.precision == "fp32" and "backend=onnx/fp32" in repr(ager)
    with pytest.raises(
        ValueError, match="the onnx backend runs the exported fp32 graph; precision 'bf16' is torch-only"
    ):
        faceage.load(tmp / "g.onnx", precision="bf16")
    with pytest.raises(ValueError, match="use precision 'fp32' or 'auto'"):
        OnnxBackend(tmp / "g.onnx", precision="bf16")
    (tmp / "fake.onnx").write_bytes(b"this is not a protobuf")
    with pytest.raises(ValueError, match=r"fake.onnx is not a readable ONNX file"):
        faceage.load(tmp / "fake.onnx")
    argv = ["age", str(tmp / "face.png"), "--to", "40", "--aligned", "--model", str(tmp / "g.onnx")]
    assert main([*argv, "--precision", "bf16", "--out", str(tmp / "o2")]) == 2
    assert "precision 'bf16' is torch-only" in capsys.readouterr().err
