"""RAGAN: "Re-Aging GAN: Toward Personalized Face Age Transformation" (Makhmudkhujaev et al., ICCV 2021).

The generator ``G(x, y')`` turns face ``x`` into the same person at target age group ``y'``:

* **Identity encoder** ``Enc`` (:class:`IdentityEncoder`): an image-to-feature convolution followed by
  downsampling residual blocks, giving spatial identity features ``f_id = Enc(x)``.
* **Age modulator** ``AM`` (:class:`AgeModulator`): the target age embedding and the pooled identity
  features interact multiplicatively over several layers (high-order interactions), giving the
  personalised age-aware feature ``f_aw = AM(f_id, y')`` — how *this* person looks at age ``y'``.
* **Decoder** ``Dec`` (:class:`Decoder`): residual upsampling blocks whose convolutions are modulated by
  ``f_aw``, starting from ``f_id``. Encoder features are shared with the decoder at chosen resolutions
  so that age-unrelated content (background, hair, clothes) is carried through rather than redrawn.

One discriminator ``D`` (:class:`MultiTaskDiscriminator`) has a shared trunk and one real/fake output per
age group (multi-task); each image is judged by the output of its own group. Training losses
(:meth:`RAGAN.train_step`): adversarial on the target group's output; reconstruction when the target is
the source group; cycle consistency back to the source group; identity-feature consistency between
``Enc(x)`` and ``Enc(G(x, y'))``; a background term outside the face mask when batches carry ``"mask"``;
R1 on reals for ``D``.

Two simplifications against the paper, both forced by the generator contract ``G(x, target)``: the paper
masks ``f_id`` with a face-parsing mask inside the encoder, which would need a mask at inference time —
here the mask only enters the background loss; and the age condition is a learned embedding per group
(the paper feeds a noisy one-hot vector, equivalent up to the first linear layer).

One addition, off by default (``w_cls = 0``): an auxiliary classifier on ``D``'s trunk with one class per
age group plus one for generated faces (the K+1-class discriminator of semi-supervised GANs). ``D`` learns
to put real faces in their group and the generator's outputs in the extra class; ``G`` is asked to make its
output classified as the target group. On a CPU budget this gives the generator a dense age signal long
before the per-group real/fake heads have learned age. The extra class matters: a classifier trained on
real faces only was fooled by colour cues the generator painted (blue lips on children, yellow eyes on the
old), because nothing taught it that such cues come from the generator. The ``ragan_utk128`` preset turns
it on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from faceage import losses
from faceage.critics import CriticWeights
from faceage.models.base import FaceAgingModel, Phase, other_groups
from faceage.models.registry import register_model
from faceage.nn.layers import (
    AgeEmbedding,
    DownBlock,
    EqualConv2d,
    EqualLinear,
    ModulatedResBlock,
    channels_last_grad,
    leaky_relu,
)


@dataclass
class RAGANConfig(CriticWeights):
    """RAGAN's architecture and loss weights; saved as ``model_config`` with every checkpoint and export.

    The frozen critics' weights (``w_age``, ``w_face_id``, ``w_gender``) come from :class:`CriticWeights`."""

    image_size: int = 128  # filled in from the training config
    num_groups: int = 10  # filled in from the age scheme
    channels: int = 16  # per unit of downsampling factor: image_size / 2**k has channels * 2**k, up to max_channels
    max_channels: int = 256
    downsamples: int = 3  # f_id has resolution image_size / 2**downsamples
    bottleneck_blocks: int = 1  # modulated residual blocks at f_id's resolution
    skip_factors: tuple[int, ...] = (2, 4)  # encoder->decoder sharing at image_size / factor
    style_dim: int = 256  # size of the age-aware feature f_aw
    modulator_layers: int = 3  # multiplicative layers in AM: f_aw has interactions up to this order + 2
    to_rgb: str = "upsample"  # "upsample": 2x nearest, then 3x3 conv to RGB; "pixel_shuffle": sub-pixel conv
    # "direct": the decoder paints the output; "masked": out = x + M * (paint - x) with a change mask M in [0, 1]
    # from its own head, so what M leaves at 0 is the input exactly (w_mask: mean(M), w_mask_tv: TV(M))
    output: str = "direct"
    mask_bias: float = -2.0  # the change mask's initial logit: -2 starts it nearly closed (0.12), 0 half open
    d_channels: int = 16  # same rule for the discriminator
    d_max_channels: int = 128
    d_final_size: int = 4  # D's trunk downsamples to this resolution before its fully connected layer
    w_adv: float = 1.0
    w_rec: float = 10.0
    w_cyc: float = 10.0
    w_id: float = 1.0
    w_bg: float = 10.0
    w_cls: float = 0.0  # auxiliary (K+1)-class age classifier on D's trunk (not in the paper; see module docstring)
    r1_gamma: float = 1.0
    r1_every: int = 16  # lazy R1 (StyleGAN2): applied every k steps, scaled by k
    same_group_fraction: float = 0.25  # share of a batch whose target is its own group (reconstruction)
    continuous_targets: bool = False  # other targets drawn uniformly over positions [0, num_groups - 1], not groups
    w_mask: float = 0.0
    w_mask_tv: float = 0.0
    w_chroma: float = 0.0  # L1 of the output's chroma change (Cb, Cr) against the input: no painted colour

    def __post_init__(self) -> None:
        size = self.image_size
        if size < 16 or size & (size - 1):
            raise ValueError(f"RAGAN image_size must be a power of two >= 16, got {size}")
        if not 2 <= self.downsamples <= int(math.log2(size)) - 2:
            raise ValueError(f"RAGAN downsamples must be in 2..{int(math.log2(size)) - 2} at {size}px")
        valid = [2**i for i in range(1, self.downsamples)]
        if any(f not in valid for f in self.skip_factors):
            raise ValueError(f"RAGAN skip_factors {self.skip_factors} must be among {valid}")
        if self.to_rgb not in ("upsample", "pixel_shuffle"):
            raise ValueError(f"RAGAN to_rgb must be 'upsample' or 'pixel_shuffle', got {self.to_rgb!r}")
        if self.d_final_size not in (4, 8):
            raise ValueError(f"RAGAN d_final_size must be 4 or 8, got {self.d_final_size}")
        if self.num_groups < 2:
            raise ValueError(f"RAGAN needs at least two age groups, got num_groups={self.num_groups}")
        if self.output not in ("direct", "masked"):
            raise ValueError(f"RAGAN output must be 'direct' or 'masked', got {self.output!r}")
        self.check_critics(self.num_groups)

    def enc_channels(self, level: int) -> int:
        """Channels of the encoder/decoder features at ``image_size / 2**level``."""
        return min(self.channels * 2**level, self.max_channels)


