r"""Dequantization: continuous densities on discrete data, written as Pyro model/guide pieces.

Discrete data :math:`x \in \{0, \dots, K-1\}^D` (pixels) has no density, so a continuous
flow :math:`p` models :math:`y = (x + u) / K` with noise :math:`u \in [0, 1)^D`. Treating
:math:`u` as a latent variable with a guide :math:`q(u \mid x)` gives the variational bound

.. math::

    \log P(x) \ge \mathbb{E}_{q(u \mid x)}\left[
        \log p\!\left(\tfrac{x + u}{K}\right) - D \log K - \log q(u \mid x)\right],

which is exactly Pyro's ELBO when the model holds a latent site ``u`` with the (log-density
zero) uniform prior on :math:`[0,1]^D` and an observed site :math:`x + u` under the flow scaled
by :math:`K`. Uniform dequantization is the guide :math:`q = \mathcal{U}[0,1)^D` (the bound
most papers report as "bits/dim"); variational dequantization (Flow++) learns
:math:`q(u \mid x)` as a conditional flow and tightens the bound.

:class:`ScaledSigmoid` is the usual logit preprocessing of image flows, as a transform.

References:
    Theis, van den Oord, Bethge. A note on the evaluation of generative models. ICLR 2016,
    arXiv:1511.01844.
    Ho, Chen, Srinivas, Duan, Abbeel. Flow++: Improving Flow-Based Generative Models with
    Variational Dequantization and Architecture Design. ICML 2019, arXiv:1902.00275.
    Dinh, Sohl-Dickstein, Bengio. Density estimation using Real NVP. ICLR 2017, arXiv:1605.08803.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.distributions.transforms import Permute, conditional_affine_coupling
from torch import Tensor, nn
from torch.distributions.transforms import ReshapeTransform, Transform

from pyro_gen.nn.arguments import check_count
from pyro_gen.nn.mlp import layer_widths
from pyro_gen.transforms._base import PicklableModule

__all__ = ["ScaledSigmoid", "UniformDequantization", "VariationalDequantization"]


class ScaledSigmoid(Transform):
    r"""Map logit space to pixel space: :math:`x = (\sigma(y) - \alpha) / (1 - 2\alpha)`.

    Its inverse is the logit preprocessing of RealNVP,
    :math:`y = \operatorname{logit}(\alpha + (1 - 2\alpha) x)`. Put it last in an image flow
    so the model's density lives on pixels in :math:`[0,1]`:

    .. math::

        \log\left|\frac{dx}{dy}\right| = \log\sigma(y) + \log\sigma(-y) - \log(1 - 2\alpha).

    The codomain is the true range of the map, the interval
    :math:`[-\alpha/(1-2\alpha),\ (1-\alpha)/(1-2\alpha)]` (slightly wider than
    :math:`[0, 1]`), and the inverse is total on it: as in torch's ``SigmoidTransform`` the
    sigmoid's argument is clipped to :math:`[\text{tiny}, 1 - \text{eps}]` of the dtype, so
    the end points map to finite logits. A value outside the interval raises ``ValueError``.

    Args:
        alpha: boundary margin (0.05 in RealNVP, 1e-6 in MAF).
        event_dim: number of rightmost dimensions summed in the log-determinant.
        cache_size: torch transform cache (0 or 1).

    Example:
        >>> t = ScaledSigmoid(alpha=0.05, event_dim=1)
        >>> x = torch.tensor([[0.0, 0.5, 1.0]])
        >>> torch.allclose(t(t.inv(x)), x, atol=1e-6)
        True
        >>> t.codomain.base_constraint.lower_bound, t.codomain.base_constraint.upper_bound
        (-0.05555555555555556, 1.0555555555555556)
    """

    bijective = True
    sign = 1

    def __init__(self, alpha: float = 0.05, event_dim: int = 0, cache_size: int = 0) -> None:
        if not 0.0 <= alpha < 0.5:
            raise ValueError(f"alpha must be in [0, 0.5), got {alpha}")
        super().__init__(cache_size=cache_size)
        self.alpha = float(alpha)
        # -1 or 1.5 were kept, and summed the log-det over no or fractional dims
        self._event_dim = check_count("event_dim", event_dim, minimum=0)
        width = 1.0 - 2.0 * self.alpha
        self.lower, self.upper = -self.alpha / width, (1.0 - self.alpha) / width

    @property
    def domain(self) -> constraints.Constraint:
        return constraints.independent(constraints.real, self._event_dim)

    @property
    def codomain(self) -> constraints.Constraint:
        interval = constraints.interval(self.lower, self.upper)
        return constraints.independent(interval, self._event_dim)

    def with_cache(self, cache_size: int = 1) -> ScaledSigmoid:
        if self._cache_size == cache_size:
            return self
        return ScaledSigmoid(self.alpha, self._event_dim, cache_size=cache_size)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, ScaledSigmoid)
            and other.alpha == self.alpha
            and other._event_dim == self._event_dim
        )

    def __hash__(self) -> int:
        return hash((ScaledSigmoid, self.alpha, self._event_dim))

    @staticmethod
    def _clip(p: Tensor) -> Tensor:
        finfo = torch.finfo(p.dtype)
        return p.clamp(min=finfo.tiny, max=1.0 - finfo.eps)

    def _call(self, y: Tensor) -> Tensor:
        return (self._clip(torch.sigmoid(y)) - self.alpha) / (1.0 - 2.0 * self.alpha)

    def _inverse(self, x: Tensor) -> Tensor:
        if not torch.isfinite(x).all():
            raise ValueError("ScaledSigmoid.inv got non-finite input")
        if ((x < self.lower) | (x > self.upper)).any():
            raise ValueError(
                f"ScaledSigmoid(alpha={self.alpha}).inv is defined on "
                f"[{self.lower:.6g}, {self.upper:.6g}] (pixels in [0, 1] and a margin), got "
                f"values in [{x.min().item():.6g}, {x.max().item():.6g}]"
            )
        p = self._clip(self.alpha + (1.0 - 2.0 * self.alpha) * x)
        return torch.log(p) - torch.log1p(-p)

    def log_abs_det_jacobian(self, y: Tensor, x: Tensor) -> Tensor:
        ld = (
            nn.functional.logsigmoid(y)
            + nn.functional.logsigmoid(-y)
            - math.log(1.0 - 2.0 * self.alpha)
        )
        if self._event_dim:
            # sums the event dims; reshape(batch + (-1,)) cannot infer -1 for an empty batch
            ld = ld.sum(tuple(range(-self._event_dim, 0)))
        return ld


class UniformDequantization(PicklableModule):
    r"""Uniform dequantization as a model/guide piece: :math:`q(u \mid x) = \mathcal{U}[0,1)^D`.

    Inside a ``pyro.plate("data")`` call :meth:`model_step` from the model and :meth:`guide_step`
    from the guide; the resulting Trace_ELBO is the bound in the module docstring, with
    :math:`\log q = 0`. ``x`` holds integers ``0..num_bins-1`` (any dtype); the noise has
    ``x``'s dtype when it is a float, else the module's (``.double()`` makes it float64).

    Args:
        event_shape: shape of one data point, e.g. ``(1, 28, 28)``.
        num_bins: number of discrete levels :math:`K` (256 for 8-bit images, 17 for digits).
        site: name of the latent noise site.

    Example:
        >>> deq = UniformDequantization((3,), num_bins=4)
        >>> u = deq.guide_distribution(torch.zeros(5, 3)).sample()
        >>> u.shape, bool(((u >= 0) & (u < 1)).all())
        (torch.Size([5, 3]), True)
    """

    def __init__(
        self, event_shape: Sequence[int], num_bins: int = 256, site: str = "dequantization_noise"
    ) -> None:
        super().__init__()
        self.event_shape = torch.Size(event_shape)
        # int() took 2.5 levels as 2, and 0 divided the data by zero levels
        self.num_bins = check_count("num_bins", num_bins)
        self.site = site
        # the float dtype of the noise for integer data, which carry none: follows .to() /
        # .double() of the module (a flow converted to float64 gets float64 noise); not
        # persistent, so state dicts stay as they were
        self.register_buffer("_float", torch.zeros(()), persistent=False)

    def _noise_dtype(self, x: Tensor) -> torch.dtype:
        return x.dtype if x.is_floating_point() else self._float.dtype

    @property
    def event_dim(self) -> int:
        return len(self.event_shape)

    def _check(self, x: Tensor) -> None:
        if x.shape[x.dim() - self.event_dim :] != self.event_shape:
            raise ValueError(
                f"expected data ending in {tuple(self.event_shape)}, got {tuple(x.shape)}"
            )
        if ((x < 0) | (x > self.num_bins - 1) | (x != torch.round(x))).any():
            raise ValueError(f"dequantization expects integers in 0..{self.num_bins - 1}")

    def prior(self, x: Tensor) -> dist.Distribution:
        """The model's prior on :math:`u`: :math:`\\mathcal{U}[0,1)^D`, log-density 0.

        A proper distribution (not ``ImproperUniform``, which has the same density but cannot
        be sampled), so the model runs without its guide: ``pyro.infer.Predictive``, prior
        predictive checks, ``poutine.trace(model)``.
        """
        zeros = torch.zeros(x.shape, dtype=self._noise_dtype(x), device=x.device)
        return dist.Uniform(zeros, torch.ones_like(zeros)).to_event(self.event_dim)

    def guide_distribution(self, x: Tensor) -> dist.Distribution:
        r""":math:`q(u \mid x)`, batch shape ``x``'s batch shape, event shape ``event_shape``.

        Uniform dequantization's guide is the prior itself.
        """
        return self.prior(x)

    def observation(self, flow: dist.Distribution) -> dist.Distribution:
        r"""The flow on :math:`[0,1]` pushed to :math:`[0, K]`; adds the :math:`-D\log K` term."""
        scale = dist.transforms.AffineTransform(0.0, float(self.num_bins), event_dim=self.event_dim)
        return dist.TransformedDistribution(flow, [scale])

    def model_step(self, x: Tensor, flow: dist.Distribution, obs_site: str = "x") -> Tensor:
        """Model side: sample :math:`u` from the prior and observe :math:`x + u` under the flow."""
        self._check(x)
        u = pyro.sample(self.site, self.prior(x))
        return pyro.sample(obs_site, self.observation(flow), obs=x.to(u.dtype) + u)

    def guide_step(self, x: Tensor) -> Tensor:
        r"""Guide side: sample :math:`u \sim q(u \mid x)`."""
        return pyro.sample(self.site, self.guide_distribution(x))


class VariationalDequantization(UniformDequantization):
    r"""Variational dequantization: :math:`q(u \mid x)` is a conditional flow (Flow++).

    .. math::

        \epsilon \sim \mathcal{N}(0, I), \quad
        u = \sigma\big(g_L(\cdots g_1(\epsilon; x) \cdots; x)\big),

    with :math:`g_l` conditional affine couplings (Pyro's ``ConditionalAffineCoupling``) on the
    flattened noise, conditioned on the centred data :math:`x/K - 1/2`, with the halves swapped
    between layers. The sigmoid keeps :math:`u` in :math:`(0,1)`; the ELBO is tighter than uniform
    dequantization's by :math:`\mathbb{E}_q[\log p] - \mathbb{E}_q[\log q]` gains.

    Args:
        event_shape: shape of one data point.
        num_bins: number of discrete levels :math:`K`.
        hidden_dims: hidden widths of each coupling's conditioner.
        num_layers: number of conditional couplings.
        site: name of the latent noise site.

    Example:
        >>> deq = VariationalDequantization((2, 2), num_bins=4, hidden_dims=(8,))
        >>> q = deq.guide_distribution(torch.randint(0, 4, (5, 2, 2)).float())
        >>> q.batch_shape, q.event_shape
        (torch.Size([5]), torch.Size([2, 2]))
    """

    def __init__(
        self,
        event_shape: Sequence[int],
        num_bins: int = 256,
        hidden_dims: Sequence[int] = (64, 64),
        num_layers: int = 2,
        site: str = "dequantization_noise",
    ) -> None:
        super().__init__(event_shape, num_bins, site)
        dim = math.prod(self.event_shape)
        if dim < 2:
            raise ValueError("variational dequantization needs at least 2 dimensions per event")
        self.dim = dim
        # widths of 0 built empty layers, and num_layers=0 a "learned" q(u | x) with nothing
        # to learn (the uniform), neither with a word
        widths = layer_widths(hidden_dims)
        self.couplings = nn.ModuleList(
            conditional_affine_coupling(dim, dim, hidden_dims=widths)
            for _ in range(check_count("num_layers", num_layers))
        )
        self.register_buffer("reverse", torch.arange(dim - 1, -1, -1))

    def guide_distribution(self, x: Tensor) -> dist.Distribution:
        batch_shape = x.shape[: x.dim() - self.event_dim]
        dtype = self._noise_dtype(x)
        context = (x.to(dtype) / self.num_bins - 0.5).reshape(batch_shape + (self.dim,))
        transforms: list = []
        for i, coupling in enumerate(self.couplings):
            if i > 0:
                transforms.append(Permute(self.reverse))
            transforms.append(coupling.condition(context))
        # The sigmoid last: the distribution's support is the last map's codomain, (0, 1)
        # per element (after the reshape it was all reals); elementwise, the order changes
        # neither the values nor the density.
        transforms += [
            ReshapeTransform((self.dim,), self.event_shape),
            dist.transforms.SigmoidTransform(),
        ]
        zeros = torch.zeros(batch_shape + (self.dim,), dtype=dtype, device=x.device)
        base = dist.Normal(zeros, 1.0).to_event(1)
        return dist.TransformedDistribution(base, transforms)
