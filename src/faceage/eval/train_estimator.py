"""Training the age estimator on a face cache's train split; val picks the epoch, test is reported once.

Batches are drawn straight from the cache's uint8 array (no worker processes: on a 2-core machine they
would compete with the model for the same cores) and augmented on the whole batch at once.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from faceage.eval.age_estimator import (
    AgeEstimator,
    AgeEstimatorConfig,
    EstimatorInfo,
    dldl_loss,
    ids_digest,
    sample_ids,
    save_estimator,
)


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


def to_input(images: np.ndarray | torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 faces [B,S,S,3] -> float [B,3,S,S] in [-1, 1] on ``device``."""
    x = torch.from_numpy(np.array(images, dtype=np.uint8)).to(device)
    assert x.ndim == 4 and x.shape[-1] == 3 and x.dtype == torch.uint8, (x.shape, x.dtype)
    return x.permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)


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
    net: AgeEstimator, images: np.ndarray, indices: np.ndarray, *, batch_size: int = 128, bf16: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Expected ages [N] and features [N, D] of ``images[indices]`` (uint8 cache rows), in order."""
    device = next(net.parameters()).device
    ages, feats = [], []
    for start in range(0, len(indices), batch_size):
        rows = indices[start : start + batch_size]
        a, f = net.predict(to_input(images[rows], device), bf16=bf16)
        ages.append(a.cpu().numpy())
        feats.append(f.cpu().numpy())
    if not ages:
        return np.zeros(0, np.float32), np.zeros((0, net.feature_dim), np.float32)
    return np.concatenate(ages), np.concatenate(feats)


def _mae(net: AgeEstimator, cache, indices: np.ndarray, bf16: bool) -> float:
    pred, _ = predict_ages(net, cache.images, indices, bf16=bf16)
    return float(np.abs(pred - cache.ages[indices]).mean())


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
        x = augment(to_input(cache.images[rows], device), gen)
        ages = torch.as_tensor(cache.ages[rows], device=device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
            logits = net(x)
        terms = dldl_loss(logits, ages, sigma=cfg.sigma, l1_weight=cfg.l1_weight)
        opt.zero_grad(set_to_none=True)
        terms["loss"].backward()
        opt.step()
        sched.step()
        bar.update(1)
        bar.set_postfix(loss=f"{terms['loss'].item():.3f}", mae=f"{terms['l1'].item():.2f}")


def train_age_estimator(
    cache,
    out: str | Path,
    config: EstimatorTrainConfig | None = None,
    model: AgeEstimatorConfig | None = None,
    *,
    device: torch.device | str = "cpu",
) -> EstimatorInfo:
    """Train on ``cache``'s train split, keep the best-val epoch, report test MAE, save to ``out``."""
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
    seen = np.zeros(len(cache), dtype=bool)  # every row a training batch actually contained
    best = (math.inf, None, -1)
    t0 = time.perf_counter()
    bar = tqdm(total=total, desc="train age estimator", unit="step", dynamic_ncols=True)
    for epoch in range(math.ceil(total / steps_per_epoch)):
        order = train_idx[torch.randperm(len(train_idx), generator=gen).numpy()]
        steps = min(steps_per_epoch, total - epoch * steps_per_epoch)
        _train_epoch(net, opt, sched, cache, order[: steps * cfg.batch_size], cfg, gen, seen, bar)
        val_mae = _mae(net, cache, val_idx, cfg.bf16)
        bar.write(f"epoch {epoch + 1}: val MAE {val_mae:.2f} years")
        if val_mae < best[0]:
            best = (val_mae, copy.deepcopy(net.state_dict()), epoch + 1)
    bar.close()
    net.load_state_dict(best[1])
    ids = sample_ids(cache, np.flatnonzero(seen))
    info = EstimatorInfo(
        model=net.config,
        image_size=int(cache.size),
        train_ids_sha256=ids_digest(ids),
        num_train_ids=len(ids),
        metrics={
            "val_mae": best[0],
            "test_mae": _mae(net, cache, test_idx, cfg.bf16),
            "best_epoch": best[2],
            "num_test": len(test_idx),
        },
        training={
            **asdict(cfg),
            "steps": total,
            "seconds": round(time.perf_counter() - t0, 1),
            "device": str(device),
            "cache_split_sizes": {"train": len(train_idx), "val": len(val_idx), "test": len(test_idx)},
        },
    )
    save_estimator(out, net, info, ids)
    return info
