"""Frozen critics a generator can train against: apparent age, identity and gender.

Any method switches them on from its config (a dataclass inheriting :class:`CriticWeights`): ``w_age`` pulls
a frozen age estimator's estimate of the output towards the target age in years (continuous, not only the
group), ``w_face_id`` keeps dlib's face descriptor of the output near the input's (through the PyTorch port
of dlib's recogniser), ``w_gender`` keeps a gender probe's call on the output equal to its call on the
input. With every weight at 0 nothing is loaded and nothing is computed.

The networks are frozen and never checkpointed with a run: a model records their weight digests
(:meth:`Critics.records`), so ``faceage eval`` refuses to be judged by any of them. The eval judge
(``weights/judge``) is never a critic.

The gender probe is a logistic regression on dlib's 128-D descriptors (dlib already runs for the identity
term, so gender costs one dot product more). It is fitted on the cache's train split by :func:`fit_gender_probe`
(``faceage train-age-estimator --gender-probe``) and ships in ``weights/gender-probe``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save
from torch import nn

from faceage import losses
from faceage.utils import atomic_write_bytes, atomic_write_text

PROBE_WEIGHTS = "gender_probe.safetensors"
PROBE_CONFIG = "config.json"


@dataclass
class CriticWeights:
    """Loss weights of the frozen critics; a method's config dataclass inherits these fields."""

    w_age: float = 0.0  # L1 in years between the age critic's estimate of the output and the target age
    w_face_id: float = 0.0  # 1 - cosine of dlib descriptors of output and input
    w_gender: float = 0.0  # BCE of the gender probe on the output against its probability on the input
    age_critic: str = "age-estimator"  # an estimator folder under faceage/weights, or a path
    # The age critic sees the output's luminance only (grey in all three channels): a generator cannot buy age
    # from it with colour cues (tinted irises, magenta cheeks), the caricature a colour critic invites.
    age_critic_luma: bool = True
    group_ages: tuple[float, ...] = ()  # filled in from the age scheme: each group's representative age in years

    @property
    def any_critic(self) -> bool:
        return self.w_age > 0 or self.w_face_id > 0 or self.w_gender > 0

    def check_critics(self, num_groups: int) -> None:
        """Raise unless the weights can be used: ``w_age`` needs the years of every group."""
        if self.w_age > 0 and len(self.group_ages) != num_groups:
            raise ValueError(f"w_age needs group_ages for all {num_groups} groups, got {self.group_ages}")

    def target_years(self, target: torch.Tensor) -> torch.Tensor:
        """Ages in years [B] of float target positions [B]: linear between the groups' representative ages."""
        from faceage.nn.layers import two_hot

        ages = torch.tensor(self.group_ages, device=target.device, dtype=torch.float32)
        return two_hot(target, len(self.group_ages)) @ ages


def weights_folder(name: str) -> Path:
    """A folder bundled under ``faceage/weights`` by name, or ``name`` as a path."""
    bundled = Path(str(resources.files("faceage") / "weights" / name))
    return bundled if bundled.is_dir() else Path(name)


class Critics:
    """The frozen networks a config's weights ask for, on one device, in eval mode, without gradients of their own.

    Held outside the model's module tree (``nn.Module`` would checkpoint and train them)."""

    def __init__(self, cfg: CriticWeights, device: torch.device) -> None:
        from faceage.face.resnet import DlibResNet
        from faceage.nn.age_estimator import estimator_digest, load_estimator, weights_digest

        self.cfg = cfg
        self.age = self.dlib = self.gender = None
        self._records: list[dict] = []
        if cfg.w_age > 0:
            folder = weights_folder(cfg.age_critic)
            self.age, info = load_estimator(folder, device)
            self.age_size = info.image_size
            self._records.append({"name": f"age critic {folder.name}", "weights_sha256": estimator_digest(folder)})
        if cfg.w_face_id > 0 or cfg.w_gender > 0:
            self.dlib = DlibResNet.from_dlib().to(device).eval()
            self._records.append({"name": "dlib recogniser", "weights_sha256": weights_digest(self.dlib.state_dict())})
        if cfg.w_gender > 0:
            folder = weights_folder("gender-probe")
            self.gender = load_gender_probe(folder, device)
            self._records.append({"name": "gender probe on dlib descriptors", "weights_sha256": probe_digest(folder)})
        for net in (self.age, self.dlib, self.gender):
            if net is not None:
                net.requires_grad_(False)

    def records(self) -> list[dict]:
        """``[{"name", "weights_sha256"}]`` of every critic in use: what a trained model records as ``critics``."""
        return list(self._records)

    def terms(self, x: torch.Tensor, fake: torch.Tensor, target_years: torch.Tensor) -> dict[str, torch.Tensor]:
        """The critic loss terms of ``fake`` (made from ``x``; both [B,3,S,S] in [-1,1]) aimed at ``target_years`` [B]:
        ``age``, ``face_id``, ``gender`` (only those with a weight) and ``critics``, their weighted sum."""
        from faceage.face.identity import to_chip

        cfg, terms = self.cfg, {}
        if self.age is not None:
            size = self.age_size
            inp = fake if fake.shape[-1] == size else F.interpolate(fake, size=(size, size), mode="bilinear")
            if cfg.age_critic_luma:
                inp = losses.luma(inp).expand(-1, 3, -1, -1)
            terms["age"] = losses.age_l1(self.age.expected_age(self.age(inp.float())), target_years)
        if self.dlib is not None:
            with torch.no_grad():
                e_real = self.dlib(to_chip(x.float())).float()
            e_fake = self.dlib(to_chip(fake.float())).float()
            if cfg.w_face_id > 0:
                terms["face_id"] = (1.0 - F.cosine_similarity(e_fake, e_real, dim=1)).mean()
            if self.gender is not None:
                terms["gender"] = losses.gender_consistency(self.gender(e_fake), self.gender(e_real))
        weights = {"age": cfg.w_age, "face_id": cfg.w_face_id, "gender": cfg.w_gender}
        terms["critics"] = sum(weights[k] * v for k, v in terms.items())
        return terms


