"""Age-cGAN: "Face Aging with Conditional Generative Adversarial Networks" (Antipov, Baccouche, Dugelay, ICIP 2017).

A conditional DCGAN at 64 px whose generator ``G(z, y)`` draws a face from a latent ``z`` (100-D, N(0, I)) and an
age condition ``y``, plus an encoder ``E(x) -> z`` that inverts it. Aging a photo is three steps:

1. **Stage 1** (``stage: 1``, :meth:`AgeCGAN.train_step`): train ``G`` and the conditional discriminator
   ``D(x, y)`` as a cGAN on faces and their age groups. Age is then disentangled from identity: one ``z`` at
   every ``y`` is one person at every age (the stage-1 sample grid shows exactly that).
2. **Stage 2** (``stage: 2``): ``G`` frozen, train ``E`` on ``G``'s own samples to give back their ``z``
   (squared Euclidean distance). The run starts from stage 1 with ``train.init_from: <stage-1 checkpoint>``.
3. **At inference** (:func:`optimise_latent`): start from ``z0 = E(x)`` and refine ``z`` so that
   ``G(z, y_source)`` reconstructs the face, in pixels or in a face recogniser's descriptor space ("identity
   preserving"), then decode at the target age: ``G(z*, y_target)``.

The exported network is :class:`AgeCGANGenerator`, holding ``decoder`` (= ``G``) and ``encoder`` (= ``E``):
``forward(x, target)`` runs all of step 3, ``encode_faces`` / ``render`` split it so that a caller refines each
face once and decodes it at every target. ``decoder`` and ``encoder`` are plain forward graphs (ONNX); the
refinement stays in Python.

Architecture (``g_channels: 256``, ``d_channels: 64``, ``e_channels: 32`` at 64 px):

* ``G``: ``[z, y]`` -> one linear map -> 8x8x256, BN, LeakyReLU(0.2) -> two (upsample x2, 5x5 conv, BN, LeakyReLU)
  blocks -> upsample x2, 5x5 conv to RGB, tanh.
* ``D``: 3x3 stride-2 convolutions 64 -> 128 -> 256 -> 512, BN from the second, LeakyReLU(0.2); ``y`` tiled over
  the 32x32 map and concatenated after the first; one real/fake logit.
* ``E``: 5x5 stride-2 convolutions 32 -> 64 -> 128 -> 256 (BN from the second), dense 512 (BN), dense 100.

What differs from the paper and the book's reference implementation, and why:

* ``G`` projects ``[z, y]`` with a single linear map, as DCGAN (which the paper follows) does; the reference
  puts a 2048-wide dense layer with dropout before it (33M parameters at 2048 -> 16384).
* ``E``'s hidden dense layer has 512 units, not 4096: the reference's 4096 x 4096 layer alone is 17M parameters
  (67 MB). With 512, ``G`` is 2.8M parameters (11.1 MB fp32) and ``E`` 3.2M (12.9 MB): 24.1 MB exported.
* ``G`` keeps BatchNorm, so at inference it normalises with running statistics (eval mode). The EMA generator
  the loop exports copies the live network's statistics (as BigGAN does). In stage 2 ``G`` stays in eval mode
  (:meth:`AgeCGAN.train`), so ``E`` learns to invert exactly the network used at inference and ``G``'s
  statistics do not move.
* ``D`` scores real and generated faces in separate passes: one batch of both would share BatchNorm statistics.
  Generated faces are conditioned on the batch's real age groups, so ``y``'s distribution tells ``D`` nothing.
* Losses are the non-saturating logistic ones of :mod:`faceage.losses`. One-sided label smoothing is done right:
  ``D``'s target for real faces is ``real_label`` (0.9; 1.0 turns it off), for generated ones 0, and ``G``'s
  target stays 1. The reference writes ``np.zeros(...) * 0.1`` for the fake labels, which is 0: the smoothing it
  ends up with is one-sided by accident, its apparent intent (fakes at 0.1) would have been the harmful kind.
* Stage 2 draws fresh ``(z, y)`` every step instead of a fixed set of 50K samples.
* The latent refinement runs ``latent_steps`` of Adam (the paper: L-BFGS-B); identity mode measures dlib's
  descriptor distance through its PyTorch port (:class:`faceage.face.resnet.DlibResNet`), the paper its own
  face-recognition network.
* The age condition is :func:`~faceage.nn.layers.two_hot`: training uses one-hot groups (the paper's ``y``), and a
  float position (37 years) interpolates between the two groups around it.
* The paper knows each photo's age; a user's photo has none. ``forward`` takes the input to be ``source_age``
  years old (29: the median age of UTKFace) unless ``encode_faces`` is given the source positions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from faceage import losses
from faceage.groups import AgeScheme
from faceage.models.base import FaceAgingModel, Phase
from faceage.models.registry import register_model
from faceage.nn.layers import leaky_relu, two_hot

if TYPE_CHECKING:  # imported where used: faceage.face takes a second to import, and plain decoding needs none of it
    from faceage.face.resnet import DlibResNet

LATENT_MODES = ("none", "pixel", "identity")


@dataclass
class AgeCGANConfig:
    """Age-cGAN's architecture, stage and inference knobs; saved as ``model_config`` with checkpoints and exports."""

    image_size: int = 64  # filled in from train.image_size
    num_groups: int = 6  # filled in from the age scheme
    group_ages: tuple[float, ...] = ()  # filled in from the age scheme: each group's representative age in years
    stage: int = 1  # 1: train G and D; 2: train E against the frozen G (start from stage 1 with train.init_from)
    z_dim: int = 100
    g_channels: int = 256  # G's width at its first map (image_size / 8); halved by each upsampling block
    d_channels: int = 64  # D's first convolution; doubled by each of the next three
    e_channels: int = 32  # E's first convolution; doubled by each of the next three
    e_hidden: int = 512  # E's hidden dense layer (the reference's 4096 would be 67 MB: see the module docstring)
    real_label: float = 0.9  # one-sided label smoothing: D's target for real faces (1.0: none)
    latent_mode: str = "pixel"  # inference: how z is fitted to a face from E(x): none, pixel or identity
    latent_steps: int = 50  # inference: Adam steps on z per face
    latent_lr: float = 0.05
    source_age: float = 29.0  # inference: the input's age in years when none is given (UTKFace's median age)

    def __post_init__(self) -> None:
        size = self.image_size
        if size < 16 or size & (size - 1):
            raise ValueError(f"Age-cGAN image_size must be a power of two >= 16, got {size}")
        if self.stage not in (1, 2):
            raise ValueError(f"Age-cGAN stage must be 1 (G and D) or 2 (E), got {self.stage}")
        if self.num_groups < 2:
            raise ValueError(f"Age-cGAN needs at least two age groups, got num_groups={self.num_groups}")
        if len(self.group_ages) != self.num_groups:
            raise ValueError(f"Age-cGAN needs group_ages for all {self.num_groups} groups, got {self.group_ages}")
        if self.g_channels < 4 or self.g_channels % 4:
            raise ValueError(f"Age-cGAN g_channels must be a positive multiple of 4, got {self.g_channels}")
        if not 0.0 < self.real_label <= 1.0:
            raise ValueError(f"Age-cGAN real_label must be in (0, 1], got {self.real_label}")
        _check_latent_knobs(self.latent_mode, self.latent_steps, self.latent_lr)


