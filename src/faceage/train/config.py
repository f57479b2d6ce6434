"""Run configuration: YAML presets, dotted ``--set`` overrides, validation, and the resolved YAML of a run.

A config file has two sections::

    model:            # the method, by registered name, and its config dataclass's fields
      name: ragan
      channels: 16
    train:            # TrainConfig's fields
      batch_size: 16

``model.image_size`` and ``model.num_groups`` are filled in from ``train.image_size`` and the age scheme,
so they are stated once. Unknown keys are errors that name the key and the valid ones.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from faceage.groups import AgeScheme, get_scheme
from faceage.models.base import config_from_dict
from faceage.models.registry import get_model
from faceage.paths import CONFIGS_DIR
from faceage.precision import PRECISIONS

SECTIONS = ("model", "train")
# Written by a run into its config.yaml (what auto precision became, on which device); ignored when read back,
# since a resumed run resolves again on the machine it resumes on.
RESOLVED = "resolved"


@dataclass
class TrainConfig:
    """Everything about a run except the architecture: data, optimisation, precision, logging and seeding."""

    scheme: str = "ffhq10"  # age-group scheme (faceage.groups): a name or lower edges like "0,20,40,60"
    image_size: int = 128  # must match the data cache
    batch_size: int = 16  # per process; the global batch is batch_size x number of processes
    steps: int = 200_000  # total optimisation steps of the run
    lr: float = 0.002
    betas: tuple[float, float] = (0.0, 0.99)
    ema_decay: float = 0.999  # decay of the generator's exponential moving average (ramped up from 0)
    precision: str = "auto"  # auto (bf16 where faster: CUDA, AMX CPUs; else fp32), fp32 or bf16 (faceage.precision)
    augment: bool = True  # random horizontal flips, drawn in the loop so a resumed run draws the same ones
    num_workers: int = 2  # data-loading worker processes per training process
    seed: int = 0  # process r of a DDP run uses seed + r
    log_every: int = 50  # steps between TensorBoard / metrics.jsonl scalars
    sample_every: int = 1000  # steps between sample grids
    checkpoint_every: int = 1000  # steps between checkpoints (one is also written at the end)
    sample_rows: int = 8  # validation faces in the sample grid
    # Start a new run from trained weights: an exported model folder (its generator) or a checkpoint .pt (every
    # network it holds by name, the EMA generator for "generator"). Layers the source lacks keep their
    # initialisation (a head added for fine-tuning); anything else that does not fit is an error. Ignored on resume.
    init_from: str = ""

    def __post_init__(self) -> None:
        for key in (
            "image_size",
            "batch_size",
            "steps",
            "log_every",
            "sample_every",
            "checkpoint_every",
            "sample_rows",
        ):
            if getattr(self, key) < 1:
                raise ValueError(f"train.{key} must be >= 1, got {getattr(self, key)}")
        if self.num_workers < 0:
            raise ValueError(f"train.num_workers must be >= 0, got {self.num_workers}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"train.precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"train.ema_decay must be in [0, 1), got {self.ema_decay}")


@dataclass
class RunConfig:
    """A resolved run: the registered model name, its config dataclass, and the training config."""

    model: str
    model_config: Any
    train: TrainConfig = field(default_factory=TrainConfig)

    @property
    def scheme(self) -> AgeScheme:
        return get_scheme(self.train.scheme)

    def to_dict(self) -> dict:
        """Plain data (what the run folder's config.yaml and every checkpoint hold)."""
        return {
            "model": {"name": self.model, **dataclasses.asdict(self.model_config)},
            "train": dataclasses.asdict(self.train),
        }

    def to_yaml(self, resolved: dict | None = None) -> str:
        """The config as YAML; ``resolved`` (e.g. the precision ``auto`` became) is added as its own section."""
        data = self.to_dict() | ({RESOLVED: resolved} if resolved else {})
        return yaml.safe_dump(_lists(data), sort_keys=False)


def presets() -> list[str]:
    """Names of the bundled presets (``configs/*.yaml``)."""
    return sorted(p.stem for p in CONFIGS_DIR.glob("*.yaml"))


def load_config(name_or_path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """A bundled preset (``ragan_utk128``) or a YAML file, with ``section.key=value`` overrides applied."""
    path = Path(name_or_path)
    if not path.is_file():
        path = CONFIGS_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise ValueError(
            f"no config {str(name_or_path)!r}: not a file and not a preset; presets: {', '.join(presets())}"
        )
    data = yaml.safe_load(path.read_text()) or {}
    return from_dict(apply_overrides(data, overrides))


def apply_overrides(data: dict, overrides: list[str] | tuple[str, ...]) -> dict:
    """A copy of config dict ``data`` with each ``section.key=value`` applied (values parsed as YAML)."""
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    for item in overrides:
        key, sep, text = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot or not name:
            raise ValueError(f"override {item!r} must look like section.key=value, e.g. train.batch_size=16")
        if section not in SECTIONS:
            raise ValueError(f"unknown config section {section!r} in override {item!r}; valid: {', '.join(SECTIONS)}")
        data.setdefault(section, {})[name] = yaml.safe_load(text)
    return data


def from_dict(data: dict) -> RunConfig:
    """Validate a config dict (a YAML file's content or a checkpoint's ``config``) into a RunConfig."""
    if not isinstance(data, dict):
        raise ValueError(f"a config must be a mapping with sections {', '.join(SECTIONS)}, got {data!r}")
    unknown = [k for k in data if k not in (*SECTIONS, RESOLVED)]
    if unknown:
        raise ValueError(f"unknown config section {unknown[0]!r}; valid: {', '.join(SECTIONS)}")
    train_section = dict(data.get("train") or {})
    if "bf16" in train_section:  # checkpoints written before train.precision replaced train.bf16
        train_section.setdefault("precision", "bf16" if train_section.pop("bf16") else "fp32")
    train = config_from_dict(TrainConfig, train_section, "train")
    scheme = get_scheme(train.scheme)
    model_section = dict(data.get("model") or {})
    if "name" not in model_section:
        raise ValueError("config section 'model' needs a 'name' (a registered model, e.g. ragan)")
    try:
        model_cls = get_model(model_section.pop("name"))
    except KeyError as e:
        raise ValueError(e.args[0]) from None
    for key, value in (("image_size", train.image_size), ("num_groups", scheme.num_groups)):
        if model_section.get(key, value) != value:
            raise ValueError(
                f"model.{key}={model_section[key]} disagrees with the training config ({value}); "
                "it is derived from train.image_size and train.scheme, so leave it out"
            )
        model_section[key] = value
    if "group_ages" in {f.name for f in dataclasses.fields(model_cls.config_class)}:
        model_section["group_ages"] = tuple(scheme.representative_age(g) for g in range(scheme.num_groups))
    return RunConfig(model_cls.name, model_cls.make_config(model_section), train)


def check_resumable(saved: RunConfig, new: RunConfig, where: str | Path) -> None:
    """Raise unless ``new`` only changes what may change when resuming ``saved``: training settings and loss
    weights (``model.w_*``, and the loss settings a model config lists in ``resume_tunable``, to fine-tune with
    another balance), not the age scheme, the image size or the architecture."""
    for key in ("scheme", "image_size"):
        if getattr(new.train, key) != getattr(saved.train, key):
            raise ValueError(
                f"train.{key} cannot change on resume: {where} was trained with {getattr(saved.train, key)!r}"
            )
    old = dataclasses.asdict(saved.model_config)
    tunable = getattr(new.model_config, "resume_tunable", frozenset())
    changed = sorted(
        k
        for k, v in dataclasses.asdict(new.model_config).items()
        if old.get(k) != v and not k.startswith("w_") and k not in tunable
    )
    if new.model != saved.model or changed:
        raise ValueError(
            f"{where} was trained as {saved.model} and cannot change model on resume "
            f"(changed: {', '.join(changed) or 'model.name'})"
        )


def _lists(value: Any) -> Any:
    """Tuples as lists, recursively, so the YAML stays plain."""
    if isinstance(value, dict):
        return {k: _lists(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_lists(v) for v in value]
    return value
