"""``evaluate(model, cache, ...)``: load everything ``faceage eval`` needs, run it, write the report."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from faceage import paths
from faceage.eval.age_estimator import load_estimator, training_ids
from faceage.eval.runner import EvalConfig, EvalResult, Evaluator, Judges, parse_targets
from faceage.groups import AgeScheme

ESTIMATOR_DIRNAME = "age-estimator"
# Faces on which every run compares the PyTorch descriptors with dlib's own (~0.15 s each with dlib).
EMBEDDING_CHECK_FACES = 8


def find_estimator() -> Path:
    """The default age estimator: ``age-estimator/`` in the first models folder that has one."""
    for folder in paths.models_dirs():
        if (folder / ESTIMATOR_DIRNAME / "config.json").is_file():
            return folder / ESTIMATOR_DIRNAME
    searched = ", ".join(str(d / ESTIMATOR_DIRNAME) for d in paths.models_dirs())
    raise FileNotFoundError(
        f"no age estimator found (searched {searched}); train one with "
        "`faceage train-age-estimator --data CACHE --out DIR` and pass --estimator DIR"
    )


def evaluate(
    model: str | Path,
    data: str | Path,
    config: EvalConfig,
    *,
    estimator: str | Path | None = None,
    out: str | Path | None = None,
    inception_weights: str | Path | None = None,
    device: str | torch.device = "cpu",
) -> EvalResult:
    """Evaluate the generator at ``model`` on cache ``data``; write the report to ``out`` when given."""
    from faceage.data.cache import open_cache
    from faceage.eval import judges as J
    from faceage.models.pretrained import load_generator

    generator, meta = load_generator(model, device)
    generator = generator.to(memory_format=torch.channels_last)  # ~3x faster bf16 convolutions on CPU
    parse_targets(AgeScheme.from_dict(meta["scheme"]), config.targets)  # fail before the slow set-up
    cache = open_cache(data)
    est_dir = Path(estimator) if estimator is not None else find_estimator()
    net, info = load_estimator(est_dir, device)
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
    )
    check_rows = np.asarray(cache.indices(config.split))[:EMBEDDING_CHECK_FACES]
    check = faces.check(np.asarray(cache.images[check_rows]))
    result = Evaluator(generator, meta, cache, judges, config, device).run()
    m = result.metrics
    m["model"]["path"] = str(model)
    m["judges"]["embedding_check"] = check
    m["judges"]["inception_weights"] = None if inception_weights is None else str(inception_weights)
    m["estimator"] = {"path": str(est_dir), **info.metrics, "image_size": info.image_size}
    if out is not None:
        from faceage.eval.report import write_evaluation

        write_evaluation(result, out)
    return result
