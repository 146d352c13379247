"""Normalization layers as flow transforms: ActNorm (Glow) and a flow BatchNorm.

Both act per feature on vectors ``(D,)`` and per channel on images ``(C, H, W)``. In
Pyro's convention the forward map (``_call``) goes from the base towards the data;
the inverse (``_inverse``) is what :meth:`TransformedDistribution.log_prob` applies to
data, so that is where data statistics are taken.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from pyro_gen.transforms._base import FlowTransformModule, as_event_shape


def _feature_view(event_shape: tuple[int, ...]) -> tuple[int, ...]:
    """Shape that broadcasts a per-feature/per-channel vector against an event."""
    if len(event_shape) == 1:
        return event_shape
    if len(event_shape) == 3:
        return (event_shape[0], 1, 1)
    raise ValueError(f"event_shape must be (D,) or (C, H, W), got {event_shape}")


def _reduce_dims(x: torch.Tensor, event_shape: tuple[int, ...]) -> list[int]:
    """All dims except the feature/channel dim: batch dims (+ spatial dims for images)."""
    feat = x.dim() - len(event_shape)
    return [d for d in range(x.dim()) if d != feat]


def _values_per_feature(x: torch.Tensor, event_shape: tuple[int, ...]) -> int:
    """How many values each feature/channel statistic is taken over. (An unbatched vector
    has none of :func:`_reduce_dims`, and ``mean([])`` would reduce over the features.)"""
    return x.numel() // x.shape[x.dim() - len(event_shape)]


class ActNorm(FlowTransformModule):
    r"""Activation normalization (Glow): a per-channel affine map with data-dependent init.

    .. math::

        y = x \odot e^{s} + b, \qquad \log|\det J| = \textstyle\sum_c s_c \cdot H W.

    On its first call, :math:`s, b` are set from that batch so the output of whichever
    direction is called is standardized per channel: called on data (``inv``, as in
    ``log_prob``) the latent side gets zero mean and unit variance; called on base samples
    (forward) the output does. Afterwards they are ordinary parameters. A first call with one
    value per channel (a single vector, as the flow of Pyro's ``AutoNormalizingFlow`` first
    sees) has no spread to standardize by and starts the layer at the identity.

    Until then :math:`s, b` are NaN: the parameters themselves record whether the
    initialization happened, so every path that restores them restores that too
    (``load_state_dict``; Pyro's param store ``save``/``load`` followed by
    ``pyro.module(name, module, update_module_params=True)``, which carries parameters
    only; assigning ``.data``). A separate flag buffer would be lost on the param-store
    path, and the module would re-initialize over the loaded weights.

    Args:
        event_shape: ``D`` / ``(D,)`` or ``(C, H, W)``.
        eps: added to the standard deviation at initialization.
        cache_size: 0 (default) or 1, see :class:`~pyro_gen.transforms.FlowTransformModule`.

    References:
        Kingma and Dhariwal, Glow: Generative Flow with Invertible 1x1 Convolutions,
        arXiv:1807.03039.

    Example:
        >>> t = ActNorm((2, 4, 4))
        >>> t.initialized
        False
        >>> y = 3.0 + 5.0 * torch.randn(64, 2, 4, 4)
        >>> x = t.inv(y)  # first call: data-dependent init
        >>> t.initialized, round(x.std().item(), 2)
        (True, 1.0)
    """

    def __init__(
        self, event_shape: int | Sequence[int], *, eps: float = 1e-6, cache_size: int = 0
    ) -> None:
        shape = as_event_shape(event_shape)
        super().__init__(shape, cache_size=cache_size)
        n = shape[0]
        if not 0 <= eps < math.inf:  # a negative floor made the log-scale's start NaN
            raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
        self.eps = eps
        self.loc = nn.Parameter(torch.full((n,), math.nan))
        self.log_scale = nn.Parameter(torch.full((n,), math.nan))
        # Python mirror of "the parameters are set": once True, calls skip reading them (no
        # host sync on GPU, no data-dependent branch when traced)
        self._initialized = False
        self._view = _feature_view(shape)
        self._spatial = 1
        for s in shape[1:]:
            self._spatial *= s

    @property
    def initialized(self) -> bool:
        """Whether the data-dependent initialization has set the parameters."""
        return not bool(torch.isnan(self.log_scale).any() or torch.isnan(self.loc).any())

    @torch.no_grad()
    def _initialize(self, v: torch.Tensor, data_side: bool) -> None:
        if _values_per_feature(v, self.event_shape) < 2:
            # one value per feature (a single vector, as an autoguide's flow first sees):
            # no spread to standardize by, so start at the identity
            self.loc.zero_()
            self.log_scale.zero_()
            self._initialized = True
            return
        dims = _reduce_dims(v, self.event_shape)
        mean = v.mean(dims)
        std = v.std(dims, unbiased=False) + self.eps
        if data_side:  # x = (y - b) e^{-s} standardized
            self.loc.copy_(mean)
            self.log_scale.copy_(std.log())
        else:  # y = x e^{s} + b standardized
            self.log_scale.copy_(-std.log())
            self.loc.copy_(-mean / std)
        self._initialized = True

    def _needs_init(self) -> bool:
        if not self._initialized:
            self._initialized = self.initialized
        return not self._initialized

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # state saved before the flag moved into the parameters: drop the old buffer's key
        legacy = state_dict.pop(prefix + "initialized", None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if legacy is not None and not bool(legacy):
            with torch.no_grad():
                self.loc.fill_(math.nan)
                self.log_scale.fill_(math.nan)
        self._initialized = False  # re-read the loaded parameters on the next call

    def _ladj(self, batch_shape: torch.Size) -> torch.Tensor:
        return (self.log_scale.sum() * self._spatial).expand(batch_shape)

    def _forward(self, x):
        if self._needs_init():
            self._initialize(x, data_side=False)
        s, b = self.log_scale.view(self._view), self.loc.view(self._view)
        y = x * torch.exp(s) + b
        return y, self._ladj(x.shape[: x.dim() - len(self.event_shape)])

    def _backward(self, y):
        if self._needs_init():
            self._initialize(y, data_side=True)
        s, b = self.log_scale.view(self._view), self.loc.view(self._view)
        x = (y - b) * torch.exp(-s)
        return x, self._ladj(y.shape[: y.dim() - len(self.event_shape)])


class BatchNorm(FlowTransformModule):
    r"""Batch normalization as a bijection (RealNVP, MAF), with running statistics.

    Inverse (data :math:`y` to latent :math:`x`, used by ``log_prob``):

    .. math::

        x = \frac{y - \mu}{\sqrt{\sigma^2 + \epsilon}}\, e^{\gamma} + \beta, \qquad
        \log\left|\det \frac{\partial y}{\partial x}\right|
        = \textstyle\sum \big(\tfrac12 \log(\sigma^2 + \epsilon) - \gamma\big).

    In training mode :math:`\mu, \sigma^2` are the statistics of the batch passed to the
    inverse (biased variance, as ``torch.nn.BatchNorm``), treated as constants in the
    log-determinant, and the running averages are updated (unbiased variance). In eval
    mode, and in the forward (sampling) direction always, the running averages are used.
    Each call returns the log-determinant of the statistics it actually used, so
    ``log_abs_det_jacobian`` is right in both modes and both directions.

    The batch is every batch dim of the input, so the particle dims that
    ``Trace_ELBO(vectorize_particles=True)`` adds on the left of a flow prior's latents
    share one set of statistics (with sequential particles each has its own): the two
    losses differ in training mode. Use sequential particles, or ``.eval()``, where that
    matters.

    Why not Pyro's ``BatchNorm``: it supports vectors only (no per-channel image
    statistics), its :math:`\gamma = \mathrm{relu}(\cdot) + 10^{-6}` can die (zero
    gradient), and its training-mode log-det always uses the variance of ``y``, which is
    wrong for samples drawn through the forward map (that used running statistics).
    Pyro's version still sits in the registry test, as a reused transform would.

    The running statistics are buffers: ``state_dict``, ``torch.save`` and ``copy.deepcopy``
    carry them, but Pyro's param store holds parameters only, so after a param-store
    ``save``/``load`` and ``pyro.module(..., update_module_params=True)`` they are those of
    the fresh module; restore them with ``load_state_dict`` (training mode does not use
    them for the density).

    Args:
        event_shape: ``D`` / ``(D,)`` or ``(C, H, W)``.
        momentum: running-average momentum.
        eps: variance floor :math:`\epsilon`.
        cache_size: 1 (default) or 0. Unlike Pyro's ``BatchNorm`` (0) the pair from the
            last call is kept: in training mode ``t(t.inv(y))`` is not ``y`` (the forward map
            uses the running averages), and ``ComposeTransformModule``'s log-det recomputes
            its intermediate values with forward calls, so without the cache a BatchNorm in
            a ``ComposeTransformModule`` gave another density than the same list of
            transforms (a different value, silently).

    References:
        Ioffe and Szegedy, Batch Normalization, arXiv:1502.03167.
        Dinh et al., Density estimation using Real NVP, arXiv:1605.08803.

    Example:
        >>> bn = BatchNorm(3)
        >>> x = bn.inv(10.0 + 2.0 * torch.randn(256, 3))  # training mode: batch statistics
        >>> torch.allclose(x.mean(0), torch.zeros(3), atol=1e-5)
        True
        >>> bool((bn.running_mean > 0.5).all())
        True
    """

    def __init__(
        self,
        event_shape: int | Sequence[int],
        *,
        momentum: float = 0.1,
        eps: float = 1e-5,
        cache_size: int = 1,
    ) -> None:
        shape = as_event_shape(event_shape)
        super().__init__(shape, cache_size=cache_size)
        n = shape[0]
        # outside these the running variance went negative (momentum 2: NaN log-dets in eval
        # mode) or the variance floor took the root of a negative number, without a word
        if not 0 <= momentum <= 1:
            raise ValueError(f"momentum must lie in [0, 1], got {momentum!r}")
        if not 0 <= eps < math.inf:
            raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
        self.momentum = momentum
        self.eps = eps
        self.log_gamma = nn.Parameter(torch.zeros(n))
        self.beta = nn.Parameter(torch.zeros(n))
        self.register_buffer("running_mean", torch.zeros(n))
        self.register_buffer("running_var", torch.ones(n))
        self._view = _feature_view(shape)
        self._spatial = 1
        for s in shape[1:]:
            self._spatial *= s

    def _ladj(self, var: torch.Tensor, batch_shape: torch.Size) -> torch.Tensor:
        per = 0.5 * torch.log(var + self.eps) - self.log_gamma
        return (per.sum() * self._spatial).expand(batch_shape)

    def _batch_stats(self, y: torch.Tensor, update: bool) -> tuple[torch.Tensor, torch.Tensor]:
        n = _values_per_feature(y, self.event_shape)
        if n < 2:
            # as torch.nn.BatchNorm: a batch of one has no variance (it gave x = 0 and a
            # log-det of D/2 log(eps), a density too high by ~17 nats for 3 features)
            raise ValueError(
                f"BatchNorm in training mode takes statistics over the batch and needs more "
                f"than one value per feature, got a value of shape {tuple(y.shape)}: train on "
                f"batches of at least 2 (with fit, a batch_size that leaves no last batch of "
                f"one), or call .eval() to use the running averages"
            )
        dims = _reduce_dims(y, self.event_shape)
        mean = y.mean(dims)
        var = y.var(dims, unbiased=False)
        if update:
            if torch._C._get_tracing_state() is not None:
                # a trace keeps only what feeds its outputs: the replays (every step after
                # JitTrace_ELBO's first) left the running averages as they were, so samples
                # and eval-mode densities came from statistics of the first batch, silently
                raise RuntimeError(
                    "BatchNorm in training mode updates its running averages, which a "
                    "torch.jit.trace replay (JitTrace_ELBO, NUTS/HMC(jit_compile=True)) does "
                    "not repeat: train with Trace_ELBO, or call .eval() first to use the "
                    "running averages as fixed statistics"
                )
            with torch.no_grad():
                unbiased = var * (n / max(n - 1, 1))
                self.running_mean.lerp_(mean.detach(), self.momentum)
                self.running_var.lerp_(unbiased.detach(), self.momentum)
        return mean, var

    def _forward(self, x):
        mean, var = self.running_mean, self.running_var
        v = self._view
        y = (x - self.beta.view(v)) * torch.exp(-self.log_gamma.view(v))
        y = y * torch.sqrt(var + self.eps).view(v) + mean.view(v)
        return y, self._ladj(var, x.shape[: x.dim() - len(self.event_shape)])

    def _backward(self, y, update: bool = True):
        if self.training:
            mean, var = self._batch_stats(y, update)
        else:
            mean, var = self.running_mean, self.running_var
        v = self._view
        x = (y - mean.view(v)) * torch.rsqrt(var + self.eps).view(v)
        x = x * torch.exp(self.log_gamma.view(v)) + self.beta.view(v)
        return x, self._ladj(var, y.shape[: y.dim() - len(self.event_shape)])

    def log_abs_det_jacobian(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        cache = self._ladj_cache
        if cache.holds(x, y):
            return cache.ladj
        # cache miss: follow the density convention (statistics of the data-side batch)
        # without touching the running averages
        return self._backward(y, update=False)[1]
