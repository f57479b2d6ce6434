"""AcGAN at 32 px with 4-16 channels: attention composition, the WGAN-GP critic phase, phase scheduling, the
attention-results sample grid, save/load, ONNX and a short run of the training loop."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from conftest import tiny_train
from PIL import Image
from torch import nn

from faceage.groups import get_scheme
from faceage.models import get_model
from faceage.models.acgan import AcGAN, ACGANConfig, compose
from faceage.train.checkpoint import load_checkpoint
from faceage.train.config import from_dict
from faceage.train.loop import checkpoint_path, run_phases, train
from faceage.train.samples import HEADER

TINY = {
    "image_size": 32,
    "num_groups": 5,
    "channels": 4,
    "res_blocks": 1,
    "d_channels": 8,
    "d_max_channels": 16,
    "d_final_size": 2,
}
pytestmark = pytest.mark.usefixtures("one_thread")


def _tiny(seed: int = 0, **changes) -> AcGAN:
    torch.manual_seed(seed)
    return AcGAN(ACGANConfig(**{**TINY, **changes}))


def _batch(n: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"image": torch.rand(n, 3, 32, 32, generator=g) * 2 - 1, "group": torch.arange(n) % 5}


def _force_attention(model: AcGAN, logit: float) -> None:
    """Make the attention head output ``sigmoid(logit)`` everywhere (1.0 exactly in fp32 for logit 30)."""
    with torch.no_grad():
        model.generator.heads.weight[3].zero_()
        model.generator.heads.bias[3] = logit


def test_registry_shapes_and_ranges():
    assert get_model("acgan") is AcGAN
    model = _tiny()
    x, target = _batch(3)["image"], torch.tensor([0.0, 2.5, 4.0])  # float group positions interpolate
    attention, colour, out = model.generator.masks(x, target)
    assert attention.shape == (3, 1, 32, 32) and colour.shape == out.shape == x.shape
    assert 0 <= attention.min() and attention.max() <= 1 and colour.abs().max() <= 1
    assert torch.equal(model.generator(x, target), out)
    with pytest.raises(ValueError, match=r"expects \[B, 3, 32, 32\]"):
        model.generator(torch.zeros(1, 3, 64, 64), torch.tensor([0]))
    with pytest.raises(ValueError, match=r"one target per image \(3\), got shape \(2,\)"):
        model.generator(x, torch.tensor([0, 1]))


def test_group_indices_and_float_positions_condition_alike():
    generator = _tiny().generator
    x = _batch(2)["image"]
    torch.testing.assert_close(generator(x, torch.tensor([1, 3])), generator(x, torch.tensor([1.0, 3.0])))
    between = generator(x, torch.tensor([1.5, 3.5]))
    assert not torch.allclose(between, generator(x, torch.tensor([1, 3])), atol=1e-4)


def test_critic_scores_one_scalar_per_image_even_at_batch_one():
    critic = _tiny().critic
    x = _batch(3)["image"]
    score, logits = critic(x[:1])
    assert score.shape == (1,) and logits.shape == (1, 5)
    whole_score, whole_logits = critic(x)  # no batch statistics: a face scores the same in any batch
    torch.testing.assert_close(whole_score[:1], score, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(whole_logits[:1], logits, rtol=1e-4, atol=1e-5)


def test_output_is_exactly_the_input_where_attention_is_one():
    x, colour = torch.rand(2, 3, 8, 8) * 2 - 1, torch.rand(2, 3, 8, 8) * 2 - 1
    attention = torch.zeros(2, 1, 8, 8)
    attention[..., :4] = 1.0  # keep the left half, repaint the right half
    out = compose(attention, colour, x)
    assert torch.equal(out[..., :4], x[..., :4]) and torch.equal(out[..., 4:], colour[..., 4:])

    model = _tiny()
    _force_attention(model, 30.0)
    x = _batch(3)["image"]
    attention, colour, out = model.generator.masks(x, torch.tensor([0, 2, 4]))
    assert torch.all(attention == 1.0) and not torch.allclose(colour, x, atol=0.1)
    assert torch.equal(out, x)


def test_mask_term_is_the_share_changed_so_keeping_the_input_costs_nothing():
    batch = _batch()
    keep, repaint = _tiny(), _tiny()
    _force_attention(keep, 30.0)
    _force_attention(repaint, -30.0)
    kept = keep.train_step(batch, step=1)[1].loss()
    assert kept["mask"] == 0 and kept["tv"] == 0
    assert repaint.train_step(batch, step=1)[1].loss()["mask"] == 1


class _LinearCritic(nn.Module):
    """``D(x) = <w, x>``: its gradient is ``w`` everywhere, so the penalty is ``(||w|| - 1)^2``."""

    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.w = nn.Parameter(w)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x.flatten(1) @ self.w.flatten(), torch.zeros(x.shape[0], 5)


class _QuadraticCritic(nn.Module):
    """``D(x) = ||x||^2 / 2``: its gradient at ``x`` is ``x``."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x.flatten(1).square().sum(dim=1) / 2, torch.zeros(x.shape[0], 5)


