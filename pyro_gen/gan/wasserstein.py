"""Wasserstein GANs: the critic with weight clipping and with a gradient penalty."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from pyro_gen.gan.adversarial import (
    AdversarialBatch,
    AdversarialLoss,
    OptimizerFactory,
    fused_adam,
)
from pyro_gen.gan.labels import context_like


def gradient_penalty(
    critic: Callable[..., torch.Tensor],
    real: torch.Tensor,
    fake: torch.Tensor,
    *,
    event_dim: int,
    context: torch.Tensor | None = None,
    eps: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-example gradient penalty :math:`(\\|\\nabla_{\\hat x} f(\\hat x)\\|_2 - 1)^2` at
    :math:`\\hat x = \\epsilon x + (1 - \\epsilon) \\tilde x`, :math:`\\epsilon \\sim U[0, 1]`
    per example (Gulrajani et al. 2017).

    The gradient is taken with ``create_graph=True``, so the penalty is differentiable
    in the critic's parameters.

    Args:
        critic: ``f(x)`` (or ``f(x, context)``), one score per example.
        real: data, shape ``batch_shape + event_shape``.
        fake: generated examples, same shape.
        event_dim: number of event dimensions.
        context: passed to the critic when given.
        eps: interpolation weights of shape ``batch_shape``; drawn uniformly by default.

    Returns:
        The penalty per example, shape ``batch_shape``.

    References:
        Gulrajani et al., Improved Training of Wasserstein GANs, arXiv:1704.00028.

    Example:
        >>> critic = lambda x: 3.0 * x.sum(-1)  # gradient norm 3 * sqrt(2) everywhere
        >>> gp = gradient_penalty(critic, torch.zeros(4, 2), torch.ones(4, 2), event_dim=1)
        >>> torch.allclose(gp, torch.full((4,), (3 * 2**0.5 - 1) ** 2))
        True
    """
    _check_penalty_inputs(real, fake, event_dim, eps)
    batch_shape = real.shape[: real.dim() - event_dim]
    if eps is None:
        eps = torch.rand(batch_shape, dtype=real.dtype, device=real.device)
    eps = eps.reshape(batch_shape + (1,) * event_dim)
    x_hat = (eps * real.detach() + (1 - eps) * fake.detach()).requires_grad_(True)
    score = critic(x_hat) if context is None else critic(x_hat, context)
    (grad,) = torch.autograd.grad(score.sum(), x_hat, create_graph=True)
    norm = grad.flatten(grad.dim() - event_dim).norm(dim=-1) if event_dim else grad.abs()
    return (norm - 1).pow(2)


def _check_penalty_inputs(
    real: torch.Tensor, fake: torch.Tensor, event_dim: int, eps: torch.Tensor | None
) -> None:
    """One error for what torch failed on from inside the penalty (mismatched sizes, or
    integer data in ``torch.rand``'s bounds check), or, for an ``event_dim`` beyond the
    examples' dims, a silently wrong norm."""
    if real.shape != fake.shape:
        raise ValueError(
            f"real and fake must have one shape, got {tuple(real.shape)} and {tuple(fake.shape)}"
        )
    if isinstance(event_dim, bool) or not isinstance(event_dim, int):
        raise ValueError(f"event_dim must be a whole number, got {event_dim!r}")
    if not 0 <= event_dim <= real.dim():
        raise ValueError(
            f"event_dim must be between 0 and the examples' {real.dim()} dims, got {event_dim}"
        )
    if not real.is_floating_point() or not fake.is_floating_point():
        raise ValueError(
            f"real and fake must be floating point (the penalty differentiates the critic at "
            f"points between them), got {real.dtype} and {fake.dtype}"
        )
    batch_shape = real.shape[: real.dim() - event_dim]
    if eps is not None and eps.shape not in (batch_shape, batch_shape + (1,) * event_dim):
        raise ValueError(
            f"eps must hold one weight per example, shape {tuple(batch_shape)}, got "
            f"{tuple(eps.shape)}"
        )


class _Critic(AdversarialLoss):
    """The Wasserstein objectives: the critic maximises :math:`\\mathbb{E}[f(x)] -
    \\mathbb{E}[f(G(z))]`, the generator minimises :math:`-\\mathbb{E}[f(G(z))]`."""

    _sigmoid_message = (
        "ends in a Sigmoid, but a Wasserstein critic must return unbounded real values "
        "(its output estimates a distance, not a probability): remove the final Sigmoid"
    )

    def discriminator_loss(
        self, real_score: torch.Tensor, fake_score: torch.Tensor
    ) -> torch.Tensor:
        return fake_score.mean() - real_score.mean()

    def generator_loss(self, fake_score: torch.Tensor) -> torch.Tensor:
        return -fake_score


