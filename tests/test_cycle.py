"""The cycle age-modulator GAN at 32 px with 4-8 channels: age modulation, the cycle, its losses, phases, export."""

from __future__ import annotations

import json
import math
from dataclasses import asdict

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_train
from PIL import Image

from faceage import losses
from faceage.groups import get_scheme
from faceage.models import get_model
from faceage.models.cycle import CycleConfig, CycleGAN
from faceage.models.pretrained import load_generator, load_pretrained, save_pretrained
from faceage.nn.layers import instance_norm
from faceage.train.checkpoint import load_checkpoint
from faceage.train.config import from_dict, load_config
from faceage.train.loop import checkpoint_path, run_phases, train
from faceage.train.samples import HEADER

TINY = {
    "image_size": 32,
    "num_groups": 5,
    "channels": 4,
    "max_channels": 8,
    "downsamples": 2,
    "style_dim": 8,
    "d_channels": 4,
    "d_max_channels": 8,
}
pytestmark = pytest.mark.usefixtures("one_thread")


def _tiny(seed: int = 0, **changes) -> CycleGAN:
    torch.manual_seed(seed)
    return CycleGAN(CycleConfig(**{**TINY, **changes}))


def _batch() -> dict[str, torch.Tensor]:
    image = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    return {"image": image, "group": torch.tensor([0, 1, 3, 4])}


def _snapshot(model: CycleGAN) -> dict[str, list[torch.Tensor]]:
    return {name: [p.detach().clone() for p in net.parameters()] for name, net in model.networks().items()}


def _changed(before: list[torch.Tensor], net: torch.nn.Module) -> list[bool]:
    return [not torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True)]


def _record_targets(generator: torch.nn.Module) -> list[torch.Tensor]:
    """The ``target`` of every call of ``generator``'s age modulator, in order."""
    seen: list[torch.Tensor] = []
    generator.modulator.register_forward_hook(lambda module, args, output: seen.append(args[1].detach().clone()))
    return seen


def test_registry_finds_cycle_and_shapes_and_range():
    assert get_model("cycle") is CycleGAN
    model = _tiny()
    x, target = torch.rand(3, 3, 32, 32) * 2 - 1, torch.tensor([0.0, 2.5, 4.0])
    code = model.generator.encode(x)
    assert code.shape == (3, 8, 8, 8)  # channels 4 * 2**2 capped at 8; 32 px / 2**2
    assert model.generator.modulator(code, target).shape == (3, TINY["style_dim"])
    y = model.generator(x, target)
    assert y.shape == x.shape and y.abs().max() <= 1
    age_logits, real_logit = model.discriminator(x)
    assert age_logits.shape == (3, 5) and real_logit.shape == (3,)
    with pytest.raises(ValueError, match=r"expects \[B, 3, 32, 32\]"):
        model.generator(torch.zeros(1, 3, 64, 64), torch.tensor([0]))
    with pytest.raises(ValueError, match="power of two >= 16, got 48"):
        CycleConfig(**{**TINY, "image_size": 48})
    with pytest.raises(ValueError, match="downsamples must be in 2..3 at 32px, got 4"):
        CycleConfig(**{**TINY, "downsamples": 4})


def test_instance_norm_matches_torch_and_keeps_the_layout():
    x = (torch.randn(2, 3, 5, 5, generator=torch.Generator().manual_seed(0)) * 3 + 2).to(
        memory_format=torch.channels_last
    )
    gain, shift = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]), torch.tensor([[0.0, 1.0, -2.0], [4.0, 0.0, 1.0]])
    expected = F.instance_norm(x) * gain[:, :, None, None] + shift[:, :, None, None]
    torch.testing.assert_close(instance_norm(x), F.instance_norm(x), rtol=1e-4, atol=1e-4)
    out = instance_norm(x, gain, shift)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)
    assert out.is_contiguous(memory_format=torch.channels_last)


def test_a_fresh_generator_gives_each_target_its_own_output():
    """The AdaIN layers really modulate: at initialisation already, every target group changes the face."""
    G = _tiny().generator
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        outputs = [G(x, torch.full((2,), float(t))) for t in range(5)]
        between = G(x, torch.tensor([1.5, 1.5]))
        as_index = G(x, torch.tensor([2, 2]))
    for i in range(5):
        for j in range(i):
            assert (outputs[i] - outputs[j]).abs().mean() > 1e-2, (i, j)
    assert min((between - outputs[k]).abs().mean() for k in (1, 2)) > 1e-3  # float positions interpolate
    torch.testing.assert_close(as_index, outputs[2])  # int64 groups are the same positions


