"""A compact CNN that estimates apparent age and gender: the judge of ``faceage eval``, or a frozen critic.

A critic is a network a generator trains against; it lives here, outside ``faceage.eval``, so models import
it without importing evaluation.

A narrow ResNet (stages of basic or bottleneck blocks after a stride-4 stem, channels-last) maps a face in
[-1, 1] to a distribution over whole years ``0..max_age``. The estimate is the distribution's expected
value (DEX, Rothe et al. 2015); training matches a Gaussian label distribution around the true age and
also penalises the expected value's L1 error (DLDL-v2, Gao et al. 2018). A second linear head on the same
pooled features gives P(female) (binary cross-entropy on the dataset's gender labels). The pooled
features double as the feature space of the realism metric (Fréchet distance).

Two of these play different parts: a network a generator trains against (a *critic*) may never judge it.
Each network is identified by :func:`weights_digest`, a hash of its tensors that a generator's config can
record under ``critics``; ``faceage eval`` refuses a judge whose digest is among them.

Saved as ``age_estimator.safetensors`` + ``config.json`` + ``train_ids.txt``; the config records the
hash of the training sample ids, so anyone can check that no evaluated face was ever trained on.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save
from torch import nn

from faceage.losses import label_distribution
from faceage.utils import atomic_write_bytes, atomic_write_text

FORMAT_VERSION = 1
WEIGHTS_NAME = "age_estimator.safetensors"
CONFIG_NAME = "config.json"
IDS_NAME = "train_ids.txt"


@dataclass
class AgeEstimatorConfig:
    """Architecture of the estimator; these fields are exactly what ``config.json`` stores under ``model``."""

    widths: tuple[int, ...] = (32, 64, 128, 256)
    blocks: tuple[int, ...] = (2, 2, 2, 2)
    max_age: int = 100
    dropout: float = 0.2
    block: str = "basic"  # "basic": two 3x3 convs; "bottleneck": 1x1 -> 3x3 (a quarter of the width) -> 1x1
    stem: str = "conv5-pool"  # "conv5-pool": 5x5 stride-2 conv, 3x3 max-pool; "conv3x2": two 3x3 stride-2 convs
    gender: bool = True  # a second head giving P(female); folders saved before it existed load without one

    def __post_init__(self) -> None:
        self.widths = tuple(int(w) for w in self.widths)
        self.blocks = tuple(int(b) for b in self.blocks)
        if len(self.widths) != len(self.blocks) or not self.widths:
            raise ValueError(f"widths {self.widths} and blocks {self.blocks} must be non-empty and the same length")
        if self.block not in BLOCKS:
            raise ValueError(f"unknown block {self.block!r}; known: {', '.join(BLOCKS)}")
        if self.stem not in STEMS:
            raise ValueError(f"unknown stem {self.stem!r}; known: {', '.join(STEMS)}")

    def describe(self) -> str:
        """A one-line summary for reports: ``resnet basic 32-64-128-256 x 2-2-2-2, stem conv5-pool``."""
        widths, blocks = "-".join(map(str, self.widths)), "-".join(map(str, self.blocks))
        return f"resnet {self.block} {widths} x {blocks}, stem {self.stem}, {'age+gender' if self.gender else 'age'}"


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.skip = None
        if stride != 1 or cin != cout:
            self.skip = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + (x if self.skip is None else self.skip(x)))


class _Bottleneck(nn.Module):
    """ResNet-50's block: 1x1 down to a quarter of the width, 3x3 (strided), 1x1 back up."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        mid = max(8, cout // 4)
        self.body = nn.Sequential(
            nn.Conv2d(cin, mid, 1, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, mid, 3, stride, 1, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        )
        self.skip = None
        if stride != 1 or cin != cout:
            self.skip = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + (x if self.skip is None else self.skip(x)))


BLOCKS = {"basic": _Block, "bottleneck": _Bottleneck}
STEMS = ("conv5-pool", "conv3x2")


