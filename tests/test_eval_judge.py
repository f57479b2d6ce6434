"""The judge: a gender head next to the age head, weight digests, resumable training, and eval's refusal to judge
a model with a network it trained against. Generated faces only (``synth_cache32`` / ``write_synthetic_faces``)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import IdentityGenerator, write_synthetic_faces
from torch import nn

from faceage.eval import train_estimator as T
from faceage.nn.age_estimator import (
    AgeEstimator,
    AgeEstimatorConfig,
    EstimatorInfo,
    estimator_digest,
    gender_loss,
    ids_digest,
    load_estimator,
    save_estimator,
    weights_digest,
)

TINY = AgeEstimatorConfig(widths=(8, 16), blocks=(1, 1))
TINY_OTHER = AgeEstimatorConfig(widths=(8, 16), blocks=(1, 1), block="bottleneck", stem="conv3x2")


@pytest.fixture(scope="module")
def cache(synth_cache32):
    from faceage.data.cache import open_cache

    return open_cache(synth_cache32)


def _gendered(images: np.ndarray, genders: np.ndarray) -> torch.Tensor:
    """Faces whose gender shows in the pixels: a red band across the top for label 1, a blue one for label 0."""
    x = images.copy()
    x[genders == 1, :6, :, 0] = 230
    x[genders == 0, :6, :, 2] = 230
    return T.to_input(x)


def test_gender_loss_leaves_out_unknown_labels():
    logit = torch.tensor([2.0, -1.0, 5.0], requires_grad=True)
    labels = torch.tensor([1, 0, -1])
    expected = nn.functional.binary_cross_entropy_with_logits(logit[:2], torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(gender_loss(logit, labels), expected)
    unknown = gender_loss(logit, torch.tensor([-1, -1, -1]))
    unknown.backward()
    assert unknown.item() == 0.0 and torch.equal(logit.grad, torch.zeros(3))


def test_gender_head_learns_gender_that_shows_in_the_pixels(cache, one_thread):
    rows = cache.indices("train")[:24]
    genders = cache.genders[rows].astype(np.int64)
    assert 0 < genders.mean() < 1  # both genders present
    x, labels = _gendered(np.asarray(cache.images[rows]), genders), torch.as_tensor(genders)
    torch.manual_seed(0)
    net = AgeEstimator(TINY)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        _, logit = net.forward_heads(x)
        loss = gender_loss(logit, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0]
    female = net.judge(x, bf16=False).female
    assert female.shape == (24,) and ((female > 0.5).numpy() == (genders == 1)).all()


def test_training_reports_gender_accuracy_and_resume_equals_uninterrupted(cache, tmp_path, monkeypatch, one_thread):
    cfg = T.EstimatorTrainConfig(epochs=2, batch_size=16, lr=1e-3, bf16=False, seed=3, input_size=24)
    full = T.train_age_estimator(cache, tmp_path / "full", cfg, TINY)
    assert full.image_size == 24 and 0 <= full.metrics["test_gender_accuracy"] <= 1
    assert full.metrics["test_mae"] >= 0 and not (tmp_path / "full" / T.STATE_NAME).exists()

    real_epoch = T._train_epoch
    calls = []

    def stop_in_the_second_epoch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(T, "_train_epoch", stop_in_the_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        T.train_age_estimator(cache, tmp_path / "resumed", cfg, TINY)
    assert (tmp_path / "resumed" / T.STATE_NAME).is_file()
    monkeypatch.setattr(T, "_train_epoch", real_epoch)
    other = T.EstimatorTrainConfig(**{**cfg.__dict__, "lr": 2e-3})
    with pytest.raises(ValueError, match="other settings"):
        T.train_age_estimator(cache, tmp_path / "resumed", other, TINY, resume=True)
    resumed = T.train_age_estimator(cache, tmp_path / "resumed", cfg, TINY, resume=True)
    assert estimator_digest(tmp_path / "resumed") == estimator_digest(tmp_path / "full")
    assert resumed.metrics == full.metrics and resumed.train_ids_sha256 == full.train_ids_sha256


def test_weights_digest_names_the_network_not_the_file(tmp_path):
    torch.manual_seed(0)
    net = AgeEstimator(TINY)
    ids = ["a.jpg"]
    info = EstimatorInfo(TINY, 32, ids_digest(ids), 1)
    save_estimator(tmp_path / "a", net, info, ids)
    loaded, _ = load_estimator(tmp_path / "a")
    assert estimator_digest(tmp_path / "a") == weights_digest(net.state_dict()) == weights_digest(loaded.state_dict())
    torch.manual_seed(1)
    assert weights_digest(AgeEstimator(TINY).state_dict()) != weights_digest(net.state_dict())


def test_an_estimator_saved_before_the_gender_head_still_loads(tmp_path):
    torch.manual_seed(0)
    old = AgeEstimator(AgeEstimatorConfig(widths=(8, 16), blocks=(1, 1), gender=False))
    ids = ["a.jpg"]
    save_estimator(tmp_path, old, EstimatorInfo(old.config, 32, ids_digest(ids), 1), ids)
    raw = json.loads((tmp_path / "config.json").read_text())
    for key in ("gender", "block", "stem"):  # what a format-1 folder of the first estimator holds
        del raw["model"][key]
    (tmp_path / "config.json").write_text(json.dumps(raw))
    net, info = load_estimator(tmp_path)
    assert info.model.gender is False and info.model.block == "basic"
    j = net.judge(torch.zeros(2, 3, 32, 32), bf16=False)
    assert j.female is None and j.age.shape == (2,)


def test_other_architectures_build_and_judge():
    for cfg in (TINY_OTHER, AgeEstimatorConfig(widths=(8,), blocks=(2,), block="bottleneck")):
        j = AgeEstimator(cfg).judge(torch.zeros(3, 3, 40, 40), bf16=False)
        assert j.age.shape == j.female.shape == (3,) and j.features.shape == (3, cfg.widths[-1])
    with pytest.raises(ValueError, match="unknown block 'dense'; known: basic, bottleneck"):
        AgeEstimatorConfig(block="dense")


# -- eval: the judge may not be a critic ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_judges(tmp_path_factory):
    """A tiny 32 px cache and two tiny estimators trained on its train split: another architecture and seed."""
    from faceage.data.cache import open_cache
    from faceage.data.prepare import PrepareConfig, prepare

    root = write_synthetic_faces(tmp_path_factory.mktemp("faces"), 60)
    out = tmp_path_factory.mktemp("cache") / "c32"
    prepare(PrepareConfig("utkface", root, out, size=32, split=(0.4, 0.1, 0.5), workers=1, progress=False), log=print)
    cache = open_cache(out)
    folders = []
    for name, model, seed in (("critic", TINY, 0), ("judge", TINY_OTHER, 1)):
        folder = tmp_path_factory.mktemp(name) / name
        cfg = T.EstimatorTrainConfig(epochs=1, batch_size=8, lr=1e-3, bf16=False, seed=seed)
        T.train_age_estimator(cache, folder, cfg, model)
        folders.append(folder)
    return cache, *folders


def _model(tmp_path, critics: list[dict] | None):
    from faceage.groups import get_scheme
    from faceage.models.pretrained import save_pretrained

    meta = {"model": "eval-test-identity", "model_config": {}, "scheme": get_scheme("acgan5").to_dict()}
    meta["image_size"] = 32
    if critics is not None:
        meta["critics"] = critics
    return save_pretrained(tmp_path / "model", IdentityGenerator(), meta)


def test_eval_refuses_to_judge_a_model_with_its_critic(two_judges, tmp_path, capsys):
    from faceage.cli import main
    from faceage.eval.evaluate import JudgeError, evaluate
    from faceage.eval.runner import EvalConfig

    cache, critic, judge = two_judges
    model = _model(tmp_path, [{"name": "age critic", "weights_sha256": estimator_digest(critic)}])
    cfg = EvalConfig(n=4, batch_size=8, far=0.01, gray_faces=0, detail_side=0)
    with pytest.raises(JudgeError, match="refusing to judge the model with .*critic 'age critic'"):
        evaluate(model, cache.path, cfg, estimator=critic)
    argv = ["eval", "--model", str(_model(tmp_path / "plain", None)), "--data", str(cache.path), "--far", "0.01"]
    argv += ["--threads", str(torch.get_num_threads()), "--gray-faces", "0", "--detail-side", "0"]
    assert main([*argv, "--judge", str(critic), "--critic", str(critic), "--out", str(tmp_path / "r0")]) == 2
    assert "refusing to judge" in capsys.readouterr().err
    digest = estimator_digest(critic)
    assert main([*argv, "--judge", str(critic), "--critic", digest, "--out", str(tmp_path / "r1")]) == 2
    # A training checkpoint carries its critics too.
    ckpt = {k: v for k, v in json.loads((model / "config.json").read_text()).items() if k != "format_version"}
    torch.save({**ckpt, "networks": {"generator": IdentityGenerator().state_dict()}}, tmp_path / "ckpt.pt")
    with pytest.raises(JudgeError, match="refusing"):
        evaluate(tmp_path / "ckpt.pt", cache.path, cfg, estimator=critic)

    out = tmp_path / "report"
    m = evaluate(model, cache.path, cfg, estimator=judge, out=out).metrics
    assert m["judge"]["seed"] == 1 and "bottleneck" in m["judge"]["architecture"]
    assert m["critics"] == {"recorded": True, "networks": [{"name": "age critic", "weights_sha256": digest}]}
    report = (out / "report.md").read_text()
    assert "**Trained against:** `age critic` (weights sha256 " + digest[:12] in report
    assert f"**Judged by:** `{judge}` (resnet bottleneck 8-16 x 1-1, stem conv3x2, age+gender, 32 px, seed 1" in report
    assert json.loads((judge / "config.json").read_text())["train_ids_sha256"][:12] in report


def test_eval_report_says_when_no_critic_is_recorded_and_when_gender_is_not_judged(two_judges, tmp_path):
    from faceage.eval.evaluate import evaluate
    from faceage.eval.runner import EvalConfig

    cache, critic, judge = two_judges
    cfg = EvalConfig(n=4, targets=[0, 4], batch_size=8, far=0.01, gray_faces=0, detail_side=0)
    m = evaluate(_model(tmp_path, None), cache.path, cfg, estimator=judge, out=tmp_path / "r").metrics
    assert m["critics"] == {"recorded": False, "networks": []}
    report = (tmp_path / "r" / "report.md").read_text()
    assert "**Trained against:** none recorded" in report and "## Summary" in report
    assert m["overall"]["gender"]["kept"] == 1.0  # the identity model's outputs are its inputs

    no_gender = tmp_path / "no-gender"
    old = AgeEstimator(AgeEstimatorConfig(widths=(8, 16), blocks=(1, 1), gender=False))
    ids = ["x.jpg"]
    save_estimator(no_gender, old, EstimatorInfo(old.config, 32, ids_digest(ids), 1), ids)
    m = evaluate(_model(tmp_path / "b", []), cache.path, cfg, estimator=no_gender, out=tmp_path / "r2").metrics
    assert m["overall"]["gender"] is None and m["critics"]["recorded"] is True
    report = (tmp_path / "r2" / "report.md").read_text()
    assert "not measured: the judge has no gender head" in report
    assert "**Trained against:** no age or gender network" in report


def test_the_default_judge_is_a_judge_folder_never_the_age_estimator_critic(tmp_path, monkeypatch):
    from faceage.eval import evaluate as E

    user, bundled = tmp_path / "user", tmp_path / "bundled"
    for folder in (user / "age-estimator", bundled / "judge"):
        folder.mkdir(parents=True)
        (folder / "config.json").write_text("{}")
    monkeypatch.setattr(E.paths, "models_dirs", lambda: [user, bundled])
    assert E.find_judge() == bundled / "judge"
    (user / "judge").mkdir()
    (user / "judge" / "config.json").write_text("{}")
    assert E.find_judge() == user / "judge"
    monkeypatch.setattr(E.paths, "models_dirs", lambda: [user / "age-estimator"])
    with pytest.raises(FileNotFoundError, match="no judge found"):
        E.find_judge()
