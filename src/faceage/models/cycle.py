"""The cycle age-modulator GAN (issue #19): two encoder -> age modulator -> decoder generators and an age classifier.

After the "Face-Aging" TensorFlow GAN on UTKFace (14 age groups). The forward generator ``G`` turns face ``x``
(age group ``s``) into ``x1 = G(x, t)`` at a target group ``t != s``; the backward generator ``G_back`` turns it
back, ``x2 = G_back(x1, s)``. Each generator is

* an **encoder** (:class:`Encoder`): downsampling residual blocks, each followed by instance normalisation, to
  a spatial identity code (8x8 at 128 px). Instance normalisation takes each channel's per-face mean and scale
  out of the code; the decoder's AdaIN layers put them back from the target age;
* an **age modulator** (:class:`AgeModulator`): the target's condition vector (:func:`two_hot`, so float group
  positions interpolate) sets the gain and shift of a conditional instance normalisation of the identity code;
  a convolution and average pooling make that an age feature vector, personal to the face;
* a **decoder** (:class:`Decoder`): residual upsampling blocks whose AdaIN layers take their gain and shift
  from the age feature vector, from the identity code back to an image.

The discriminator (:class:`AgeDiscriminator`) is a 14-way age-group classifier trained on real faces' source
groups, plus a real/fake head used when ``w_adv > 0``. Generator losses: the classifier's cross-entropy on
``x1`` toward ``t`` (age), L1 of ``x2`` to ``x`` (cycle), the distance between the forward encoder's codes of
``x`` and ``x1`` (identity), with ``w_adv > 0`` the non-saturating adversarial term and, with ``w_rec > 0``,
L1 of ``G(x, s)``, the face at its own age, to ``x`` (reconstruction).

Defects of the original fixed here: its AdaIN took the style's mean and standard deviation over a 1x1 map, a
standard deviation of zero, so the age feature never modulated the decoder — here a learned affine map of the
age feature gives each AdaIN layer its gain and shift; and its classifier was trained with the squared error
between a softmax and integer labels — here with cross-entropy. Not in the original: the real/fake head
(``w_adv``), on by default, because a classifier alone can be satisfied by colour cues no real face has; and
the reconstruction term (``w_rec``, on in the preset). Without it a 3,275-step run at 128 px collapsed: the
forward generator drew one face per target whatever the input, its encoder gave every face nearly the same
code (the identity term, which compares the encoder with itself, fell to 0.07), and the backward generator
still recovered a blurred ``x`` from signals hidden in ``x1``. Reconstructing ``x`` through ``G``'s own code
makes the code carry the face, so the identity term measures something.

Also not in the original: ``age_sigma``, label distributions for both age terms (a Gaussian of that width, in
groups, around the label, as DLDL does for ages). UTKFace's train split has 48 faces of 91-100 and 12 over 100.
With one-hot labels the classifier learns those few people rather than great age, and a generator asked to be
certain of their groups draws them: after 12,000 steps every face sent to 91-100 or 101+ became one blurred
face (7-9% verified by dlib), judged younger than the 81-90 outputs. With ``age_sigma`` the oldest groups also
learn from the 71-90 faces, and the generator's pull stops at a graded verdict instead of a certain one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from faceage import losses
from faceage.critics import CriticWeights
from faceage.groups import AgeScheme
from faceage.models.base import FaceAgingModel, Phase
from faceage.models.registry import register_model
from faceage.nn.layers import (
    AdaIN,
    AdaINResBlock,
    DownBlock,
    EqualConv2d,
    EqualLinear,
    channels_last_grad,
    instance_norm,
    leaky_relu,
    two_hot,
)


@dataclass
class CycleConfig(CriticWeights):
    """The cycle GAN's architecture and loss weights; saved as ``model_config`` with every checkpoint and export.

    The frozen critics' weights (``w_age``, ``w_face_id``, ``w_gender``; off by default, not in the original)
    come from :class:`CriticWeights`."""

    resume_tunable: ClassVar[frozenset[str]] = frozenset({"age_sigma"})  # may change on --resume, like w_*

    image_size: int = 128  # filled in from the training config
    num_groups: int = 14  # filled in from the age scheme
    channels: int = 16  # per unit of downsampling factor: image_size / 2**k has channels * 2**k, up to max_channels
    max_channels: int = 256
    downsamples: int = 4  # the identity code has resolution image_size / 2**downsamples
    bottleneck_blocks: int = 1  # AdaIN residual blocks at the identity code's resolution
    style_dim: int = 128  # size of the age feature vector
    shared: bool = False  # one generator for both directions instead of a forward and a backward one
    d_channels: int = 16  # same rule for the discriminator
    d_max_channels: int = 128
    w_cls: float = 1.0  # the age classifier's cross-entropy on x1 toward the target group
    age_sigma: float = 0.0  # > 0: both age terms aim at a Gaussian over neighbouring groups (see the docstring)
    w_cyc: float = 1.0
    w_id: float = 1.0
    w_adv: float = 1.0  # the real/fake head (not in the original); 0 trains the age classifier alone
    w_rec: float = 0.0  # L1 of G(x, source) to x (not in the original; see the module docstring)

    def __post_init__(self) -> None:
        size = self.image_size
        if size < 16 or size & (size - 1):
            raise ValueError(f"cycle image_size must be a power of two >= 16, got {size}")
        if not 2 <= self.downsamples <= int(math.log2(size)) - 2:
            raise ValueError(
                f"cycle downsamples must be in 2..{int(math.log2(size)) - 2} at {size}px, got {self.downsamples}"
            )
        self.check_critics(self.num_groups)
        if self.num_groups < 2:
            raise ValueError(f"cycle needs at least two age groups, got num_groups={self.num_groups}")

    def enc_channels(self, level: int) -> int:
        """Channels of the encoder/decoder features at ``image_size / 2**level``."""
        return min(self.channels * 2**level, self.max_channels)


class Encoder(nn.Module):
    """A 4x4 stride-2 convolution to half resolution, then downsampling residual blocks, each instance-normalised:
    ``x [B,3,S,S] -> identity code [B, C, S / 2**downsamples, S / 2**downsamples]``."""

    def __init__(self, cfg: CycleConfig) -> None:
        super().__init__()
        self.stem = EqualConv2d(3, cfg.enc_channels(1), 4, stride=2, padding=1)
        self.blocks = nn.ModuleList(
            DownBlock(cfg.enc_channels(level), cfg.enc_channels(level + 1)) for level in range(1, cfg.downsamples)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = leaky_relu(self.stem(x))
        for block in self.blocks:
            h = instance_norm(block(h))
        return h


class AgeModulator(nn.Module):
    """``(identity code, target) -> age feature [B, style_dim]``: a conditional instance norm of the code by the
    target's two-hot vector, a 3x3 convolution, average pooling and a linear map.

    The convolution and its nonlinearity sit between the norm and the pooling because the spatial mean of a
    conditionally normalised map is exactly its shift: pooled directly, the feature would be the target's
    alone, the same for every face.
    """

    def __init__(self, cfg: CycleConfig) -> None:
        super().__init__()
        c = cfg.enc_channels(cfg.downsamples)
        self.num_groups = cfg.num_groups
        self.norm = AdaIN(c, cfg.num_groups)
        self.conv = EqualConv2d(c, c, 3)
        self.out = EqualLinear(c, cfg.style_dim)

    def forward(self, code: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        h = leaky_relu(self.norm(code, two_hot(target, self.num_groups)))
        h = channels_last_grad(leaky_relu(self.conv(h)))
        return self.out(h.float().mean(dim=(2, 3)))


class Decoder(nn.Module):
    """AdaIN residual blocks styled by the age feature: the identity code back up to half resolution, then 2x
    nearest upsampling, a 3x3 convolution to RGB and ``tanh``."""

    def __init__(self, cfg: CycleConfig) -> None:
        super().__init__()
        c, bottom = cfg.enc_channels, cfg.downsamples
        self.bottleneck = nn.ModuleList(
            AdaINResBlock(c(bottom), c(bottom), cfg.style_dim, up=False) for _ in range(cfg.bottleneck_blocks)
        )
        self.ups = nn.ModuleList(
            AdaINResBlock(c(level + 1), c(level), cfg.style_dim) for level in reversed(range(1, bottom))
        )
        self.to_rgb = EqualConv2d(c(1), 3, 3)

    def forward(self, code: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        h = code
        for block in [*self.bottleneck, *self.ups]:
            h = block(h, style)
        rgb = self.to_rgb(F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return torch.tanh(rgb.to(torch.float32, memory_format=torch.contiguous_format))


class CycleGenerator(nn.Module):
    """``G(x [B,3,S,S] in [-1,1], target [B] float group positions or int64 groups) -> [B,3,S,S] in [-1,1]``."""

    def __init__(self, cfg: CycleConfig) -> None:
        super().__init__()
        self.encoder = Encoder(cfg)
        self.modulator = AgeModulator(cfg)
        self.decoder = Decoder(cfg)
        self.image_size = cfg.image_size
        side = cfg.image_size >> cfg.downsamples
        self.code_shape = (cfg.enc_channels(cfg.downsamples), side, side)

    def forward(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x), target)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The identity code of faces ``x``."""
        s = self.image_size
        if x.ndim != 4 or tuple(x.shape[1:]) != (3, s, s):  # a user's tensor: a clear error even under python -O
            raise ValueError(f"cycle expects [B, 3, {s}, {s}] images in [-1, 1], got shape {tuple(x.shape)}")
        return self.encoder(x)

    def decode(self, code: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The face of identity ``code`` at age group position ``target``."""
        assert tuple(code.shape[1:]) == self.code_shape, code.shape
        assert target.shape == code.shape[:1], (target.shape, code.shape)
        return self.decoder(code, self.modulator(code, target))


class AgeDiscriminator(nn.Module):
    """``D(x) -> (age-group logits [B, num_groups], real/fake logit [B])``: a residual trunk down to 4x4, a fully
    connected layer and two heads. No batch statistics, so reals and fakes can share one batch."""

    def __init__(self, cfg: CycleConfig) -> None:
        super().__init__()

        def c(level: int) -> int:
            return min(cfg.d_channels * 2**level, cfg.d_max_channels)

        levels = int(math.log2(cfg.image_size // 4))
        self.stem = EqualConv2d(3, c(1), 4, stride=2, padding=1)
        self.blocks = nn.Sequential(*(DownBlock(c(level), c(level + 1)) for level in range(1, levels)))
        self.fc = EqualLinear(c(levels) * 16, c(levels))
        self.age = EqualLinear(c(levels), cfg.num_groups)
        self.real = EqualLinear(c(levels), 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = channels_last_grad(self.blocks(leaky_relu(self.stem(x))))
        h = leaky_relu(self.fc(h.flatten(1)))
        return self.age(h), self.real(h).squeeze(1)


@register_model("cycle")
class CycleGAN(FaceAgingModel):
    """The forward generator (``self.generator``, exported), the backward one (``self.generator_back``, absent
    when ``shared``) and the age discriminator; see the module docstring."""

    config_class = CycleConfig

    def __init__(self, config: CycleConfig) -> None:
        super().__init__(config)
        self.generator = CycleGenerator(config)
        if not config.shared:
            self.generator_back = CycleGenerator(config)
        self.discriminator = AgeDiscriminator(config)

    @classmethod
    def build_generator(cls, model_config: dict) -> CycleGenerator:
        return CycleGenerator(cls.make_config(model_config))

    @property
    def backward_generator(self) -> CycleGenerator:
        """The generator that turns a result back to its source age: ``generator`` itself when ``shared``."""
        return self.generator if self.config.shared else self.generator_back

    @property
    def generator_names(self) -> tuple[str, ...]:
        return ("generator",) if self.config.shared else ("generator", "generator_back")

    def optimizers(self, lr: float, betas: tuple[float, float]) -> dict[str, torch.optim.Optimizer]:
        """One Adam over both generators (the cycle loss couples them) and one for the discriminator."""
        networks = self.networks()

        def adam(params: list[nn.Parameter]) -> torch.optim.Optimizer:
            return torch.optim.Adam(params, lr=lr, betas=tuple(map(float, betas)), fused=True)

        generators = [p for name in self.generator_names for p in networks[name].parameters()]
        return {"generator": adam(generators), "discriminator": adam(list(self.discriminator.parameters()))}

    def train_step(self, batch: dict[str, torch.Tensor], step: int) -> list[Phase]:
        """Generator phase (both generators), then discriminator phase on the reals and the detached ``x1``."""
        cfg = self.config
        x, source = batch["image"], batch["group"]
        target = self.sample_targets(source)
        out: dict[str, torch.Tensor] = {}

        def generator_loss() -> dict[str, torch.Tensor]:
            G, back = self.generator, self.backward_generator
            code = G.encode(x)
            x1 = G.decode(code, target.float())
            code1 = G.encode(x1)
            x2 = back.decode(code1 if cfg.shared else back.encode(x1), source.float())
            out["x1"] = x1.detach()
            age_logits, real_logit = self.discriminator(x1)
            terms = {
                "g_age": losses.group_cross_entropy(age_logits, target, cfg.age_sigma),
                "cyc": losses.l1(x2, x),
                "id": losses.feature_consistency(code1, code),
            }
            total = cfg.w_cls * terms["g_age"] + cfg.w_cyc * terms["cyc"] + cfg.w_id * terms["id"]
            if cfg.w_rec > 0:
                terms["rec"] = losses.l1(G.decode(code, source.float()), x)
                total = total + cfg.w_rec * terms["rec"]
            if cfg.w_adv > 0:
                terms["g_adv"] = losses.generator_adversarial(real_logit)
                total = total + cfg.w_adv * terms["g_adv"]
            critic_terms = self.critic_terms(x, x1, target.float())
            if critic_terms:
                total = total + critic_terms.pop("critics")
                terms.update(critic_terms)
            return {"loss": total, **terms}

        def discriminator_loss() -> dict[str, torch.Tensor]:
            adversarial = cfg.w_adv > 0
            age_logits, real_logit = self.discriminator(torch.cat([x, out["x1"]]) if adversarial else x)
            terms = {"d_age": losses.group_cross_entropy(age_logits[: len(x)], source, cfg.age_sigma)}
            if adversarial:
                terms["d_adv"] = losses.discriminator_adversarial(real_logit[: len(x)], real_logit[len(x) :])
            return {"loss": sum(terms.values()), **terms}

        return [
            Phase("G", "generator", self.generator_names, generator_loss),
            Phase("D", "discriminator", ("discriminator",), discriminator_loss),
        ]

    @torch.no_grad()
    def sample_grid(
        self, generator: nn.Module, images: torch.Tensor, groups: torch.Tensor, scheme: AgeScheme
    ) -> tuple[torch.Tensor, list[str], list[str] | None]:
        """Each face, ``generator`` (the EMA forward generator) at every group, then the cycle: ``x1``, the face at
        the group farthest from its source, and ``x2``, ``x1`` turned back to the source.

        ``x2`` comes from ``generator`` when ``shared`` and from ``generator_back`` (not averaged: the loop keeps
        an EMA of the forward generator only) otherwise; ``groups`` are the faces' true source groups.
        """
        grid, labels, _ = super().sample_grid(generator, images, groups, scheme)
        n = scheme.num_groups
        far = torch.where(groups < n / 2, n - 1, 0)
        back = generator if self.config.shared else self.generator_back
        x1 = generator(images, far.float()).float()
        x2 = back(x1, groups.float()).float()
        return torch.cat([grid, torch.stack([x1, x2], dim=1)], dim=1), [*labels, "far age", "cycled"], None
