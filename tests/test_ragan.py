"""RAGAN at 32 px with 8 channels: shapes, personalised age modulation, one real training step, save/load."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from faceage.data.loader import FaceDataset
from faceage.models import get_model, known_models
from faceage.models.pretrained import load_generator, save_pretrained
from faceage.models.ragan import RAGAN, RAGANConfig
from faceage.nn.layers import ModulatedConv2d, channels_last_grad
from faceage.train.config import load_config
from faceage.train.loop import run_phases

TINY = dict(load_config("tiny").model_config.__dict__)
pytestmark = pytest.mark.usefixtures("one_thread")


def _tiny(seed: int = 0, **changes) -> RAGAN:
    torch.manual_seed(seed)
    return RAGAN(RAGANConfig(**{**TINY, **changes}))


def _faces(cache, n: int = 8) -> dict[str, torch.Tensor]:
    dataset = FaceDataset(cache, "train", load_config("tiny").scheme)
    return dataset.batch(list(range(n)))


def test_registry_lists_ragan_and_unknown_names_list_the_known_ones():
    assert "ragan" in known_models()
    assert get_model("ragan") is RAGAN
    with pytest.raises(KeyError, match="unknown model 'ragn'; known: .*ragan"):
        get_model("ragn")


@pytest.mark.parametrize("changes", [{}, {"to_rgb": "pixel_shuffle", "d_final_size": 8}])
def test_tiny_ragan_shapes_and_output_range(changes):
    model = _tiny(**changes)
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    target = torch.tensor([0, 2, 3])
    f_id, shared = model.generator.encode(x)
    assert f_id.shape == (3, 32, 8, 8)  # 8 channels doubled twice, 32 px / 4
    assert {k: tuple(v.shape) for k, v in shared.items()} == {2: (3, 16, 16, 16)}
    assert model.generator.modulator(f_id, target).shape == (3, TINY["style_dim"])
    y = model.generator(x, target)
    assert y.shape == x.shape and y.abs().max() <= 1
    real_fake, age_logits = model.discriminator(x, target)
    assert real_fake.shape == (3,) and age_logits.shape == (3, TINY["num_groups"] + 1)  # + "generated"
    with pytest.raises(ValueError, match=r"expects \[B, 3, 32, 32\]"):
        model.generator(torch.zeros(1, 3, 64, 64), torch.tensor([0]))


@pytest.mark.parametrize("channels_last", [False, True])
def test_modulated_conv_equals_stylegan2_per_sample_weights(channels_last):
    """Input scaling + output demodulation is StyleGAN2's per-sample modulated, demodulated kernel."""
    torch.manual_seed(0)
    conv = ModulatedConv2d(6, 5, 3, style_dim=4)
    with torch.no_grad():
        conv.bias.normal_()
    x, style = torch.randn(3, 6, 8, 8), torch.randn(3, 4)
    s = conv.affine(style)
    w = conv.weight[None] * conv.scale * s[:, None, :, None, None]  # [B, out, in, k, k]
    w = w * torch.rsqrt(w.square().sum(dim=(2, 3, 4), keepdim=True) + 1e-8)
    expected = torch.stack([F.conv2d(x[i : i + 1], w[i], conv.bias, padding=1)[0] for i in range(3)])
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(conv(x, style), expected, rtol=1e-4, atol=1e-5)


def test_channels_last_grad_is_the_identity_and_hands_back_a_channels_last_gradient():
    x = torch.randn(2, 4, 5, 5).to(memory_format=torch.channels_last).requires_grad_(True)
    a = x * 2  # not a leaf: a leaf's .grad is re-laid-out anyway
    seen = {}
    a.register_hook(lambda g: seen.setdefault("grad", g))
    y = channels_last_grad(a)
    assert torch.equal(y, a)
    w = torch.randn(2, 100)
    (y.flatten(1) * w).sum().backward()  # flatten's gradient comes back in the standard layout
    assert seen["grad"].is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(seen["grad"], w.view(2, 4, 5, 5))
    plain = torch.randn(2, 3, requires_grad=True)
    assert channels_last_grad(plain) is plain


