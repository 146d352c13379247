"""Mixture of diagonal Gaussians: a distribution and a learnable prior module."""

from __future__ import annotations

import math
import numbers

import pyro.distributions as dist
import torch
from pyro.distributions.util import broadcast_shape
from torch import nn
from torch.distributions import constraints

from pyro_gen.distributions.prior_module import PriorModule


def positive_int(name: str, value: object) -> int:
    """``value`` as an int, or one ValueError naming the argument (a float size failed
    inside ``torch.randn`` with "type must be tuple of ints")."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive whole number, got {value!r}")
    return int(value)


def _broadcasts(shape: tuple[int, ...], target: tuple[int, ...]) -> bool:
    return all(s in (1, t) for s, t in zip(shape, target))


class GaussianMixture(dist.TorchDistribution):
    """Mixture of :math:`K` diagonal Gaussians over :math:`\\mathbb{R}^D`,

    .. math:: p(z) = \\sum_{k=1}^K \\pi_k \\, \\mathcal{N}(z; \\mu_k, \\operatorname{diag}
              \\sigma_k^2), \\qquad \\pi = \\operatorname{softmax}(\\text{logits}).

    Args:
        logits: mixture logits, shape ``(*batch, K)``.
        locs: component means, shape ``(*batch, K, D)``.
        scales: component standard deviations, shape ``(*batch, K, D)``.

    The batch shape is the broadcast of the leading dims, so the distribution expands
    under ``pyro.plate``. Sampling is not reparameterized (priors are scored, not
    differentiated through samples).

    Example:
        >>> p = GaussianMixture(torch.zeros(3), torch.randn(3, 2), torch.ones(3, 2))
        >>> p.batch_shape, p.event_shape, p.log_prob(torch.zeros(5, 2)).shape
        (torch.Size([]), torch.Size([2]), torch.Size([5]))
    """

    arg_constraints = {
        "logits": constraints.real_vector,
        "locs": constraints.independent(constraints.real, 2),
        "scales": constraints.independent(constraints.positive, 2),
    }
    support = constraints.independent(constraints.real, 1)
    has_rsample = False

    def __init__(
        self,
        logits: torch.Tensor,
        locs: torch.Tensor,
        scales: torch.Tensor,
        batch_shape: tuple[int, ...] | None = None,
        validate_args: bool | None = None,
    ) -> None:
        if locs.dim() < 2 or locs.shape[-1] < 1:
            raise ValueError(f"locs must have shape (*batch, K, D), got {tuple(locs.shape)}")
        k, d = locs.shape[-2:]
        if logits.dim() < 1 or logits.shape[-1] != k:
            raise ValueError(
                f"logits must have shape (*batch, K) with K = {k} (locs' second-last dim), "
                f"got {tuple(logits.shape)}"
            )
        if scales.dim() < 2 or not _broadcasts(scales.shape[-2:], (k, d)):
            raise ValueError(
                f"scales must have shape (*batch, K, D) broadcastable to locs' (K, D) = "
                f"{(k, d)}, got {tuple(scales.shape)}"
            )
        # a (K, 1) or (1, D) scale is shared across dims/components; the matmul path below
        # needs the full (K, D)
        scales = scales.expand(scales.shape[:-2] + (k, d))
        own = broadcast_shape(logits.shape[:-1], locs.shape[:-2], scales.shape[:-2])
        batch_shape = torch.Size(broadcast_shape(own, batch_shape or ()))
        self._params = (logits, locs, scales)
        # unbatched parameters allow a matmul form of the log density that never builds
        # a (..., K, D) tensor (it matters for K = 500 VampPrior components)
        self._shared = logits.dim() == 1 and locs.dim() == 2 and scales.dim() == 2
        self.logits = logits.expand(batch_shape + (k,))
        self.locs = locs.expand(batch_shape + (k, d))
        self.scales = scales.expand(batch_shape + (k, d))
        super().__init__(batch_shape, torch.Size((d,)), validate_args=validate_args)

    @property
    def num_components(self) -> int:
        return self.locs.shape[-2]

    @classmethod
    def infer_shapes(cls, logits=(), locs=(), scales=(), **kwargs) -> tuple[torch.Size, torch.Size]:
        """``(batch_shape, event_shape)`` from the parameters' shapes, as Pyro's multivariate
        distributions give it (the inherited one raises NotImplementedError for event dims)."""
        logits, locs, scales = tuple(logits), tuple(locs), tuple(scales)
        batch = broadcast_shape(logits[:-1], locs[:-2], scales[:-2], kwargs.get("batch_shape", ()))
        return torch.Size(batch), torch.Size(locs[-1:])

    def expand(self, batch_shape, _instance=None) -> GaussianMixture:
        # Pyro's expand: the current batch shape must broadcast to the new one (expanding
        # the already-expanded views raises otherwise), and validation is kept, so a plate
        # (which scores the expanded distribution) still checks the observed values
        batch_shape = torch.Size(batch_shape)
        new = self._get_checked_instance(GaussianMixture, _instance)
        k, d = self.locs.shape[-2:]
        new.logits = self.logits.expand(batch_shape + (k,))
        new.locs = self.locs.expand(batch_shape + (k, d))
        new.scales = self.scales.expand(batch_shape + (k, d))
        new._params, new._shared = self._params, self._shared
        super(GaussianMixture, new).__init__(batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def component_log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """:math:`\\log \\pi_k + \\log \\mathcal{N}(z; \\mu_k, \\sigma_k^2)`, shape
        ``(..., K)``."""
        terms, dtype = self._component_terms(value)
        return terms.to(dtype)

    def _component_terms(self, value: torch.Tensor) -> tuple[torch.Tensor, torch.dtype]:
        """The component terms, in float64 on the matmul path, and the result's dtype."""
        d = self.event_shape[0]
        const = -0.5 * d * math.log(2 * math.pi)
        # Pyro's densities promote (float32 parameters score float64 or integer values, and
        # the reverse); the matmul below would refuse mixed dtypes from inside torch
        dtype = torch.promote_types(value.dtype, self.locs.dtype)
        if self._shared and value.device.type != "mps":
            logits, locs, scales = self._params
            # the expanded square z^2/s^2 - 2 z m/s^2 + m^2/s^2 cancels: in float32, at
            # |m| = 5 and s = 0.01 a draw from its own component was scored ~1 nat off (150
            # at s = 1e-3, a VampPrior's sharp late-training posteriors, 367 at |m| ~ 5 in
            # 8 dims; a stable log-sum-exp does not help, the loss is in the quadratic); in
            # float64 the same error is below 1e-6. The float64 (..., D) x (D, K) matmul is
            # what makes a VampPrior VAE's CPU step 1.16x slower than float32 would be; the
            # exact float32 form (direct differences) builds (..., K, D) and measured ~8x
            # slower still on CPU (B 128, K 500, D 32), and too big for IWAE's particle
            # chunks, so float64 it is (tests/distributions/test_mixture_precision.py).
            wide = torch.float64
            z, locs, scales = value.to(wide), locs.to(wide), scales.to(wide)
            prec = scales.pow(-2)  # (K, D)
            quad = z.pow(2) @ prec.T - 2 * z @ (locs * prec).T + (locs.pow(2) * prec).sum(-1)
            # an infinite coordinate gave inf - inf = nan; its density is zero (log -inf),
            # as the direct form and Pyro's Normal give it
            quad = quad.masked_fill(z.isinf().any(-1, keepdim=True), math.inf)
            log_normal = -0.5 * quad - scales.log().sum(-1) + const
            log_normal = log_normal.expand(broadcast_shape(log_normal.shape, self.logits.shape))
            # weights and log-sum-exp stay wide too: far out (1e3 sigma) the terms are ~1e6
            # apart from the origin's, and float32 rounding them first shifted the
            # responsibilities, so the gradient was 1% off
            return log_normal + self.logits.to(wide).log_softmax(-1), dtype
        # direct differences (MPS has no float64): exact, at the cost of (..., K, D)
        z = value.to(dtype).unsqueeze(-2)
        log_normal = (-0.5 * ((z - self.locs) / self.scales) ** 2 - self.scales.log()).sum(
            -1
        ) + const
        return log_normal + self.logits.log_softmax(-1), dtype

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        terms, dtype = self._component_terms(value)
        return terms.logsumexp(-1).to(dtype)

    def sample(self, sample_shape: tuple[int, ...] = ()) -> torch.Tensor:
        with torch.no_grad():
            shape = torch.Size(sample_shape) + self.batch_shape
            k = dist.Categorical(logits=self.logits).sample(sample_shape)  # (*shape)
            d = self.event_shape[0]
            index = k[..., None, None].expand(shape + (1, d))
            loc = self.locs.expand(shape + self.locs.shape[-2:]).gather(-2, index)[..., 0, :]
            scale = self.scales.expand(shape + self.scales.shape[-2:]).gather(-2, index)[..., 0, :]
            return loc + scale * torch.randn_like(loc)

    def rsample(self, sample_shape: tuple[int, ...] = ()) -> torch.Tensor:
        # torch's own NotImplementedError has no message
        raise NotImplementedError(
            "GaussianMixture has no reparameterized sampler (the component is a discrete "
            "choice): use sample(); as a prior it is only scored, and Pyro's ELBOs use "
            "score-function gradients for sites with has_rsample=False"
        )

    def entropy(self) -> torch.Tensor:
        # the type torch and Pyro raise where there is no closed form (their mixtures too),
        # so code that catches it still does; torch's inherited error has no message
        raise NotImplementedError(
            "GaussianMixture has no closed-form entropy (the log of a sum of Gaussian "
            "densities has no closed-form expectation); estimate it by Monte Carlo, "
            "-p.log_prob(p.sample((n,))).mean(0) for n draws (unbiased, standard error "
            "shrinking as 1/sqrt(n))"
        )

    @property
    def mean(self) -> torch.Tensor:
        return (self.logits.softmax(-1)[..., None] * self.locs).sum(-2)

    @property
    def variance(self) -> torch.Tensor:
        r"""Per-dim variance, :math:`\sum_k \pi_k (\sigma_k^2 + \mu_k^2) - \bar\mu^2` (law of
        total variance), as Pyro's mixtures give it."""
        pi = self.logits.softmax(-1)[..., None]
        return (pi * (self.scales.pow(2) + self.locs.pow(2))).sum(-2) - self.mean.pow(2)


