"""Age-cGAN at 32 px with 4-16 channels: shapes, what each stage trains, the stage hand-over through the loop, the
per-face latent refinement (also under inference mode), encode-once-render-many, save/load."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_train

from faceage import losses
from faceage.groups import get_scheme
from faceage.models import get_model
from faceage.models.agecgan import (
    AgeCGAN,
    AgeCGANConfig,
    AgeCGANGenerator,
    descriptor_distance,
    optimise_latent,
    pixel_distance,
    reconstructions,
)
from faceage.models.pretrained import load_generator, save_pretrained
from faceage.train.checkpoint import load_checkpoint
from faceage.train.config import from_dict, load_config
from faceage.train.loop import checkpoint_path, init_networks, run_phases, train

SCHEME = get_scheme("agecgan6")
GROUP_AGES = tuple(SCHEME.representative_age(g) for g in range(SCHEME.num_groups))
TINY = {
    "image_size": 32,
    "num_groups": 6,
    "group_ages": GROUP_AGES,
    "z_dim": 8,
    "g_channels": 16,
    "d_channels": 4,
    "e_channels": 4,
    "e_hidden": 16,
    "latent_steps": 5,
}
TRAIN = tiny_train("agecgan6", 2)
pytestmark = pytest.mark.usefixtures("one_thread")


def _tiny(stage: int = 1, seed: int = 0, **changes) -> AgeCGAN:
    torch.manual_seed(seed)
    return AgeCGAN(AgeCGANConfig(**{**TINY, "stage": stage, **changes}))


def _faces(seed: int = 0, n: int = 4) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"image": torch.rand(n, 3, 32, 32, generator=g) * 2 - 1, "group": torch.randint(0, 6, (n,), generator=g)}


def _state(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _trained_stage2(seed: int = 0) -> AgeCGAN:
    """A stage-2 model whose G took one stage-1 step (a G that never trained is refused)."""
    stage1 = _tiny(stage=1, seed=seed)
    run_phases(stage1, stage1.optimizers(2e-4, (0.5, 0.999)), stage1.train_step(_faces(seed), 0))
    stage2 = _tiny(stage=2, seed=seed + 1)
    stage2.generator.load_state_dict(stage1.generator.state_dict())
    return stage2


def test_tiny_shapes_and_errors():
    model = _tiny()
    assert get_model("agecgan") is AgeCGAN
    x, target = torch.rand(3, 3, 32, 32) * 2 - 1, torch.tensor([0.0, 2.5, 5.0])
    z = model.generator.encoder(x)
    assert z.shape == (3, 8)
    y = model.generator.decoder(z, target)
    assert y.shape == x.shape and y.abs().max() <= 1
    assert model.discriminator(x, target).shape == (3,)
    with pytest.raises(ValueError, match=r"expects \[B, 3, 32, 32\]"):
        model.generator.encoder(torch.zeros(1, 3, 64, 64))
    with pytest.raises(ValueError, match="stage must be 1 .* got 3"):
        AgeCGANConfig(**{**TINY, "stage": 3})
    with pytest.raises(ValueError, match="unknown latent mode 'ip'; known: none, pixel, identity"):
        AgeCGANConfig(**{**TINY, "latent_mode": "ip"})


def test_preset_exports_at_most_25_mb_and_both_stages_share_the_architecture():
    stage1, stage2 = load_config("agecgan_utk64").model_config, load_config("agecgan_utk64_encoder").model_config
    assert dataclasses.replace(stage1, stage=2) == stage2
    generator = AgeCGANGenerator(stage1)
    size = sum(t.numel() * t.element_size() for t in generator.state_dict().values())
    assert 20e6 < size <= 25e6, size
    assert generator.decoder.project.in_features == 106 and generator.decoder.start == 8  # [z, y] -> 8x8x256
    assert generator.source_position == pytest.approx(SCHEME.position(29.0))


def test_stage1_step_trains_g_and_d_not_e():
    model = _tiny(stage=1)
    optimizers = model.optimizers(2e-4, (0.5, 0.999))
    assert set(optimizers) == {"generator", "discriminator"}
    before = {name: _state(net) for name, net in [*model.generator.named_children(), ("D", model.discriminator)]}
    model.train()
    terms = run_phases(model, optimizers, model.train_step(_faces(), 0))
    assert {"g_adv", "d_adv"} <= set(terms) and all(torch.isfinite(v) for v in terms.values())
    assert not _same(before["decoder"], _state(model.generator.decoder))
    assert not _same(before["D"], _state(model.discriminator))
    assert _same(before["encoder"], _state(model.generator.encoder))  # parameters and BatchNorm statistics


def test_stage2_step_trains_e_only_and_refuses_an_untrained_g():
    model = _trained_stage2()
    assert set(model.networks()) == {"generator"}  # no discriminator in stage 2
    optimizers = model.optimizers(2e-4, (0.5, 0.999))
    assert set(optimizers) == {"encoder"}
    decoder, encoder = _state(model.generator.decoder), _state(model.generator.encoder)
    model.train()
    assert not model.generator.decoder.training and model.generator.encoder.training
    terms = run_phases(model, optimizers, model.train_step(_faces(1), 0))
    assert torch.isfinite(terms["z_rec"])
    assert _same(decoder, _state(model.generator.decoder))  # BatchNorm statistics included
    assert not _same(encoder, _state(model.generator.encoder))
    with pytest.raises(ValueError, match="never trained: start from a stage-1 run with train.init_from"):
        _tiny(stage=2).train_step(_faces(), 0)


def test_one_sided_label_smoothing_is_cross_entropy_towards_the_real_label():
    real, fake = torch.tensor([2.0, -1.0, 0.5]), torch.tensor([0.3, -2.0, 1.0])
    for label in (0.9, 1.0):
        expected = F.binary_cross_entropy_with_logits(real, torch.full_like(real, label))
        expected = expected + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake))  # fakes stay at 0
        assert losses.discriminator_adversarial(real, fake, label).item() == pytest.approx(expected.item(), rel=1e-6)
    assert losses.discriminator_adversarial(real, fake).item() == pytest.approx(expected.item(), rel=1e-6)


def _eval_generator() -> AgeCGANGenerator:
    """A generator as inference gets it: in eval mode, its parameters still requiring gradients."""
    return _trained_stage2().generator.eval()


def test_pixel_refinement_lowers_the_distance_under_inference_mode_without_side_effects():
    generator = _eval_generator()
    x, source = _faces(2, n=3)["image"], torch.tensor([0.0, 1.5, 4.0])
    state = _state(generator)
    with torch.inference_mode():
        z0 = optimise_latent(generator, x, source, mode="none", steps=10, lr=0.05)
        z = optimise_latent(generator, x, source, mode="pixel", steps=10, lr=0.05)
        before = pixel_distance(generator.render(z0, source), x)
        after = pixel_distance(generator.render(z, source), x)
    assert (after < before).all(), (before, after)
    assert _same(state, _state(generator)) and all(p.grad is None for p in generator.parameters())
    with pytest.raises(ValueError, match="eval mode"):
        optimise_latent(generator.train(), x, source, mode="pixel", steps=1, lr=0.05)


def test_identity_refinement_lowers_the_dlib_distance_under_inference_mode():
    from faceage.face.identity import to_chip

    generator = _eval_generator()
    recogniser = generator.recogniser(torch.device("cpu"))
    x, source = _faces(3, n=2)["image"], torch.tensor([1.0, 3.0])
    with torch.inference_mode():
        z0 = generator.encoder(x)
        z = optimise_latent(generator, x, source, mode="identity", steps=3, lr=0.05, recogniser=recogniser)
        wanted = recogniser(to_chip(x))
        before = descriptor_distance(recogniser(to_chip(generator.render(z0, source))), wanted)
        after = descriptor_distance(recogniser(to_chip(generator.render(z, source))), wanted)
    assert (after < before).all(), (before, after)
    assert not any(k.startswith("_recogniser") for k in generator.state_dict())  # never exported


def test_encode_once_then_render_each_target_equals_forward_per_target():
    generator = _eval_generator()
    x = _faces(4, n=2)["image"]
    source = torch.full((2,), generator.source_position)
    with torch.inference_mode():
        latents = generator.encode_faces(x, source)
        for position in (0.0, 2.5, 5.0):
            target = torch.full((2,), position)
            torch.testing.assert_close(generator.render(latents, target), generator(x, target), rtol=0, atol=1e-6)
        recs = reconstructions(generator, x, source, ("none", "pixel"))
        torch.testing.assert_close(recs["none"], generator.render(generator.encoder(x), source))
        torch.testing.assert_close(recs["pixel"], generator.render(latents, source), rtol=0, atol=1e-6)


def test_save_load_round_trip(tmp_path):
    generator = _eval_generator()
    cfg = dataclasses.asdict(AgeCGANConfig(**{**TINY, "stage": 2}))
    meta = {"model": "agecgan", "model_config": cfg, "scheme": SCHEME.to_dict(), "image_size": 32}
    loaded, _ = load_generator(save_pretrained(tmp_path / "agecgan", generator, meta))
    assert isinstance(loaded, AgeCGANGenerator) and loaded.latent_steps == TINY["latent_steps"]
    assert {k.split(".")[0] for k in loaded.state_dict()} == {"decoder", "encoder"}
    x, target = _faces(5, n=2)["image"], torch.tensor([0.0, 4.5])
    with torch.inference_mode():
        torch.testing.assert_close(loaded(x, target), generator(x, target), rtol=0, atol=0)


def test_sample_grids_of_both_stages():
    faces = _faces(6, n=2)
    for stage, columns, first in ((1, 6, "0-18"), (2, 8, "input")):
        model = _tiny(stage=stage).eval()
        grid, labels, rows = model.sample_grid(model.generator, faces["image"], faces["group"], SCHEME)
        assert grid.shape == (2, columns, 3, 32, 32) and len(labels) == columns and labels[0] == first
        assert rows == (["z1", "z2"] if stage == 1 else None)  # random latents are not the validation faces
    assert labels[1] == "E(x)" and torch.equal(grid[:, 0], faces["image"])
    reconstruction = model.generator.render(model.generator.encoder(faces["image"]), faces["group"].float())
    torch.testing.assert_close(grid[:, 1], reconstruction)  # at each face's own group


def test_stage_hand_over_through_the_loop_keeps_g_and_trains_e(synth_cache32, tmp_path):
    model = {
        "name": "agecgan",
        **{k: v for k, v in TINY.items() if k not in ("image_size", "num_groups", "group_ages")},
    }
    assert train(from_dict({"model": model, "train": TRAIN}), synth_cache32, tmp_path / "stage1") == 2
    first = load_checkpoint(checkpoint_path(tmp_path / "stage1"))
    assert set(first["networks"]) == {"generator", "discriminator", "generator_ema"}
    second_cfg = {
        "model": {**model, "stage": 2},
        "train": {**TRAIN, "init_from": str(checkpoint_path(tmp_path / "stage1"))},
    }
    assert train(from_dict(second_cfg), synth_cache32, tmp_path / "stage2") == 2
    second = load_checkpoint(checkpoint_path(tmp_path / "stage2"))
    assert set(second["networks"]) == {"generator", "generator_ema"} and set(second["optimizers"]) == {"encoder"}

    def part(state: dict, prefix: str) -> dict:
        return {k: v for k, v in state.items() if k.startswith(prefix)}

    g1 = part(first["networks"]["generator_ema"], "decoder.")
    for name in ("generator", "generator_ema"):  # G (EMA of stage 1) arrives and stays, bit for bit
        assert _same(g1, part(second["networks"][name], "decoder."))
    e1, e2 = (part(s["networks"]["generator"], "encoder.") for s in (first, second))
    assert not _same(e1, e2)
    generator, meta = load_generator(checkpoint_path(tmp_path / "stage2"))
    assert meta["model"] == "agecgan" and generator(torch.zeros(1, 3, 32, 32), torch.tensor([3.0])).shape == (
        1,
        3,
        32,
        32,
    )
    assert len(list((tmp_path / "stage2" / "samples").glob("*.png"))) == 1


def test_init_from_a_source_without_the_encoder_leaves_it_fresh(tmp_path):
    source, fresh = _tiny(stage=1, seed=0), _tiny(stage=2, seed=1)
    decoder_only = {k: v for k, v in source.generator.state_dict().items() if k.startswith("decoder.")}
    torch.save({"networks": {"generator_ema": decoder_only}}, tmp_path / "decoder_only.pt")
    encoder = _state(fresh.generator.encoder)
    init_networks(fresh.networks(), tmp_path / "decoder_only.pt")
    assert _same(_state(source.generator.decoder), _state(fresh.generator.decoder))
    assert _same(encoder, _state(fresh.generator.encoder))


def test_without_refinement_the_generator_exports_to_onnx_as_encoder_then_decoder(tmp_path):
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    from faceage.infer.export import export_onnx, onnx_max_error

    generator = _eval_generator()
    generator.latent_mode = "none"  # the refinement is a Python loop: ONNX holds z0 = E(x) decoded by G
    meta = {"model": "agecgan", "model_config": {}, "scheme": SCHEME.to_dict(), "image_size": 32}
    path = export_onnx(generator, meta, tmp_path / "agecgan.onnx")
    assert onnx_max_error(generator, path) < 1e-4
