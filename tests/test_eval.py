"""faceage eval: the age estimator (split hygiene, save/load, learning) and a full evaluation.

A tiny cache of 60 generated UTKFace-named faces at 32 px (``conftest.write_synthetic_faces``: the age is
visible in their pixels) is prepared once per module with faceage's own ``prepare``, split 40/10/50 %; its
~30 test faces give ~435 different-person pairs, so the tests calibrate the verification threshold at
FAR = 1 % (the default 0.1 % needs 1,000 pairs). No face is found at 32 px (the judge's detector looks for
faces of 80 px and up), so the share of outputs with a face is checked on a 128 px cache of chips of two real
photos next to images without a face.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import (
    ASTRONAUT_BOX,
    HOPPER_BOX,
    IdentityGenerator,
    photo_chip,
    register_test_generator,
    write_synthetic_faces,
)

from faceage.eval.train_estimator import EstimatorTrainConfig, augment, to_input, train_age_estimator
from faceage.losses import label_distribution
from faceage.nn.age_estimator import (
    AgeEstimator,
    AgeEstimatorConfig,
    EstimatorInfo,
    dldl_loss,
    ids_digest,
    load_estimator,
    sample_ids,
    save_estimator,
    training_ids,
)

TINY_ESTIMATOR = AgeEstimatorConfig(widths=(8, 16), blocks=(1, 1))
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory):
    from faceage.data.cache import open_cache
    from faceage.data.prepare import PrepareConfig, prepare

    root = write_synthetic_faces(tmp_path_factory.mktemp("faces"), 60)  # ages 1 to 90
    out = tmp_path_factory.mktemp("cache") / "tiny32"
    cfg = PrepareConfig(
        dataset="utkface", root=root, out=out, size=32, split=(0.4, 0.1, 0.5), workers=1, progress=False
    )
    prepare(cfg, log=lambda message: None)
    return open_cache(out)


class _RecordingImages:
    """Wraps a cache's image array and records which rows were read with autograd on (training batches)."""

    def __init__(self, images: np.ndarray) -> None:
        self.images, self.trained_rows = images, set()
        self.shape = images.shape

    def __getitem__(self, rows):
        if torch.is_grad_enabled():
            self.trained_rows.update(np.atleast_1d(np.arange(len(self.images))[rows]).tolist())
        return self.images[rows]


class _RecordingCache:
    def __init__(self, cache) -> None:
        self.cache, self.images = cache, _RecordingImages(cache.images)

    def __getattr__(self, name):
        return getattr(self.cache, name)

    def __len__(self) -> int:
        return len(self.cache)


@pytest.fixture(scope="module")
def tiny_estimator(tiny_cache, tmp_path_factory):
    """A tiny estimator trained for one epoch of the train split, plus the rows it actually trained on."""
    recording = _RecordingCache(tiny_cache)
    out = tmp_path_factory.mktemp("estimator") / "est"
    cfg = EstimatorTrainConfig(epochs=1, batch_size=8, lr=1e-3)
    info = train_age_estimator(recording, out, cfg, TINY_ESTIMATOR)
    return out, info, recording.images.trained_rows