class IdentityEncoder(nn.Module):
    """``Enc``: image-to-feature convolution, then downsampling residual blocks, giving ``f_id``.

    The image-to-feature step is a 4x4 stride-2 convolution, so no wide feature map ever exists at full
    resolution — the single largest saving on CPUs. Also returns the features at the resolutions shared
    with the decoder.
    """

    def __init__(self, cfg: RAGANConfig) -> None:
        super().__init__()
        self.stem = EqualConv2d(3, cfg.enc_channels(1), 4, stride=2, padding=1)
        self.blocks = nn.ModuleList(
            DownBlock(cfg.enc_channels(level), cfg.enc_channels(level + 1)) for level in range(1, cfg.downsamples)
        )
        self.skip_factors = cfg.skip_factors

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        h = leaky_relu(self.stem(x))
        shared = {}
        for level, block in enumerate(self.blocks, start=1):
            if 2**level in self.skip_factors:
                shared[2**level] = h
            h = block(h)
        return channels_last_grad(h), shared


class AgeModulator(nn.Module):
    """``AM``: personalised age-aware features ``f_aw`` from the target age and the pooled identity.

    With ``p`` the pooled identity code and ``a`` the target-age code,
    ``h_0 = p * a`` and ``h_k = norm(h_{k-1} + (U_k a + V_k p) * W_k h_{k-1})``: every layer multiplies
    in age and identity once more, so ``f_aw = h_K`` holds products of age and identity up to order
    ``K + 2`` (a polynomial network in the style of Pi-nets). This is what makes the age features
    personal: the same target age yields different modulations for different faces. Each decoder layer's
    own affine map then turns ``f_aw`` into its modulation parameters.
    """

    def __init__(self, cfg: RAGANConfig) -> None:
        super().__init__()
        dim = cfg.style_dim
        self.identity = EqualLinear(cfg.enc_channels(cfg.downsamples), dim)
        self.age = AgeEmbedding(cfg.num_groups, dim)
        self.gate_age = nn.ModuleList(EqualLinear(dim, dim, bias_init=1.0) for _ in range(cfg.modulator_layers))
        self.gate_identity = nn.ModuleList(EqualLinear(dim, dim) for _ in range(cfg.modulator_layers))
        self.mix = nn.ModuleList(EqualLinear(dim, dim) for _ in range(cfg.modulator_layers))

    def forward(self, f_id: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        p = self.identity(f_id.float().mean(dim=(2, 3)))
        a = self.age(target)
        h = _rms_norm(p * a)
        for gate_age, gate_identity, mix in zip(self.gate_age, self.gate_identity, self.mix, strict=True):
            h = _rms_norm(h + (gate_age(a) + gate_identity(p)) * mix(h))
        return h


def _rms_norm(h: torch.Tensor) -> torch.Tensor:
    return h * torch.rsqrt(h.float().square().mean(dim=1, keepdim=True) + 1e-8).to(h.dtype)


class Decoder(nn.Module):
    """``Dec``: residual blocks modulated by ``f_aw``, upsampling ``f_id`` back to an image.

    Shared encoder features are added (through a 1x1 convolution) after the block that reaches their
    resolution. The half-resolution features become RGB in one of two ways (``to_rgb``): a sub-pixel
    convolution (``pixel_shuffle``: a 3x3 convolution to 12 channels whose channels are each site's 2x2 RGB
    pixels, so nothing wider than RGB exists at full resolution), or 2x nearest upsampling and a 3x3
    convolution (``upsample``). Not a stride-2 transposed convolution, whose uneven overlap paints
    checkerboards; ``tanh`` maps the result into [-1, 1].
    """

    def __init__(self, cfg: RAGANConfig) -> None:
        super().__init__()
        c = cfg.enc_channels
        bottom = cfg.downsamples
        self.bottleneck = nn.ModuleList(
            ModulatedResBlock(c(bottom), c(bottom), cfg.style_dim, up=False) for _ in range(cfg.bottleneck_blocks)
        )
        self.levels = list(reversed(range(1, bottom)))
        self.ups = nn.ModuleList(ModulatedResBlock(c(level + 1), c(level), cfg.style_dim) for level in self.levels)
        self.shared = nn.ModuleDict(
            {str(f): EqualConv2d(c(int(math.log2(f))), c(int(math.log2(f))), 1) for f in cfg.skip_factors}
        )
        self.pixel_shuffle = cfg.to_rgb == "pixel_shuffle"
        if self.pixel_shuffle:
            # Sub-pixel convolution: 12 channels at half resolution become the 2x2 RGB pixels of each site.
            # The four sub-pixels start with the same kernel (ICNR), so the output starts free of checkerboards.
            self.to_rgb = EqualConv2d(c(1), 12, 3)
            with torch.no_grad():
                self.to_rgb.weight.copy_(self.to_rgb.weight[::4].repeat_interleave(4, dim=0))
        else:
            self.to_rgb = EqualConv2d(c(1), 3, 3)
        if cfg.output == "masked":
            # The change mask starts at sigmoid(mask_bias) everywhere; training opens it where age shows.
            self.to_mask = EqualConv2d(c(1), 4 if self.pixel_shuffle else 1, 3)
            nn.init.constant_(self.to_mask.bias, cfg.mask_bias)

    def forward(
        self, f_id: torch.Tensor, shared: dict[int, torch.Tensor], f_aw: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(painted image [B,3,S,S] in [-1,1], change mask [B,1,S,S] in [0,1] or None)``."""
        h = f_id
        for block in self.bottleneck:
            h = block(h, f_aw)
        for level, block in zip(self.levels, self.ups, strict=True):
            h = block(h, f_aw)
            if str(2**level) in self.shared:
                h = h + self.shared[str(2**level)](shared[2**level])
        # tanh in fp32 and standard layout: bf16 tanh has no fast CPU kernel, and 3-channel images are
        # handled fastest (and their gradients summed fastest) in NCHW.
        if self.pixel_shuffle:
            rgb = F.pixel_shuffle(self.to_rgb(h), 2)
            mask = F.pixel_shuffle(self.to_mask(h), 2) if hasattr(self, "to_mask") else None
        else:
            h = F.interpolate(h, scale_factor=2.0, mode="nearest")
            rgb = self.to_rgb(h)
            mask = self.to_mask(h) if hasattr(self, "to_mask") else None
        paint = torch.tanh(rgb.to(torch.float32, memory_format=torch.contiguous_format))
        if mask is not None:
            mask = torch.sigmoid(mask.to(torch.float32, memory_format=torch.contiguous_format))
        return paint, mask


class RAGANGenerator(nn.Module):
    """``G = Dec(Enc(x), AM(Enc(x), y'))``: ``G(x [B,3,S,S] in [-1,1], target int64 [B]) -> [B,3,S,S]``."""

    def __init__(self, cfg: RAGANConfig) -> None:
        super().__init__()
        self.encoder = IdentityEncoder(cfg)
        self.modulator = AgeModulator(cfg)
        self.decoder = Decoder(cfg)
        self.image_size = cfg.image_size

    def forward(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.decode(*self.encode(x), target, x)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """``f_id`` and the encoder features shared with the decoder."""
        s = self.image_size
        if x.ndim != 4 or tuple(x.shape[1:]) != (3, s, s):  # a user's tensor: a clear error even under python -O
            raise ValueError(f"RAGAN expects [B, 3, {s}, {s}] images in [-1, 1], got shape {tuple(x.shape)}")
        return self.encoder(x)

    def decode(
        self, f_id: torch.Tensor, shared: dict[int, torch.Tensor], target: torch.Tensor, x: torch.Tensor
    ) -> torch.Tensor:
        """The image of identity ``f_id`` (encoded from ``x``) at age position ``target``."""
        return self.decode_with_mask(f_id, shared, target, x)[0]

    def decode_with_mask(
        self, f_id: torch.Tensor, shared: dict[int, torch.Tensor], target: torch.Tensor, x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The output and the change mask (None for ``output: direct``): ``x + M * (paint - x)``."""
        paint, mask = self.decoder(f_id, shared, self.modulator(f_id, target))
        if mask is None:
            return paint, None
        return x.float() + mask * (paint - x.float()), mask


class MultiTaskDiscriminator(nn.Module):
    """``D``: a shared residual trunk with one real/fake logit per age group, and age-group class logits.

    ``D(x, group) -> (real/fake logit of each image's own group [B], class logits [B, num_groups + 1])``;
    the last class is "generated". The trunk downsamples to ``d_final_size``; an 8x8 map is average-pooled
    to the 4x4 the fully connected layer reads (convolutions on 4x4 maps gain nothing from bf16 on CPUs).
    """

    def __init__(self, cfg: RAGANConfig) -> None:
        super().__init__()

        def c(level: int) -> int:
            return min(cfg.d_channels * 2**level, cfg.d_max_channels)

        levels = int(math.log2(cfg.image_size // cfg.d_final_size))
        self.stem = EqualConv2d(3, c(1), 4, stride=2, padding=1)  # to half resolution, as in the encoder
        self.blocks = nn.Sequential(*(DownBlock(c(level), c(level + 1)) for level in range(1, levels)))
        self.conv = EqualConv2d(c(levels), c(levels), 3)
        self.fc = EqualLinear(c(levels) * 16, c(levels))
        self.out = EqualLinear(c(levels), cfg.num_groups)
        self.age = EqualLinear(c(levels), cfg.num_groups + 1)

    def forward(self, x: torch.Tensor, group: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.blocks(leaky_relu(self.stem(x)))
        h = leaky_relu(self.conv(h))
        if h.shape[-1] > 4:
            h = F.avg_pool2d(h, h.shape[-1] // 4)  # the fully connected layer reads 4x4 sites
        h = channels_last_grad(h).flatten(1)
        h = leaky_relu(self.fc(h))
        logits = self.out(h)  # [B, num_groups]: one real/fake task per group
        return logits.gather(1, group[:, None]).squeeze(1), self.age(h)


@register_model("ragan")
class RAGAN(FaceAgingModel):
    """RAGAN's generator, discriminator and training step (see the module docstring for the paper's terms)."""

    config_class = RAGANConfig

    def __init__(self, config: RAGANConfig) -> None:
        super().__init__(config)
        self.generator = RAGANGenerator(config)
        self.discriminator = MultiTaskDiscriminator(config)

    @classmethod
    def build_generator(cls, model_config: dict) -> RAGANGenerator:
        return RAGANGenerator(cls.make_config(model_config))

    def train_step(self, batch: dict[str, torch.Tensor], step: int) -> list[Phase]:
        """Generator phase, then discriminator phase (scoring the generator phase's fakes, detached), and
        every ``r1_every`` steps a lazy R1 phase. The cycle and identity terms share one encoding of the fake."""
        cfg = self.config
        x, source = batch["image"], batch["group"]
        target = self.sample_targets(source)  # float positions
        target_group = target.round().long()  # the discriminator's task and class for the output
        out: dict[str, torch.Tensor] = {}

        def generator_loss() -> dict[str, torch.Tensor]:
            G = self.generator
            f_id, shared = G.encode(x)
            fake, mask = G.decode_with_mask(f_id, shared, target, x)
            f_fake, shared_fake = G.encode(fake)
            cycled = G.decode(f_fake, shared_fake, source.float(), fake)
            out["fake"] = fake.detach()
            fake_logit, fake_age = self.discriminator(fake, target_group)
            terms = {
                "g_adv": losses.generator_adversarial(fake_logit),
                "rec": losses.selected_l1(fake, x, target_group == source),
                "cyc": losses.l1(cycled, x),
                "id": losses.feature_consistency(f_fake, f_id),
            }
            total = cfg.w_adv * terms["g_adv"] + cfg.w_rec * terms["rec"] + cfg.w_cyc * terms["cyc"]
            total = total + cfg.w_id * terms["id"]
            if cfg.w_cls > 0:
                terms["g_cls"] = F.cross_entropy(fake_age.float(), target_group)
                total = total + cfg.w_cls * terms["g_cls"]
            if "mask" in batch:
                terms["bg"] = losses.masked_l1(fake, x, 1.0 - batch["mask"])
                total = total + cfg.w_bg * terms["bg"]
            if cfg.w_chroma > 0:
                terms["chroma"] = losses.chroma_change(fake, x)
                total = total + cfg.w_chroma * terms["chroma"]
            if mask is not None:
                terms["mask"], terms["mask_tv"] = mask.mean(), losses.total_variation(mask)
                total = total + cfg.w_mask * terms["mask"] + cfg.w_mask_tv * terms["mask_tv"]
            critic_terms = self.critic_terms(x, fake, target)
            if critic_terms:
                total = total + critic_terms.pop("critics")
                terms.update(critic_terms)
            return {"loss": total, **terms}

        def discriminator_loss() -> dict[str, torch.Tensor]:
            # Reals and fakes in one batch: D has no batch statistics, so this is two passes' arithmetic in
            # one, with half the kernel launches and larger, more efficient convolutions.
            logit, age = self.discriminator(torch.cat([x, out["fake"]]), torch.cat([source, target_group]))
            (real_logit, fake_logit), (real_age, fake_age) = logit.chunk(2), age.chunk(2)
            terms = {"d_adv": losses.discriminator_adversarial(real_logit, fake_logit)}
            total = terms["d_adv"]
            if cfg.w_cls > 0:
                generated = torch.full_like(target_group, cfg.num_groups)  # the extra class
                real_cls = F.cross_entropy(real_age.float(), source)
                terms["d_cls"] = real_cls + F.cross_entropy(fake_age.float(), generated)
                total = total + cfg.w_cls * terms["d_cls"]
            return {"loss": total, **terms}

        def r1_loss() -> dict[str, torch.Tensor]:
            real = x.detach().requires_grad_(True)
            penalty = losses.r1_penalty(self.discriminator(real, source)[0], real)
            return {"loss": penalty * (cfg.r1_gamma / 2 * cfg.r1_every), "r1": penalty}

        phases = [
            Phase("G", "generator", ("generator",), generator_loss),
            Phase("D", "discriminator", ("discriminator",), discriminator_loss),
        ]
        if cfg.r1_gamma > 0 and step % cfg.r1_every == 0:
            phases.append(Phase("D_r1", "discriminator", ("discriminator",), r1_loss))
        return phases

    def sample_targets(self, source: torch.Tensor) -> torch.Tensor:
        """Float target positions: the source group for a ``same_group_fraction`` of the batch, another group
        otherwise (with ``continuous_targets``, any position at least half a group away from the source)."""
        n = self.config.num_groups
        if self.config.continuous_targets:
            other = torch.rand(source.shape, device=source.device) * (n - 1)
            near = (other - source.float()).abs() < 0.5
            other = torch.where(near, (other + n / 2) % (n - 1), other)
        else:
            other = other_groups(source, n).float()
        same = torch.rand(source.shape, device=source.device) < self.config.same_group_fraction
        return torch.where(same, source.float(), other)
