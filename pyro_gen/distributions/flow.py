"""Flow distributions: a base Normal pushed through transforms, usable in ``pyro.sample``."""

from __future__ import annotations

from collections.abc import Sequence

import pyro.distributions as dist
import torch
from pyro.distributions.conditional import ConditionalTransform
from torch import nn
from torch.distributions import Transform

from pyro_gen.distributions.mixture import positive_int
from pyro_gen.distributions.prior_module import (
    PriorModule,
    refuse_as_scored_site,
    site_holding,
    uncalled_message,
)
from pyro_gen.transforms._base import as_event_shape, modules_of, sample_count


class FlowDistribution(dist.TransformedDistribution):
    r"""A :class:`pyro.distributions.TransformedDistribution` with input checks.

    :math:`\log p(x) = \log p_u(f^{-1}(x)) - \log|\det J_f(f^{-1}(x))|`. Batch shape is
    the base's; under ``pyro.plate`` it is expanded like any Pyro distribution. While
    validation is on, ``log_prob`` raises a clear ``ValueError`` on a wrong event shape,
    non-finite values or values outside the support (the last transform's codomain)
    instead of returning a wrong number.

    Example:
        >>> from pyro_gen.transforms import affine_coupling
        >>> base = dist.Normal(torch.zeros(4), torch.ones(4)).to_event(1)
        >>> d = FlowDistribution(base, [affine_coupling(4, hidden_dims=[8])])
        >>> d.log_prob(torch.zeros(7, 4)).shape
        torch.Size([7])
    """

    arg_constraints: dict = {}

    # torch's TransformedDistribution keeps the shapes its transforms' forward_shape
    # returned, and ours return tuples; Pyro (EnergyDistance, AutoGaussian) and users call
    # .numel() on them, so they are given back as torch.Size like every distribution's
    @property
    def batch_shape(self) -> torch.Size:
        return torch.Size(self._batch_shape)

    @property
    def event_shape(self) -> torch.Size:
        return torch.Size(self._event_shape)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        # the instance's flag (set from the global one when validate_args is None, kept by
        # expand), so validate_args=False turns these checks off as it does torch's
        if self._validate_args:
            k = len(self.event_shape)
            if value.dim() < k or tuple(value.shape[value.dim() - k :]) != tuple(self.event_shape):
                raise ValueError(
                    f"flow expects values with event shape {tuple(self.event_shape)}, "
                    f"got {tuple(value.shape)}"
                )
            # one read-back in the common case (a device sync on an accelerator); which
            # check failed is found out only when one did
            finite = torch.isfinite(value).all()
            inside = self.support.check(value).all()  # reduced over event dims already
            if bool(finite & inside):
                return super().log_prob(value)
            if not bool(finite):
                raise ValueError("flow log_prob got non-finite values (nan or inf)")
            # a short message instead of torch's, which prints the whole tensor
            if not bool(inside):
                raise ValueError(
                    f"flow log_prob got values in [{value.min().item():.4g}, "
                    f"{value.max().item():.4g}], outside the support of the flow's last "
                    f"transform, {self.support}"
                )
        return super().log_prob(value)

    def rsample(self, sample_shape: tuple[int, ...] = ()) -> torch.Tensor:
        if not self.has_rsample:
            # torch raises a bare NotImplementedError from inside the base
            raise NotImplementedError(
                f"this flow's base ({type(self.base_dist).__name__}) has no reparameterized "
                f"sampler (a mixture base picks its component discretely), so rsample cannot "
                f"give pathwise gradients; use sample(), or a LearnedNormal / Normal base"
            )
        return super().rsample(sample_shape)

    def entropy(self) -> torch.Tensor:
        # the type torch raises, so callers that catch it still do; torch's has no message
        raise NotImplementedError(
            "a flow has no closed-form entropy (the log-Jacobian depends on the point); "
            "estimate it by Monte Carlo, -d.log_prob(d.sample((n,))).mean(0) for n draws "
            "(unbiased, standard error shrinking as 1/sqrt(n))"
        )

    # torch's mean and variance raise a NotImplementedError without a message; the same
    # type here, which Pyro's init_to_mean and pyro_gen's point estimates catch to fall
    # back on draws
    @property
    def mean(self) -> torch.Tensor:
        raise NotImplementedError(
            "a flow has no closed-form mean in general (it pushes the base through a "
            "nonlinear map); estimate it by Monte Carlo, d.sample((n,)).mean(0) for n draws"
        )

    @property
    def variance(self) -> torch.Tensor:
        raise NotImplementedError(
            "a flow has no closed-form variance in general (it pushes the base through a "
            "nonlinear map); estimate it by Monte Carlo, d.sample((n,)).var(0) for n draws"
        )


