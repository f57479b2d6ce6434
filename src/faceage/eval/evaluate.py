"""``evaluate(model, cache, ...)``: load everything ``faceage eval`` needs, run it, write the report.

A model is never judged by a network it trained against. A generator's config may list such networks under
``critics`` (``[{"name": ..., "weights_sha256": ...}]``, :func:`faceage.nn.age_estimator.weights_digest`);
more can be named at eval time. The judge's digest must be none of them, and the report says which networks
the model trained against and which one judged it (architecture, seed, training-split hash).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from faceage import paths
from faceage.eval.runner import EvalConfig, EvalResult, Evaluator, Judges, parse_targets
from faceage.groups import AgeScheme
from faceage.nn.age_estimator import EstimatorInfo, estimator_digest, load_estimator, training_ids

JUDGE_DIRNAME = "judge"  # trained for judging only: no model trains against it
ESTIMATOR_DIRNAME = "age-estimator"  # the first estimator: kept as a critic models may train against
# Faces on which every run compares the PyTorch descriptors with dlib's own (~0.15 s each with dlib).
EMBEDDING_CHECK_FACES = 8


class JudgeError(ValueError):
    """The judge asked for may not judge this model (it is one of the model's critics)."""


def find_judge() -> Path:
    """The default judge: ``judge/`` in the first models folder that has one (``~/.faceage/models``, then the
    bundled weights)."""
    for folder in paths.models_dirs():
        if (folder / JUDGE_DIRNAME / "config.json").is_file():
            return folder / JUDGE_DIRNAME
    searched = ", ".join(str(d / JUDGE_DIRNAME) for d in paths.models_dirs())
    raise FileNotFoundError(
        f"no judge found (searched {searched}); train one with "
        "`faceage train-age-estimator --data CACHE --out DIR` and pass --judge DIR"
    )


def resolve_critics(meta: dict, extra: list[str] | None = None) -> tuple[list[dict], bool]:
    """The networks a model trained against: its config's ``critics`` plus ``extra`` (estimator folders or
    SHA-256 weight digests). Returns ``(critics, recorded)``; ``recorded`` is False when neither says anything."""
    critics = [dict(c) for c in meta.get("critics") or []]
    for c in critics:
        if not re.fullmatch(r"[0-9a-f]{64}", str(c.get("weights_sha256", ""))):
            raise ValueError(f"the model's critics entry {c} has no 64-hex-digit weights_sha256")
    for item in extra or []:
        if re.fullmatch(r"[0-9a-fA-F]{64}", item):
            critics.append({"name": "given as --critic", "weights_sha256": item.lower()})
        else:
            critics.append({"name": str(item), "weights_sha256": estimator_digest(item)})
    return critics, "critics" in meta or bool(extra)


def check_judge(judge_digest: str, judge_path: Path, critics: list[dict]) -> None:
    """Refuse a judge the model trained against."""
    for c in critics:
        if c["weights_sha256"] == judge_digest:
            raise JudgeError(
                f"refusing to judge the model with {judge_path}: the model trained against this network "
                f"(critic {c.get('name')!r}, weights sha256 {judge_digest[:16]}…); a model may not be judged by a "
                "network it trained against: pass another --judge (trained separately, other architecture and seed)"
            )


def describe_judge(path: Path, info: EstimatorInfo, digest: str) -> dict:
    """What the report says about the judge: which network, trained how and on what."""
    seed = info.training.get("seed")
    return {
        "path": str(path),
        "architecture": info.model.describe(),
        "input_size": info.image_size,
        "seed": seed,
        "weights_sha256": digest,
        "train_ids_sha256": info.train_ids_sha256,
        "num_train_ids": info.num_train_ids,
        "gender_head": info.model.gender,
        "test_mae": info.metrics.get("test_mae"),
        "test_gender_accuracy": info.metrics.get("test_gender_accuracy"),
        "summary": (
            f"`{path}` ({info.model.describe()}, {info.image_size} px, seed {seed}; trained on "
            f"{info.num_train_ids} train-split faces, ids sha256 {info.train_ids_sha256[:12]}; weights sha256 "
            f"{digest[:12]})"
        ),
    }


def evaluate(
    model: str | Path,
    data: str | Path,
    config: EvalConfig,
    *,
    estimator: str | Path | None = None,
    critics: list[str] | None = None,
    out: str | Path | None = None,
    inception_weights: str | Path | None = None,
    device: str | torch.device = "cpu",
) -> EvalResult:
    """Evaluate the generator at ``model`` on cache ``data`` with the judge ``estimator`` (default: the bundled
    judge); ``critics`` adds networks the model trained against. Writes the report to ``out`` when given."""
    from faceage.data.cache import open_cache
    from faceage.eval import judges as J
    from faceage.models.pretrained import load_generator

    generator, meta = load_generator(model, device)
    generator = generator.to(memory_format=torch.channels_last)  # ~3x faster bf16 convolutions on CPU
    targets = parse_targets(AgeScheme.from_dict(meta["scheme"]), config.targets)  # fail before the slow set-up
    cache = open_cache(data)
    est_dir = Path(estimator) if estimator is not None else find_judge()
    net, info = load_estimator(est_dir, device)
    digest = estimator_digest(est_dir)
    critic_list, recorded = resolve_critics(meta, critics)
    check_judge(digest, est_dir, critic_list)
    judge = describe_judge(est_dir, info, digest)
    faces = J.FaceJudge(device, bf16=config.bf16)
    fid = None
    if inception_weights is not None:
        from faceage.eval.inception import load_fid_inception

        fid = load_fid_inception(inception_weights, device)
    judges = Judges(
        estimator=net,
        faces=faces,
        faces_name=faces.name,
        detector_name=J.DETECTOR_NAME,
        estimator_size=info.image_size,
        estimator_train_ids=training_ids(est_dir),
        fid=fid,
        estimator_name=judge["summary"],
    )
    check_rows = np.asarray(cache.indices(config.split))[:EMBEDDING_CHECK_FACES]
    check = faces.check(np.asarray(cache.images[check_rows]))
    result = Evaluator(generator, meta, cache, judges, config, device).run()
    m = result.metrics
    m["model"]["path"] = str(model)
    m["judges"]["embedding_check"] = check
    m["judges"]["inception_weights"] = None if inception_weights is None else str(inception_weights)
    m["estimator"] = {"path": str(est_dir), **info.metrics, "image_size": info.image_size}
    m["judge"] = judge
    m["critics"] = {"recorded": recorded, "networks": critic_list}
    m["photo_checks"] = _photo_checks(model, cache, config, [t.label for t in targets], device)
    if out is not None:
        from faceage.eval.report import write_evaluation

        write_evaluation(result, out)
    return result


def _photo_checks(model, cache, config: EvalConfig, labels: list[str], device) -> dict:
    """Grayscale and fine-detail checks through ``faceage.load(model).age`` (skipped when set to 0)."""
    import faceage
    from faceage.eval.photo_checks import detail_check, grayscale_check

    checks: dict = {}
    if not config.gray_faces and not config.detail_side:
        return checks
    ager = faceage.load(str(model), device=str(device), precision="bf16" if config.bf16 else "fp32")
    if config.gray_faces:
        rows = np.asarray(cache.indices(config.split))
        picked = np.sort(np.random.default_rng(config.seed + 4).choice(rows, min(config.gray_faces, len(rows)), False))
        checks["grayscale"] = grayscale_check(ager, np.asarray(cache.images[picked]), labels)
    if config.detail_side:
        checks["detail"] = detail_check(ager, config.detail_photo or paths.EXAMPLE_PHOTO, labels, config.detail_side)
    return checks