def test_the_age_feature_is_personal():
    """Pooling comes after a convolution of the conditionally normalised code, so two faces at one target get
    different age features (pooled directly, the feature would be the target's shift alone)."""
    G = _tiny().generator
    code = G.encode(torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2)) * 2 - 1)
    style = G.modulator(code, torch.tensor([3.0, 3.0]))
    assert (style[0] - style[1]).abs().max() > 1e-2


@pytest.mark.parametrize("shared", [False, True])
def test_the_cycle_turns_x1_back_to_the_source_group(shared):
    model = _tiny(shared=shared)
    forward = _record_targets(model.generator)
    back = forward if shared else _record_targets(model.generator_back)
    batch = _batch()
    model.train_step(batch, step=0)[0].loss()
    if shared:  # one network: first to the target, then back
        assert len(forward) == 2
        target, returned = forward
    else:
        assert len(forward) == 1 and len(back) == 1
        (target,), (returned,) = forward, back
    source = batch["group"].float()
    assert torch.equal(returned, source)
    assert (target != source).all() and ((0 <= target) & (target < 5)).all()


LOGITS = torch.arange(5.0)


def _age_terms(**changes) -> tuple[dict, dict, torch.Tensor, torch.Tensor]:
    """One step's generator and discriminator terms with an age head of zero weights, which gives every face the
    logits ``LOGITS``; with the step's targets and the batch's source groups."""
    model = _tiny(w_adv=0.0, **changes)
    with torch.no_grad():
        model.discriminator.age.weight.zero_()
        model.discriminator.age.bias.copy_(LOGITS)
    targets = _record_targets(model.generator)
    batch = _batch()
    generator_phase, discriminator_phase = model.train_step(batch, step=0)
    g_terms, d_terms = generator_phase.loss(), discriminator_phase.loss()
    return g_terms, d_terms, targets[0].long(), batch["group"]


def test_the_classifier_losses_are_cross_entropy_on_group_indices():
    """The discriminator's term is the logits' cross-entropy with the source groups, the generator's with the
    targets."""
    g_terms, d_terms, target, source = _age_terms()
    torch.testing.assert_close(d_terms["d_age"], F.cross_entropy(LOGITS.expand(4, 5), source))
    torch.testing.assert_close(d_terms["d_age"], -torch.log_softmax(LOGITS, 0)[source].mean())
    torch.testing.assert_close(g_terms["g_age"], F.cross_entropy(LOGITS.expand(4, 5), target))


def test_age_sigma_makes_both_age_terms_aim_at_neighbouring_groups_too():
    """With ``age_sigma`` each age term is the cross-entropy toward a Gaussian over the groups around its label:
    the target's for the generator, the source's for the discriminator."""
    g_terms, d_terms, target, source = _age_terms(age_sigma=1.0)

    def soft_ce(labels: torch.Tensor) -> torch.Tensor:
        soft = torch.exp(-0.5 * (torch.arange(5.0)[None] - labels[:, None].float()) ** 2)
        return -((soft / soft.sum(1, keepdim=True)) * torch.log_softmax(LOGITS, 0)).sum(1).mean()

    torch.testing.assert_close(g_terms["g_age"], soft_ce(target))
    torch.testing.assert_close(d_terms["d_age"], soft_ce(source))
    assert not torch.allclose(g_terms["g_age"], F.cross_entropy(LOGITS.expand(4, 5), target))


def test_a_graded_verdict_is_where_the_soft_age_term_stops_pulling():
    """At logits equal to the Gaussian's logs the soft term's gradient vanishes; the hard one still pulls to 1."""
    target = torch.tensor([4, 2])
    soft = losses.label_distribution(target.float(), 5, 1.0)
    assert soft[0, 4] < 0.6 and soft[0, 3] > 0.3  # at the last group the weight spills to its neighbours
    graded = soft.log().requires_grad_()
    losses.group_cross_entropy(graded, target, 1.0).backward()
    assert graded.grad.abs().max() < 1e-6
    hard = soft.log().requires_grad_()
    losses.group_cross_entropy(hard, target).backward()
    assert hard.grad.abs().max() > 0.1