def test_gradient_penalty_of_the_critic_phase_on_critics_with_known_gradients():
    model = _tiny()
    w = torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(1)) * 0.01
    model.critic = _LinearCritic(w)
    terms = model.train_step(_batch(), step=0)[0].loss()
    torch.testing.assert_close(terms["gp"], (w.norm() - 1).square())
    # With A == 1 the fakes are the reals, so every interpolate is its real face whatever the mixing weight:
    # the penalty is then known per face, which checks that each face's gradient is its own.
    _force_attention(model, 30.0)
    model.critic = _QuadraticCritic()
    x = _batch()["image"]
    terms = model.train_step({"image": x, "group": torch.arange(4)}, step=0)[0].loss()
    torch.testing.assert_close(terms["gp"], (x.flatten(1).norm(dim=1) - 1).square().mean())
    assert terms["d_adv"] == 0


def _parameters(net: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in net.parameters()]


def test_a_critic_step_moves_only_the_critic_and_a_generator_step_only_the_generator():
    model = _tiny()
    optimizers = model.optimizers(1e-4, (0.5, 0.999))
    batch = _batch()
    critic_phase, generator_phase = model.train_step(batch, step=1)
    for phase, moved, still in ((critic_phase, "critic", "generator"), (generator_phase, "generator", "critic")):
        before = {name: _parameters(net) for name, net in model.networks().items()}
        terms = run_phases(model, optimizers, [phase])
        assert all(torch.isfinite(v) for v in terms.values()), terms
        after = {name: _parameters(net) for name, net in model.networks().items()}
        assert all(torch.equal(a, b) for a, b in zip(before[still], after[still], strict=True)), phase.name
        unchanged = sum(torch.equal(a, b) for a, b in zip(before[moved], after[moved], strict=True))
        assert unchanged == 0, f"{phase.name}: {unchanged} {moved} tensors did not change"
    assert set(terms) == {"g_adv", "g_cls", "mask", "tv", "loss_G"}


@pytest.mark.parametrize(("n_critic", "expected"), [(2, "D DG D DG D DG"), (1, "DG DG DG"), (3, "D D DG D D DG")])
def test_the_generator_phase_follows_every_n_critic_th_critic_phase(n_critic, expected):
    model = _tiny(n_critic=n_critic)
    batch = _batch()
    steps = len(expected.split())
    schedule = " ".join("".join(p.name for p in model.train_step(batch, step)) for step in range(steps))
    assert schedule == expected


def test_targets_are_always_another_group():
    model = _tiny()
    source = torch.arange(5).repeat(200)
    target = model.sample_targets(source)
    assert target.dtype == torch.int64 and not torch.any(target == source)
    assert torch.bincount(target, minlength=5).min() > 150  # every other group is drawn


def test_background_drift_is_logged_when_batches_carry_face_masks():
    model = _tiny()
    _force_attention(model, 30.0)
    batch = {**_batch(), "mask": torch.zeros(4, 1, 32, 32)}
    assert model.train_step(batch, step=1)[1].loss()["bg_diff"] == 0
    assert "bg_diff" not in model.train_step(_batch(), step=1)[1].loss()


def test_background_term_pulls_attention_up_only_outside_the_face_mask():
    """``w_bg``: the mean of 1 - A over the pixels outside the face mask, added to the generator's loss; its
    gradient reaches the attention logits of the background only."""
    mask = torch.zeros(4, 1, 32, 32)
    mask[..., 8:24, 8:24] = 1.0  # the face: the central square
    batch = {**_batch(), "mask": mask}
    plain, with_bg = _tiny(), _tiny(w_bg=5.0)
    for model in (plain, with_bg):
        _force_attention(model, 1.0)  # A = sigmoid(1) everywhere

    def loss(model: AcGAN) -> dict[str, torch.Tensor]:
        torch.manual_seed(1)  # the same targets for both models
        return model.train_step(batch, step=1)[1].loss()

    terms = loss(with_bg)
    expected = 1 - torch.sigmoid(torch.tensor(1.0)).item()
    assert terms["mask_bg"].item() == pytest.approx(expected, rel=1e-5)
    assert terms["loss"].item() == pytest.approx(loss(plain)["loss"].item() + 5.0 * expected, rel=1e-4)
    assert "mask_bg" not in plain.train_step(batch, step=1)[1].loss()

    logits = torch.zeros(4, 1, 32, 32, requires_grad=True)
    from faceage import losses

    a = torch.sigmoid(logits)
    losses.masked_l1(a, torch.ones_like(a), 1 - mask).backward()
    assert torch.all(logits.grad[..., 8:24, 8:24] == 0) and torch.all(logits.grad[..., :8, :] < 0)