def _positive_temperature(temperature: float | torch.Tensor) -> float | torch.Tensor:
    """The temperature scales the base's standard deviations, so it must be positive (at
    zero Pyro's Normal refused a zero scale, printing the whole tensor)."""
    if isinstance(temperature, (int, float)):  # the usual case: no tensor per call
        ok = temperature > 0
    else:
        t = torch.as_tensor(temperature)
        ok = t.numel() == 0 or bool((t > 0).all())
    if not ok:
        raise ValueError(
            f"temperature scales the base's standard deviation and must be positive, got "
            f"{temperature}; use a small positive value (e.g. 0.7) to sample nearer the mode"
        )
    return temperature


class LearnedNormal(PriorModule):
    r"""A learnable diagonal Gaussian base :math:`\mathcal{N}(\mu, \operatorname{diag}(\sigma^2))`.

    Starts at the standard normal (:math:`\mu = 0`, :math:`\log\sigma = 0`).
    ``temperature`` :math:`T` scales :math:`\sigma` (sampling at :math:`T < 1` draws
    closer to the mode, as in Glow); the density at :math:`T = 1` is the model's.

    Args:
        event_shape: the flow's base event shape.

    Example:
        >>> base = LearnedNormal(2)
        >>> base(temperature=0.5).sample((1000,)).std().item() < 0.6
        True
    """

    def __init__(self, event_shape: int | Sequence[int]) -> None:
        super().__init__()
        self.event_shape = as_event_shape(event_shape)
        self.loc = nn.Parameter(torch.zeros(self.event_shape))
        self.log_scale = nn.Parameter(torch.zeros(self.event_shape))

    def forward(
        self, context: torch.Tensor | None = None, temperature: float = 1.0
    ) -> dist.TorchDistribution:
        temperature = _positive_temperature(temperature)
        loc, scale = self.loc, self.log_scale.exp() * temperature
        if context is not None:
            batch = context.shape[:-1]
            loc, scale = loc.expand(batch + loc.shape), scale.expand(batch + scale.shape)
        return dist.Normal(loc, scale).to_event(len(self.event_shape))


class LearnedMixture(PriorModule):
    r"""A learnable mixture of :math:`K` diagonal Gaussians as a flow's base (vector events).

    :math:`p(u) = \sum_k \pi_k \mathcal{N}(u; \mu_k, \operatorname{diag}\sigma_k^2)`
    with :math:`\pi = \operatorname{softmax}(\text{logits})`; the means start spread
    (:math:`\mathcal{N}(0, I)` draws), the scales at 1. ``temperature`` scales every
    component's :math:`\sigma_k` (not the density's exponent).

    Args:
        dim: base event size.
        num_components: :math:`K`.

    Example:
        >>> base = LearnedMixture(2, num_components=3)
        >>> base().log_prob(torch.zeros(5, 2)).shape
        torch.Size([5])
    """

    def __init__(self, dim: int, num_components: int = 8) -> None:
        super().__init__()
        dim, num_components = (
            positive_int("dim", dim),
            positive_int("num_components", num_components),
        )
        self.event_shape = (dim,)
        self.logits = nn.Parameter(torch.zeros(num_components))
        self.loc = nn.Parameter(torch.randn(num_components, dim))
        self.log_scale = nn.Parameter(torch.zeros(num_components, dim))

    def forward(
        self, context: torch.Tensor | None = None, temperature: float = 1.0
    ) -> dist.TorchDistribution:
        temperature = _positive_temperature(temperature)
        batch = torch.Size(() if context is None else context.shape[:-1])
        logits = self.logits.expand(batch + self.logits.shape)
        loc = self.loc.expand(batch + self.loc.shape)
        scale = (self.log_scale.exp() * temperature).expand(batch + self.loc.shape)
        components = dist.Normal(loc, scale).to_event(1)
        return dist.MixtureSameFamily(dist.Categorical(logits=logits), components)


