r"""Continuous normalizing flows (FFJORD) and reusable ODE log-likelihood machinery.

A continuous normalizing flow defines a bijection by integrating an ordinary differential
equation :math:`\frac{dz}{dt} = f(z, t)`. Along a trajectory the log-density obeys the
instantaneous change of variables

.. math::

    \frac{d \log p(z(t))}{dt} = -\operatorname{tr}\left(\frac{\partial f}{\partial z(t)}\right),

so the log-determinant of the map :math:`z(t_a) \mapsto z(t_b)` is
:math:`\int_{t_a}^{t_b} \operatorname{tr}(\partial f / \partial z)\, dt` (a signed integral:
it also holds for :math:`t_b < t_a`). The trace is computed exactly (one backward pass per
dimension) or estimated with Hutchinson's estimator
:math:`\operatorname{tr}(A) = \mathbb{E}_\epsilon[\epsilon^\top A \epsilon]` with one noise draw
per solve, as in FFJORD.

The functions :func:`odeint_with_logdet` and :func:`ode_log_likelihood` are public so that other
families reuse them; the diffusion family evaluates its probability-flow ODE likelihood with
``ode_log_likelihood(drift_fn, x, t0=eps, t1=T, base_log_prob=prior.log_prob)``.

Numerical note: the log-determinant is exact only up to the solver tolerance. Jacobian checks
against autograd need float64, ``trace="exact"`` and ``rtol = atol = 1e-7`` or tighter.

References:
    Chen, Rubanova, Bettencourt, Duvenaud. Neural Ordinary Differential Equations. NeurIPS 2018,
    arXiv:1806.07366.
    Grathwohl, Chen, Bettencourt, Sutskever, Duvenaud. FFJORD: Free-form Continuous Dynamics for
    Scalable Reversible Generative Models. ICLR 2019, arXiv:1810.01367.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

import torch
from torch import Tensor, nn

from pyro_gen.transforms._base import FlowTransformModule
from pyro_gen.transforms.divergence import divergence_exact, divergence_hutchinson
from pyro_gen.transforms.ode_dynamics import (
    ODEMLP,
    TRACE_METHODS,
    AugmentedDynamics,
    ConcatSquashLinear,
    ODEConvNet,
    ODETimeMLP,
)

__all__ = [
    "AugmentedDynamics",
    "ConcatSquashLinear",
    "ContinuousFlow",
    "ODEConvNet",
    "ODEMLP",
    "ODETimeMLP",
    "cnf",
    "divergence_exact",
    "divergence_hutchinson",
    "ode_log_likelihood",
    "odeint_with_logdet",
    "solve_ode",
]

DriftFn = Callable[[Tensor, Tensor], Tensor]
#: Event sizes up to this use the exact trace by default (D backward passes per evaluation).
EXACT_TRACE_MAX_DIM = 16


def _torchdiffeq():
    try:
        import torchdiffeq
    except ImportError as e:  # pragma: no cover - torchdiffeq is an optional dependency
        raise ImportError("continuous flows need torchdiffeq: pip install 'pyro-gen[ode]'") from e
    return torchdiffeq


#: torchdiffeq's fixed-grid solvers: their steps do not depend on the state
FIXED_STEP_METHODS = frozenset(
    {"euler", "midpoint", "heun2", "heun3", "rk4"}
    | {"explicit_adams", "implicit_adams", "fixed_adams"}
)


def _refuse_tracing(method: str, adjoint: bool) -> None:
    """A clear error instead of a silently wrong ``torch.jit.trace`` (what Pyro's
    ``NUTS(jit_compile=True)`` and ``JitTrace_ELBO`` record): a trace keeps the steps an
    adaptive solver chose for the input it was recorded at, so elsewhere the tolerance no
    longer holds (1e-2 errors at rtol=1e-6), and the adjoint's backward pass is not
    recorded at all."""
    if torch._C._get_tracing_state() is None:
        return
    if adjoint:
        reason = "the adjoint method's backward pass is not recorded by a trace"
    elif method not in FIXED_STEP_METHODS:
        reason = (
            f"method={method!r} picks its steps from the input, and a trace replays the steps "
            "of the input it was recorded at, without error control"
        )
    else:
        return
    raise RuntimeError(
        f"ContinuousFlow (odeint_with_logdet) cannot run under torch.jit.trace, as "
        f"NUTS/HMC(jit_compile=True) and JitTrace_ELBO run it: {reason}. Use "
        "jit_compile=False (Trace_ELBO), or a fixed-step solver without the adjoint: "
        "method='rk4', options={'step_size': ...}, adjoint=False."
    )


def _sample_noise(z: Tensor, kind: str) -> Tensor:
    if kind == "rademacher":
        return torch.randint(0, 2, z.shape, device=z.device).to(z.dtype) * 2 - 1
    if kind == "gaussian":
        return torch.randn_like(z)
    raise ValueError(f"noise must be 'rademacher' or 'gaussian', got {kind!r}")


def odeint_with_logdet(
    drift_fn: DriftFn,
    x: Tensor,
    t0: float,
    t1: float,
    *,
    event_dim: int = 1,
    trace: str | None = None,
    noise: str = "rademacher",
    method: str = "dopri5",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    options: dict | None = None,
    adjoint: bool = False,
    adjoint_params: Iterable[Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    r"""Integrate :math:`dz/dt = f(z, t)` from ``t0`` to ``t1`` together with the log-determinant.

    .. math::

        z(t_1) = x + \int_{t_0}^{t_1} f(z(t), t)\, dt, \qquad
        \log\left|\det \frac{\partial z(t_1)}{\partial x}\right|
            = \int_{t_0}^{t_1} \operatorname{tr}\frac{\partial f}{\partial z(t)}\, dt.

    ``t1 < t0`` integrates backwards (the inverse map). Exact only up to the solver tolerance.
    An empty batch (``x`` with no elements) is returned as it is, with a zero log-det.
    Under ``torch.compile`` the solve runs eagerly (a graph break) and the rest compiles.

    Args:
        drift_fn: ``f(z, t)``; ``t`` is a 0-dim tensor.
        x: initial state, shape ``batch_shape + event_shape``.
        t0: start time.
        t1: end time.
        event_dim: number of rightmost dims of ``x`` forming one event.
        trace: ``"exact"`` or ``"hutchinson"``; default exact when the event has at most
            :data:`EXACT_TRACE_MAX_DIM` elements.
        noise: Hutchinson noise, ``"rademacher"`` or ``"gaussian"`` (one draw per solve).
        method: a torchdiffeq solver (``"dopri5"``, ``"rk4"``, ``"euler"``, ...).
        rtol: relative tolerance of adaptive solvers.
        atol: absolute tolerance of adaptive solvers.
        options: torchdiffeq solver options (e.g. ``{"step_size": 0.05}`` for fixed-step ones).
        adjoint: use ``odeint_adjoint`` (memory constant in the number of steps).
        adjoint_params: parameters to differentiate with the adjoint; default the parameters of
            ``drift_fn`` when it is an ``nn.Module`` (pass them when it is a closure).

    Returns:
        ``(z1, logdet)`` with ``z1`` shaped like ``x`` and ``logdet`` of shape ``batch_shape``.

    Example:
        >>> z1, logdet = odeint_with_logdet(lambda z, t: -z, torch.ones(2, 3), 0.0, 1.0)
        >>> torch.allclose(z1, torch.full((2, 3), math.exp(-1.0)), atol=1e-4)
        True
        >>> torch.allclose(logdet, torch.full((2,), -3.0), atol=1e-4)
        True
    """
    if event_dim > x.dim():
        raise ValueError(f"x of shape {tuple(x.shape)} has fewer than event_dim={event_dim} dims")
    if not torch.isfinite(x).all():
        raise ValueError("odeint_with_logdet got non-finite input")
    _refuse_tracing(method, adjoint)
    if trace is None:
        num_dims = math.prod(x.shape[x.dim() - event_dim :])
        trace = "exact" if num_dims <= EXACT_TRACE_MAX_DIM else "hutchinson"
    eps = _sample_noise(x, noise) if trace == "hutchinson" else None
    dynamics = AugmentedDynamics(drift_fn, event_dim=event_dim, trace=trace, noise=eps)
    batch_shape = x.shape[: x.dim() - event_dim]
    if x.numel() == 0:
        # an empty batch: adaptive solvers would divide by its zero-element error norm
        return x.clone(), x.new_zeros(batch_shape)
    state = (x, torch.zeros(batch_shape, dtype=x.dtype, device=x.device))
    times = torch.tensor([t0, t1], dtype=x.dtype, device=x.device)
    kwargs = dict(rtol=rtol, atol=atol, method=method, options=options)
    if adjoint and adjoint_params is None:
        adjoint_params = tuple(dynamics.parameters())
    zs, logdets = _odeint(dynamics, state, times, adjoint, adjoint_params, kwargs)
    return zs[-1], logdets[-1]


# torch.compile runs the solve eagerly (a graph break) and compiles the rest of the program:
# torchdiffeq's adaptive step control takes data-dependent branches and calls unique(), which
# Inductor cannot lower (LoweringException on aten._unique2 after a minute of compiling).
# make_fx recordings (pyro_gen.infer's compiled path) are not affected by the marker.
@torch.compiler.disable
def _odeint(dynamics, state, times, adjoint, adjoint_params, kwargs):
    return solve_ode(
        dynamics, state, times, adjoint=adjoint, adjoint_params=adjoint_params, **kwargs
    )


def solve_ode(
    func: Callable,
    y0: Tensor | tuple[Tensor, ...],
    times: Tensor,
    *,
    adjoint: bool = False,
    adjoint_params: Iterable[Tensor] | None = None,
    **kwargs,
):
    r"""torchdiffeq's ``odeint(func, y0, times, **kwargs)`` (``odeint_adjoint`` with
    ``adjoint``), with its bare ``AssertionError: underflow in dt`` replaced by an error that
    says what went wrong and what to do.

    Why: an adaptive solver stops so when its step size shrinks to nothing, which happens where
    the solution blows up or the field turns non-finite: an untrained or diverging network,
    such as the probability-flow ODE of an untrained variance-exploding score model, whose
    drift grows like :math:`\sigma_{max}^2` times the network's output. The original error
    stays attached as the cause; any other error passes unchanged.

    Raises:
        RuntimeError: naming where the solver stopped and the ways on (a fixed-step solver,
            looser tolerances, a trained model).

    Example:
        >>> y = solve_ode(lambda t, y: -y, torch.ones(1), torch.tensor([0.0, 1.0]))
        >>> round(float(y[-1]), 4) == round(math.exp(-1), 4)
        True
        >>> # dy/dt = y**2 from y(0) = 1: y = 1 / (1 - t) blows up at t = 1
        >>> solve_ode(lambda t, y: y**2, torch.ones(1), torch.tensor([0.0, 2.0]))
        Traceback (most recent call last):
        ...
        RuntimeError: the ODE solver (method='dopri5', ...) stopped near t=1, ...
    """
    tdq = _torchdiffeq()
    last: dict = {}

    def recorded(t, y):
        dy = func(t, y)
        # detached: the adjoint's backward pass calls this too, and a graph kept here would
        # outlive the solve
        last["t"], last["dy"] = t, _detached(dy)
        return dy

    try:
        if adjoint:
            if adjoint_params is None and isinstance(func, nn.Module):
                adjoint_params = tuple(func.parameters())
            if adjoint_params is None:  # torchdiffeq's own error: whose parameters?
                return tdq.odeint_adjoint(func, y0, times, **kwargs)
            params = tuple(adjoint_params)
            return tdq.odeint_adjoint(recorded, y0, times, adjoint_params=params, **kwargs)
        return tdq.odeint(recorded, y0, times, **kwargs)
    except AssertionError as err:
        if not str(err).startswith("underflow in dt"):
            raise
        raise RuntimeError(_underflow_message(last, times, kwargs)) from err


def _detached(value):
    if isinstance(value, tuple | list):
        return tuple(v.detach() for v in value)
    return value.detach()


def _underflow_message(last: dict, times: Tensor, kwargs: dict) -> str:
    dy = last.get("dy", ())
    finite = all(bool(torch.isfinite(p).all()) for p in (dy if isinstance(dy, tuple) else (dy,)))
    t = float(torch.as_tensor(last.get("t", times[0])).detach())
    # the last evaluation: a trial step's, at the stuck time when steps shrank, or where
    # the field first returned inf/NaN (the step size drops to zero at once then)
    where = (
        f"stopped near t={t:.4g}" if finite else f"stopped: the field is not finite at t={t:.4g}"
    )
    lo, hi = sorted((float(times[0]), float(times[-1])))
    if not lo <= t <= hi:
        # the first step's trial point: sized from the field at the start, where it is small
        where += " (a trial step past the end of the solve)"
    solver = ", ".join(
        f"{k}={kwargs.get(k, d)!r}"
        for k, d in (("method", "dopri5"), ("rtol", 1e-7), ("atol", 1e-9))
    )
    return (
        f"the ODE solver ({solver}) {where}, solving from t={float(times[0]):.4g} to "
        f"{float(times[-1]):.4g}: its step size shrank to zero, as it does where the solution "
        "blows up. An untrained or diverging network gives such fields, e.g. the "
        "probability-flow ODE of an untrained variance-exploding score model, whose drift "
        "grows like sigma_max**2 times the network's output. Train the model longer; or loosen "
        "rtol/atol; or use a fixed-step solver, method='rk4', options={'step_size': 0.01}, "
        "which always finishes (with inf or NaN where the solution blows up)"
    )


def ode_log_likelihood(
    drift_fn: DriftFn,
    x: Tensor,
    t0: float,
    t1: float,
    base_log_prob: Callable[[Tensor], Tensor],
    **kwargs,
) -> Tensor:
    r"""Log-density of ``x`` at time ``t0`` under an ODE flow with a known density at ``t1``.

    .. math::

        \log p_{t_0}(x) = \log p_{t_1}(z(t_1))
            + \int_{t_0}^{t_1} \operatorname{tr}\frac{\partial f}{\partial z(t)}\, dt,
        \qquad z(t_0) = x.

    This is FFJORD's likelihood, and the probability-flow ODE likelihood of a diffusion model
    when ``drift_fn`` is :math:`f(x,t) - \tfrac12 g(t)^2 \nabla_x \log p_t(x)`, ``t0`` the data
    end and ``t1`` the noise end.

    Args:
        drift_fn: ``f(z, t)``; ``t`` is a 0-dim tensor.
        x: data, shape ``batch_shape + event_shape``.
        t0: time of the data.
        t1: time of the known density.
        base_log_prob: ``z -> log p_{t1}(z)`` of shape ``batch_shape``.
        **kwargs: forwarded to :func:`odeint_with_logdet` (``event_dim``, ``trace``, ``method``,
            ``rtol``, ``atol``, ``adjoint``, ...).

    Returns:
        Tensor of shape ``batch_shape``.

    Example:
        >>> from torch.distributions import Normal
        >>> # dz/dt = z doubles the scale in log(2) time: N(0, 1) at t0 maps to N(0, 4) at t1.
        >>> x = torch.tensor([[0.5]])
        >>> lp = ode_log_likelihood(lambda z, t: z, x, 0.0, math.log(2.0),
        ...                         lambda z: Normal(0.0, 2.0).log_prob(z).sum(-1))
        >>> torch.allclose(lp, Normal(0.0, 1.0).log_prob(x).sum(-1), atol=1e-4)
        True
    """
    z1, logdet = odeint_with_logdet(drift_fn, x, t0, t1, **kwargs)
    return base_log_prob(z1) + logdet


class ContinuousFlow(FlowTransformModule):
    r"""Continuous normalizing flow (FFJORD) as a Pyro ``TransformModule``.

    The forward map (base to data, the direction ``TransformedDistribution`` samples in)
    integrates :math:`dz/dt = f(z, t)` from ``t1`` down to ``t0``; the inverse (data to base,
    used by ``log_prob``) integrates from ``t0`` to ``t1``. The data end sits at ``t0`` as in
    diffusion models. The log-determinant is

    .. math::

        \log\left|\det\frac{\partial y}{\partial x}\right|
            = -\int_{t_0}^{t_1}\operatorname{tr}\frac{\partial f}{\partial z(t)}\, dt,

    computed during the solve and cached for the ``(x, y)`` pair; exact up to solver tolerance
    with ``trace="exact"``, an unbiased estimate with ``trace="hutchinson"``. Both directions
    cost a solve, so by default (``cache_size=1``) the inverse of the flow's own sample is the
    cached input (the cache is invalidated when the parameters change, see
    :class:`~pyro_gen.transforms.FlowTransformModule`).

    Args:
        dynamics: the network ``f(z, t)`` (e.g. :class:`ODEMLP`, :class:`ODEConvNet`).
        event_shape: shape of one event (sets ``event_dim`` and the default trace method).
        t0: data-end time.
        t1: base-end time.
        trace: ``"exact"``, ``"hutchinson"`` or ``None`` (exact when the event has at most
            :data:`EXACT_TRACE_MAX_DIM` elements).
        method: torchdiffeq solver.
        rtol: relative tolerance.
        atol: absolute tolerance.
        options: torchdiffeq solver options.
        adjoint: adjoint gradients (``odeint_adjoint``).
        cache_size: 1 (default) or 0.

    References:
        Grathwohl et al. FFJORD. ICLR 2019, arXiv:1810.01367.

    Example:
        >>> import pyro.distributions as dist
        >>> flow = ContinuousFlow(ODEMLP(2, (8,)), event_shape=(2,), rtol=1e-3, atol=1e-3)
        >>> d = dist.TransformedDistribution(dist.Normal(torch.zeros(2), 1.0).to_event(1), [flow])
        >>> d.log_prob(torch.randn(5, 2)).shape
        torch.Size([5])
    """

    def __init__(
        self,
        dynamics: nn.Module,
        event_shape: Sequence[int],
        *,
        t0: float = 0.0,
        t1: float = 1.0,
        trace: str | None = None,
        method: str = "dopri5",
        rtol: float = 1e-5,
        atol: float = 1e-5,
        options: dict | None = None,
        adjoint: bool = False,
        cache_size: int = 1,
    ) -> None:
        super().__init__(tuple(event_shape), cache_size=cache_size)
        self.dynamics = dynamics
        if trace is None:
            numel = math.prod(self.event_shape)
            trace = "exact" if numel <= EXACT_TRACE_MAX_DIM else "hutchinson"
        if trace not in TRACE_METHODS:
            raise ValueError(f"trace must be one of {TRACE_METHODS}, got {trace!r}")
        self.trace = trace
        # t0 == t1 failed inside torchdiffeq ("t must be strictly increasing or decreasing")
        # at the first call, and negative tolerances were passed to the solver as they were
        if not (math.isfinite(t0) and math.isfinite(t1) and t0 != t1):
            raise ValueError(f"t0 and t1 must be finite and differ, got t0={t0!r}, t1={t1!r}")
        if not (rtol >= 0 and atol >= 0 and rtol + atol > 0):
            raise ValueError(f"rtol and atol must be >= 0, not both 0, got {rtol!r}, {atol!r}")
        self.t0, self.t1 = float(t0), float(t1)
        self.method, self.rtol, self.atol = method, rtol, atol
        self.options = options
        self.adjoint = adjoint

    def _solve(self, x: Tensor, ta: float, tb: float) -> tuple[Tensor, Tensor]:
        return odeint_with_logdet(
            self.dynamics,
            x,
            ta,
            tb,
            event_dim=len(self.event_shape),
            trace=self.trace,
            method=self.method,
            rtol=self.rtol,
            atol=self.atol,
            options=self.options,
            adjoint=self.adjoint,
            adjoint_params=tuple(self.dynamics.parameters()) if self.adjoint else None,
        )

    def _forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self._solve(x, self.t1, self.t0)

    def _backward(self, y: Tensor) -> tuple[Tensor, Tensor]:
        x, logdet = self._solve(y, self.t0, self.t1)
        return x, -logdet  # log|det dy/dx| = -log|det dx/dy|


def cnf(
    input_dim: int,
    hidden_dims: Sequence[int] = (64, 64),
    activation: type[nn.Module] = nn.Softplus,
    **kwargs,
) -> ContinuousFlow:
    """Build a vector :class:`ContinuousFlow` with an :class:`ODEMLP` dynamics network.

    Args:
        input_dim: event size.
        hidden_dims: hidden widths of the dynamics network.
        activation: activation of the dynamics network.
        **kwargs: forwarded to :class:`ContinuousFlow` (``trace``, ``method``, ``rtol``, ...).

    Example:
        >>> flow = cnf(2, (8,), rtol=1e-3, atol=1e-3)
        >>> x = torch.randn(4, 2)
        >>> torch.allclose(flow.inv(flow(x)), x, atol=1e-3)
        True
    """
    return ContinuousFlow(ODEMLP(input_dim, hidden_dims, activation), (input_dim,), **kwargs)