@pytest.mark.parametrize("shared", [False, True])
def test_shared_and_two_generators_both_train_one_step(shared):
    model = _tiny(shared=shared)
    names = {"generator", "discriminator"} | (set() if shared else {"generator_back"})
    assert set(model.networks()) == names
    assert hasattr(model, "generator_back") is not shared
    generator_size = sum(p.numel() for p in model.generator.parameters())
    two_size = sum(p.numel() for p in _tiny(shared=False).parameters())
    assert sum(p.numel() for p in model.parameters()) == two_size - (generator_size if shared else 0)
    optimizers = model.optimizers(2e-4, (0.5, 0.999))
    assert set(optimizers) == {"generator", "discriminator"}
    optimised = {id(p) for group in optimizers["generator"].param_groups for p in group["params"]}
    assert optimised == {id(p) for name in names - {"discriminator"} for p in model.networks()[name].parameters()}
    before = _snapshot(model)
    terms = run_phases(model, optimizers, model.train_step(_batch(), step=0))
    assert {"g_age", "cyc", "id", "g_adv", "d_age", "d_adv", "loss_G", "loss_D"} == set(terms)
    assert all(torch.isfinite(v) for v in terms.values()), terms
    for name, net in model.networks().items():
        assert all(_changed(before[name], net)), name


def test_each_phase_changes_only_its_networks():
    model = _tiny()
    optimizers = model.optimizers(2e-4, (0.5, 0.999))
    generator_phase, discriminator_phase = model.train_step(_batch(), step=0)
    assert generator_phase.networks == ("generator", "generator_back")
    assert discriminator_phase.networks == ("discriminator",)
    for phase in (generator_phase, discriminator_phase):
        before = _snapshot(model)
        run_phases(model, optimizers, [phase])
        for name, net in model.networks().items():
            changed = _changed(before[name], net)
            assert all(changed) if name in phase.networks else not any(changed), (phase.name, name)


@pytest.mark.parametrize("w_adv", [0.0, 0.5])
def test_the_real_fake_head_is_optional(w_adv):
    weights = {"w_cls": 2.0, "w_cyc": 3.0, "w_id": 0.5, "w_adv": w_adv}
    model = _tiny(**weights)
    optimizers = model.optimizers(2e-4, (0.5, 0.999))
    head = [p.detach().clone() for p in model.discriminator.real.parameters()]
    terms = run_phases(model, optimizers, model.train_step(_batch(), step=0))
    expected_g = 2.0 * terms["g_age"] + 3.0 * terms["cyc"] + 0.5 * terms["id"]
    head_changed = any(_changed(head, model.discriminator.real))
    if w_adv == 0:
        assert "g_adv" not in terms and "d_adv" not in terms and not head_changed
        torch.testing.assert_close(terms["loss_G"], expected_g)
        torch.testing.assert_close(terms["loss_D"], terms["d_age"])
    else:
        assert head_changed
        assert 0.3 < terms["d_adv"] < 3.0  # ~2 log 2 for an untrained head
        torch.testing.assert_close(terms["loss_G"], expected_g + w_adv * terms["g_adv"])
        torch.testing.assert_close(terms["loss_D"], terms["d_age"] + terms["d_adv"])


def test_the_reconstruction_term_is_the_face_at_its_own_age_back_to_itself():
    batch = _batch()
    model = _tiny(w_rec=4.0, w_adv=0.0)
    with torch.no_grad():
        expected = (model.generator(batch["image"], batch["group"].float()) - batch["image"]).abs().mean()
    terms = run_phases(model, model.optimizers(2e-4, (0.5, 0.999)), model.train_step(batch, step=0))
    torch.testing.assert_close(terms["rec"], expected)
    c = model.config
    others = c.w_cls * terms["g_age"] + c.w_cyc * terms["cyc"] + c.w_id * terms["id"]
    torch.testing.assert_close(terms["loss_G"], others + 4.0 * terms["rec"])
    off = _tiny(w_adv=0.0)  # w_rec 0 by default: the original's terms only
    assert "rec" not in run_phases(off, off.optimizers(2e-4, (0.5, 0.999)), off.train_step(batch, step=0))


