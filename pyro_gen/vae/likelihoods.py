"""Observation models :math:`p(x \\mid \\theta)` that turn decoder outputs into distributions.

A likelihood receives the decoder's raw output ``params`` of shape
``(..., *event_shape, num_params)`` and returns a distribution whose event shape is
``event_shape``. It also converts the data (floats in :math:`[0, 1]`) into the value
observed at the site, and gives the mean image used by ``sample``.
"""

from __future__ import annotations

import pyro.distributions as dist
import torch
from torch.nn import functional as F

from pyro_gen.transforms._base import PicklableModule


class Likelihood(PicklableModule):
    """Base class; subclasses set :attr:`num_params` (decoder outputs per pixel) and
    implement :meth:`forward` (the distribution of an example) and :meth:`mean`.

    Example:
        A continuous Bernoulli likelihood (Loaiza-Ganem & Cunningham 2019, the normalized
        density on [0, 1] for grey levels) in a VAE, with no other change:

        >>> import pyro
        >>> from pyro_gen.vae import VAE
        >>> class ContinuousBernoulli(Likelihood):
        ...     num_params = 1
        ...     def forward(self, params, event_dim):
        ...         base = dist.ContinuousBernoulli(logits=params[..., 0])
        ...         return dist.Independent(base, event_dim)
        ...     def mean(self, params):
        ...         return dist.ContinuousBernoulli(logits=params[..., 0]).mean
        >>> vae = VAE(event_shape=(4, 4), z_dim=2, hidden_dim=8, likelihood=ContinuousBernoulli())
        >>> loss = pyro.infer.Trace_ELBO().loss(vae.model, vae.guide, torch.rand(5, 4, 4))
        >>> vae.sample(3).shape
        torch.Size([3, 4, 4])
    """

    num_params: int = 1

    def forward(self, params: torch.Tensor, event_dim: int) -> dist.TorchDistribution:
        raise NotImplementedError

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Check data in :math:`[0, 1]` and convert it to the observed value."""
        if not x.is_floating_point():  # which scale integers are on (0/1, 0-255) is unknown
            raise TypeError(
                f"{type(self).__name__} takes floating data in [0, 1], got {x.dtype}: pass "
                "x.float() for 0/1 data or x.float() / 255 for 8-bit pixels (a "
                "CategoricalLikelihood takes the integers)"
            )
        if x.numel() and (x.min() < 0 or x.max() > 1):
            raise ValueError(
                f"{type(self).__name__} expects data in [0, 1], got values in "
                f"[{x.min().item():.3g}, {x.max().item():.3g}]; rescale the images first"
            )
        return x

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class BernoulliLikelihood(Likelihood):
    """Pixelwise Bernoulli, :math:`p(x \\mid \\theta) = \\prod_i \\sigma(\\theta_i)^{x_i}
    (1 - \\sigma(\\theta_i))^{1 - x_i}`.

    Fractional targets in :math:`[0, 1]` are accepted (cross-entropy), so the same model
    trains on binarized or grey-level images.

    Example:
        >>> lik = BernoulliLikelihood()
        >>> lik(torch.zeros(2, 3, 1), event_dim=1).log_prob(torch.ones(2, 3)).shape
        torch.Size([2])
    """

    num_params = 1

    def forward(self, params: torch.Tensor, event_dim: int) -> dist.TorchDistribution:
        base = dist.Bernoulli(logits=params[..., 0], validate_args=False)
        return dist.Independent(base, event_dim, validate_args=False)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(params[..., 0])


class GaussianLikelihood(Likelihood):
    """Diagonal Gaussian, :math:`p(x \\mid \\theta) = \\mathcal{N}(x; \\mu, \\sigma^2)`.

    Args:
        scale: a fixed standard deviation (float), or ``"learned"``: the decoder also
            outputs :math:`\\sigma = \\sigma_{\\min} + \\operatorname{softplus}(s)` per pixel.
        min_scale: lower bound on a learned scale; without it the likelihood is unbounded
            (a pixel with zero variance gives infinite density).

    Example:
        >>> lik = GaussianLikelihood(scale="learned")
        >>> lik.num_params
        2
        >>> lik(torch.zeros(4, 2), event_dim=1).base_dist.scale.min().item() > 0.01
        True
    """

    def __init__(self, scale: float | str = 0.1, min_scale: float = 0.01) -> None:
        super().__init__()
        if isinstance(scale, str):
            if scale != "learned":
                raise ValueError(f"scale must be a float or 'learned', got {scale!r}")
            self.learned = True
            self.num_params = 2
        else:
            if scale <= 0:
                raise ValueError(f"scale must be positive, got {scale}")
            self.learned = False
            self.num_params = 1
        self.fixed_scale = None if self.learned else float(scale)
        self.min_scale = float(min_scale)

    def forward(self, params: torch.Tensor, event_dim: int) -> dist.TorchDistribution:
        loc = params[..., 0]
        if self.learned:
            scale = self.min_scale + F.softplus(params[..., 1])
        else:
            scale = torch.full_like(loc, self.fixed_scale)
        return dist.Normal(loc, scale).to_event(event_dim)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        # real-valued data (standardized, logit space) is legitimate here
        return x

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        return params[..., 0]


class CategoricalLikelihood(Likelihood):
    """Categorical over ``num_values`` intensity levels per pixel (256 for 8-bit images).

    A pixel :math:`x \\in [0, 1]` is observed as the integer :math:`\\mathrm{round}(x (V-1))`.

    Example:
        >>> lik = CategoricalLikelihood(4)
        >>> lik.prepare(torch.tensor([0.0, 1 / 3, 1.0]))
        tensor([0, 1, 3])
    """

    def __init__(self, num_values: int = 256) -> None:
        super().__init__()
        self.num_params = int(num_values)

    def forward(self, params: torch.Tensor, event_dim: int) -> dist.TorchDistribution:
        return dist.Categorical(logits=params).to_event(event_dim)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        if not x.is_floating_point():
            return x.long()
        x = super().prepare(x)
        return (x * (self.num_params - 1)).round().long()

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        levels = torch.linspace(0, 1, self.num_params, device=params.device, dtype=params.dtype)
        return (params.softmax(-1) * levels).sum(-1)


def make_likelihood(likelihood: str | Likelihood) -> Likelihood:
    """Build a likelihood from its name: ``bernoulli``, ``gaussian`` (fixed scale 0.1),
    ``gaussian_learned`` or ``categorical``.

    Example:
        >>> type(make_likelihood("categorical")).__name__
        'CategoricalLikelihood'
    """
    if isinstance(likelihood, Likelihood):
        return likelihood
    table = {
        "bernoulli": BernoulliLikelihood,
        "gaussian": GaussianLikelihood,
        "gaussian_learned": lambda: GaussianLikelihood(scale="learned"),
        "categorical": CategoricalLikelihood,
    }
    if likelihood not in table:
        raise ValueError(f"unknown likelihood {likelihood!r}; choose one of {sorted(table)}")
    return table[likelihood]()