class MixturePrior(PriorModule):
    """Learnable mixture-of-Gaussians prior for a VAE latent.

    Means start spread out (standard Normal draws), scales at one (just above
    ``min_scale`` where that is one or more), weights uniform; all three are learned.
    ``forward()`` returns a :class:`GaussianMixture`.

    Args:
        z_dim: latent size :math:`D`.
        num_components: :math:`K`.
        min_scale: floor on the component scales.

    References:
        Dilokthanakul et al., Deep Unsupervised Clustering with Gaussian Mixture VAEs,
        arXiv:1611.02648.

    Example:
        >>> prior = MixturePrior(2, num_components=4)
        >>> prior().log_prob(torch.zeros(3, 2)).shape
        torch.Size([3])
    """

    def __init__(self, z_dim: int, num_components: int = 10, min_scale: float = 1e-3) -> None:
        super().__init__()
        z_dim, num_components = (
            positive_int("z_dim", z_dim),
            positive_int("num_components", num_components),
        )
        if not min_scale >= 0:
            raise ValueError(
                f"min_scale is a floor on the scales and must be >= 0, got {min_scale}"
            )
        self.z_dim = z_dim
        self.min_scale = min_scale
        self.logits = nn.Parameter(torch.zeros(num_components))
        self.locs = nn.Parameter(torch.randn(num_components, z_dim))
        # softplus^{-1}(1 - min_scale), so the scales start at one as documented (the fixed
        # softplus^{-1}(1) started them at 1 + min_scale); a floor near or above one leaves
        # (almost) nothing to add, so they start just above it
        start = max(1.0 - min_scale, 1e-3)
        raw = math.log(math.expm1(start))
        self.raw_scales = nn.Parameter(torch.full((num_components, z_dim), raw))

    def forward(self, context: torch.Tensor | None = None, **kwargs) -> GaussianMixture:
        scales = nn.functional.softplus(self.raw_scales) + self.min_scale
        return GaussianMixture(self.logits, self.locs, scales)