def test_age_modulation_is_personal():
    """The change a target age makes to f_aw depends on the identity (multiplicative, not additive)."""
    am = _tiny().generator.modulator
    f_id = torch.randn(2, 32, 8, 8)
    young, old = (am(f_id, torch.tensor([g, g])) for g in (0, 3))
    shift = old - young  # the age shift for each of the two identities
    assert not torch.allclose(shift[0], shift[1], atol=1e-3)
    assert not torch.allclose(young[0], young[1], atol=1e-3)


def test_one_step_on_faces_gives_finite_losses_and_changes_every_network(synth_cache32):
    model = _tiny()
    optimizers = model.optimizers(0.002, (0.0, 0.99))
    before = {name: [p.detach().clone() for p in net.parameters()] for name, net in model.networks().items()}
    phases = model.train_step(_faces(synth_cache32), step=0)  # step 0 includes the lazy R1 phase
    assert [p.name for p in phases] == ["G", "D", "D_r1"]
    terms = run_phases(model, optimizers, phases)
    assert {"g_adv", "rec", "cyc", "id", "g_cls", "d_adv", "d_cls", "r1", "loss_G", "loss_D", "loss_D_r1"} <= set(terms)
    assert all(torch.isfinite(v) for v in terms.values()), terms
    assert 0.3 < terms["d_adv"] < 3.0  # ~2 log 2 for an untrained D
    for name, net in model.networks().items():
        changed = [not torch.equal(a, b) for a, b in zip(before[name], net.parameters(), strict=True)]
        assert all(changed), f"{name}: {changed.count(False)} parameter tensors did not change"


def test_generator_phase_leaves_the_discriminator_alone():
    model = _tiny()
    optimizers = model.optimizers(0.002, (0.0, 0.99))
    d_before = [p.detach().clone() for p in model.discriminator.parameters()]
    batch = {"image": torch.rand(4, 3, 32, 32) * 2 - 1, "group": torch.tensor([0, 1, 2, 3])}
    run_phases(model, optimizers, model.train_step(batch, step=1)[:1])
    assert all(torch.equal(a, b) for a, b in zip(d_before, model.discriminator.parameters(), strict=True))


def test_pixel_shuffle_output_starts_without_checkerboards_and_learns_them_apart():
    """ICNR: the four sub-pixels of each 2x2 block start with one kernel, so the first output is blocky, not
    a checkerboard; one training step gives them different kernels."""
    model = _tiny(to_rgb="pixel_shuffle")
    x, target = torch.rand(2, 3, 32, 32) * 2 - 1, torch.tensor([0, 3])

    def block_spread(y: torch.Tensor) -> float:
        corners = torch.stack([y[..., i::2, j::2] for i in range(2) for j in range(2)])
        return float((corners - corners.mean(dim=0)).abs().max())

    with torch.no_grad():
        assert block_spread(model.generator(x, target)) < 1e-6
    optimizers = model.optimizers(0.002, (0.0, 0.99))
    run_phases(model, optimizers, model.train_step({"image": x, "group": torch.tensor([1, 2])}, step=1))
    with torch.no_grad():
        assert block_spread(model.generator(x, target)) > 1e-3


def test_discriminator_scores_a_batch_as_it_scores_each_half():
    """The discriminator phase scores reals and fakes in one batch: D must have no batch statistics."""
    d = _tiny().discriminator
    x, group = torch.rand(6, 3, 32, 32) * 2 - 1, torch.tensor([0, 1, 2, 3, 0, 1])
    whole = d(x, group)
    halves = [d(x[:3], group[:3]), d(x[3:], group[3:])]
    for i in range(2):
        torch.testing.assert_close(whole[i], torch.cat([h[i] for h in halves]), rtol=1e-4, atol=1e-5)


def test_background_term_appears_with_masks_and_vanishes_when_all_is_face():
    model = _tiny()
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    batch = {"image": x, "group": torch.tensor([0, 1, 2, 3])}
    assert "bg" not in model.train_step(batch, 1)[0].loss()
    background = model.train_step({**batch, "mask": torch.zeros(4, 1, 32, 32)}, 1)[0].loss()["bg"]
    all_face = model.train_step({**batch, "mask": torch.ones(4, 1, 32, 32)}, 1)[0].loss()["bg"]
    assert background > 0.05 and all_face == 0