class ConditionalNormal(PriorModule):
    r"""A diagonal Gaussian base whose mean and log-scale are a network of the context.

    :math:`p(u \mid c) = \mathcal{N}(\mu(c), \operatorname{diag}\sigma(c)^2)`; the
    network's last layer starts at zero, so the base starts standard normal.
    ``temperature`` scales :math:`\sigma(c)`.

    Args:
        dim: base event size.
        context_dim: context size.
        hidden_dims: hidden widths of the network.

    Example:
        >>> base = ConditionalNormal(2, context_dim=3, hidden_dims=(8,))
        >>> base(torch.zeros(4, 3)).batch_shape
        torch.Size([4])
    """

    def __init__(self, dim: int, context_dim: int, hidden_dims: Sequence[int] = (64,)) -> None:
        super().__init__()
        from pyro_gen.nn.mlp import MLP

        self.event_shape = (int(dim),)
        self.net = MLP(context_dim, hidden_dims, 2 * dim, zero_init_output=True)

    def forward(
        self, context: torch.Tensor | None = None, temperature: float = 1.0
    ) -> dist.TorchDistribution:
        if context is None:
            raise ValueError("ConditionalNormal is a conditional base: pass a context")
        temperature = _positive_temperature(temperature)
        loc, log_scale = self.net(context).chunk(2, -1)
        return dist.Normal(loc, log_scale.exp() * temperature).to_event(1)


