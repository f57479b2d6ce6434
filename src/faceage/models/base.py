"""The interface between a face-aging method and the training loop.

A method is one file under ``models/`` defining a config dataclass and a :class:`FaceAgingModel`
subclass registered with ``@register_model("name")``. The loop in ``faceage.train.loop`` knows only
this interface:

* ``networks()`` — the trainable networks by name (checkpointed by name; ``"generator"`` is required
  and is the one the loop keeps an EMA copy of and samples from);
* ``optimizers(lr, betas)`` — the optimisers by name;
* ``train_step(batch, step)`` — the :class:`Phase` list for one step. The loop runs the phases in
  order: it freezes every network not named by the phase, calls ``phase.loss()`` under autocast,
  backpropagates ``"loss"``, averages gradients across DDP ranks and steps ``phase.optimizer``.

Anything a method needs beyond "one generator update and one critic update" is said by what it returns:
a critic trained ``n`` times per generator step returns ``n`` critic phases then one generator phase, a
lazily applied regulariser adds its phase every ``k`` steps, a method with two generators names both in
each phase. The loop never changes for a new method.

Everything here is plain torch: loading a generator for inference imports this module but never the
training package.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from faceage.critics import Critics, CriticWeights
from faceage.groups import AgeScheme


@dataclass
class Phase:
    """One optimiser update within a training step: which networks learn, from which loss, with which optimiser.

    ``loss`` returns a dict holding ``"loss"`` (the scalar to minimise) and any other named terms, which
    are logged. Phases run in order, so a closure may reuse tensors an earlier phase produced (detached),
    e.g. the critic phase scoring the fakes the generator phase made.
    """

    name: str
    optimizer: str
    networks: tuple[str, ...]
    loss: Callable[[], dict[str, torch.Tensor]]


class FaceAgingModel(nn.Module):
    """Base class of a face-aging method: its networks, its optimisers and what one training step does.

    Subclasses set ``self.generator`` (the network exported for inference) and their other networks as
    attributes in ``__init__``.
    """

    name: ClassVar[str]  # set by @register_model
    # The method's config dataclass; its fields are the saved model_config. Name loss weights ``w_*``: they
    # alone may change when a run is resumed (train.config.check_resumable).
    config_class: ClassVar[type]

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.config = config

    @classmethod
    def make_config(cls, model_config: dict) -> Any:
        """The method's config dataclass from a plain dict; unknown keys and wrong types are errors."""
        return config_from_dict(cls.config_class, model_config, where="model")

    @classmethod
    def build_generator(cls, model_config: dict) -> nn.Module:
        """The inference generator ``G(x [B,3,S,S] in [-1,1], target [B]) -> [B,3,S,S] in [-1,1]``.

        ``target`` is the age as a float group position (``AgeScheme.position``: 6.25 lies a quarter of the way
        from group 6 to group 7); int64 group indices are accepted as the same positions. Condition on it with
        :func:`faceage.nn.layers.two_hot` or :class:`faceage.nn.layers.AgeEmbedding`.

        Optional latent contract, for a method whose costly step is per face, not per target (Age-cGAN: encode,
        then fit the latent to the face with autograd). Inference (``faceage.infer``) and eval use it when the
        generator has all three, calling ``encode_faces`` once per face and ``render`` per (face, target):

        * ``encode_faces(x [B,3,S,S], source_positions [B]) -> latents [B, ...]``: the faces at their own ages
          (group positions); must work under ``torch.inference_mode``;
        * ``render(latents, targets [B]) -> [B,3,S,S]``: the faces at the target positions;
        * ``source_position: float``: the group position an input face is taken to be at when its age is unknown.

        ``forward(x, target)`` must equal ``render(encode_faces(x, source_position), target)``. A method with knobs
        for its per-face step adds ``set_latent_fitting(mode, steps, lr)`` (None keeps a knob; a bad value raises
        ValueError), which ``faceage.load`` and ``faceage age`` call; ``mode="none"`` must leave a plain forward
        graph, which is what ONNX export traces (the fitting stays in Python)."""
        raise NotImplementedError

    def networks(self) -> dict[str, nn.Module]:
        """Trainable networks by name; by default every direct submodule."""
        return dict(self.named_children())

    def optimizers(self, lr: float, betas: tuple[float, float]) -> dict[str, torch.optim.Optimizer]:
        """One Adam per network, keyed like ``networks()``; override for other pairings.

        Fused Adam (one kernel over all parameters): 2-3x faster than the default on a 2-core CPU."""
        return {
            name: torch.optim.Adam(net.parameters(), lr=lr, betas=tuple(map(float, betas)), fused=True)
            for name, net in self.networks().items()
        }

    def train_step(self, batch: dict[str, torch.Tensor], step: int) -> list[Phase]:
        """The phases of training step ``step`` on ``batch`` (a dict of tensors already on the device)."""
        raise NotImplementedError

    def sample_targets(self, source: torch.Tensor) -> torch.Tensor:
        """Training targets for faces of groups ``source`` [B]: by default a uniformly drawn other group (int64)."""
        return other_groups(source, self.config.num_groups)

    def critic_terms(self, x: torch.Tensor, fake: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """The frozen critics' terms for ``fake`` made from ``x`` at float target positions ``target``, and under
        ``"critics"`` their weighted sum to add to the generator's loss; ``{}`` when the config (a
        :class:`faceage.critics.CriticWeights`) sets no critic weight. The critics load on first use, on ``x``'s
        device, and stay outside the module tree: never trained, never checkpointed."""
        critics = self._frozen_critics(x.device)
        return {} if critics is None else critics.terms(x, fake, self.config.target_years(target))

    def critic_records(self) -> list[dict]:
        """``[{"name", "weights_sha256"}]`` of the frozen networks this model trains against (see
        ``faceage.critics``); saved with checkpoints and exports so that none of them judges it."""
        critics = self._frozen_critics(torch.device("cpu"))
        return [] if critics is None else critics.records()

    def _frozen_critics(self, device: torch.device) -> Critics | None:
        """The critics the config's weights ask for (None: none), loaded on ``device`` at the first call."""
        cfg = self.config
        if not isinstance(cfg, CriticWeights) or not cfg.any_critic:
            return None
        if getattr(self, "_critics", None) is None:
            object.__setattr__(self, "_critics", Critics(cfg, device))  # not a submodule: never trained or saved
        return self._critics

    @torch.no_grad()
    def sample_grid(
        self, generator: nn.Module, images: torch.Tensor, groups: torch.Tensor, scheme: AgeScheme
    ) -> tuple[torch.Tensor, list[str], list[str] | None]:
        """The training run's sample picture: tiles ``[rows, cols, 3, S, S]`` in [-1, 1], the column labels and the
        row labels (None: each row is labelled with its validation face's age).

        ``images`` are fixed validation faces and ``groups`` their true age groups [rows]. By default each face,
        then ``generator`` (the EMA copy) at every age group. A method overrides this to
        show more of itself (attention and colour masks, a cycle back to the source age, a latent's decoding).
        """
        outputs, labels = [images], ["input"]
        for group in range(scheme.num_groups):
            target = torch.full((images.shape[0],), float(group), device=images.device)
            outputs.append(generator(images, target).float())
            labels.append(scheme.label(group))
        return torch.stack(outputs, dim=1), labels, None


def other_groups(source: torch.Tensor, num_groups: int) -> torch.Tensor:
    """A uniformly drawn age group other than each face's own (int64 [B]): the usual training target."""
    return (source + torch.randint(1, num_groups, source.shape, device=source.device)) % num_groups


def config_from_dict(cls: type, data: dict, where: str) -> Any:
    """Build dataclass ``cls`` from ``data``; errors name the bad key, its section ``where`` and the valid keys."""
    if not isinstance(data, dict):
        raise ValueError(f"config section {where!r} must be a mapping, got {type(data).__name__}: {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in names]
    if unknown:
        raise ValueError(f"unknown config key {where}.{unknown[0]}; valid keys in {where!r}: {', '.join(names)}")
    return cls(**{k: _coerce(v, hints[k], f"{where}.{k}") for k, v in data.items()})


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """``value`` as type ``hint`` (bool, int, float, str, tuple[...]), or a ValueError naming ``key``."""
    origin = typing.get_origin(hint)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ValueError(f"config key {key} must be a list, got {value!r}")
        args = typing.get_args(hint)
        item_types = [args[0]] * len(value) if len(args) == 2 and args[1] is Ellipsis else list(args)
        if len(item_types) != len(value):
            raise ValueError(f"config key {key} must have {len(item_types)} items, got {value!r}")
        return tuple(_coerce(v, t, key) for v, t in zip(value, item_types, strict=True))
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, int | float) and not isinstance(value, bool),
        str: isinstance(value, str),
    }
    if hint not in ok:
        raise TypeError(f"config key {key} has unsupported type {hint}")
    if not ok[hint]:
        raise ValueError(f"config key {key} must be {hint.__name__}, got {value!r}")
    return float(value) if hint is float else value