def test_age_classifier_terms_follow_w_cls_and_put_fakes_in_the_extra_class():
    """G is scored on the target group; D on the source group of the reals and the extra "generated" class of
    the fakes; w_cls = 0 drops both terms."""
    batch = {"image": torch.rand(4, 3, 32, 32) * 2 - 1, "group": torch.tensor([0, 1, 2, 3])}
    off = _tiny(w_cls=0.0).train_step(batch, 1)
    assert "g_cls" not in off[0].loss() and "d_cls" not in off[1].loss()
    model = _tiny(w_cls=1.0, same_group_fraction=1.0)  # targets = sources, so the fakes can be recomputed
    g_phase, d_phase = model.train_step(batch, 1)[:2]
    g_cls, d_cls = g_phase.loss()["g_cls"], d_phase.loss()["d_cls"]
    x, group = batch["image"], batch["group"]
    with torch.no_grad():
        fake = model.generator(x, group)
        _, real_age = model.discriminator(x, group)
        _, fake_age = model.discriminator(fake, group)
    assert real_age.shape == (4, 5)  # 4 groups + "generated"
    torch.testing.assert_close(g_cls, F.cross_entropy(fake_age, group))
    generated = torch.full_like(group, 4)
    torch.testing.assert_close(d_cls, F.cross_entropy(real_age, group) + F.cross_entropy(fake_age, generated))


def test_reconstruction_term_only_counts_same_group_targets():
    model = _tiny(same_group_fraction=0.0)
    batch = {"image": torch.rand(4, 3, 32, 32) * 2 - 1, "group": torch.tensor([0, 1, 2, 3])}
    assert model.train_step(batch, 1)[0].loss()["rec"] == 0
    model = _tiny(same_group_fraction=1.0)
    assert torch.equal(model.sample_targets(batch["group"]), batch["group"])
    assert model.train_step(batch, 1)[0].loss()["rec"] > 0


def test_generator_exports_as_one_graph_that_follows_the_target():
    """torch.export (what the ONNX exporter runs) captures G without graph breaks, and the graph
    captured with one target is right for every target: no Python branching on tensor values."""
    generator = _tiny().generator.eval()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    exported = torch.export.export(generator, (x, torch.tensor([0, 0]))).module()
    for target in ([1, 3], [2, 0]):
        t = torch.tensor(target)
        torch.testing.assert_close(exported(x, t), generator(x, t))


def test_save_pretrained_then_load_generator_gives_identical_outputs(tmp_path):
    model = _tiny(seed=3)
    meta = {
        "model": "ragan",
        "model_config": dataclasses.asdict(model.config),
        "scheme": load_config("tiny").scheme.to_dict(),
        "image_size": 32,
        "align": None,
    }
    folder = save_pretrained(tmp_path / "tiny", model.generator, meta)
    loaded, loaded_meta = load_generator(folder)
    x, t = torch.rand(2, 3, 32, 32) * 2 - 1, torch.tensor([1, 2])
    assert torch.equal(loaded(x, t), model.generator.eval()(x, t))
    assert loaded_meta["model_config"]["skip_factors"] == list(model.config.skip_factors)


def test_config_rejects_unknown_keys_and_impossible_shapes():
    with pytest.raises(ValueError, match="unknown config key model.chanels; valid keys in 'model': .*channels"):
        RAGAN.build_generator({**TINY, "chanels": 8})
    with pytest.raises(ValueError, match="skip_factors"):
        RAGANConfig(**{**TINY, "skip_factors": (8,)})
    with pytest.raises(ValueError, match="power of two"):
        RAGANConfig(**{**TINY, "image_size": 48})
    with pytest.raises(ValueError, match="to_rgb must be 'upsample' or 'pixel_shuffle', got 'deconv'"):
        RAGANConfig(**{**TINY, "to_rgb": "deconv"})
    with pytest.raises(ValueError, match="d_final_size must be 4 or 8"):
        RAGANConfig(**{**TINY, "d_final_size": 2})
