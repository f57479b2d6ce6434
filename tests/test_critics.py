"""Float age positions, frozen critics (age, identity, gender), RAGAN's change mask and train.init_from."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from conftest import ASTRONAUT_BOX, HOPPER_BOX, TINY_RAGAN_CONFIG, photo_chip

from faceage.critics import Critics, CriticWeights, fit_gender_probe, load_gender_probe, weights_folder
from faceage.data.cache import open_cache
from faceage.groups import SCHEMES
from faceage.models import get_model
from faceage.models.pretrained import load_generator, save_pretrained
from faceage.nn.age_estimator import estimator_digest
from faceage.nn.layers import AgeEmbedding, two_hot
from faceage.train.config import from_dict
from faceage.train.loop import checkpoint_path, train


def _tensor(chip: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(chip.copy()).permute(2, 0, 1)[None].float() / 127.5 - 1


@pytest.fixture(scope="module")
def faces(astronaut, hopper) -> tuple[torch.Tensor, torch.Tensor]:
    """Two real people as 128 px UTKFace-like chips in [-1, 1]."""
    return _tensor(photo_chip(astronaut, ASTRONAUT_BOX, 128)), _tensor(photo_chip(hopper, HOPPER_BOX, 128))


def test_scheme_positions_interpolate_between_representative_ages():
    s = SCHEMES["ffhq10"]
    assert s.position(37) == pytest.approx(6.25)  # 30-39 stands for 34.5, 40-49 for 44.5
    assert s.age_at(6.25) == pytest.approx(37.0)
    assert s.position(0) == 0.0 and s.position(95) == 9.0  # clamped at both ends
    assert s.parse_position("30-39") == 6.0 and s.parse_position("37") == pytest.approx(6.25)
    for age in (2.0, 11.0, 52.0, 74.0):
        assert s.age_at(s.position(age)) == pytest.approx(age)
    with pytest.raises(ValueError, match="neither an age"):
        s.parse_position("old")


def test_two_hot_blends_neighbouring_groups_and_age_embedding_loads_embedding_weights():
    codes = two_hot(torch.tensor([6.25, 0.0, 9.0, 3]), 10)
    assert codes[0, 6] == pytest.approx(0.75) and codes[0, 7] == pytest.approx(0.25) and codes[0].sum() == 1
    assert torch.equal(codes[1:], torch.eye(10)[[0, 9, 3]])
    old = torch.nn.Embedding(10, 4)
    emb = AgeEmbedding(10, 4)
    emb.load_state_dict(old.state_dict())
    assert torch.equal(emb(torch.tensor([3])), old(torch.tensor([3])))
    mid = emb(torch.tensor([3.5]))
    assert torch.allclose(mid, (old.weight[3] + old.weight[4]) / 2)


def _tiny(**changes):
    cfg = get_model("ragan").make_config({**TINY_RAGAN_CONFIG, **changes})
    torch.manual_seed(0)
    return get_model("ragan")(cfg)


def test_masked_output_is_the_input_exactly_where_the_mask_is_closed_and_the_paint_where_open():
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    target = torch.tensor([0.0, 3.5])
    closed = _tiny(output="masked", mask_bias=-1e4).generator
    assert torch.equal(closed(x, target), x)
    opened = _tiny(output="masked", mask_bias=1e4).generator
    direct = _tiny().generator
    direct.load_state_dict(opened.state_dict(), strict=False)  # the same painter, without the mask head
    assert torch.allclose(opened(x, target), direct(x, target), atol=1e-6)
    assert not torch.allclose(direct(x, target), x, atol=1e-2)


def test_mask_and_chroma_terms_are_logged():
    model = _tiny(output="masked", w_mask=1.0, w_mask_tv=1.0, w_chroma=1.0)
    batch = {"image": torch.rand(4, 3, 32, 32) * 2 - 1, "group": torch.tensor([0, 1, 2, 4])}
    terms = model.train_step(batch, 1)[0].loss()
    assert 0 < terms["mask"] < 1 and terms["mask_tv"] >= 0 and terms["chroma"] > 0


def test_continuous_targets_cover_the_positions_and_keep_away_from_the_source():
    model = _tiny(continuous_targets=True, same_group_fraction=0.0)
    source = torch.randint(0, 5, (4000,))
    target = model.sample_targets(source)
    assert target.dtype == torch.float32 and 0 <= target.min() and target.max() <= 4
    assert ((target - source.float()).abs() >= 0.5).all()
    assert (target != target.round()).float().mean() > 0.9  # fractional, not groups


def test_group_ages_come_from_the_scheme_and_targets_map_to_years():
    model = {"name": "ragan", **TINY_RAGAN_CONFIG, "num_groups": 10}
    cfg = from_dict({"model": model, "train": {"scheme": "ffhq10", "image_size": 32}})
    assert cfg.model_config.group_ages[6] == 34.5 and len(cfg.model_config.group_ages) == 10
    model = get_model("ragan")(cfg.model_config)
    assert model.config.target_years(torch.tensor([6.25, 9.0])).tolist() == pytest.approx([37.0, 75.0])
    with pytest.raises(ValueError, match="group_ages"):
        get_model("ragan").make_config({**TINY_RAGAN_CONFIG, "w_age": 1.0})


@pytest.mark.usefixtures("one_thread")
def test_age_critic_pulls_its_estimate_towards_the_target(faces):
    face = faces[0]
    critics = Critics(CriticWeights(w_age=1.0), torch.device("cpu"))
    before = critics.age.expected_age(critics.age(face)).item()
    image = face.clone().requires_grad_(True)
    opt = torch.optim.Adam([image], lr=0.01)
    for _ in range(10):
        opt.zero_grad()
        critics.terms(face, image, torch.tensor([75.0]))["critics"].backward()
        opt.step()
    after = critics.age.expected_age(critics.age(image.detach())).item()
    assert after > before + 5, (before, after)
    assert all(not p.requires_grad for p in critics.age.parameters())
    folder = weights_folder("age-estimator")
    assert critics.records() == [{"name": "age critic age-estimator", "weights_sha256": estimator_digest(folder)}]


@pytest.mark.usefixtures("one_thread")
def test_identity_and_gender_terms_tell_one_person_from_another(faces):
    a, h = faces
    critics = Critics(CriticWeights(w_face_id=1.0, w_gender=1.0), torch.device("cpu"))
    same = critics.terms(a, a.clone(), torch.zeros(1))
    other = critics.terms(a, h, torch.zeros(1))
    assert same["face_id"] < 1e-4 < 0.05 < other["face_id"]
    assert other["gender"] > same["gender"]  # the probe calls them differently; against itself only entropy remains
    assert other["critics"] == pytest.approx(float(other["face_id"] + other["gender"]))
    assert [r["name"] for r in critics.records()] == ["dlib recogniser", "gender probe on dlib descriptors"]


def test_no_critic_weight_loads_nothing():
    model = _tiny()
    assert not model.config.any_critic and model.critic_records() == []
    batch = {"image": torch.rand(2, 3, 32, 32) * 2 - 1, "group": torch.tensor([0, 3])}
    assert "age" not in model.train_step(batch, 1)[0].loss()


@pytest.mark.usefixtures("one_thread")
def test_ragan_trains_against_critics_that_stay_frozen_and_out_of_the_checkpoint(synth_cache32, tmp_path):
    model = {"name": "ragan", **TINY_RAGAN_CONFIG, "num_groups": 4, "w_age": 0.1, "w_face_id": 1.0, "w_gender": 1.0}
    train_cfg = {"scheme": "0,20,40,60", "image_size": 32, "batch_size": 4, "steps": 2, "num_workers": 0}
    cfg = from_dict({"model": model, "train": {**train_cfg, "checkpoint_every": 2, "sample_every": 2}})
    assert train(cfg, synth_cache32, tmp_path / "run") == 2
    metrics = (tmp_path / "run" / "metrics.jsonl").read_text()
    assert '"age"' in metrics and '"face_id"' in metrics and '"gender"' in metrics
    state = torch.load(checkpoint_path(tmp_path / "run"), weights_only=True)
    assert [c["name"] for c in state["critics"]] == [
        "age critic age-estimator",
        "dlib recogniser",
        "gender probe on dlib descriptors",
    ]
    assert set(state["networks"]) == {"generator", "discriminator", "generator_ema"}
    assert load_generator(checkpoint_path(tmp_path / "run"))[1]["critics"] == state["critics"]


@pytest.mark.usefixtures("one_thread")
def test_init_from_loads_a_model_and_leaves_new_layers_fresh(synth_cache32, tmp_path, tiny_ragan_dir):
    base = {"name": "ragan", **TINY_RAGAN_CONFIG}
    train_cfg = {"scheme": "acgan5", "image_size": 32, "batch_size": 4, "steps": 1, "num_workers": 0}
    cfg = from_dict({"model": {**base, "output": "masked"}, "train": {**train_cfg, "init_from": str(tiny_ragan_dir)}})
    assert train(cfg, synth_cache32, tmp_path / "masked") == 1
    source, _ = load_generator(tiny_ragan_dir)
    tuned = torch.load(checkpoint_path(tmp_path / "masked"), weights_only=True)["networks"]["generator"]
    assert set(tuned) - set(source.state_dict()) == {"decoder.to_mask.weight", "decoder.to_mask.bias"}
    # A checkpoint with the mask head cannot start a model without one: its weights would be dropped silently.
    plain = from_dict({"model": base, "train": {**train_cfg, "init_from": str(checkpoint_path(tmp_path / "masked"))}})
    with pytest.raises(ValueError, match="to_mask"):
        train(plain, synth_cache32, tmp_path / "plain")
    missing = from_dict({"model": base, "train": {**train_cfg, "init_from": str(tmp_path / "nowhere")}})
    with pytest.raises(FileNotFoundError, match="nowhere"):
        train(missing, synth_cache32, tmp_path / "none")


def test_init_from_checks_shapes(tmp_path):
    bigger = dataclasses.replace(get_model("ragan").make_config(TINY_RAGAN_CONFIG), style_dim=32)
    meta = {"model": "ragan", "model_config": dataclasses.asdict(bigger), "image_size": 32}
    meta["scheme"] = SCHEMES["acgan5"].to_dict()
    folder = save_pretrained(tmp_path / "big", get_model("ragan").build_generator(meta["model_config"]), meta)
    from faceage.train.loop import init_networks

    with pytest.raises(ValueError, match="does not fit"):
        init_networks(_tiny().networks(), folder)


@pytest.mark.usefixtures("one_thread")
def test_gender_probe_fits_on_the_train_split_and_loads(synth_cache32, tmp_path):
    info = fit_gender_probe(open_cache(synth_cache32), tmp_path / "probe", max_faces=150)
    assert info["num_train"] <= 150 and info["num_test"] > 0 and 0 <= info["test_accuracy"] <= 1
    probe = load_gender_probe(tmp_path / "probe")
    assert probe(torch.zeros(3, 128)).shape == (3,)


def test_eval_report_says_when_identity_is_judged_by_a_network_the_model_trained_against():
    from faceage.eval.report import _dlib_critic_warning

    dlib = {"name": "dlib recogniser", "weights_sha256": "ab" * 32}
    age = {"name": "age critic age-estimator", "weights_sha256": "cd" * 32}
    assert "Not an independent judge" in _dlib_critic_warning({"critics": {"networks": [age, dlib]}})
    assert _dlib_critic_warning({"critics": {"networks": [age]}}) == ""
    assert _dlib_critic_warning({}) == ""


def test_chroma_change_counts_painted_colour_not_brightness():
    from faceage import losses

    x = torch.rand(2, 3, 16, 16) * 1.6 - 0.8
    assert losses.chroma_change(x + 0.2, x) < 1e-6  # brighter: no chroma change
    tinted = x.clone()
    tinted[:, 2] += 0.2  # bluer
    assert losses.chroma_change(tinted, x) > 0.05


@pytest.mark.usefixtures("one_thread")
def test_the_age_critic_sees_luminance_only_unless_told_otherwise(faces):
    face = faces[0]
    tint = torch.tensor([0.587, -0.299, 0.0])[None, :, None, None] * 0.3  # changes colour, not luminance
    years = torch.tensor([40.0])
    luma = Critics(CriticWeights(w_age=1.0), torch.device("cpu"))
    assert luma.terms(face, face + tint, years)["age"] == pytest.approx(float(luma.terms(face, face, years)["age"]))
    colour = Critics(CriticWeights(w_age=1.0, age_critic_luma=False), torch.device("cpu"))
    assert colour.terms(face, face + tint, years)["age"] != pytest.approx(float(colour.terms(face, face, years)["age"]))
