"""Adversarial objectives on a discriminator's logits: minimax, non-saturating, least
squares and hinge."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from pyro_gen.gan.adversarial import AdversarialLoss


class MinimaxGAN(AdversarialLoss):
    """The original GAN game (Goodfellow et al. 2014), with :math:`D = \\sigma(\\text{logit})`:

    .. math:: \\min_G \\max_D\\ V(D, G) = \\mathbb{E}_{p_\\text{data}}[\\log D(x)]
              + \\mathbb{E}_{p(z)}[\\log(1 - D(G(z)))].

    For a fixed generator the best discriminator is
    :math:`D^*(x) = p_\\text{data}(x) / (p_\\text{data}(x) + p_g(x))`, where
    :math:`V(D^*, G) = 2\\,\\mathrm{JSD}(p_\\text{data} \\| p_g) - \\log 4`. The generator's
    gradient vanishes when the discriminator rejects its samples confidently (early in
    training); :class:`NonSaturatingGAN` avoids that.

    References:
        Goodfellow et al., Generative Adversarial Nets, arXiv:1406.2661.

    Example:
        >>> import pyro
        >>> from pyro_gen.gan import Generator
        >>> from pyro_gen.nn import MLPDiscriminator, MLPGenerator
        >>> gen = Generator(MLPGenerator(2, (2,), hidden_dims=(8,)))
        >>> loss = MinimaxGAN(MLPDiscriminator((2,), hidden_dims=(8,)))
        >>> svi = pyro.infer.SVI(gen.model, gen.guide, pyro.optim.Adam({"lr": 1e-3}), loss)
        >>> value = svi.step(torch.randn(16, 2))
        >>> loss.optimizer.state_dict()["state"][0]["step"]  # the discriminator was updated
        tensor(1.)
    """

    def discriminator_loss(
        self, real_score: torch.Tensor, fake_score: torch.Tensor
    ) -> torch.Tensor:
        """:math:`-V(D, G)`: ``softplus(-l_real) + softplus(l_fake)``, averaged."""
        return F.softplus(-real_score).mean() + F.softplus(fake_score).mean()

    def generator_loss(self, fake_score: torch.Tensor) -> torch.Tensor:
        """:math:`\\log(1 - D(G(z))) = -\\operatorname{softplus}(l)`."""
        return -F.softplus(fake_score)

    def value(self, real_score: torch.Tensor, fake_score: torch.Tensor) -> torch.Tensor:
        """The game's value :math:`V(D, G)` estimated from scores of real and fake data."""
        return -self.discriminator_loss(real_score, fake_score)


class NonSaturatingGAN(MinimaxGAN):
    """The minimax GAN with the generator maximising :math:`\\log D(G(z))` instead of
    minimising :math:`\\log(1 - D(G(z)))` (Goodfellow et al. 2014, section 3): the same
    fixed point, with strong gradients where the discriminator rejects the samples.

    References:
        Goodfellow et al., Generative Adversarial Nets, arXiv:1406.2661.
    """

    def generator_loss(self, fake_score: torch.Tensor) -> torch.Tensor:
        """:math:`-\\log D(G(z)) = \\operatorname{softplus}(-l)`."""
        return F.softplus(-fake_score)


class LeastSquaresGAN(AdversarialLoss):
    """Least-squares GAN (Mao et al. 2017) with targets :math:`a=0` (fake), :math:`b=1`
    (real) and :math:`c=1` (what the generator wants):

    .. math:: \\min_D \\tfrac12 \\mathbb{E}[(D(x) - 1)^2] + \\tfrac12 \\mathbb{E}[D(G(z))^2],
              \\qquad \\min_G \\tfrac12 \\mathbb{E}[(D(G(z)) - 1)^2].

    The discriminator's output is used as is (no sigmoid).

    References:
        Mao et al., Least Squares Generative Adversarial Networks, arXiv:1611.04076.
    """

    def discriminator_loss(
        self, real_score: torch.Tensor, fake_score: torch.Tensor
    ) -> torch.Tensor:
        return 0.5 * ((real_score - 1).pow(2).mean() + fake_score.pow(2).mean())

    def generator_loss(self, fake_score: torch.Tensor) -> torch.Tensor:
        return 0.5 * (fake_score - 1).pow(2)


class HingeGAN(AdversarialLoss):
    """Hinge loss (Lim & Ye 2017; Miyato et al. 2018):
    :math:`\\min_D \\mathbb{E}[\\max(0, 1 - D(x))] + \\mathbb{E}[\\max(0, 1 + D(G(z)))]`,
    :math:`\\min_G -\\mathbb{E}[D(G(z))]`.

    References:
        Lim & Ye, Geometric GAN, arXiv:1705.02894. Miyato et al., arXiv:1802.05957.
    """

    def discriminator_loss(
        self, real_score: torch.Tensor, fake_score: torch.Tensor
    ) -> torch.Tensor:
        return F.relu(1 - real_score).mean() + F.relu(1 + fake_score).mean()

    def generator_loss(self, fake_score: torch.Tensor) -> torch.Tensor:
        return -fake_score
