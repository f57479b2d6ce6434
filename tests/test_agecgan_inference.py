"""Age-cGAN through inference: each face is encoded (its latent fitted) once and rendered at every target, the
source age and the fitting's knobs on the API and the CLI (refused for other models and ONNX files), and ONNX
export of E(x) decoded by G with the fitting left in Python."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image

import faceage
from faceage.cli import main
from faceage.groups import get_scheme
from faceage.models.agecgan import AgeCGANConfig, AgeCGANGenerator
from faceage.models.pretrained import save_pretrained

SCHEME = get_scheme("agecgan6")
TINY = {
    "image_size": 32,
    "num_groups": 6,
    "group_ages": tuple(SCHEME.representative_age(g) for g in range(6)),
    "z_dim": 8,
    "g_channels": 16,
    "e_channels": 4,
    "e_hidden": 16,
    "latent_steps": 5,
    "stage": 2,
}
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def agecgan_dir(tmp_path_factory):
    """A released folder of a tiny randomly initialised Age-cGAN (pixel fitting, 5 steps, source age 29)."""
    torch.manual_seed(0)
    cfg = AgeCGANConfig(**TINY)
    meta = {
        "model": "agecgan",
        "model_config": dataclasses.asdict(cfg),
        "scheme": SCHEME.to_dict(),
        "image_size": 32,
        "align": {"preset": "utkface"},
    }
    return save_pretrained(tmp_path_factory.mktemp("agecgan") / "tiny", AgeCGANGenerator(cfg), meta)


def _crops(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def _as_input(crops: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(crops.astype(np.float32).transpose(0, 3, 1, 2) / 127.5 - 1)


def _to_uint8(y: torch.Tensor) -> np.ndarray:
    return np.clip(np.rint((y.clamp(-1, 1).permute(0, 2, 3, 1).numpy() + 1) * 127.5), 0, 255).astype(np.int16)


def _count_encoded_faces(generator: AgeCGANGenerator) -> list[torch.Tensor]:
    """Record the source positions of every face ``encode_faces`` is called on."""
    seen: list[torch.Tensor] = []
    encode = generator.encode_faces

    def counting(x: torch.Tensor, source_positions: torch.Tensor) -> torch.Tensor:
        seen.append(source_positions.clone())
        return encode(x, source_positions)

    generator.encode_faces = counting
    return seen


def test_each_face_is_encoded_once_and_rendered_at_every_target(agecgan_dir):
    ager = faceage.load(agecgan_dir, device="cpu", precision="fp32")
    generator = ager.backend.generator
    seen = _count_encoded_faces(generator)
    crop = _crops(1)[0]
    out = ager.transform(crop, [20, 70], aligned=True)
    assert len(out.images) == 2 and [len(s) for s in seen] == [1]  # one face, one fitting, two targets
    assert seen[0].tolist() == [pytest.approx(generator.source_position)]
    with torch.inference_mode():  # the class's own method: the instance's is the counting wrapper
        z = AgeCGANGenerator.encode_faces(generator, _as_input(crop[None]), torch.tensor([generator.source_position]))
        for image, age in zip(out.images, (20, 70), strict=True):
            expected = _to_uint8(generator.render(z, torch.tensor([ager.position(age)])))[0]
            assert np.abs(np.asarray(image).astype(np.int16) - expected).max() <= 1, age


def test_batches_of_faces_and_targets_give_the_same_outputs(agecgan_dir):
    """Three faces to three targets, in one batch or one (face, target) pair at a time: each face fitted once."""
    ager = faceage.load(agecgan_dir, device="cpu", precision="fp32")
    seen = _count_encoded_faces(ager.backend.generator)
    crops, positions = _crops(3, seed=1), [0.0, 2.5, 5.0]
    together = ager.generate(crops, positions)
    assert sum(len(s) for s in seen) == 3
    ager.batch_size = 1
    apart = ager.generate(crops, positions)
    assert sum(len(s) for s in seen) == 6 and together.shape == (3, 3, 32, 32, 3)
    np.testing.assert_allclose(apart, together, atol=1e-3)


def test_source_age_and_latent_knobs_reach_the_generator(agecgan_dir):
    ager = faceage.load(agecgan_dir, device="cpu", precision="fp32", source_age=60, latent_steps=2, latent_lr=0.1)
    generator = ager.backend.generator
    assert (generator.latent_mode, generator.latent_steps, generator.latent_lr) == ("pixel", 2, 0.1)
    seen = _count_encoded_faces(generator)
    crops = _crops(2, seed=2)
    at60 = ager.generate(crops, [4.0])
    assert torch.allclose(seen[0], torch.full((2,), SCHEME.position(60.0)))
    default = faceage.load(agecgan_dir, device="cpu", precision="fp32", latent_steps=2, latent_lr=0.1)
    assert np.abs(default.generate(crops, [4.0]) - at60).max() > 1  # fitted at 29 years, not 60
    plain = faceage.load(agecgan_dir, device="cpu", precision="fp32", latent_mode="none")
    g = plain.backend.generator
    with torch.inference_mode():
        expected = g.decoder(g.encoder(_as_input(crops)), torch.full((2,), 4.0))
    expected = (expected.clamp(-1, 1).permute(0, 2, 3, 1).numpy() + 1) * 127.5
    np.testing.assert_allclose(plain.generate(crops, [4.0])[:, 0], expected, atol=1e-3)
    with pytest.raises(ValueError, match="unknown latent mode 'ip'; known: none, pixel, identity"):
        faceage.load(agecgan_dir, device="cpu", latent_mode="ip")
    with pytest.raises(ValueError, match="bad source_age 200"):
        faceage.load(agecgan_dir, device="cpu", source_age=200)


def test_other_models_refuse_the_latent_knobs_and_the_source_age(tiny_ragan_dir, tmp_path, capsys):
    with pytest.raises(ValueError, match=r"fits no latent per face: latent_mode apply to Age-cGAN only"):
        faceage.load(tiny_ragan_dir, device="cpu", latent_mode="pixel")
    with pytest.raises(ValueError, match="ages the photo directly"):
        faceage.load(tiny_ragan_dir, device="cpu", source_age=30)
    Image.fromarray(_crops(1)[0]).save(tmp_path / "face.png")
    argv = ["age", str(tmp_path / "face.png"), "--to", "70", "--aligned", "--model", str(tiny_ragan_dir)]
    assert main([*argv, "--latent-steps", "3", "--out", str(tmp_path / "out")]) == 2
    assert "fits no latent per face: latent_steps apply to Age-cGAN only" in capsys.readouterr().err


def test_cli_ages_with_the_source_age_and_the_knobs(agecgan_dir, tmp_path, capsys):
    Image.fromarray(_crops(1)[0]).save(tmp_path / "face.png")
    argv = ["age", str(tmp_path / "face.png"), "--to", "20", "--to", "70", "--aligned", "--model", str(agecgan_dir)]
    argv += ["--source-age", "45", "--latent-mode", "pixel", "--latent-steps", "3", "--latent-lr", "0.1", "--json"]
    assert main([*argv, "--out", str(tmp_path / "out")]) == 0
    results = json.loads(capsys.readouterr().out)
    assert [r["ok"] for r in results] == [True, True]
    assert main([*argv[:-9], "--latent-mode", "ip", "--out", str(tmp_path / "out2")]) == 2
    assert "unknown latent mode 'ip'" in capsys.readouterr().err


def test_onnx_export_holds_the_encoder_latent_decoded_and_says_so(agecgan_dir, tmp_path, capsys):
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    from faceage.infer.export import onnx_max_error, read_onnx_meta

    out = tmp_path / "agecgan.onnx"
    assert main(["export", "--model", str(agecgan_dir), "--onnx", str(out)]) == 0
    err = capsys.readouterr().err
    assert "latent fitting (pixel or identity) is autograd steps that stay in Python" in err
    assert read_onnx_meta(out)["latent_mode"] == "none"
    torch_ager = faceage.load(agecgan_dir, device="cpu", precision="fp32")
    generator = torch_ager.backend.generator
    assert onnx_max_error(generator, out) < 1e-4 and generator.latent_mode == "pixel"  # the original is untouched
    onnx_ager = faceage.load(out)
    crops = _crops(2, seed=3)
    plain = faceage.load(agecgan_dir, device="cpu", precision="fp32", latent_mode="none")
    np.testing.assert_allclose(onnx_ager.generate(crops, [1.5]), plain.generate(crops, [1.5]), atol=1e-2)
    with pytest.raises(ValueError, match="latent_mode given for the ONNX file .* use the torch backend"):
        faceage.load(out, latent_mode="pixel")