def _check_latent_knobs(mode: str, steps: int, lr: float) -> None:
    if mode not in LATENT_MODES:
        raise ValueError(f"unknown latent mode {mode!r}; known: {', '.join(LATENT_MODES)}")
    if steps < 0 or lr <= 0:
        raise ValueError(f"latent refinement needs steps >= 0 and lr > 0, got steps={steps}, lr={lr}")


def _down(in_ch: int, out_ch: int, kernel_size: int) -> nn.Sequential:
    """A stride-2 convolution (no bias: BatchNorm removes it), BatchNorm, LeakyReLU(0.2): D's and E's blocks."""
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel_size, stride=2, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.LeakyReLU(0.2),
    )


def _up(in_ch: int, out_ch: int) -> nn.Sequential:
    """Nearest upsampling x2, 5x5 convolution, BatchNorm, LeakyReLU(0.2): G's blocks."""
    return nn.Sequential(
        nn.Upsample(scale_factor=2.0, mode="nearest"),
        nn.Conv2d(in_ch, out_ch, 5, padding=2, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.LeakyReLU(0.2),
    )


class Decoder(nn.Module):
    """``G(z [B, z_dim], target [B] group positions) -> [B, 3, S, S]`` in [-1, 1]: the conditional DCGAN generator."""

    def __init__(self, cfg: AgeCGANConfig) -> None:
        super().__init__()
        self.z_dim, self.num_groups = cfg.z_dim, cfg.num_groups
        self.channels, self.start = cfg.g_channels, cfg.image_size // 8
        c = cfg.g_channels
        self.project = nn.Linear(cfg.z_dim + cfg.num_groups, c * self.start**2)
        self.norm = nn.BatchNorm2d(c)
        self.blocks = nn.Sequential(_up(c, c // 2), _up(c // 2, c // 4))
        self.to_rgb = nn.Sequential(nn.Upsample(scale_factor=2.0, mode="nearest"), nn.Conv2d(c // 4, 3, 5, padding=2))

    def forward(self, z: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        assert z.ndim == 2 and z.shape[1] == self.z_dim and target.shape == z.shape[:1], (z.shape, target.shape)
        h = self.project(torch.cat([z, two_hot(target, self.num_groups).to(z.dtype)], dim=1))
        h = leaky_relu(self.norm(h.view(-1, self.channels, self.start, self.start)))
        return torch.tanh(self.to_rgb(self.blocks(h)))


class Encoder(nn.Module):
    """``E(x [B, 3, S, S] in [-1, 1]) -> z0 [B, z_dim]``: the initial latent of a face."""

    def __init__(self, cfg: AgeCGANConfig) -> None:
        super().__init__()
        c, self.image_size = cfg.e_channels, cfg.image_size
        self.convs = nn.Sequential(
            nn.Conv2d(3, c, 5, stride=2, padding=2),
            nn.LeakyReLU(0.2),
            _down(c, 2 * c, 5),
            _down(2 * c, 4 * c, 5),
            _down(4 * c, 8 * c, 5),
        )
        self.head = nn.Sequential(
            nn.Linear(8 * c * (cfg.image_size // 16) ** 2, cfg.e_hidden),
            nn.BatchNorm1d(cfg.e_hidden),
            nn.LeakyReLU(0.2),
            nn.Linear(cfg.e_hidden, cfg.z_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.image_size
        if x.ndim != 4 or tuple(x.shape[1:]) != (3, s, s):  # a user's tensor: a clear error even under python -O
            raise ValueError(f"Age-cGAN expects [B, 3, {s}, {s}] images in [-1, 1], got shape {tuple(x.shape)}")
        return self.head(self.convs(x).flatten(1))


class ConditionalDiscriminator(nn.Module):
    """``D(x, target) -> [B]`` real/fake logits, with the age condition tiled over the first feature map."""

    def __init__(self, cfg: AgeCGANConfig) -> None:
        super().__init__()
        c, self.num_groups = cfg.d_channels, cfg.num_groups
        self.stem = nn.Conv2d(3, c, 3, stride=2, padding=1)
        self.trunk = nn.Sequential(_down(c + cfg.num_groups, 2 * c, 3), _down(2 * c, 4 * c, 3), _down(4 * c, 8 * c, 3))
        self.out = nn.Linear(8 * c * (cfg.image_size // 16) ** 2, 1)

    def forward(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        h = leaky_relu(self.stem(x))
        y = two_hot(target, self.num_groups).to(h.dtype)[:, :, None, None].expand(-1, -1, *h.shape[2:])
        return self.out(self.trunk(torch.cat([h, y], dim=1)).flatten(1)).squeeze(1)


class AgeCGANGenerator(nn.Module):
    """The exported inference network: ``decoder`` (G) and ``encoder`` (E), and the per-face latent refinement.

    ``forward(x, target)`` encodes, refines (``latent_mode``, ``latent_steps``, ``latent_lr``: attributes a caller
    may change) taking the input to be ``source_age`` years old, and decodes at ``target``. Callers with several
    targets per face use ``encode_faces`` once and ``render`` per target."""

    def __init__(self, cfg: AgeCGANConfig) -> None:
        super().__init__()
        self.decoder = Decoder(cfg)
        self.encoder = Encoder(cfg)
        self.latent_mode, self.latent_steps, self.latent_lr = cfg.latent_mode, cfg.latent_steps, cfg.latent_lr
        self.source_position = age_position(cfg.source_age, cfg.group_ages)

    def set_latent_fitting(self, mode: str | None = None, steps: int | None = None, lr: float | None = None) -> None:
        """Change how :meth:`encode_faces` fits each face's latent (None keeps that knob); a bad value fails here."""
        mode = self.latent_mode if mode is None else mode
        steps = self.latent_steps if steps is None else steps
        lr = self.latent_lr if lr is None else lr
        _check_latent_knobs(mode, steps, lr)
        self.latent_mode, self.latent_steps, self.latent_lr = mode, steps, lr

    def encode_faces(self, x: torch.Tensor, source_positions: torch.Tensor) -> torch.Tensor:
        """The latents [B, z_dim] of faces ``x`` whose ages are the group positions ``source_positions`` [B]."""
        recogniser = self.recogniser(x.device) if self.latent_mode == "identity" else None
        mode, steps, lr = self.latent_mode, self.latent_steps, self.latent_lr
        return optimise_latent(self, x, source_positions, mode=mode, steps=steps, lr=lr, recogniser=recogniser)

    def render(self, latents: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The faces of ``latents`` at the group positions ``targets`` [B]: [B, 3, S, S] in [-1, 1]."""
        return self.decoder(latents, targets)

    def forward(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        source = torch.full(target.shape, self.source_position, device=target.device)
        return self.render(self.encode_faces(x, source), target)

    def recogniser(self, device: torch.device) -> DlibResNet:
        """dlib's recogniser (PyTorch port) on ``device`` for identity mode, loaded on first use and kept out of the
        state dict. Built outside inference mode: its weights take part in the refinement's backward pass."""
        from faceage.face.resnet import DlibResNet

        net = getattr(self, "_recogniser", None)
        if net is None or net.fc.weight.device != device:
            with torch.inference_mode(False):
                net = DlibResNet.from_dlib().to(device)
            object.__setattr__(self, "_recogniser", net)
        return net


def age_position(age: float, group_ages: Sequence[float]) -> float:
    """The group position of an age in years: linear between the groups' representative ages, clamped to the ends."""
    return float(np.interp(age, group_ages, np.arange(len(group_ages))))


def pixel_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image mean squared difference [B]: the paper's pixelwise reconstruction distance."""
    return (a.float() - b.float()).square().flatten(1).mean(dim=1)


def descriptor_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image Euclidean distance [B] between face descriptors [B, D] (dlib: same person below 0.6)."""
    return ((a.float() - b.float()).square().sum(dim=1) + 1e-12).sqrt()


def latent_l2(estimate: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distance between latents [B, z_dim], mean over the batch: stage 2's loss for ``E``."""
    return (estimate.float() - z.float()).square().sum(dim=1).mean()


def optimise_latent(
    generator: AgeCGANGenerator,
    x: torch.Tensor,
    source_position: torch.Tensor,
    *,
    mode: str,
    steps: int,
    lr: float,
    recogniser: DlibResNet | None = None,
) -> torch.Tensor:
    """The latents [B, z_dim] of faces ``x`` [B, 3, S, S]: ``E(x)``, refined by ``steps`` of Adam on ``z`` so that
    ``G(z, source_position)`` reconstructs ``x`` (``mode`` "pixel": :func:`pixel_distance`; "identity": the
    ``recogniser``'s :func:`descriptor_distance`; "none": ``E(x)`` as it is).

    Works under an enclosing ``torch.inference_mode`` or ``no_grad`` (it leaves both for the refinement), in fp32
    whatever autocast is active. The generator must be in eval mode: BatchNorm then treats each face on its own."""
    _check_latent_knobs(mode, steps, lr)
    z0 = generator.encoder(x)
    if mode == "none" or steps == 0:
        return z0
    if generator.training:
        raise ValueError(
            "optimise_latent needs the generator in eval mode (generator.eval()): BatchNorm in training mode "
            "would mix the faces of a batch and move its running statistics"
        )
    if mode == "identity" and recogniser is None:
        raise ValueError("latent mode 'identity' needs a recogniser (e.g. generator.recogniser(device))")
    assert source_position.shape == x.shape[:1], (source_position.shape, x.shape)
    with torch.inference_mode(False), torch.enable_grad(), torch.autocast(x.device.type, enabled=False):
        # clones made here are ordinary tensors, which autograd may save (inference tensors it may not)
        target, y = x.detach().float().clone(), source_position.detach().float().clone()
        z = z0.detach().float().clone().requires_grad_(True)
        distance = _distance_to(target, mode, recogniser)
        optimizer = torch.optim.Adam([z], lr=lr)
        for _ in range(steps):
            # per-face distances summed: each face's z follows its own gradient, whatever the batch
            (z.grad,) = torch.autograd.grad(distance(generator.decoder(z, y)).sum(), z)
            optimizer.step()
    return z.detach()


def _distance_to(
    target: torch.Tensor, mode: str, recogniser: DlibResNet | None
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The per-image distance [B] of reconstructions to ``target`` that ``mode`` minimises."""
    if mode == "pixel":
        return lambda out: pixel_distance(out, target)
    from faceage.face.identity import to_chip

    with torch.no_grad():
        wanted = recogniser(to_chip(target)).float()
    return lambda out: descriptor_distance(recogniser(to_chip(out)), wanted)


@torch.no_grad()
def reconstructions(
    generator: AgeCGANGenerator,
    x: torch.Tensor,
    source: torch.Tensor,
    modes: Sequence[str] = LATENT_MODES,
    *,
    recogniser: DlibResNet | None = None,
) -> dict[str, torch.Tensor]:
    """``G(z, source)`` for the latent each refinement mode finds for faces ``x`` (``"none"``: ``z0 = E(x)``), with
    the generator's ``latent_steps`` and ``latent_lr``: what eval compares with ``x`` (the paper's verification
    rates of ``x`` against its reconstructions from ``z0``, ``z_pixel`` and ``z_IP``)."""
    out = {}
    for mode in modes:
        net = (recogniser or generator.recogniser(x.device)) if mode == "identity" else None
        z = optimise_latent(
            generator, x, source, mode=mode, steps=generator.latent_steps, lr=generator.latent_lr, recogniser=net
        )
        out[mode] = generator.render(z, source)
    return out


@register_model("agecgan")
class AgeCGAN(FaceAgingModel):
    """Age-cGAN's networks and training step for its ``stage``: G and D (1), or E against the frozen G (2)."""

    config_class = AgeCGANConfig

    def __init__(self, config: AgeCGANConfig) -> None:
        super().__init__(config)
        self.generator = AgeCGANGenerator(config)
        if config.stage == 1:
            self.discriminator = ConditionalDiscriminator(config)

    @classmethod
    def build_generator(cls, model_config: dict) -> AgeCGANGenerator:
        return AgeCGANGenerator(cls.make_config(model_config))

    def train(self, mode: bool = True) -> AgeCGAN:
        """In stage 2 ``G`` is frozen, BatchNorm statistics included: its decoder stays in eval mode."""
        super().train(mode)
        if self.config.stage == 2:
            self.generator.decoder.eval()
        return self

    def optimizers(self, lr: float, betas: tuple[float, float]) -> dict[str, torch.optim.Optimizer]:
        """Stage 1: ``generator`` (the decoder only) and ``discriminator``; stage 2: ``encoder`` alone."""

        def adam(net: nn.Module) -> torch.optim.Optimizer:
            return torch.optim.Adam(net.parameters(), lr=lr, betas=tuple(map(float, betas)), fused=True)

        if self.config.stage == 1:
            return {"generator": adam(self.generator.decoder), "discriminator": adam(self.discriminator)}
        return {"encoder": adam(self.generator.encoder)}

    def train_step(self, batch: dict[str, torch.Tensor], step: int) -> list[Phase]:
        return self._cgan_phases(batch) if self.config.stage == 1 else self._encoder_phases(batch, step)

    def _cgan_phases(self, batch: dict[str, torch.Tensor]) -> list[Phase]:
        """Generator phase (fakes at the batch's own age groups), then the discriminator on reals and those fakes."""
        x, y = batch["image"], batch["group"]
        z = torch.randn(len(x), self.config.z_dim, device=x.device)
        out: dict[str, torch.Tensor] = {}

        def generator_loss() -> dict[str, torch.Tensor]:
            fake = self.generator.decoder(z, y)
            out["fake"] = fake.detach()
            adv = losses.generator_adversarial(self.discriminator(fake, y))
            return {"loss": adv, "g_adv": adv}

        def discriminator_loss() -> dict[str, torch.Tensor]:
            # two passes: one batch of reals and fakes would share BatchNorm statistics
            real_logit, fake_logit = self.discriminator(x, y), self.discriminator(out["fake"], y)
            adv = losses.discriminator_adversarial(real_logit, fake_logit, self.config.real_label)
            return {"loss": adv, "d_adv": adv}

        return [
            Phase("G", "generator", ("generator",), generator_loss),
            Phase("D", "discriminator", ("discriminator",), discriminator_loss),
        ]

    def _encoder_phases(self, batch: dict[str, torch.Tensor], step: int) -> list[Phase]:
        """``E`` learns to give back the ``z`` of ``G(z, y)`` for fresh ``(z, y)``; the batch's faces are not used."""
        decoder = self.generator.decoder
        if step == 0 and int(decoder.norm.num_batches_tracked) == 0:  # checked once: reading it syncs a GPU
            raise ValueError(
                "Age-cGAN stage 2 trains E to invert a trained G, but this G never trained: start from a stage-1 "
                "run with train.init_from=<stage-1 run>/checkpoints/last.pt"
            )
        n, device = len(batch["image"]), batch["image"].device
        z = torch.randn(n, self.config.z_dim, device=device)
        y = torch.randint(0, self.config.num_groups, (n,), device=device)

        def encoder_loss() -> dict[str, torch.Tensor]:
            with torch.no_grad():
                fake = decoder(z, y)
            rec = latent_l2(self.generator.encoder(fake), z)
            return {"loss": rec, "z_rec": rec}

        return [Phase("E", "encoder", ("generator",), encoder_loss)]

    @torch.no_grad()
    def sample_grid(
        self, generator: nn.Module, images: torch.Tensor, groups: torch.Tensor, scheme: AgeScheme
    ) -> tuple[torch.Tensor, list[str], list[str] | None]:
        """Stage 1: fixed random latents (rows, labelled z1, z2, ...) at every age group: age apart from identity.
        Stage 2: each face, ``E``'s reconstruction at its own group and its aging
        (``z0``, unrefined)."""
        n, device = images.shape[0], images.device
        labels = scheme.labels
        if self.config.stage == 1:
            z = torch.randn(n, self.config.z_dim, generator=torch.Generator().manual_seed(0)).to(device)
            columns = []
        else:
            z = generator.encoder(images)
            columns, labels = [images, generator.render(z, groups.float()).float()], ["input", "E(x)", *labels]
        for group in range(scheme.num_groups):
            columns.append(generator.render(z, torch.full((n,), float(group), device=device)).float())
        rows = [f"z{i + 1}" for i in range(n)] if self.config.stage == 1 else None
        return torch.stack(columns, dim=1), labels, rows