def test_sample_grid_shows_attention_colour_and_output_per_group():
    model = _tiny()
    scheme = get_scheme("acgan5")
    x = _batch(2)["image"]
    grid, labels, rows = model.sample_grid(model.generator, x, torch.tensor([0, 3]), scheme)
    assert grid.shape == (2, 1 + 3 * 5, 3, 32, 32)
    assert labels[:4] == ["input", "A 0-20", "C 0-20", "0-20"] and labels[-1] == "51+"
    attention, colour, out = model.generator.masks(x, torch.full((2,), 4.0))
    torch.testing.assert_close(grid[:, -3], (attention * 2 - 1).expand(-1, 3, -1, -1))  # grey: three equal channels
    torch.testing.assert_close(grid[:, -2], colour)
    torch.testing.assert_close(grid[:, -1], out)
    assert torch.equal(grid[:, 0], x)


def test_state_dict_and_build_generator_round_trip():
    model = _tiny(seed=3)
    config = json.loads(json.dumps(dataclasses.asdict(model.config)))  # what config.json holds
    loaded = AcGAN.build_generator(config)
    loaded.load_state_dict(model.generator.state_dict())
    x, t = _batch(2)["image"], torch.tensor([1, 4])
    assert torch.equal(loaded(x, t), model.generator(x, t))
    assert not any(b.numel() for b in loaded.buffers())  # no running statistics: train and eval agree


def test_config_errors_name_the_bad_value():
    with pytest.raises(ValueError, match="unknown config key model.chanels; valid keys in 'model': .*channels"):
        AcGAN.build_generator({**TINY, "chanels": 8})
    with pytest.raises(ValueError, match="multiple of 4 and >= 16, got 30"):
        ACGANConfig(**{**TINY, "image_size": 30})
    with pytest.raises(ValueError, match="d_final_size must be image_size / 2\\*\\*k, got 3 at image_size 32"):
        ACGANConfig(**{**TINY, "d_final_size": 3})
    with pytest.raises(ValueError, match="n_critic must be >= 1, got 0"):
        ACGANConfig(**{**TINY, "n_critic": 0})
    with pytest.raises(ValueError, match="w_age needs group_ages for all 5 groups"):
        ACGANConfig(**{**TINY, "w_age": 1.0})


def test_generator_exports_to_onnx_and_matches_torch(tmp_path):
    pytest.importorskip("onnxscript")
    from faceage.infer.export import export_onnx, onnx_max_error

    generator = _tiny().generator.eval()
    meta = {"model": "acgan", "model_config": TINY, "scheme": get_scheme("acgan5").to_dict(), "image_size": 32}
    path = export_onnx(generator, meta, tmp_path / "acgan.onnx")
    assert onnx_max_error(generator, path, batch=3) < 1e-4
    assert onnx_max_error(generator, path, batch=1, seed=1) < 1e-4


def test_a_short_training_run_gives_finite_losses_and_an_attention_grid(synth_cache32, tmp_path):
    train_section = tiny_train("acgan5", 4, lr=1e-4, betas=[0.5, 0.999])
    model = {k: v for k, v in TINY.items() if k not in ("image_size", "num_groups")}
    out = tmp_path / "run"
    assert train(from_dict({"model": {"name": "acgan", **model}, "train": train_section}), synth_cache32, out) == 4
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]
    assert ["g_adv" in m for m in metrics] == [False, True, False, True]  # G learns every second step
    assert all(isinstance(v, float | int) and v == v and abs(v) < 1e6 for m in metrics for v in m.values())
    (grid,) = (out / "samples").glob("*.png")
    assert Image.open(grid).size == ((1 + 3 * 5) * 32, HEADER + 2 * 32)
    state = load_checkpoint(checkpoint_path(out))
    steps = {name: {float(s["step"]) for s in opt["state"].values()} for name, opt in state["optimizers"].items()}
    assert steps == {"critic": {4.0}, "generator": {2.0}}