def _stem(kind: str, width: int) -> nn.Sequential:
    """Stride-4 stem: a 128 px face becomes 32x32 before the first stage, which keeps the net cheap."""
    if kind == "conv5-pool":
        return nn.Sequential(
            nn.Conv2d(3, width, 5, 2, 2, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, 1),
        )
    half = max(8, width // 2)
    return nn.Sequential(
        nn.Conv2d(3, half, 3, 2, 1, bias=False),
        nn.BatchNorm2d(half),
        nn.ReLU(inplace=True),
        nn.Conv2d(half, width, 3, 2, 1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(inplace=True),
    )


@dataclass
class Judgement:
    """What the estimator says about a batch of faces: expected ages, P(female) (None without a gender head),
    pooled features; all float32 [B] / [B, D]."""

    age: torch.Tensor
    female: torch.Tensor | None
    features: torch.Tensor


class AgeEstimator(nn.Module):
    """Face [B,3,S,S] in [-1,1] -> logits over ages 0..max_age; ``predict`` gives expected ages and features."""

    def __init__(self, config: AgeEstimatorConfig | None = None) -> None:
        super().__init__()
        self.config = config or AgeEstimatorConfig()
        w, blocks, block = self.config.widths, self.config.blocks, BLOCKS[self.config.block]
        self.stem = _stem(self.config.stem, w[0])
        layers, cin = [], w[0]
        for i, (cout, n) in enumerate(zip(w, blocks, strict=True)):
            for j in range(n):
                layers.append(block(cin, cout, 2 if (j == 0 and i > 0) else 1))
                cin = cout
        self.stages = nn.Sequential(*layers)
        self.dropout = nn.Dropout(self.config.dropout)
        self.head = nn.Linear(cin, self.config.max_age + 1)
        self.gender_head = nn.Linear(cin, 1) if self.config.gender else None
        self.register_buffer("ages", torch.arange(self.config.max_age + 1, dtype=torch.float32), persistent=False)
        # oneDNN runs these convolutions about 1.5x faster (bf16, CPU) in channels-last layout.
        self.to(memory_format=torch.channels_last)

    @property
    def feature_dim(self) -> int:
        return self.head.in_features

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features [B, feature_dim]: globally pooled last-stage activations."""
        assert x.ndim == 4 and x.shape[1] == 3, x.shape
        x = x.contiguous(memory_format=torch.channels_last)
        return self.stages(self.stem(x)).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Age logits [B, max_age + 1]."""
        return self.head(self.dropout(self.features(x)))

    def forward_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Age logits [B, max_age + 1] and the gender logit [B] (log-odds of female; None without the head)."""
        feats = self.dropout(self.features(x))
        gender = None if self.gender_head is None else self.gender_head(feats).squeeze(1)
        return self.head(feats), gender

    def expected_age(self, logits: torch.Tensor) -> torch.Tensor:
        return (logits.float().softmax(dim=1) * self.ages).sum(dim=1)

    @torch.no_grad()
    def judge(self, x: torch.Tensor, *, bf16: bool = True) -> Judgement:
        """Expected ages, P(female) and features of faces in [-1, 1], in eval mode."""
        was_training = self.training
        self.eval()
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
            feats = self.features(x)
            logits = self.head(feats)
            gender = None if self.gender_head is None else self.gender_head(feats).squeeze(1)
        self.train(was_training)
        female = None if gender is None else gender.float().sigmoid()
        return Judgement(self.expected_age(logits), female, feats.float())

    @torch.no_grad()
    def predict(self, x: torch.Tensor, *, bf16: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """``(expected ages [B] float32, features [B, D] float32)`` for faces in [-1, 1], in eval mode."""
        j = self.judge(x, bf16=bf16)
        return j.age, j.features


def dldl_loss(
    logits: torch.Tensor, ages: torch.Tensor, *, sigma: float = 2.0, l1_weight: float = 1.0
) -> dict[str, torch.Tensor]:
    """KL(label distribution || prediction) + ``l1_weight`` * |expected age - age|, with both terms for logging."""
    logits = logits.float()
    target = label_distribution(ages.clamp(0, logits.shape[1] - 1), logits.shape[1], sigma)
    logq = logits.log_softmax(dim=1)
    kl = F.kl_div(logq, target, reduction="batchmean")
    expected = (logq.exp() * torch.arange(logits.shape[1], device=logits.device)).sum(dim=1)
    l1 = (expected - ages.float()).abs().mean()
    return {"loss": kl + l1_weight * l1, "kl": kl, "l1": l1}


def gender_loss(logit: torch.Tensor, genders: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of the gender logit against labels 0 (male) / 1 (female); rows labelled
    anything else (-1: unknown) are left out; 0 (with a gradient path) when no row is labelled."""
    known = (genders == 0) | (genders == 1)
    if not known.any():
        return logit.float().sum() * 0.0
    return F.binary_cross_entropy_with_logits(logit.float()[known], genders[known].float())


def weights_digest(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 over a state dict's names, dtypes, shapes and bytes (sorted by name): the network's fingerprint,
    the same however the weights were saved. A generator records its critics' digests; eval compares them."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().to("cpu").contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def ids_digest(ids: list[str] | np.ndarray) -> str:
    """SHA-256 of the sorted, newline-joined sample ids: the fingerprint of a training set."""
    return hashlib.sha256("\n".join(sorted(str(i) for i in ids)).encode()).hexdigest()


@dataclass
class EstimatorInfo:
    """What ``config.json`` says about a trained estimator besides its architecture."""

    model: AgeEstimatorConfig
    image_size: int
    train_ids_sha256: str
    num_train_ids: int
    metrics: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)


def save_estimator(folder: str | Path, net: AgeEstimator, info: EstimatorInfo, train_ids: list[str]) -> Path:
    """Write weights (safetensors), ``config.json`` and the exact training ids to ``folder``."""
    if ids_digest(train_ids) != info.train_ids_sha256 or len(train_ids) != info.num_train_ids:
        raise ValueError("train_ids do not match info.train_ids_sha256 / num_train_ids")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in net.state_dict().items()}
    atomic_write_bytes(folder / WEIGHTS_NAME, save(state))
    atomic_write_text(folder / IDS_NAME, "".join(f"{i}\n" for i in sorted(train_ids)))
    atomic_write_text(folder / CONFIG_NAME, json.dumps({"format_version": FORMAT_VERSION, **asdict(info)}, indent=2))
    return folder


def load_estimator(folder: str | Path, device: str | torch.device = "cpu") -> tuple[AgeEstimator, EstimatorInfo]:
    """Rebuild a saved estimator (eval mode) and its info; a missing or foreign folder is a clear error."""
    folder = Path(folder)
    if not (folder / WEIGHTS_NAME).is_file() or not (folder / CONFIG_NAME).is_file():
        raise FileNotFoundError(
            f"{folder} is not an age-estimator folder (needs {WEIGHTS_NAME} and {CONFIG_NAME}); "
            "train one with `faceage train-age-estimator --data CACHE --out DIR`"
        )
    raw = json.loads((folder / CONFIG_NAME).read_text())
    if raw.pop("format_version", None) != FORMAT_VERSION:
        raise ValueError(f"{folder / CONFIG_NAME}: unsupported format_version (expected {FORMAT_VERSION})")
    # Folders written before the gender head existed have no "gender" key and no such weights.
    info = EstimatorInfo(**{**raw, "model": AgeEstimatorConfig(**{"gender": False, **raw["model"]})})
    net = AgeEstimator(info.model)
    net.load_state_dict(load_file(str(folder / WEIGHTS_NAME), device="cpu"))
    return net.to(device).eval(), info


def estimator_digest(folder: str | Path) -> str:
    """:func:`weights_digest` of the estimator saved in ``folder`` (what a generator trained against it records)."""
    return weights_digest(load_file(str(Path(folder) / WEIGHTS_NAME), device="cpu"))


def training_ids(folder: str | Path) -> set[str]:
    """The ids of every sample the estimator in ``folder`` was trained on, checked against its recorded hash."""
    folder = Path(folder)
    info = json.loads((folder / CONFIG_NAME).read_text())
    ids = [line for line in (folder / IDS_NAME).read_text().splitlines() if line]
    if ids_digest(ids) != info["train_ids_sha256"]:
        raise ValueError(f"{folder / IDS_NAME} does not match train_ids_sha256 in {CONFIG_NAME}; the folder was edited")
    return set(ids)


def sample_ids(cache, indices: np.ndarray) -> list[str]:
    """Stable ids of cache rows: each face's source path relative to the dataset root (unique in a dataset)."""
    rel = getattr(cache, "relpaths", None)
    if rel is None:
        return [Path(str(cache.paths[i])).name for i in indices]
    return [str(rel[i]) for i in indices]
