"""Training the age (and gender) estimator on a face cache's train split; val picks the epoch, test is reported once.

Batches are drawn straight from the cache's uint8 array (no worker processes: on a 2-core machine they
would compete with the model for the same cores) and augmented on the whole batch at once. After every
epoch the whole training state is written to ``<out>/training_state.pt`` (plain data), so an interrupted
run resumes where it stopped; the file is removed once the estimator is saved.
"""

from __future__ import annotations

import copy
import io
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from faceage.nn.age_estimator import (
    AgeEstimator,
    AgeEstimatorConfig,
    EstimatorInfo,
    dldl_loss,
    gender_loss,
    ids_digest,
    sample_ids,
    save_estimator,
)
from faceage.utils import atomic_write_bytes


@dataclass
class EstimatorTrainConfig:
    """Optimisation settings of ``faceage train-age-estimator``; saved next to the weights."""

    epochs: int = 12
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 5e-4
    warmup_steps: int = 300
    sigma: float = 2.0
    l1_weight: float = 1.0
    bf16: bool = True
    seed: int = 0
    max_steps: int | None = None
    gender_weight: float = 2.0  # weight of the gender head's BCE next to the DLDL loss (unused without the head)
    input_size: int | None = None  # side the net sees (faces are resized to it); None: the cache's size


STATE_NAME = "training_state.pt"


def to_input(
    images: np.ndarray | torch.Tensor, device: torch.device | str = "cpu", size: int | None = None
) -> torch.Tensor:
    """uint8 faces [B,S,S,3] -> float [B,3,S,S] in [-1, 1] on ``device``, resized (antialiased) to ``size``."""
    x = torch.from_numpy(np.array(images, dtype=np.uint8)).to(device)
    assert x.ndim == 4 and x.shape[-1] == 3 and x.dtype == torch.uint8, (x.shape, x.dtype)
    x = x.permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)
    if size is not None and x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random flip, small rotation/scale/shift and colour jitter on a batch in [-1, 1]."""
    b = x.shape[0]

    def u(lo: float, hi: float) -> torch.Tensor:
        return torch.rand(b, generator=gen).mul(hi - lo).add(lo).to(x.device)

    angle = u(-10, 10) * math.pi / 180
    scale = u(0.9, 1.1)
    flip = torch.where(torch.rand(b, generator=gen) < 0.5, -1.0, 1.0).to(x.device)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [torch.stack([cos * flip, -sin, u(-0.08, 0.08)], 1), torch.stack([sin * flip, cos, u(-0.08, 0.08)], 1)], 1
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    gray = x.mean(dim=1, keepdim=True)
    sat = u(0.7, 1.3).view(b, 1, 1, 1) * (torch.rand(b, generator=gen) > 0.1).to(x).view(b, 1, 1, 1)
    x = gray + (x - gray) * sat
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * u(0.75, 1.25).view(b, 1, 1, 1) + mean + u(-0.2, 0.2).view(b, 1, 1, 1)
    return x.clamp_(-1, 1)


@torch.no_grad()
def predict_ages(
    net: AgeEstimator,
    images: np.ndarray,
    indices: np.ndarray,
    *,
    batch_size: int = 128,
    bf16: bool = True,
    size: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Expected ages [N], features [N, D] and P(female) [N] (None without a gender head) of ``images[indices]``
    (uint8 cache rows, resized to ``size``), in order."""
    device = next(net.parameters()).device
    ages, feats, female = [], [], []
    for start in range(0, len(indices), batch_size):
        rows = indices[start : start + batch_size]
        j = net.judge(to_input(images[rows], device, size), bf16=bf16)
        ages.append(j.age.cpu().numpy())
        feats.append(j.features.cpu().numpy())
        if j.female is not None:
            female.append(j.female.cpu().numpy())
    if not ages:
        return np.zeros(0, np.float32), np.zeros((0, net.feature_dim), np.float32), None
    return np.concatenate(ages), np.concatenate(feats), np.concatenate(female) if female else None