class Flow(PriorModule):
    r"""A normalizing flow as a module; calling it returns a :class:`FlowDistribution`.

    Holds the transforms (registered, so ``pyro.module`` and ``.to(device)`` see their
    parameters and buffers) and a standard Normal base whose location and scale are
    buffers, so the distribution lives on the module's device. Conditional transforms
    (Pyro's :class:`~pyro.distributions.conditional.ConditionalTransformModule`) are
    conditioned on the ``context`` passed at call time; the distribution's batch shape
    is then ``context.shape[:-1]``.

    Use inside a model::

        flow = Flow((2,), [affine_coupling(2), ...])
        def model(x):
            pyro.module("flow", flow)
            with pyro.plate("data", x.shape[0]):
                pyro.sample("x", flow(), obs=x)

    Args:
        event_shape: data event shape.
        transforms: transforms in Pyro order (base to data).
        base_shape: base event shape; inferred with ``inverse_shape`` when omitted
            (conditional transforms are assumed to keep the shape).
        base: a learnable base instead of the standard normal: a module called as
            ``base(context, temperature)`` returning a distribution with event shape
            ``base_shape`` (:class:`LearnedNormal`, :class:`LearnedMixture`,
            :class:`ConditionalNormal`); a mismatched event shape is an error.

    Example:
        >>> import pyro
        >>> from pyro_gen.transforms import affine_coupling, conditional_affine_coupling
        >>> flow = Flow(2, [affine_coupling(2, hidden_dims=[8]), affine_coupling(2, parity=1)])
        >>> with pyro.plate("data", 5):
        ...     x = pyro.sample("x", flow())
        >>> x.shape, flow.log_prob(x).shape, flow.sample(3, temperature=0.5).shape
        (torch.Size([5, 2]), torch.Size([5]), torch.Size([3, 2]))
        >>> cflow = Flow(2, [conditional_affine_coupling(2, context_dim=3, hidden_dims=[8])])
        >>> tuple(cflow(torch.randn(4, 3)).batch_shape)
        (4,)
    """

    def __init__(
        self,
        event_shape: int | Sequence[int],
        transforms: Sequence[Transform | ConditionalTransform],
        *,
        base_shape: int | Sequence[int] | None = None,
        base: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.event_shape = as_event_shape(event_shape)
        self._transforms = list(transforms)
        self.transforms = nn.ModuleList([m for t in self._transforms for m in modules_of(t)])
        if base_shape is None:
            shape = self.event_shape
            for t in reversed(self._transforms):
                if isinstance(t, Transform):
                    shape = tuple(t.inverse_shape(shape))
            base_shape = shape
        self.base_shape = as_event_shape(base_shape)
        shape = self.base_shape
        for t in self._transforms:
            if isinstance(t, Transform):
                shape = tuple(t.forward_shape(shape))
        if shape != self.event_shape:
            # else the event shape given was silently ignored: samples took the transforms'
            raise ValueError(
                f"the transforms map the base event shape {self.base_shape} to {shape}, not "
                f"to the flow's event_shape {self.event_shape}"
            )
        # the base follows the transforms' dtype and device: float64 transforms built by hand
        # drew float32 noise, which they refused, naming a conversion of an internal tensor
        like = next(
            (
                t
                for t in (*self.transforms.parameters(), *self.transforms.buffers())
                if t.is_floating_point()
            ),
            torch.zeros(()),
        )
        self.register_buffer("base_loc", like.new_zeros(self.base_shape))
        self.register_buffer("base_scale", like.new_ones(self.base_shape))
        self.conditional = any(isinstance(t, ConditionalTransform) for t in self._transforms)
        if base is not None:
            shape = tuple(getattr(base, "event_shape", ()))
            if shape != self.base_shape:
                raise ValueError(
                    f"the base distribution has event shape {shape} but the flow's base "
                    f"(the transforms' input) has {self.base_shape}; build the base with "
                    f"event shape {self.base_shape}"
                )
            self.conditional = self.conditional or isinstance(base, ConditionalNormal)
        self.base = base

    def forward(
        self, context: torch.Tensor | None = None, temperature: float = 1.0
    ) -> FlowDistribution:
        """The flow distribution (conditioned on ``context`` if the flow is conditional)."""
        if self.conditional and context is None:
            raise ValueError("this flow has conditional transforms; pass a context")
        temperature = _positive_temperature(temperature)
        if self.base is not None:
            base = self.base(context, temperature)
        else:
            loc, scale = self.base_loc, self.base_scale * temperature
            if context is not None:
                batch = context.shape[:-1]
                loc, scale = loc.expand(batch + loc.shape), scale.expand(batch + scale.shape)
            base = dist.Normal(loc, scale).to_event(len(self.base_shape))
        parts = [
            t.condition(context) if isinstance(t, ConditionalTransform) else t
            for t in self._transforms
        ]
        return FlowDistribution(base, parts)

    def log_prob(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """:math:`\\log p(x)`, shape ``x.shape[:-len(event_shape)]``."""
        refuse_as_scored_site(self)
        return self(context).log_prob(x)

    def sample(
        self,
        num_samples: int | None = None,
        context: torch.Tensor | None = None,
        temperature: float = 1.0,
    ) -> torch.Tensor:
        """``num_samples`` draws (no gradient), shape ``(num_samples, *batch, *event_shape)``."""
        if num_samples is None:
            # Pyro's init strategies call fn.sample() on a site given the module uncalled
            site = site_holding(self)
            if site is not None:
                raise TypeError(uncalled_message(self, site))
            raise TypeError("Flow.sample needs num_samples, the number of draws")
        num_samples = sample_count(num_samples)
        return self(context, temperature).sample((num_samples,))

    def rsample(
        self, num_samples: int, context: torch.Tensor | None = None, temperature: float = 1.0
    ) -> torch.Tensor:
        """Reparameterized draws (gradients flow to the transforms)."""
        num_samples = sample_count(num_samples)
        return self(context, temperature).rsample((num_samples,))
