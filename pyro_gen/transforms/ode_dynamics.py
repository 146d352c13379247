r"""Vector fields :math:`f(z, t)` for continuous normalizing flows: FFJORD's ConcatSquash
MLP and conv net, and an MLP on a sinusoidal embedding of :math:`t` (the one flow matching
trains best), for :class:`~pyro_gen.transforms.continuous.ContinuousFlow`; and the field the
solver integrates, :class:`AugmentedDynamics`: :math:`f` with the trace of its Jacobian, whose
integral is the flow's log-determinant."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from pyro_gen.transforms.divergence import divergence_exact, divergence_hutchinson
from pyro_gen.transforms.own_derivatives import autograd_enabled, graph_input

__all__ = [
    "AugmentedDynamics",
    "ConcatSquashLinear",
    "ODEConvNet",
    "ODEMLP",
    "ODETimeMLP",
    "call_drift",
]

TRACE_METHODS = ("exact", "hutchinson")

#: what a user's dynamics network is told when it fails, or returns another shape: the usual
#: cause is a network written for torchdiffeq's ``func(t, z)`` argument order
ARGUMENT_ORDER = (
    "ContinuousFlow and odeint_with_logdet call the dynamics as f(z, t): the state z "
    "(batch_shape + event_shape) first, the time t (a 0-dim tensor) second. torchdiffeq's "
    "func(t, z) takes them the other way round: write forward(self, z, t) (a field that does "
    "not depend on time takes t and ignores it)"
)


def call_drift(drift_fn: Callable[[Tensor, Tensor], Tensor], z: Tensor, t: Tensor) -> Tensor:
    """``drift_fn(z, t)``, checked to be :math:`dz/dt` of ``z``'s shape.

    A network that fails when called so (a ``TypeError`` or ``RuntimeError``, the errors a
    swapped ``(t, z)`` order gives from inside the solver) gets the same error type with the
    calling convention added, as does one returning another shape.

    Example:
        >>> call_drift(lambda z, t: -z, torch.ones(2, 3), torch.tensor(0.0)).shape
        torch.Size([2, 3])
        >>> call_drift(lambda t, z: z @ torch.eye(3), torch.ones(2, 3), torch.tensor(0.0))
        Traceback (most recent call last):
        ...
        RuntimeError: the dynamics failed when called as f(z, t) ... write forward(self, z, t) ...
    """
    try:
        dz = drift_fn(z, t)
    except (TypeError, RuntimeError) as e:
        if type(e) not in (TypeError, RuntimeError):  # out of memory and the like: as raised
            raise
        raise type(e)(
            f"the dynamics failed when called as f(z, t) with z of shape {tuple(z.shape)} and "
            f"t of shape {tuple(t.shape)}: {e}. {ARGUMENT_ORDER}"
        ) from e
    if not isinstance(dz, Tensor) or dz.shape != z.shape:
        got = tuple(dz.shape) if isinstance(dz, Tensor) else type(dz).__name__
        raise ValueError(
            f"drift returned shape {got}, expected {tuple(z.shape)} (dz/dt has the shape of "
            f"z). {ARGUMENT_ORDER}"
        )
    return dz


class AugmentedDynamics(nn.Module):
    r"""The augmented ODE
    :math:`\frac{d}{dt}[z, \ell] = [f(z, t), \operatorname{tr}(\partial f/\partial z)]`.

    Integrating it from :math:`t_a` to :math:`t_b` with :math:`\ell(t_a) = 0` gives
    :math:`z(t_b)` and :math:`\ell(t_b) = \log|\det \partial z(t_b) / \partial z(t_a)|`.
    A torchdiffeq-compatible ``func(t, state)``; an ``nn.Module`` so ``odeint_adjoint`` finds the
    parameters of ``drift_fn`` when it is a module.

    Args:
        drift_fn: ``f(z, t) -> dz/dt``, ``z`` of shape ``batch_shape + event_shape``, ``t`` a
            0-dim tensor (expand it yourself if your network wants one time per example).
        event_dim: number of rightmost dimensions of ``z`` forming one event.
        trace: ``"exact"`` or ``"hutchinson"``.
        noise: Hutchinson noise, fixed for the whole solve (required for ``"hutchinson"``).

    Example:
        >>> dyn = AugmentedDynamics(lambda z, t: -z, event_dim=1, trace="exact")
        >>> dz, dlogdet = dyn(torch.tensor(0.0), (torch.ones(2, 3), torch.zeros(2)))
        >>> dlogdet.tolist()
        [-3.0, -3.0]
    """

    def __init__(
        self,
        drift_fn: Callable[[Tensor, Tensor], Tensor],
        event_dim: int = 1,
        trace: str = "exact",
        noise: Tensor | None = None,
    ) -> None:
        super().__init__()
        if trace not in TRACE_METHODS:
            raise ValueError(f"trace must be one of {TRACE_METHODS}, got {trace!r}")
        if trace == "hutchinson" and noise is None:
            raise ValueError("the Hutchinson estimator needs a noise tensor fixed for the solve")
        self.drift_fn = drift_fn
        self.event_dim = event_dim
        self.trace = trace
        self.noise = noise
        self.num_evals = 0

    def forward(self, t: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        z = state[0]
        self.num_evals += 1
        # Differentiating the divergence again is only needed when the caller records a graph
        # (training, or the adjoint's backward pass); sampling under no_grad skips it.
        create_graph = torch.is_grad_enabled()
        with autograd_enabled():
            z, t = graph_input(z), graph_input(t)
            # Without a graph to keep, differentiate at a fresh leaf: the adjoint's forward
            # solve runs under no_grad, where the state is a view of an input that requires
            # grad (a reparameterized sample, HMC's position); autograd routes such a view's
            # gradient to its base, so the divergence w.r.t. the view failed ("not used in
            # the graph").
            if not create_graph or not z.requires_grad:
                z = z.detach().requires_grad_(True)
            dz = call_drift(self.drift_fn, z, t)
            if self.trace == "exact":
                div = divergence_exact(dz, z, self.event_dim, create_graph)
            else:
                div = divergence_hutchinson(dz, z, self.noise, self.event_dim, create_graph)
        if not create_graph:
            dz, div = dz.detach(), div.detach()
        return dz, div


class ConcatSquashLinear(nn.Module):
    r"""FFJORD's time-conditioned linear layer :math:`(W x + b)\,\sigma(a t + c) + d t`.

    Example:
        >>> layer = ConcatSquashLinear(2, 8)
        >>> layer(torch.randn(5, 2), torch.tensor(0.3)).shape
        torch.Size([5, 8])
    """

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_dim, out_dim)
        self.gate = nn.Linear(1, out_dim)
        self.bias = nn.Linear(1, out_dim, bias=False)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        # one time for all (an ODE solve) or one per example, shaped like x's batch (flow
        # matching trains at a different time for each example)
        tt = t.to(x)
        tt = tt.reshape(1) if tt.numel() == 1 else tt.unsqueeze(-1)
        return self.linear(x) * torch.sigmoid(self.gate(tt)) + self.bias(tt)


class ODEMLP(nn.Module):
    """Dynamics network :math:`f(z, t)` for vectors: ConcatSquash layers with smooth activations.

    Smooth activations (softplus, tanh) keep the ODE well posed and the trace differentiable.

    Args:
        dim: event size.
        hidden_dims: hidden layer widths.
        activation: activation module class.

    Example:
        >>> f = ODEMLP(2, (16, 16))
        >>> f(torch.randn(4, 2), torch.tensor(0.0)).shape
        torch.Size([4, 2])
    """

    def __init__(
        self,
        dim: int,
        hidden_dims: Sequence[int] = (64, 64),
        activation: type[nn.Module] = nn.Softplus,
    ) -> None:
        super().__init__()
        dims = [dim, *hidden_dims, dim]
        self.layers = nn.ModuleList(ConcatSquashLinear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.activation = activation()

    def forward(self, z: Tensor, t: Tensor) -> Tensor:
        h = z
        for i, layer in enumerate(self.layers):
            h = layer(h, t)
            if i < len(self.layers) - 1:
                h = self.activation(h)
        return h


class ODETimeMLP(nn.Module):
    r"""Dynamics network :math:`f(z, t)` for vectors with a sinusoidal embedding of the time:
    :class:`~pyro_gen.nn.TimeMLP` (residual SiLU blocks, each adding a projection of the
    embedding) applied to ``t * time_scale``.

    Why beside :class:`ODEMLP`: ConcatSquash layers see :math:`t` only through one sigmoid gate
    and one bias per unit, which makes fields that change quickly in time hard to fit. Trained by
    flow matching on the checkerboard for 60 CPU seconds (width 128, 3 layers), this network
    reached a KL of 0.18 nats against ConcatSquash's 0.32 (``benchmarks/RESULTS.md``).

    With ``fourier_features = m > 0`` the network also sees random Fourier features of its
    input (Tancik et al. 2020), :math:`[z, \sin(2\pi B^\top z), \cos(2\pi B^\top z)]` with a
    fixed :math:`B \in \mathbb{R}^{d \times m}`, :math:`B_{ij} \sim \mathcal N(0, s^2)`
    (``fourier_scale``), meant for sharp edges, which an MLP on raw coordinates fits slowly. On the
    checkerboard (flow matching, width 128, 3 blocks, 64 features, scale 0.5) they lowered the KL
    after 60 CPU seconds (0.18 against 0.24 nats, one seed) but not after 5 minutes (0.063, against
    0.056 without them in an earlier session; ``benchmarks/RESULTS.md``), so they are off by
    default.

    Args:
        dim: event size.
        hidden_dim: width of the residual blocks.
        num_layers: number of residual blocks.
        time_scale: factor on :math:`t` before the embedding (its frequencies span
            ``1`` to ``1e-4`` per unit, so times in ``[0, 1]`` need the spread).
        fourier_features: number :math:`m` of random frequencies of the input (0: none).
        fourier_scale: std :math:`s` of the frequencies, in cycles per unit of :math:`z`.

    References:
        Tancik et al. Fourier Features Let Networks Learn High Frequency Functions in Low
        Dimensional Domains. NeurIPS 2020, arXiv:2006.10739.

    Example:
        >>> f = ODETimeMLP(2, 16, num_layers=1)
        >>> f(torch.randn(4, 2), torch.tensor(0.5)).shape, f(torch.randn(4, 2), torch.rand(4)).shape
        (torch.Size([4, 2]), torch.Size([4, 2]))
        >>> g = ODETimeMLP(2, 16, num_layers=1, fourier_features=8)
        >>> g(torch.randn(4, 2), torch.rand(4)).shape
        torch.Size([4, 2])
    """

    fourier_matrix: Tensor | None

    def __init__(
        self,
        dim: int,
        hidden_dim: int = 128,
        num_layers: int = 3,
        time_scale: float = 1000.0,
        *,
        fourier_features: int = 0,
        fourier_scale: float = 1.0,
    ) -> None:
        super().__init__()
        from pyro_gen.nn.time_embedding import TimeMLP

        if (
            isinstance(fourier_features, bool)
            or int(fourier_features) != fourier_features
            or (fourier_features < 0)
        ):
            raise ValueError(
                f"fourier_features must be a whole number >= 0, got {fourier_features!r}"
            )
        if not fourier_scale > 0:
            raise ValueError(f"fourier_scale must be positive, got {fourier_scale!r}")
        m = int(fourier_features)
        # a buffer, not a parameter (fixed frequencies); None without features, so the state
        # dicts of runs written before the option still load
        self.register_buffer("fourier_matrix", fourier_scale * torch.randn(dim, m) if m else None)
        self.net = TimeMLP(dim + 2 * m, hidden_dim, num_layers=num_layers, out_dim=dim)
        self.time_scale = float(time_scale)

    def forward(self, z: Tensor, t: Tensor) -> Tensor:
        if self.fourier_matrix is not None:
            proj = (2 * math.pi) * (z @ self.fourier_matrix.to(z))
            z = torch.cat([z, proj.sin(), proj.cos()], dim=-1)
        # one time for the whole batch (an ODE solve) or one per example (flow matching)
        return self.net(z, t.to(z) * self.time_scale)


class ODEConvNet(nn.Module):
    """Dynamics network for images ``(C, H, W)``: 3x3 convs with the time as an extra channel.

    Args:
        channels: image channels.
        hidden_channels: width of the hidden convolutions.
        num_layers: number of hidden convolutions.

    Example:
        >>> f = ODEConvNet(1, 8)
        >>> f(torch.randn(2, 1, 6, 6), torch.tensor(0.5)).shape
        torch.Size([2, 1, 6, 6])
        >>> f(torch.randn(3, 2, 1, 6, 6), torch.rand(3, 2)).shape  # extra batch dims
        torch.Size([3, 2, 1, 6, 6])
    """

    def __init__(self, channels: int, hidden_channels: int = 32, num_layers: int = 2) -> None:
        super().__init__()
        dims = [channels, *([hidden_channels] * num_layers), channels]
        self.convs = nn.ModuleList(
            nn.Conv2d(a + 1, b, 3, padding=1) for a, b in zip(dims[:-1], dims[1:])
        )

    def forward(self, z: Tensor, t: Tensor) -> Tensor:
        # conv2d takes one batch dim: a flow scored under two plates, or Predictive's
        # particles, hands over (S, B, C, H, W), which failed inside conv2d
        batch = z.shape[:-3]
        h = z.reshape((-1,) + z.shape[-3:])
        t = t.to(h)
        # one time for all, or one per example
        t = t.expand(batch).reshape(-1, 1, 1, 1) if t.numel() > 1 else t.reshape(())
        for i, conv in enumerate(self.convs):
            tt = t.expand(h.shape[:-3] + (1,) + h.shape[-2:])
            h = conv(torch.cat([h, tt], dim=-3))
            if i < len(self.convs) - 1:
                h = nn.functional.softplus(h)
        return h.reshape(batch + h.shape[-3:])
