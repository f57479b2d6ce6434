"""Loss terms as small pure functions of tensors; their weights come from each method's config."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def generator_adversarial(fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating generator loss: ``softplus(-D(G(x)))``, mean over the batch."""
    return F.softplus(-fake_logits.float()).mean()


def discriminator_adversarial(
    real_logits: torch.Tensor, fake_logits: torch.Tensor, real_target: float = 1.0
) -> torch.Tensor:
    """Logistic discriminator loss: ``softplus(-D(real)) + softplus(D(fake))``, mean over the batch.

    ``real_target`` below 1 is one-sided label smoothing (Salimans et al. 2016; 0.9 in Age-cGAN): binary
    cross-entropy of real logits towards ``t`` is ``softplus(-l) + (1 - t) * l``; fakes stay at 0."""
    real = real_logits.float()
    return F.softplus(-real).mean() + (1.0 - real_target) * real.mean() + F.softplus(fake_logits.float()).mean()


def r1_penalty(real_logits: torch.Tensor, real_images: torch.Tensor) -> torch.Tensor:
    """R1 (Mescheder et al. 2018): squared gradient norm of D on real images, mean over the batch.

    ``real_images`` must have ``requires_grad`` set before ``real_logits`` were computed from them.
    """
    (grad,) = torch.autograd.grad(real_logits.float().sum(), real_images, create_graph=True)
    return grad.float().square().sum(dim=(1, 2, 3)).mean()


def l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference (reconstruction and cycle terms)."""
    return (a.float() - b.float()).abs().mean()


def selected_l1(a: torch.Tensor, b: torch.Tensor, selected: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference over the samples where ``selected`` [B] is true; 0 when none are."""
    per_sample = (a.float() - b.float()).abs().flatten(1).mean(dim=1)
    weight = selected.float()
    return (per_sample * weight).sum() / weight.sum().clamp(min=1.0)


def feature_consistency(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """L1 between two feature maps after each is divided by its per-sample RMS.

    The normalisation keeps an encoder from satisfying the term by shrinking its features towards zero.
    """
    a, b = a.float().flatten(1), b.float().flatten(1)
    a = a * torch.rsqrt(a.square().mean(dim=1, keepdim=True) + 1e-8)
    b = b * torch.rsqrt(b.square().mean(dim=1, keepdim=True) + 1e-8)
    return (a - b).abs().mean()


def masked_l1(a: torch.Tensor, b: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference weighted per pixel by ``weight`` [B,1,H,W] in [0,1] (e.g. 1 - face mask)."""
    diff = (a.float() - b.float()).abs().mean(dim=1, keepdim=True)
    weight = weight.float()
    return (diff * weight).sum() / weight.sum().clamp(min=1.0)


def wasserstein_critic(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    """WGAN critic loss: ``E[D(fake)] - E[D(real)]`` (the critic minimises it)."""
    return fake_scores.float().mean() - real_scores.float().mean()


def wasserstein_generator(fake_scores: torch.Tensor) -> torch.Tensor:
    """WGAN generator loss: ``-E[D(fake)]``."""
    return -fake_scores.float().mean()


def gradient_penalty(scores: torch.Tensor, interpolates: torch.Tensor) -> torch.Tensor:
    """WGAN-GP (Gulrajani et al. 2017): ``E[(||grad_x D(x_hat)||_2 - 1)^2]`` over interpolates ``x_hat``.

    ``interpolates`` must have ``requires_grad`` set before ``scores`` were computed from them.
    """
    (grad,) = torch.autograd.grad(scores.float().sum(), interpolates, create_graph=True)
    return (grad.float().flatten(1).norm(dim=1) - 1).square().mean()


def total_variation(mask: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of neighbouring pixels of a mask [B,1,H,W]: smooth attention maps."""
    m = mask.float()
    return (m[:, :, 1:, :] - m[:, :, :-1, :]).square().mean() + (m[:, :, :, 1:] - m[:, :, :, :-1]).square().mean()


def label_distribution(positions: torch.Tensor, num_bins: int, sigma: float) -> torch.Tensor:
    """Gaussian label distributions [B, num_bins] centred on float ``positions`` [B] (DLDL), normalised over the
    bins."""
    bins = torch.arange(num_bins, device=positions.device, dtype=torch.float32)
    logp = -0.5 * ((bins[None, :] - positions.float()[:, None]) / sigma) ** 2
    return logp.softmax(dim=1)


def group_cross_entropy(logits: torch.Tensor, target: torch.Tensor, sigma: float = 0.0) -> torch.Tensor:
    """Cross-entropy of age-group logits [B, K] toward group indices [B]; with ``sigma > 0`` (in groups) toward a
    Gaussian over the neighbouring groups instead, whose optimum is a graded, not a certain, verdict: a generator
    aiming at a group with a dozen training faces is not pushed to copy them."""
    if sigma <= 0:
        return F.cross_entropy(logits.float(), target)
    soft = label_distribution(target.float(), logits.shape[1], sigma)
    return F.cross_entropy(logits.float(), soft)


def age_l1(estimated: torch.Tensor, target_years: torch.Tensor) -> torch.Tensor:
    """Mean absolute error in years between a frozen critic's age estimates [B] and the target ages [B]."""
    return (estimated.float() - target_years.float()).abs().mean()


def gender_consistency(fake_logit: torch.Tensor, real_logit: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of a critic's gender logit on the output against its (detached) probability on
    the input: the output keeps the input's gender as the critic sees it."""
    return F.binary_cross_entropy_with_logits(fake_logit.float(), torch.sigmoid(real_logit.float()).detach())


def luma(x: torch.Tensor) -> torch.Tensor:
    """BT.601 luminance [B,1,H,W] of RGB images [B,3,H,W] (any range: the weights sum to 1)."""
    r, g, b = x.float().unbind(dim=1)
    return (0.299 * r + 0.587 * g + 0.114 * b)[:, None]


def chroma_change(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of the BT.601 chroma (Cb, Cr) of two RGB batches: colour painted on a face
    (blotches, tinted irises) costs, a change of brightness does not."""
    d = a.float() - b.float()
    r, g, bl = d.unbind(dim=1)
    cb = -0.168736 * r - 0.331264 * g + 0.5 * bl
    cr = 0.5 * r - 0.418688 * g - 0.081312 * bl
    return (cb.abs() + cr.abs()).mean() / 2