def test_generator_round_trip_through_a_released_folder(tmp_path):
    model = _tiny(shared=True)
    run_phases(model, model.optimizers(2e-4, (0.5, 0.999)), model.train_step(_batch(), step=0))
    meta = {
        "model": "cycle",
        "model_config": asdict(model.config),
        "scheme": get_scheme("0,20,40,60,80").to_dict(),
        "image_size": 32,
    }
    generator, loaded_meta = load_pretrained(save_pretrained(tmp_path / "cycle", model.generator, meta))
    assert loaded_meta["model_config"]["shared"] is True
    x, target = _batch()["image"], torch.tensor([0.0, 1.25, 3.0, 4.0])
    with torch.no_grad():
        torch.testing.assert_close(generator(x, target), model.generator(x, target), rtol=0, atol=0)


@pytest.mark.parametrize("shared", [False, True])
def test_sample_grid_shows_every_group_then_the_cycle(shared):
    model = _tiny(shared=shared)
    scheme = get_scheme("0,20,40,60,80")
    x = _batch()["image"]
    groups = torch.tensor([0, 2, 3, 4])
    grid, labels, rows = model.sample_grid(model.generator, x, groups, scheme)
    assert grid.shape == (4, 1 + 5 + 2, 3, 32, 32)
    assert labels == ["input", *scheme.labels, "far age", "cycled"]
    back = model.generator if shared else model.generator_back
    with torch.no_grad():
        x1 = model.generator(x, torch.tensor([4.0, 4.0, 0.0, 0.0]))  # the group farthest from each source
        torch.testing.assert_close(grid[:, -2], x1)
        torch.testing.assert_close(grid[:, -1], back(x1, groups.float()))


def test_a_short_training_run_with_14_groups(synth_cache32, tmp_path):
    train_section = tiny_train("utk14", 2)
    model_section = {k: v for k, v in TINY.items() if k not in ("image_size", "num_groups")}
    cfg = from_dict({"model": {"name": "cycle", **model_section}, "train": train_section})
    out = tmp_path / "run"
    assert train(cfg, synth_cache32, out) == 2
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    assert all(math.isfinite(v) for r in records for v in r.values())
    assert {"g_age", "cyc", "id", "g_adv", "d_age", "d_adv"} <= set(records[-1])
    picture = np.asarray(Image.open(out / "samples" / "step_0000002.png"))
    assert picture.shape == (HEADER + 2 * 32, (1 + 14 + 2) * 32, 3)
    state = load_checkpoint(checkpoint_path(out))
    assert set(state["networks"]) == {"generator", "generator_back", "discriminator", "generator_ema"}
    generator, meta = load_generator(checkpoint_path(out))
    assert meta["model"] == "cycle" and meta["model_config"]["num_groups"] == 14
    assert generator(torch.zeros(1, 3, 32, 32), torch.tensor([13])).shape == (1, 3, 32, 32)


def test_the_preset_trains_14_groups_and_its_generator_fits_the_bundle():
    cfg = load_config("cycle_utk128")
    assert cfg.model == "cycle" and cfg.scheme.name == "utk14" and cfg.model_config.num_groups == 14
    assert cfg.train.lr == 0.002 and cfg.train.betas == (0.5, 0.999)
    assert cfg.model_config.w_rec > 0  # without it the 128 px run collapsed (the module docstring)
    generator = CycleGAN.build_generator(asdict(cfg.model_config))
    assert generator.code_shape == (128, 16, 16)
    assert 2 * sum(p.numel() for p in generator.parameters()) <= 3.4e6  # float16 (--half): fits the bundle


@pytest.mark.slow
def test_the_generator_exports_to_onnx(tmp_path):
    pytest.importorskip("onnxscript")
    from faceage.infer.backends import OnnxBackend
    from faceage.infer.export import export_onnx

    model = _tiny()
    meta = {"model": "cycle", "model_config": asdict(model.config), "scheme": get_scheme("0,20,40,60,80").to_dict()}
    path = export_onnx(model.generator, {**meta, "image_size": 32}, tmp_path / "g.onnx")
    x = _batch()["image"][:3]
    target = torch.tensor([0, 2, 4])
    with torch.no_grad():
        expected = model.generator(x, target).numpy()
    assert np.abs(OnnxBackend(path)(x.numpy(), target.numpy()) - expected).max() < 1e-4


def test_frozen_critics_switch_on_from_the_config():
    model = _tiny(w_face_id=1.0)
    terms = model.train_step(_batch(), step=0)[0].loss()
    assert "face_id" in terms and "age" not in terms
    assert [r["name"] for r in model.critic_records()] == ["dlib recogniser"]