def test_estimator_never_trained_on_val_or_test_faces(tiny_cache, tiny_estimator):
    folder, info, trained_rows = tiny_estimator
    train = set(tiny_cache.indices("train").tolist())
    held_out = set(sample_ids(tiny_cache, tiny_cache.indices("val"))) | set(
        sample_ids(tiny_cache, tiny_cache.indices("test"))
    )
    assert trained_rows and trained_rows <= train  # every row a training batch read is a train row
    ids = training_ids(folder)
    assert ids == set(sample_ids(tiny_cache, np.array(sorted(trained_rows))))  # and exactly those are recorded
    assert ids.isdisjoint(held_out)
    assert info.num_train_ids == len(ids) == (len(train) // 8) * 8  # one epoch, last partial batch dropped
    config = json.loads((folder / "config.json").read_text())
    assert config["train_ids_sha256"] == ids_digest(sorted(ids))
    assert config["metrics"]["num_test"] == len(tiny_cache.indices("test"))
    assert 0 <= config["metrics"]["test_mae"] < 120


def test_tampered_training_ids_are_detected(tiny_estimator, tmp_path):
    folder = tiny_estimator[0]
    for name in ("config.json", "train_ids.txt", "age_estimator.safetensors"):
        (tmp_path / name).write_bytes((folder / name).read_bytes())
    lines = (tmp_path / "train_ids.txt").read_text().splitlines()
    (tmp_path / "train_ids.txt").write_text("\n".join(lines[1:]) + "\n")
    with pytest.raises(ValueError, match="does not match"):
        training_ids(tmp_path)


def test_estimator_save_load_round_trip(tmp_path, tiny_cache):
    torch.manual_seed(0)
    net = AgeEstimator(TINY_ESTIMATOR).eval()
    x = to_input(tiny_cache.images[:6])
    ages, feats = net.predict(x, bf16=False)
    assert ages.shape == (6,) and feats.shape == (6, net.feature_dim)
    assert ((ages >= 0) & (ages <= TINY_ESTIMATOR.max_age)).all()
    ids = ["a.jpg", "b.jpg"]
    info = EstimatorInfo(TINY_ESTIMATOR, 32, ids_digest(ids), 2)
    save_estimator(tmp_path, net, info, ids)
    loaded, loaded_info = load_estimator(tmp_path)
    assert loaded_info.model == TINY_ESTIMATOR and loaded_info.image_size == 32
    ages2, feats2 = loaded.predict(x, bf16=False)
    torch.testing.assert_close(ages2, ages)
    torch.testing.assert_close(feats2, feats)
    with pytest.raises(FileNotFoundError, match="train-age-estimator"):
        load_estimator(tmp_path / "missing")


def test_dldl_training_steps_fit_the_faces(tiny_cache):
    dist = label_distribution(torch.tensor([30.0, 0.0]), 101, sigma=2.0)
    torch.testing.assert_close(dist.sum(1), torch.ones(2))
    assert dist.argmax(1).tolist() == [30, 0]
    torch.manual_seed(0)
    net = AgeEstimator(TINY_ESTIMATOR)
    rows = tiny_cache.indices("train")[:16]
    x, ages = to_input(tiny_cache.images[rows]), torch.as_tensor(tiny_cache.ages[rows])
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        terms = dldl_loss(net(x), ages)
        opt.zero_grad()
        terms["loss"].backward()
        opt.step()
        losses.append(terms["l1"].item())
    assert np.isfinite(losses).all()
    assert losses[-1] < 0.5 * losses[0]


def test_augment_keeps_shape_range_and_is_seeded(tiny_cache):
    x = to_input(tiny_cache.images[:4])
    a = augment(x, torch.Generator().manual_seed(1))
    b = augment(x, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and a.min() >= -1 and a.max() <= 1
    torch.testing.assert_close(a, b)
    assert not torch.equal(a, x)


def _identity_model(tmp_path, scheme: str = "acgan5", image_size: int = 32):
    from faceage.groups import get_scheme
    from faceage.models.pretrained import save_pretrained

    meta = {"model": "eval-test-identity", "model_config": {}, "scheme": get_scheme(scheme).to_dict()}
    return save_pretrained(tmp_path / "identity", IdentityGenerator(), {**meta, "image_size": image_size})


def test_eval_of_an_identity_generator_gives_the_known_answers(tiny_cache, tiny_estimator, tmp_path):
    from faceage.eval.evaluate import evaluate
    from faceage.eval.runner import EvalConfig

    model = _identity_model(tmp_path)
    result = evaluate(
        model,
        tiny_cache.path,
        EvalConfig(n=6, batch_size=6, far=0.01, bf16=False, gray_faces=3, detail_side=0),
        estimator=tiny_estimator[0],
    )
    m = result.metrics
    assert [t["label"] for t in m["targets"]] == ["0-20", "21-30", "31-40", "41-50", "51+"]
    assert m["data"]["estimator_trained_on_reference_faces"] == 0
    assert m["reconstruction"]["n"] == 6 and m["reconstruction"]["l1"] == 0.0
    assert m["reconstruction"]["verification_0.6"] == 1.0
    for t in m["targets"]:
        assert t["n_outputs"] == 6
        assert t["id_distance_mean"] == pytest.approx(0.0, abs=1e-4)
        assert t["verification_0.6"] == t["verification_far"] == 1.0
        # Outputs are the inputs, so their Fréchet distances equal the do-nothing baseline exactly.
        if t["n_real"] >= 2:
            assert t["fd_dlib"] == pytest.approx(t["fd_dlib_inputs"], rel=1e-6, abs=1e-9)
            assert t["fd_judge"] == pytest.approx(t["fd_judge_inputs"], rel=1e-6, abs=1e-9)
    # Every target sees the same 6 unchanged faces: one set of estimated ages.
    ages = [result.output_ages[g] for g in range(5)]
    assert all(np.array_equal(np.sort(a), np.sort(ages[0])) for a in ages)
    # The new figures have their known answers for "return the input unchanged", equal to the reference rows.
    order = m["age_order"]
    assert order["monotonic"] is False and order["spread"] == pytest.approx(order["inputs_spread"]) == 0.0
    assert order["spread_vs_labels"] == 0.0
    assert order["spearman"] == pytest.approx(order["inputs_spearman"], abs=1e-12)
    assert order["spearman"] == pytest.approx(0.0, abs=1e-12)
    assert m["overall"]["gender"]["kept"] == 1.0 and m["overall"]["artefact_share"] == 0.0
    assert m["colour"]["share"] == m["colour"]["inputs_share"] == m["colour"]["edit_share"] == 0.0
    assert m["realism"]["ratio"] == pytest.approx(1.0)
    gray = m["photo_checks"]["grayscale"]
    assert gray["faces"] == 3 and gray["outputs"] == 15 and gray["max_chroma"] == 0
    # The age sweep of "return the input unchanged": one flat line at the inputs' own estimated ages.
    sweep = m["age_sweep"]
    assert sweep["ages"] == [float(a) for a in range(0, 81, 5)] and sweep["n_faces"] == 6  # all 6 of --n
    assert result.sweep.shape == (6, 17)
    assert np.allclose(sweep["means"], sweep["inputs_mean"], atol=1e-4) and sweep["monotonic"] is False
    assert sweep["spearman"] == pytest.approx(0.0, abs=1e-12)
    # acgan5: 0-20 stands for 10 years, 21-30 for 25.5, so 0-10 years are group 0 and 15 is 5/15.5 of the way on.
    assert sweep["positions"][:4] == [0.0, 0.0, 0.0, pytest.approx(5 / 15.5, abs=1e-4)]
    # The per-(source group, target) identity table: every cell verified, reconstructions left out.
    groups = {t["label"]: t["group"] for t in m["targets"]}
    assert sum(c["n"] for c in m["pairs"]) == 6 * 4 and all(c["verified"] == 1.0 for c in m["pairs"])
    assert all(c["source_group"] != c["target"] for c in m["pairs"]) and {c["target"] for c in m["pairs"]} <= set(
        groups
    )
    assert m["background"] is None  # this cache has no face masks
    trip = m["round_trip"]  # to the farthest group and back: still the input
    assert trip["n"] == 6 and trip["l1"] == 0.0 and trip["far_verified"] == trip["back_verified"] == 1.0


@pytest.fixture()
def background_shifter():
    """A registered generator (``eval-test-background``) that adds 16 levels outside the central 16x16 square of a
    32 px face and leaves that square alone."""

    def shift(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        outside = torch.ones_like(x)
        outside[..., 8:24, 8:24] = 0
        return x + outside * 16 / 127.5

    return register_test_generator("eval-test-background", shift)


class _MaskedCache:
    """A cache whose faces all have the central 16x16 square of 32 px as their face mask."""

    def __init__(self, cache) -> None:
        self.cache = cache
        self.masks = np.zeros((len(cache), 32, 32), np.uint8)
        self.masks[:, 8:24, 8:24] = 255

    def __getattr__(self, name):
        return getattr(self.cache, name)

    def __len__(self) -> int:
        return len(self.cache)


def test_eval_measures_the_change_outside_the_face_mask(
    tiny_cache, tiny_estimator, background_shifter, tmp_path, monkeypatch
):
    import faceage.data.cache
    from faceage.eval.evaluate import evaluate
    from faceage.eval.runner import EvalConfig
    from faceage.groups import get_scheme
    from faceage.models.pretrained import save_pretrained

    meta = {"model": "eval-test-background", "model_config": {}, "scheme": get_scheme("acgan5").to_dict()}
    model = save_pretrained(tmp_path / "shift", background_shifter(), {**meta, "image_size": 32})
    monkeypatch.setattr(faceage.data.cache, "open_cache", lambda path: _MaskedCache(tiny_cache))
    cfg = EvalConfig(batch_size=16, far=0.01, bf16=False, gray_faces=0, detail_side=0, sweep_faces=0)
    out = tmp_path / "report"
    m = evaluate(model, tiny_cache.path, cfg, estimator=tiny_estimator[0], out=out).metrics
    images = np.asarray(tiny_cache.images[np.asarray(tiny_cache.indices("test"))]).astype(int)
    outside = np.ones((32, 32), bool)
    outside[8:24, 8:24] = False
    room = np.minimum(255 - images, 16)[:, outside].mean()  # +16 levels, clipped at white
    bg = m["background"]
    assert bg["mean"] == pytest.approx(room, abs=0.05) and bg["mean"] > 8
    assert set(bg["per_target"]) == {t["label"] for t in m["targets"]}
    # The round trip shifts twice: +32 levels outside the square, clipped at white, over every pixel of the face.
    twice = (np.minimum(255 - images, 32) * outside[None, :, :, None]).mean() / 255
    assert m["round_trip"]["n"] == len(images) and m["round_trip"]["l1"] == pytest.approx(twice, abs=2e-4)
    report = (out / "report.md").read_text()
    assert "## Background" in report and "## Round trip (the farthest group and back)" in report


@pytest.fixture(scope="module")
def faces128(astronaut, hopper, tmp_path_factory):
    """A 128 px cache, all test split, of 8 chips of two real faces (zoomed, shifted, mirrored) and 7 images
    without a face (three parts of the astronaut photo away from her face, a cat, a coffee cup, a rocket, a
    blank); returns it and which rows hold a face."""
    import skimage.data
    from PIL import Image

    from faceage.data.cache import open_cache
    from faceage.data.prepare import PrepareConfig, prepare

    chips = [
        photo_chip(photo, box, 128, zoom=zoom, shift=shift, flip=flip)
        for photo, box in ((astronaut, ASTRONAUT_BOX), (hopper, HOPPER_BOX))
        for zoom, shift, flip in ((1.3, (0, 0), False), (1.6, (0.1, -0.1), True), (1.9, (-0.1, 0), False))
    ]
    chips += [photo_chip(astronaut, ASTRONAUT_BOX, 128, flip=True), photo_chip(hopper, HOPPER_BOX, 128, zoom=1.2)]
    faceless = [astronaut[300:, 300:], astronaut[:200, :200], astronaut[250:500, 50:300], skimage.data.chelsea()]
    faceless += [skimage.data.coffee(), skimage.data.rocket(), np.full((128, 128, 3), 120, np.uint8)]
    root = tmp_path_factory.mktemp("faces128")
    for i, image in enumerate(chips + faceless):
        age = [5, 12, 25, 35, 45, 60, 70][i % 7]  # faces and no faces in every acgan5 group
        date = "20190101" if i < len(chips) else "20190202"  # marks the rows with a face
        square = Image.fromarray(image).resize((128, 128), Image.Resampling.LANCZOS)
        square.save(root / f"{age}_1_0_{date}00000{i:04d}.jpg.chip.jpg", quality=95)
    out = tmp_path_factory.mktemp("cache") / "faces128"
    cfg = PrepareConfig("utkface", root, out, size=128, split=(0, 0, 1), workers=1, progress=False)
    prepare(cfg, log=lambda message: None)
    cache = open_cache(out)
    assert len(cache.indices("test")) == len(cache) == 15
    return cache, np.array(["_20190101" in str(p) for p in cache.paths])


def test_eval_counts_the_outputs_in_which_a_face_is_found(faces128, tiny_estimator, tmp_path):
    """The identity generator's outputs are its inputs: a face is found exactly in the 8 real-face chips."""
    from faceage.eval.evaluate import evaluate
    from faceage.eval.runner import EvalConfig
    from faceage.groups import get_scheme

    cache, has_face = faces128
    model = _identity_model(tmp_path, image_size=128)
    cfg = EvalConfig(targets=["0-20", "51+"], batch_size=16, far=0.05, bf16=False, gray_faces=0, detail_side=0)
    m = evaluate(model, cache.path, cfg, estimator=tiny_estimator[0]).metrics
    assert m["data"]["n_sources"] == 15 and m["data"]["real_detected"] == pytest.approx(8 / 15)
    assert m["overall"]["detected"] == pytest.approx(8 / 15)
    groups = np.array([get_scheme("acgan5").group(float(a)) for a in cache.ages])
    for t in m["targets"]:
        assert t["n_outputs"] == 15 and t["detected"] == pytest.approx(8 / 15), t["label"]
        assert t["real_detected"] == pytest.approx(has_face[groups == t["group"]].mean()), t["label"]


def test_eval_target_subset_still_reconstructs_every_source(tiny_cache, tiny_estimator, tmp_path):
    from faceage.eval.evaluate import evaluate
    from faceage.eval.runner import EvalConfig

    cfg = EvalConfig(n=6, targets=["0-20", "45"], batch_size=6, far=0.01, gray_faces=0, detail_side=0, sweep_faces=0)
    out = tmp_path / "report"
    m = evaluate(_identity_model(tmp_path), tiny_cache.path, cfg, estimator=tiny_estimator[0], out=out).metrics
    # A label is its group; an age is its continuous position (acgan5: 31-40 stands for 35.5, 41-50 for 45.5),
    # judged against the group it lies in.
    assert [(t["label"], t["position"], t["group_label"]) for t in m["targets"]] == [
        ("0-20", 0.0, "0-20"),
        ("45", pytest.approx(2.95), "41-50"),
    ]
    assert m["overall"]["n_outputs"] == 12 and m["age_sweep"] is None
    assert m["reconstruction"]["n"] == 6  # own-group outputs are made even for groups outside --targets
    report = (out / "report.md").read_text()
    assert "Ages given: 45 years → position 2.95 (group 41-50)." in report
    assert "## Age sweep" not in report and not (out / "age_sweep.png").exists()
    with pytest.raises(ValueError, match="neither an age"):
        evaluate(_identity_model(tmp_path), tiny_cache.path, EvalConfig(targets=["old"]), estimator=tiny_estimator[0])


def test_eval_cli_with_a_tiny_ragan_writes_the_full_report(
    tiny_cache, tiny_estimator, tiny_ragan_dir, tmp_path, capsys
):
    from faceage.cli import main

    out = tmp_path / "report"
    argv = ["eval", "--model", str(tiny_ragan_dir), "--data", str(tiny_cache.path), "--n", "6", "--far", "0.01"]
    argv += ["--gray-faces", "2", "--detail-side", "0", "--sweep-faces", "3"]
    argv += ["--threads", str(torch.get_num_threads())]  # keep this process's thread count as it is
    assert main([*argv, "--estimator", str(tiny_estimator[0]), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    printed, printed_err = captured.out, captured.err
    assert "eval wall time:" in printed
    for name in ("age_distribution.png", "identity_distance.png", "samples.png"):
        data = (out / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000, name
    m = json.loads((out / "metrics.json").read_text())
    ident = m["identity"]
    n_test = len(tiny_cache.indices("test"))
    assert ident["identity_labels"] is False and ident["impostor_pairs"] == n_test * (n_test - 1) // 2
    assert 0 < ident["threshold_far"] < 1.5
    assert ident["far_achieved"] <= 0.01
    assert m["judges"]["embedding_check"]["max_distance"] < 0.05  # PyTorch port vs dlib on the same chips
    assert m["data"]["estimator_trained_on_reference_faces"] == 0
    assert len(m["targets"]) == 5
    for t in m["targets"]:
        assert t["n_outputs"] == 6
        assert 0 <= t["est_age_mean"] <= 100 and t["est_age_std"] >= 0
        for key in ("group_accuracy", "verification_0.6", "verification_far"):
            assert 0 <= t[key] <= 1, key
        assert t["detected"] == 0.0 and t["real_detected"] in (None, 0.0)  # 32 px: below the detector's 80 px
        assert t["id_distance_mean"] > 0
        for key in ("fd_dlib", "fd_judge", "fd_dlib_inputs", "fd_judge_inputs"):
            assert (t[key] is None) == (t["n_real"] < 2) and (t[key] is None or t[key] >= 0), key
    assert m["reconstruction"]["n"] == 6 and 0 < m["reconstruction"]["l1"] < 1
    assert m["overall"]["detected"] == m["data"]["real_detected"] == 0.0
    report = (out / "report.md").read_text()
    for text in ("FD-dlib", "FD-judge", "no identity labels", "51+", "Reconstruction", "samples.png"):
        assert text in report
    sweep = m["age_sweep"]
    assert sweep["n_faces"] == 3 and len(sweep["means"]) == 17
    assert "## Age sweep" in report and "| 80 | 4.00 |" in report and "age_sweep.png" in report
    assert (out / "age_sweep.png").read_bytes().startswith(PNG_MAGIC)
    assert f"age sweep 0-80 years on 3 faces: mean estimate {sweep['means'][0]:.1f}" in printed_err


class _Brightening(torch.nn.Module):
    """A generator whose output is mostly its target: a grey level rising 0.4 per group position, plus a trace of
    the face (so faces differ a little)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        self.seen.append(target)
        return -0.8 + 0.4 * target[:, None, None, None] + 0.05 * x


class _BrightnessJudge:
    """An age 'estimator' reading brightness: 50 years per unit of mean pixel value in [-1, 1], plus 50."""

    def judge(self, x: torch.Tensor, *, bf16: bool = True):
        from faceage.nn.age_estimator import Judgement

        age = 50 + 50 * x.mean(dim=(1, 2, 3))
        return Judgement(age=age, female=None, features=x.flatten(1)[:, :4])


def test_age_sweep_feeds_positions_and_sees_the_estimate_rise(tiny_cache):
    """A generator whose output brightens with the group position, judged by brightness: the sweep must feed each
    age's continuous position (between groups too) and report strictly rising means and a high Spearman."""
    from faceage.eval.runner import EvalConfig, Evaluator, Judges
    from faceage.groups import get_scheme

    scheme = get_scheme("acgan5")
    meta = {"model": "brightening", "image_size": 32, "scheme": scheme.to_dict()}
    generator = _Brightening()
    judges = Judges(_BrightnessJudge(), lambda images: (None, None), "none", "none", estimator_size=32)
    cfg = EvalConfig(batch_size=4, bf16=False, sweep_faces=5, sweep_ages=(0.0, 20.0, 30.0, 37.0, 45.0, 80.0))
    evaluator = Evaluator(generator, meta, tiny_cache, judges, cfg)
    sources = np.asarray(tiny_cache.indices("test"))
    summary, estimates = evaluator.sweep(sources)
    assert estimates.shape == (5, 6) and summary["n_faces"] == 5
    expected = [scheme.position(a) for a in cfg.sweep_ages]  # 0, 0.67, 1.3, 2.15, 2.95, 4
    fed = sorted({round(float(v), 4) for t in generator.seen for v in t})
    assert fed == sorted({round(p, 4) for p in expected}) and generator.seen[0].dtype == torch.float32
    assert summary["positions"] == [round(p, 4) for p in expected]
    assert summary["monotonic"] is True and summary["spearman"] > 0.95
    assert summary["means"][-1] - summary["means"][0] == pytest.approx(50 * 0.4 * 4, abs=1)


def test_sweep_summary_flags_a_dip():
    from faceage.eval.runner import sweep_summary

    rising = np.array([[10.0, 20.0, 30.0], [12.0, 25.0, 31.0]])
    s = sweep_summary([0.0, 40.0, 80.0], [0.0, 2.0, 4.0], rising)
    assert s["monotonic"] is True and s["spearman"] == pytest.approx(0.956, abs=1e-3)
    assert s["means"] == [11, 22.5, 30.5] and s["stds"] == [1, 2.5, 0.5]
    dip = sweep_summary([0.0, 40.0, 80.0], [0.0, 2.0, 4.0], rising[:, [0, 2, 1]])
    assert dip["monotonic"] is False
    # 75 and 80 years are both the last group's position: one condition, the same means, still a strict rise.
    clamped = sweep_summary([0.0, 75.0, 80.0], [0.0, 4.0, 4.0], rising[:, [0, 1, 1]])
    assert clamped["monotonic"] is True and clamped["same_as_previous"] == [80.0]


def test_eval_cli_explains_a_missing_estimator_and_too_few_faces(
    tiny_cache, tiny_estimator, tiny_ragan_dir, tmp_path, capsys
):
    from faceage.cli import main

    argv = [
        "eval",
        "--model",
        str(tiny_ragan_dir),
        "--data",
        str(tiny_cache.path),
        "--threads",
        str(torch.get_num_threads()),
    ]
    assert main([*argv, "--estimator", str(tmp_path)]) == 2
    assert "train-age-estimator" in capsys.readouterr().err
    assert main([*argv, "--estimator", str(tiny_estimator[0]), "--out", str(tmp_path / "r")]) == 2  # FAR 0.1 %
    assert "too few to calibrate FAR=0.001" in capsys.readouterr().err


def test_train_age_estimator_cli(tiny_cache, tmp_path, capsys):
    from faceage.cli import main

    out = tmp_path / "est"
    argv = ["train-age-estimator", "--data", str(tiny_cache.path), "--out", str(out), "--epochs", "1"]
    argv += ["--threads", str(torch.get_num_threads())]
    assert main([*argv, "--batch", "8", "--widths", "8,16", "--blocks", "1,1", "--max-steps", "2"]) == 0
    assert "test MAE" in capsys.readouterr().out
    net, info = load_estimator(out)
    assert info.model.widths == (8, 16) and info.num_train_ids == 16  # 2 steps x batch 8
    assert training_ids(out) <= set(sample_ids(tiny_cache, tiny_cache.indices("train")))


def test_eval_with_user_supplied_inception_weights_reports_fid_and_kid(tiny_cache, tiny_estimator, tmp_path):
    from faceage.eval.evaluate import evaluate
    from faceage.eval.inception import FIDInception
    from faceage.eval.runner import EvalConfig

    torch.manual_seed(0)
    weights = tmp_path / "pt_inception.pth"
    torch.save(FIDInception().state_dict(), weights)  # random weights: the plumbing, not the numbers
    cfg = EvalConfig(n=2, targets=[0, 4], n_reference=10, batch_size=16, far=0.05, gray_faces=0, detail_side=0)
    out = tmp_path / "report"
    m = evaluate(
        _identity_model(tmp_path), tiny_cache.path, cfg, estimator=tiny_estimator[0], out=out, inception_weights=weights
    ).metrics
    assert m["judges"]["inception_weights"] == str(weights)
    for t in m["targets"]:
        assert t["fid"] is None or (t["fid"] >= 0 and np.isfinite(t["kid"]))
    assert any(t["fid"] is not None for t in m["targets"])
    assert "| FID | KID |" in (out / "report.md").read_text()


def test_auto_threads_leaves_busy_cores_alone(monkeypatch):
    from faceage.eval import cpu

    monkeypatch.setattr(cpu.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(cpu.torch, "get_num_threads", lambda: 2)
    monkeypatch.setattr(cpu.os, "getloadavg", lambda: (5.0, 5.0, 5.0))
    assert cpu.auto_threads()[0] == 1
    monkeypatch.setattr(cpu.os, "getloadavg", lambda: (0.2, 0.2, 0.2))
    assert cpu.auto_threads() == (2, "auto: load average 0.2 on 2 CPUs")


def test_eval_of_a_tiny_agecgan_fits_each_face_once_and_reports_the_latent_table(
    tiny_cache, tiny_estimator, tmp_path, monkeypatch
):
    """Age-cGAN's latent is fitted once per face (at its labelled age) and decoded at every target; the paper's
    table has a column per latent (z0, z*pixel, z*IP) with verification rates; the age-accuracy gap is phrased."""
    import dataclasses

    from faceage.cli.eval import latent_line
    from faceage.eval.evaluate import evaluate
    from faceage.eval.runner import EvalConfig
    from faceage.groups import get_scheme
    from faceage.models.agecgan import AgeCGANConfig, AgeCGANGenerator
    from faceage.models.pretrained import save_pretrained

    scheme = get_scheme("agecgan6")
    ages = tuple(scheme.representative_age(g) for g in range(6))
    tiny = dict(image_size=32, group_ages=ages, z_dim=8, g_channels=16, e_channels=4, e_hidden=16, latent_steps=2)
    cfg = AgeCGANConfig(**tiny, stage=2)
    torch.manual_seed(0)
    meta = {"model": "agecgan", "model_config": dataclasses.asdict(cfg), "scheme": scheme.to_dict(), "image_size": 32}
    model = save_pretrained(tmp_path / "agecgan", AgeCGANGenerator(cfg), meta)
    encoded: list[torch.Tensor] = []
    encode = AgeCGANGenerator.encode_faces

    def counting(self, x: torch.Tensor, source_positions: torch.Tensor) -> torch.Tensor:
        encoded.append(source_positions.clone())
        return encode(self, x, source_positions)

    monkeypatch.setattr(AgeCGANGenerator, "encode_faces", counting)
    config = EvalConfig(n=4, targets=["0-18", "60+"], batch_size=4, far=0.01, bf16=False, gray_faces=0, detail_side=0)
    config = dataclasses.replace(config, sweep_faces=2, recon_faces=3)
    out = tmp_path / "report"
    m = evaluate(model, tiny_cache.path, config, estimator=tiny_estimator[0], out=out).metrics
    # 4 sources once each for every target, 2 for the whole sweep, 3 per fitting mode for the table.
    assert [len(e) for e in encoded] == [4, 2, 3, 3, 3]
    assert m["overall"]["n_outputs"] == 8 and m["age_sweep"]["n_faces"] == 2
    labelled = sorted(scheme.position(float(a)) for a in tiny_cache.ages[tiny_cache.indices("test")])
    assert all(min(abs(p - q) for q in labelled) < 1e-5 for p in encoded[0].tolist())  # at their labelled ages
    assert m["round_trip"] is None  # a latent-fitting model: its latent table instead
    lat = m["latent_reconstruction"]
    assert lat["n_faces"] == 3 and list(lat["modes"]) == ["none", "pixel", "identity"]
    for column in lat["modes"].values():
        assert 0 <= column["reconstruction_verified"] <= 1 and 0 <= column["aged_verified"] <= 1
        assert column["reconstruction_distance"] > 0 and column["n_aged"] >= 3  # each face, the target not its own
    report = (out / "report.md").read_text()
    assert "## Latent reconstruction (Age-cGAN)" in report and "| z0 = E(x) | z*pixel | z*IP |" in report
    assert m["latent_fitting"] == {"mode": "pixel", "steps": 2, "lr": 0.05, "source": "each face's labelled age"}
    assert "latent mode `pixel`, 2 steps" in report
    assert latent_line(lat).startswith("latent reconstruction on 3 faces")
    gap = m["age_accuracy_gap"]
    assert 0 <= gap["synthetic"] <= 1 and 0 <= gap["real"] <= 1
    assert gap["points"] == pytest.approx(100 * (gap["real"] - gap["synthetic"]))
    assert f"synthetic faces {gap['synthetic']:.1%} vs real {gap['real']:.1%}" in report


def test_age_accuracy_gap_is_phrased_for_any_model():
    from faceage.eval.runner import age_accuracy_gap, gap_line

    targets = [
        {"label": "0-20", "n_outputs": 10, "group_accuracy": 0.4, "real_group_accuracy": 0.8},
        {"label": "51+", "n_outputs": 10, "group_accuracy": 0.6, "real_group_accuracy": 0.6},
        {"label": "21-30", "n_outputs": 10, "group_accuracy": 0.9, "real_group_accuracy": None},  # no real faces
    ]
    gap = age_accuracy_gap(targets)
    assert gap["targets"] == ["0-20", "51+"] and gap["points"] == pytest.approx(20.0)
    assert gap_line(gap) == "synthetic faces 50.0% vs real 70.0%: 20.0 points lower"
    assert age_accuracy_gap(targets[2:]) is None


def test_eval_of_an_acgan_draws_its_attention_and_colour_masks(tiny_cache, tiny_estimator, tmp_path):
    """A generator with ``masks`` (AcGAN) gets the attention figure: A as grey, C, and an output that is their
    composition with the input; the report links attention.png."""
    from faceage.eval.evaluate import evaluate
    from faceage.eval.runner import EvalConfig
    from faceage.groups import get_scheme
    from faceage.models.acgan import ACGANConfig, ACGANGenerator
    from faceage.models.pretrained import save_pretrained

    torch.manual_seed(0)
    config = {"image_size": 32, "num_groups": 5, "channels": 4, "res_blocks": 1}
    meta = {"model": "acgan", "model_config": config, "scheme": get_scheme("acgan5").to_dict(), "image_size": 32}
    model = save_pretrained(tmp_path / "acgan", ACGANGenerator(ACGANConfig(**config)), meta)
    cfg = EvalConfig(n=6, batch_size=6, far=0.01, bf16=False, gray_faces=0, detail_side=0, sweep_faces=0, grid_faces=3)
    out = tmp_path / "report"
    result = evaluate(model, tiny_cache.path, cfg, estimator=tiny_estimator[0], out=out)
    att = result.attention
    assert att.shape == (3, 5, 3, 32, 32, 3) and att.dtype == np.uint8
    a = att[:, :, 0].astype(np.float32) / 255
    assert np.array_equal(att[:, :, 0, ..., 0], att[:, :, 0, ..., 2]) and 0.05 < a.mean() < 0.95  # grey, neither end
    x, c = result.grid[:, None, 0].astype(np.float32), att[:, :, 1].astype(np.float32)
    assert np.abs((1 - a) * c + a * x - att[:, :, 2]).max() <= 3  # out = (1 - A) C + A x, up to uint8 rounding
    assert np.array_equal(att[:, :, 2], result.grid[:, 1:])  # the figure's outputs are the report's samples
    assert (out / "attention.png").read_bytes().startswith(PNG_MAGIC)
    assert "![attention](attention.png)" in (out / "report.md").read_text()
