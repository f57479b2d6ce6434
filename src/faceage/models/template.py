"""Template for a new face-aging method: the smallest model the training loop can train.

To add a method, copy this file to ``models/<name>.py``, rename the classes, change the decorator to
``@register_model("<name>")`` and list the module in ``registry._MODULES``; write a preset in
``configs/``. Nothing else changes: ``faceage train``, checkpoints, EMA, sample grids, export and
inference all work through :class:`~faceage.models.base.FaceAgingModel`.

This example is a conditional GAN whose critic is trained ``n_critic`` times per generator step, each
time on its own slice of the batch. The loop needs no special case for that: ``train_step`` simply
returns ``n_critic`` critic phases followed by one generator phase. It is not listed in
``registry._MODULES`` (it is a teaching aid, not a method to offer users); tests import it, which
registers it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from faceage import losses
from faceage.models.base import FaceAgingModel, Phase
from faceage.models.registry import register_model
from faceage.nn.layers import AgeEmbedding, DownBlock, EqualConv2d, EqualLinear, leaky_relu


@dataclass
class TemplateConfig:
    """Everything that defines the networks and the losses; saved as ``model_config``."""

    image_size: int = 32  # filled in from train.image_size
    num_groups: int = 4  # filled in from the age scheme
    channels: int = 8
    n_critic: int = 2  # critic updates per generator update
    w_rec: float = 1.0


class TemplateGenerator(nn.Module):
    """``G(x, target)``: the input plus a residual computed from features biased by a per-group embedding."""

    def __init__(self, cfg: TemplateConfig) -> None:
        super().__init__()
        self.age = AgeEmbedding(cfg.num_groups, cfg.channels)  # float group positions: see two_hot
        self.conv_in = EqualConv2d(3, cfg.channels, 3)
        self.conv_out = EqualConv2d(cfg.channels, 3, 3)

    def forward(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        h = leaky_relu(self.conv_in(x) + self.age(target)[:, :, None, None].to(x.dtype))
        return torch.tanh(x + self.conv_out(h))


class TemplateCritic(nn.Module):
    """Strided residual blocks down to 4x4, then one real/fake logit per age group; returns each image's own."""

    def __init__(self, cfg: TemplateConfig) -> None:
        super().__init__()
        c = cfg.channels
        blocks = [DownBlock(3, c)]
        size = cfg.image_size // 2
        while size > 4:
            blocks.append(DownBlock(c, c))
            size //= 2
        self.blocks = nn.Sequential(*blocks)
        self.out = EqualLinear(c * 16, cfg.num_groups)

    def forward(self, x: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
        logits = self.out(self.blocks(x).flatten(1))
        return logits.gather(1, group[:, None]).squeeze(1)


@register_model("template")
class TemplateModel(FaceAgingModel):
    """A generator and a critic; ``train_step`` returns ``n_critic`` critic phases, then a generator phase."""

    config_class = TemplateConfig

    def __init__(self, config: TemplateConfig) -> None:
        super().__init__(config)
        self.generator = TemplateGenerator(config)
        self.critic = TemplateCritic(config)

    @classmethod
    def build_generator(cls, model_config: dict) -> TemplateGenerator:
        return TemplateGenerator(cls.make_config(model_config))

    def train_step(self, batch: dict[str, torch.Tensor], step: int) -> list[Phase]:
        x, source = batch["image"], batch["group"]
        target = torch.randint(0, self.config.num_groups, source.shape, device=source.device)

        def critic_loss(part: slice) -> dict[str, torch.Tensor]:
            fake = self.generator(x[part], target[part]).detach()
            loss = losses.discriminator_adversarial(self.critic(x[part], source[part]), self.critic(fake, target[part]))
            return {"loss": loss, "critic": loss}

        def generator_loss() -> dict[str, torch.Tensor]:
            adv = losses.generator_adversarial(self.critic(self.generator(x, target), target))
            rec = losses.l1(self.generator(x, source), x)
            return {"loss": adv + self.config.w_rec * rec, "adv": adv, "rec": rec}

        n = self.config.n_critic
        parts = [slice(i * len(x) // n, (i + 1) * len(x) // n) for i in range(n)]
        critic_phases = [
            Phase(f"critic{i}", "critic", ("critic",), partial(critic_loss, p)) for i, p in enumerate(parts)
        ]
        return [*critic_phases, Phase("generator", "generator", ("generator",), generator_loss)]