class GenderProbe(nn.Module):
    """Logistic regression on dlib descriptors [B, 128] -> log-odds of female [B]."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(128, 1)

    def forward(self, descriptors: torch.Tensor) -> torch.Tensor:
        return self.linear(descriptors.float()).squeeze(1)


def load_gender_probe(folder: str | Path, device: torch.device | str = "cpu") -> GenderProbe:
    folder = Path(folder)
    if not (folder / PROBE_WEIGHTS).is_file():
        raise FileNotFoundError(
            f"{folder} holds no {PROBE_WEIGHTS}; fit one with `faceage train-age-estimator --gender-probe --data CACHE "
            f"--out {folder}`"
        )
    probe = GenderProbe()
    probe.load_state_dict(load_file(str(folder / PROBE_WEIGHTS), device="cpu"))
    return probe.to(device).eval()


def probe_digest(folder: str | Path) -> str:
    from faceage.nn.age_estimator import weights_digest

    return weights_digest(load_file(str(Path(folder) / PROBE_WEIGHTS), device="cpu"))


def fit_gender_probe(cache, out: str | Path, *, max_faces: int = 6000, seed: int = 0, batch: int = 64) -> dict:
    """Fit the gender probe on up to ``max_faces`` labelled faces of the cache's train split, score it on all
    labelled test faces, and save weights + ``config.json`` (accuracy, face counts, the ids' digest) to ``out``."""
    from faceage.face.identity import to_chip
    from faceage.face.resnet import DlibResNet
    from faceage.nn.age_estimator import ids_digest, sample_ids

    net = DlibResNet.from_dlib().eval()

    def descriptors(rows: np.ndarray) -> torch.Tensor:
        out = []
        for start in range(0, len(rows), batch):
            x = torch.from_numpy(cache.images[rows[start : start + batch]]).permute(0, 3, 1, 2).float() / 127.5 - 1
            with torch.no_grad():
                out.append(net(to_chip(x)).float())
        return torch.cat(out)

    def labelled(split: str) -> np.ndarray:
        rows = np.asarray(cache.indices(split))
        return rows[np.isin(cache.genders[rows], (0, 1))]

    train = labelled("train")
    train = np.sort(np.random.default_rng(seed).choice(train, min(max_faces, len(train)), replace=False))
    test = labelled("test")
    if len(train) < 100 or len(test) == 0:
        raise ValueError(f"the cache has {len(train)} labelled train and {len(test)} test faces; the probe needs both")
    x, y = descriptors(train), torch.from_numpy(cache.genders[train].astype(np.float32))
    probe = GenderProbe()
    opt = torch.optim.LBFGS(probe.parameters(), lr=1.0, max_iter=500, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(probe(x), y) + 1e-4 * probe.linear.weight.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        accuracy = float(((probe(descriptors(test)) > 0).numpy() == (cache.genders[test] == 1)).mean())
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / PROBE_WEIGHTS, save({k: v.contiguous() for k, v in probe.state_dict().items()}))
    info = {
        "what": "logistic regression of female vs male on dlib's 128-D face descriptors (a training critic)",
        "test_accuracy": accuracy,
        "num_train": len(train),
        "num_test": len(test),
        "train_ids_sha256": ids_digest(sample_ids(cache, train)),
        "dataset": cache.dataset,
        "seed": seed,
    }
    atomic_write_text(out / PROBE_CONFIG, json.dumps(info, indent=2))
    return info