def gender_accuracy(p_female: np.ndarray | None, genders: np.ndarray) -> float | None:
    """Share of labelled rows (gender 0 or 1) whose P(female) > 0.5 matches the label; None if none can count."""
    known = (genders == 0) | (genders == 1)
    if p_female is None or not known.any():
        return None
    return float(np.mean((p_female[known] > 0.5) == (genders[known] == 1)))


def _scores(net: AgeEstimator, cache, indices: np.ndarray, cfg: EstimatorTrainConfig) -> tuple[float, float | None]:
    """(MAE in years, gender accuracy or None) on cache rows ``indices``."""
    pred, _, female = predict_ages(net, cache.images, indices, bf16=cfg.bf16, size=cfg.input_size)
    return float(np.abs(pred - cache.ages[indices]).mean()), gender_accuracy(female, cache.genders[indices])


def _split(cache, name: str) -> np.ndarray:
    idx = np.asarray(cache.indices(name))
    if len(idx) == 0:
        raise ValueError(f"the cache has no {name!r} faces; the estimator needs train, val and test splits")
    return idx


def _schedule(opt: torch.optim.Optimizer, warmup: int, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up, then cosine decay to zero at step ``total``."""
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, total) / total))
    )


def _train_epoch(net, opt, sched, cache, order: np.ndarray, cfg, gen, seen: np.ndarray, bar: tqdm) -> None:
    """One pass over the cache rows ``order`` in batches of ``cfg.batch_size`` (a partial last batch is dropped)."""
    device = next(net.parameters()).device
    net.train()
    for k in range(len(order) // cfg.batch_size):
        rows = np.sort(order[k * cfg.batch_size : (k + 1) * cfg.batch_size])
        seen[rows] = True
        x = augment(to_input(cache.images[rows], device, cfg.input_size), gen)
        ages = torch.as_tensor(cache.ages[rows], device=device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
            logits, gender_logit = net.forward_heads(x)
        terms = dldl_loss(logits, ages, sigma=cfg.sigma, l1_weight=cfg.l1_weight)
        if gender_logit is not None:
            terms["bce"] = gender_loss(gender_logit, torch.as_tensor(cache.genders[rows], device=device))
            terms["loss"] = terms["loss"] + cfg.gender_weight * terms["bce"]
        opt.zero_grad(set_to_none=True)
        terms["loss"].backward()
        opt.step()
        sched.step()
        bar.update(1)
        bar.set_postfix({k: f"{v.item():.3f}" for k, v in terms.items() if k in ("loss", "l1", "bce")})


def train_age_estimator(
    cache,
    out: str | Path,
    config: EstimatorTrainConfig | None = None,
    model: AgeEstimatorConfig | None = None,
    *,
    device: torch.device | str = "cpu",
    resume: bool = False,
) -> EstimatorInfo:
    """Train on ``cache``'s train split, keep the best-val epoch, report test MAE (and gender accuracy), save to
    ``out``. With ``resume``, continue from ``out``'s training state when it has one of the same settings."""
    cfg = config or EstimatorTrainConfig()
    train_idx, val_idx, test_idx = (_split(cache, s) for s in ("train", "val", "test"))
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    net = AgeEstimator(model).to(device)
    steps_per_epoch = len(train_idx) // cfg.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"batch size {cfg.batch_size} exceeds the {len(train_idx)} training faces")
    total = min(cfg.max_steps or math.inf, steps_per_epoch * cfg.epochs)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = _schedule(opt, max(1, min(cfg.warmup_steps, total // 10)), total)
    run = _Run(seen=np.zeros(len(cache), dtype=bool))  # seen: every row a training batch actually contained
    state_path = Path(out) / STATE_NAME
    if resume and state_path.is_file():
        run = _load_state(state_path, net, opt, sched, gen, cfg)
    t0 = time.perf_counter() - run.seconds
    bar = tqdm(
        total=total, initial=run.epoch * steps_per_epoch, desc="train estimator", unit="step", dynamic_ncols=True
    )
    for epoch in range(run.epoch, math.ceil(total / steps_per_epoch)):
        order = train_idx[torch.randperm(len(train_idx), generator=gen).numpy()]
        steps = min(steps_per_epoch, total - epoch * steps_per_epoch)
        _train_epoch(net, opt, sched, cache, order[: steps * cfg.batch_size], cfg, gen, run.seen, bar)
        val_mae, val_gender = _scores(net, cache, val_idx, cfg)
        gender_text = "" if val_gender is None else f", gender accuracy {val_gender:.1%}"
        bar.write(f"epoch {epoch + 1}: val MAE {val_mae:.2f} years{gender_text}")
        if val_mae < run.best_mae:
            run.best_mae, run.best_state, run.best_epoch = val_mae, copy.deepcopy(net.state_dict()), epoch + 1
            run.best_gender = val_gender
        run.epoch, run.seconds = epoch + 1, time.perf_counter() - t0
        _save_state(state_path, run, net, opt, sched, gen, cfg)
    bar.close()
    net.load_state_dict(run.best_state)
    info = _finish(cache, out, net, cfg, run, (train_idx, val_idx, test_idx), total, device, time.perf_counter() - t0)
    state_path.unlink(missing_ok=True)
    return info


@dataclass
class _Run:
    """Progress of one training run: what ``training_state.pt`` holds besides the optimiser states."""

    seen: np.ndarray
    epoch: int = 0
    seconds: float = 0.0
    best_mae: float = math.inf
    best_gender: float | None = None
    best_state: dict | None = None
    best_epoch: int = -1


def _save_state(path: Path, run: _Run, net, opt, sched, gen: torch.Generator, cfg: EstimatorTrainConfig) -> None:
    state = {
        "format_version": 1,
        "config": asdict(cfg),
        "model": asdict(net.config),
        "net": net.state_dict(),
        "opt": opt.state_dict(),
        "sched": sched.state_dict(),
        "gen": gen.get_state(),
        "torch_rng": torch.get_rng_state(),
        "run": {**asdict(run), "seen": torch.from_numpy(run.seen)},
    }
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


def _load_state(path: Path, net, opt, sched, gen: torch.Generator, cfg: EstimatorTrainConfig) -> _Run:
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state["config"] != asdict(cfg) or state["model"] != asdict(net.config):
        raise ValueError(
            f"{path} was written by a run with other settings ({state['config']}, {state['model']}); "
            "use the same options to resume, or another --out"
        )
    net.load_state_dict(state["net"])
    opt.load_state_dict(state["opt"])
    sched.load_state_dict(state["sched"])
    gen.set_state(state["gen"])
    torch.set_rng_state(state["torch_rng"])
    return _Run(**{**state["run"], "seen": state["run"]["seen"].numpy()})


def _finish(cache, out, net, cfg, run: _Run, splits, total: int, device, seconds: float) -> EstimatorInfo:
    """Score the chosen epoch on test and save it with the ids it trained on."""
    train_idx, val_idx, test_idx = splits
    test_mae, test_gender = _scores(net, cache, test_idx, cfg)
    ids = sample_ids(cache, np.flatnonzero(run.seen))
    info = EstimatorInfo(
        model=net.config,
        image_size=int(cfg.input_size or cache.size),
        train_ids_sha256=ids_digest(ids),
        num_train_ids=len(ids),
        metrics={
            "val_mae": run.best_mae,
            "test_mae": test_mae,
            "val_gender_accuracy": run.best_gender,
            "test_gender_accuracy": test_gender,
            "best_epoch": run.best_epoch,
            "num_test": len(test_idx),
        },
        training={
            **asdict(cfg),
            "steps": total,
            "seconds": round(seconds, 1),
            "device": str(device),
            "cache_size": int(cache.size),
            "cache_split_sizes": {"train": len(train_idx), "val": len(val_idx), "test": len(test_idx)},
        },
    )
    save_estimator(out, net, info, ids)
    return info