class WassersteinGAN(_Critic):
    """Wasserstein GAN with weight clipping (Arjovsky et al. 2017).

    The critic :math:`f` maximises :math:`\\mathbb{E}_{p_\\text{data}}[f(x)] -
    \\mathbb{E}_{p(z)}[f(G(z))]`, an estimate of the Wasserstein-1 distance up to the
    Lipschitz constant that clipping every weight to :math:`[-c, c]` enforces; the generator
    minimises :math:`-\\mathbb{E}[f(G(z))]`. Defaults follow the paper: RMSprop with learning
    rate 5e-5, five critic steps per generator step, :math:`c = 0.01`.

    Args:
        critic: the critic network; it must return unbounded values (no final sigmoid).
        clip: the weight bound :math:`c`.
        optim: builds the critic's optimizer; default RMSprop(lr=5e-5).
        n_critic: critic steps per generator step.
        site: the observed site; default the model's only one.
        labels: the name of the model's argument holding a conditional GAN's labels.
        record: replay the model's run from a recording (see :class:`AdversarialLoss`).

    References:
        Arjovsky, Chintala & Bottou, Wasserstein GAN, arXiv:1701.07875.

    Example:
        >>> from pyro_gen.gan import Generator
        >>> from pyro_gen.nn import MLPDiscriminator, MLPGenerator
        >>> gen = Generator(MLPGenerator(2, (2,), hidden_dims=(8,)))
        >>> loss = WassersteinGAN(MLPDiscriminator((2,), hidden_dims=(8,)), clip=0.05)
        >>> value = loss.loss_and_grads(gen.model, gen.guide, torch.randn(16, 2))
        >>> all(bool(p.abs().max() <= loss.clip) for p in loss.discriminator.parameters())
        True
    """

    def __init__(
        self,
        critic: nn.Module,
        *,
        clip: float = 0.01,
        optim: OptimizerFactory | None = None,
        n_critic: int = 5,
        site: str | None = None,
        labels: str = "y",
        record: bool = True,
    ) -> None:
        if not clip > 0:
            raise ValueError(f"clip must be a positive weight bound, got {clip!r}")
        super().__init__(
            critic, optim=optim, n_critic=n_critic, site=site, labels=labels, record=record
        )
        self.clip = float(clip)
        self.after_discriminator_step()  # the critic starts inside the bound too

    @staticmethod
    def default_optim(params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
        """RMSprop with learning rate 5e-5, as in the paper."""
        return torch.optim.RMSprop(params, lr=5e-5)

    def after_discriminator_step(self) -> None:
        with torch.no_grad():
            for p in self.discriminator.parameters():
                p.clamp_(-self.clip, self.clip)


class WassersteinGP(_Critic):
    """Wasserstein GAN with a gradient penalty (WGAN-GP, Gulrajani et al. 2017): instead of
    clipping, the critic's loss adds :math:`\\lambda\\, \\mathbb{E}[(\\|\\nabla f(\\hat x)\\|_2 -
    1)^2]` (see :func:`gradient_penalty`). Defaults follow the paper: Adam with learning rate
    1e-4 and betas (0, 0.9), five critic steps per generator step, :math:`\\lambda = 10`.

    Args:
        critic: the critic network (no final sigmoid, no batch norm: the penalty is per
            example).
        penalty_weight: :math:`\\lambda`.
        optim: builds the critic's optimizer; default Adam(lr=1e-4, betas=(0, 0.9)).
        n_critic: critic steps per generator step.
        site: the observed site; default the model's only one.
        labels: the name of the model's argument holding a conditional GAN's labels.
        record: replay the model's run from a recording (see :class:`AdversarialLoss`).

    References:
        Gulrajani et al., Improved Training of Wasserstein GANs, arXiv:1704.00028.

    Example:
        >>> from pyro_gen.gan import Generator
        >>> from pyro_gen.nn import MLPDiscriminator, MLPGenerator
        >>> gen = Generator(MLPGenerator(2, (2,), (8,)))
        >>> loss = WassersteinGP(MLPDiscriminator((2,), (8,)), n_critic=2)
        >>> value = loss.loss_and_grads(gen.model, gen.guide, torch.randn(16, 2))
        >>> isinstance(value, float)
        True
    """

    def __init__(
        self,
        critic: nn.Module,
        *,
        penalty_weight: float = 10.0,
        optim: OptimizerFactory | None = None,
        n_critic: int = 5,
        site: str | None = None,
        labels: str = "y",
        record: bool = True,
    ) -> None:
        if not penalty_weight >= 0:
            raise ValueError(f"penalty_weight must be non-negative, got {penalty_weight!r}")
        super().__init__(
            critic, optim=optim, n_critic=n_critic, site=site, labels=labels, record=record
        )
        self.penalty_weight = float(penalty_weight)

    @staticmethod
    def default_optim(params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
        """Adam with learning rate 1e-4 and betas (0, 0.9), as in the paper (fused)."""
        return fused_adam(params, lr=1e-4, betas=(0.0, 0.9))

    def penalty(self, batch: AdversarialBatch) -> torch.Tensor:
        context = None if batch.context is None else context_like(batch.context, batch.real)
        gp = gradient_penalty(
            self.discriminator, batch.real, batch.fake, event_dim=batch.event_dim, context=context
        )
        return self.penalty_weight * gp.mean()
