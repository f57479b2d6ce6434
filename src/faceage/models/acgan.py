"""AcGAN: "Look globally, age locally: face aging with an attention mechanism" (Zhu et al., ICASSP 2020).

A StarGAN/GANimation-style generator ``G(x, y')`` sees the face with the target age group tiled over it as
extra input channels and draws two things from one shared trunk:

* a colour mask ``C`` (``tanh``, [B,3,S,S]): what the aged face looks like;
* an attention mask ``A`` (``sigmoid``, [B,1,S,S]): where to keep the input.

The output is ``x_t = (1 - A) * C + A * x``: where ``A`` is 1 the input passes through untouched, so the
network only has to paint the age-relevant regions ("age locally") while seeing the whole face ("look
globally"). One critic ``D`` has a shared trunk and two heads: ``D_I``, a WGAN critic score per image, and
``D_y``, age-group logits. Losses (:meth:`AcGAN.train_step`): WGAN-GP for realism, an age-group
cross-entropy (``D_y`` on real faces with their own group for the critic, on fakes with the target group
for the generator), and two terms on ``A``: total variation (a smooth mask) and the share of the picture
it changes. No pixel, cycle or identity loss: the attention mask alone keeps the person.

The sign of the mask term. The authors' code (following GANimation) penalises ``mean(A)``, the share
*kept*, which pushes towards repainting everything. GANimation needs that because its cycle loss makes
"keep everything" optimal; AcGAN has no cycle loss, and its weight-100 age classifier already rules out
the unchanged face. Penalising ``mean(A)`` would leave nothing to hold the background, hair and clothes,
which the colour mask would then redraw from scratch. Here the term is ``mean(1 - A)``, the share
*changed*: every pixel is kept unless changing it buys realism or age, which is what is to keep the
background within a few levels of the input (watch ``bg_diff``, logged when batches carry face masks).

The background term ``w_bg`` (not in the paper; off by default, on in the preset). On UTKFace at 128 px the
weight-100 age classifier is satisfied more cheaply by a faint global blend than by local edits: after 5,300
steps with the paper's terms, A sat at ~0.95 almost everywhere, the corners outside the face changed by ~10
levels (of 255) on test faces, and raising ``w_mask`` to 10 (1,466 steps), then 40 (1,079 steps) did not move it.
``w_bg`` adds the mean of ``1 - A`` outside the face mask that aligned caches carry (``losses.masked_l1`` of A
against 1), so it is still the attention mask that keeps the background, now told where the background is.

Differences from the paper, and why:

* Widths and depth are config fields whose defaults are the paper's (generator width 64, six residual
  blocks; a critic from 64 to 2048 channels, StarGAN's at 128 px). Every generator layer runs at 128, 64 or
  32 px, so on a 2-core CPU the width is what costs: the ``acgan_utk128`` preset keeps the six residual
  blocks (the generator's view of the whole face) at a quarter of the width (16, 32, 64 channels; 0.54M
  parameters), and a critic from 16 to 256 channels (1.75M parameters; the authors' has 179M at 224 px).
  Single-thread steps at 128 px, batch 16, on a shared Xeon without AMX: width 32 with three residual
  blocks and a 32-wide critic 2.2 img/s; width 16 with six blocks 3.6 img/s with the 32-wide critic and
  6.2 img/s with the 16-wide one (the critic phase, run every step with a double backward through reals,
  fakes and interpolates, had been the larger half).
* The gradient penalty is part of the critic phase's loss: one optimiser step per critic update (the
  authors' code steps the penalty separately, a second Adam step per update).
* ``losses.total_variation`` is a mean of squared differences, the paper's TV a per-image sum of absolute
  ones weighted 1e-4. ``w_tv = 1.6`` (1e-4 times the ~16k neighbour pairs per direction at 128 px) gives a
  sharp mask edge about the paper's cost, and penalises faint speckle less.
* The age condition is :func:`~faceage.nn.layers.two_hot` tiled, so float group positions interpolate.
* No learning-rate decay (the paper multiplies it by 0.9 every 10 epochs): the loop has no scheduler.
* The critic's age head returns logits (the authors apply softmax and then a cross-entropy on top).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from faceage import losses
from faceage.critics import CriticWeights
from faceage.groups import AgeScheme
from faceage.models.base import FaceAgingModel, Phase
from faceage.models.registry import register_model
from faceage.nn.layers import two_hot


@dataclass
class ACGANConfig(CriticWeights):
    """AcGAN's architecture and loss weights; saved as ``model_config`` with every checkpoint and export.

    The frozen critics' weights (``w_age``, ``w_face_id``, ``w_gender``; off by default, not in the paper) come
    from :class:`CriticWeights`."""

    image_size: int = 128  # filled in from the training config
    num_groups: int = 5  # filled in from the age scheme
    channels: int = 64  # generator width at full resolution; 2x and 4x after each downsampling
    res_blocks: int = 6  # residual blocks at image_size / 4
    d_channels: int = 64  # critic width after its first stride-2 convolution; doubles per layer
    d_max_channels: int = 2048
    d_final_size: int = 2  # the critic's trunk downsamples to this resolution
    n_critic: int = 2  # critic updates per generator update
    w_adv: float = 10.0
    w_gp: float = 10.0
    w_cls: float = 100.0
    w_mask: float = 2.0  # on mean(1 - A): the share of the picture the generator changes
    w_tv: float = 1.6  # on losses.total_variation(A) (see the module docstring)
    # on the mean of 1 - A outside the face mask, for batches that carry face masks (aligned caches); not in the
    # paper, 0 = off (see the module docstring)
    w_bg: float = 0.0

    def __post_init__(self) -> None:
        if self.image_size < 16 or self.image_size % 4:
            raise ValueError(f"AcGAN image_size must be a multiple of 4 and >= 16, got {self.image_size}")
        final = self.d_final_size
        if final < 1 or self.image_size % final or not _is_power_of_two(self.image_size // final):
            raise ValueError(
                f"AcGAN d_final_size must be image_size / 2**k, got {final} at image_size {self.image_size}"
            )
        if self.image_size // final < 2:
            raise ValueError(f"AcGAN d_final_size must be at most image_size / 2, got {final}")
        if self.num_groups < 2:
            raise ValueError(f"AcGAN needs at least two age groups, got num_groups={self.num_groups}")
        for key in ("channels", "d_channels", "d_max_channels", "n_critic"):
            if getattr(self, key) < 1:
                raise ValueError(f"AcGAN {key} must be >= 1, got {getattr(self, key)}")
        if self.res_blocks < 0:
            raise ValueError(f"AcGAN res_blocks must be >= 0, got {self.res_blocks}")
        self.check_critics(self.num_groups)

    @property
    def d_layers(self) -> int:
        """Stride-2 convolutions in the critic's trunk."""
        return int(math.log2(self.image_size // self.d_final_size))


def _is_power_of_two(n: int) -> bool:
    return n >= 1 and n & (n - 1) == 0


def _conv_norm_relu(
    in_ch: int, out_ch: int, kernel: int, stride: int = 1, *, transposed: bool = False
) -> nn.Sequential:
    """Convolution (no bias: the norm removes it) -> InstanceNorm -> ReLU; 4x4 stride-2 ones halve or double."""
    conv = nn.ConvTranspose2d if transposed else nn.Conv2d
    padding = 1 if kernel == 4 else kernel // 2
    return nn.Sequential(
        conv(in_ch, out_ch, kernel, stride=stride, padding=padding, bias=False),
        nn.InstanceNorm2d(out_ch, affine=True),
        nn.ReLU(),
    )


class _InstanceNormResBlock(nn.Module):
    """``x + IN(conv(ReLU(IN(conv(x)))))`` with 3x3 convolutions (StarGAN's and CycleGAN's residual block).

    InstanceNorm has no running statistics here: training and inference normalise alike, and a forward pass
    in the critic phase changes no generator state.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _conv_norm_relu(channels, channels, 3),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.InstanceNorm2d(channels, affine=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def compose(attention: torch.Tensor, colour: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``(1 - A) * C + A * x``: the input where ``A`` is 1 (exactly, in fp32), the colour mask where it is 0."""
    return (1 - attention) * colour + attention * x


class ACGANGenerator(nn.Module):
    """``G(x [B,3,S,S] in [-1,1], target [B] group positions) -> [B,3,S,S]``, through attention and colour masks.

    7x7 convolution, two 4x4 stride-2 downsamplings, residual blocks at S/4, two 4x4 stride-2 transposed
    convolutions back to S, then a colour head (7x7 conv -> 3, tanh) and an attention head (7x7 conv -> 1,
    sigmoid), computed as one 4-channel convolution.
    """

    def __init__(self, cfg: ACGANConfig) -> None:
        super().__init__()
        c = cfg.channels
        self.image_size, self.num_groups = cfg.image_size, cfg.num_groups
        self.trunk = nn.Sequential(
            _conv_norm_relu(3 + cfg.num_groups, c, 7),
            _conv_norm_relu(c, 2 * c, 4, 2),
            _conv_norm_relu(2 * c, 4 * c, 4, 2),
            *(_InstanceNormResBlock(4 * c) for _ in range(cfg.res_blocks)),
            _conv_norm_relu(4 * c, 2 * c, 4, 2, transposed=True),
            _conv_norm_relu(2 * c, c, 4, 2, transposed=True),
        )
        # The colour head (channels 0-2) and the attention head (channel 3) as one convolution: the same
        # arithmetic as two, but one pass over the widest feature map.
        self.heads = nn.Conv2d(c, 4, 7, padding=3)

    def forward(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.masks(x, target)[2]

    def masks(self, x: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(A [B,1,S,S] in [0,1], C [B,3,S,S] in [-1,1], output [B,3,S,S])`` for the figures and the losses."""
        s = self.image_size
        if x.ndim != 4 or tuple(x.shape[1:]) != (3, s, s):  # a user's tensor: a clear error even under python -O
            raise ValueError(f"AcGAN expects [B, 3, {s}, {s}] images in [-1, 1], got shape {tuple(x.shape)}")
        if target.shape != x.shape[:1]:
            raise ValueError(f"AcGAN expects one target per image ({x.shape[0]}), got shape {tuple(target.shape)}")
        condition = two_hot(target, self.num_groups)[:, :, None, None].expand(-1, -1, s, s)
        h = self.trunk(torch.cat([x, condition.to(x.dtype)], dim=1))
        # Activations and composition in fp32 (and the standard layout): bf16 tanh/sigmoid have no fast CPU
        # kernels, and A == 1 must give back the input exactly.
        heads = self.heads(h).to(torch.float32, memory_format=torch.contiguous_format)
        colour, attention = torch.tanh(heads[:, :3]), torch.sigmoid(heads[:, 3:])
        return attention, colour, compose(attention, colour, x.float())


class ACGANCritic(nn.Module):
    """``D(x) -> (D_I [B] WGAN scores, D_y [B, num_groups] age-group logits)``.

    4x4 stride-2 convolutions with LeakyReLU(0.01) and no normalisation (the gradient penalty is per sample,
    so the critic must have no batch statistics) down to ``d_final_size``; ``D_I`` is a 3x3 convolution to
    one channel averaged over the final map, ``D_y`` a convolution over the whole final map.
    """

    def __init__(self, cfg: ACGANConfig) -> None:
        super().__init__()
        widths = [min(cfg.d_channels * 2**i, cfg.d_max_channels) for i in range(cfg.d_layers)]
        layers: list[nn.Module] = []
        for in_ch, out_ch in zip([3, *widths], widths, strict=False):
            layers += [nn.Conv2d(in_ch, out_ch, 4, stride=2, padding=1), nn.LeakyReLU(0.01)]
        self.trunk = nn.Sequential(*layers)
        self.score = nn.Conv2d(widths[-1], 1, 3, padding=1, bias=False)
        self.age = nn.Conv2d(widths[-1], cfg.num_groups, cfg.d_final_size, bias=False)
        self.image_size = cfg.image_size

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.image_size
        assert x.shape[1:] == (3, s, s), x.shape
        h = self.trunk(x)
        return self.score(h).float().mean(dim=(1, 2, 3)), self.age(h).float().flatten(1)


@register_model("acgan")
class AcGAN(FaceAgingModel):
    """AcGAN's generator, critic and training step (see the module docstring for the paper's terms)."""

    config_class = ACGANConfig

    def __init__(self, config: ACGANConfig) -> None:
        super().__init__(config)
        self.generator = ACGANGenerator(config)
        self.critic = ACGANCritic(config)

    @classmethod
    def build_generator(cls, model_config: dict) -> ACGANGenerator:
        return ACGANGenerator(cls.make_config(model_config))

    def train_step(self, batch: dict[str, torch.Tensor], step: int) -> list[Phase]:
        """A critic phase every step; a generator phase after it every ``n_critic``-th step (steps
        ``n_critic - 1``, ``2 n_critic - 1``, ...: the critic learns first). Both use the same targets."""
        cfg = self.config
        x, source = batch["image"], batch["group"]
        target = self.sample_targets(source)
        position = target.float()  # the generator's condition: a group position (two_hot)

        def critic_loss() -> dict[str, torch.Tensor]:
            with torch.no_grad():
                fake = self.generator(x, position)
            alpha = torch.rand(x.shape[0], 1, 1, 1, device=x.device)
            between = torch.lerp(fake, x.float(), alpha).requires_grad_(True)
            # Reals, fakes and interpolates in one pass: D has no batch statistics, so this is the three passes'
            # arithmetic in one, and the penalty's gradient wrt the interpolates is unaffected by the rest.
            score, age = self.critic(torch.cat([x.float(), fake, between]))
            real_score, fake_score, between_score = score.chunk(3)
            terms = {
                "d_adv": losses.wasserstein_critic(real_score, fake_score),
                "gp": losses.gradient_penalty(between_score, between),
                "d_cls": F.cross_entropy(age[: len(x)], source),
            }
            total = cfg.w_adv * terms["d_adv"] + cfg.w_gp * terms["gp"] + cfg.w_cls * terms["d_cls"]
            return {"loss": total, **terms}

        def generator_loss() -> dict[str, torch.Tensor]:
            attention, _, fake = self.generator.masks(x, position)
            score, age = self.critic(fake)
            terms = {
                "g_adv": losses.wasserstein_generator(score),
                "g_cls": F.cross_entropy(age, target),
                "mask": (1 - attention).mean(),
                "tv": losses.total_variation(attention),
            }
            total = cfg.w_adv * terms["g_adv"] + cfg.w_cls * terms["g_cls"]
            total = total + cfg.w_mask * terms["mask"] + cfg.w_tv * terms["tv"]
            critic_terms = self.critic_terms(x, fake, position)
            if critic_terms:
                total = total + critic_terms.pop("critics")
                terms.update(critic_terms)
            if "mask" in batch:
                background = 1.0 - batch["mask"]
                if cfg.w_bg:
                    terms["mask_bg"] = losses.masked_l1(attention, torch.ones_like(attention), background)
                    total = total + cfg.w_bg * terms["mask_bg"]
                # A diagnostic, not a loss: how far the background moved (2/255 is 0.016 here).
                terms["bg_diff"] = losses.masked_l1(fake.detach(), x, background)
            return {"loss": total, **terms}

        phases = [Phase("D", "critic", ("critic",), critic_loss)]
        if (step + 1) % cfg.n_critic == 0:
            phases.append(Phase("G", "generator", ("generator",), generator_loss))
        return phases

    @torch.no_grad()
    def sample_grid(
        self, generator: nn.Module, images: torch.Tensor, groups: torch.Tensor, scheme: AgeScheme
    ) -> tuple[torch.Tensor, list[str], list[str] | None]:
        """The paper's "attention results" figure: each face, then for every age group its attention mask ``A``
        (grey: white keeps the input), its colour mask ``C`` and the output."""
        tiles, labels = [images.float()], ["input"]
        for group in range(scheme.num_groups):
            target = torch.full((images.shape[0],), float(group), device=images.device)
            attention, colour, out = generator.masks(images, target)
            tiles += [attention.float().expand(-1, 3, -1, -1) * 2 - 1, colour.float(), out.float()]
            label = scheme.label(group)
            labels += [f"A {label}", f"C {label}", label]
        return torch.stack(tiles, dim=1), labels, None
