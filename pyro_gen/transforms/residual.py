r"""Invertible residual blocks (i-ResNet, Residual Flows).

A block :math:`F(x) = x + g(x)` is invertible when :math:`\operatorname{Lip}(g) < 1`: then
:math:`y \mapsto x - g(y)` is a contraction whose fixed point is :math:`F^{-1}(x)`. Its
log-determinant is the power series

.. math::

    \log\det(I + J_g) = \sum_{k \ge 1} \frac{(-1)^{k+1}}{k} \operatorname{tr}(J_g^k),

estimated without bias by Hutchinson traces and a Russian-roulette number of terms, with the
Neumann series for its gradient (Chen et al. 2019); small dimensions may use the exact
log-determinant instead.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from pyro_gen.nn.mlp import layer_widths
from pyro_gen.transforms._base import (
    FlowTransformModule,
    PicklableModule,
)
from pyro_gen.transforms.own_derivatives import autograd_enabled, graph_input

__all__ = ["LipschitzMLP", "ResidualBlock", "residual_block"]


class _LipSwish(nn.Module):
    """:math:`x\\,\\sigma(x) / 1.1`: smooth, non-monotone derivative, Lipschitz below 1."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.silu(x) / 1.1


class _SpectralLinear(nn.Linear):
    """Linear map scaled to spectral norm at most ``coeff``: :math:`W \\min(1, c/\\|W\\|_2)`.

    The norm is exact (the largest singular value), not a power-iteration estimate, so the
    bound holds at every step, in training and evaluation alike; for the widths of vector
    flows the decomposition costs little.
    """

    def __init__(self, in_features: int, out_features: int, coeff: float) -> None:
        super().__init__(in_features, out_features)
        self.coeff = coeff

    def normalized_weight(self) -> torch.Tensor:
        sigma = torch.linalg.matrix_norm(self.weight, ord=2)
        return self.weight * torch.clamp(self.coeff / sigma, max=1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.normalized_weight(), self.bias)


class LipschitzMLP(PicklableModule, nn.Sequential):
    """MLP whose Lipschitz constant is below ``lipschitz``: every linear layer has spectral
    norm at most ``lipschitz`` and the activation (LipSwish) is 1-Lipschitz; the bound of the
    composition is ``lipschitz ** num_linear_layers``.

    Args:
        dim: input and output size.
        hidden_dims: hidden widths.
        lipschitz: per-layer spectral-norm bound, in (0, 1).

    Example:
        >>> g = LipschitzMLP(2, [16], lipschitz=0.9)
        >>> J = torch.autograd.functional.jacobian(g, torch.randn(2))
        >>> bool(torch.linalg.matrix_norm(J, ord=2) < 0.9)
        True
    """

    def __init__(self, dim: int, hidden_dims: Sequence[int], lipschitz: float = 0.9) -> None:
        if not 0 < lipschitz < 1:
            raise ValueError(
                f"lipschitz must lie in (0, 1) for the residual block to be invertible, "
                f"got {lipschitz!r}"
            )
        sizes = [dim, *layer_widths(hidden_dims), dim]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            if i > 0:
                layers.append(_LipSwish())
            layers.append(_SpectralLinear(a, b, lipschitz))
        super().__init__(*layers)
        self.lipschitz = float(lipschitz)


class ResidualBlock(FlowTransformModule):
    r"""Invertible residual block; Pyro direction: noise to data by fixed-point iteration.

    The density direction (``inv``, what ``log_prob`` runs) is the explicit
    :math:`z = F(x) = x + g(x)`; the sampling direction (forward) solves
    :math:`y = x - g(y)` by fixed-point iteration from :math:`y_0 = x`, until successive
    iterates differ by at most ``tol`` (max-norm) or ``max_iter`` is reached; its gradient
    is implicit, :math:`(I + J_g)^{-\top}` applied to the incoming gradient by the same
    iteration, so samples are differentiable exactly.

    Log-determinant of :math:`F` (reported negated, as that of the forward map):

    * ``"exact"``: :math:`\log|\det(I + J_g)|` from the full Jacobian (:math:`D`
      vector-Jacobian products); for small :math:`D`.
    * ``"roulette"``: :math:`n_\text{exact}` terms of the power series
      plus a geometric number more, each weighted by :math:`1/P(N \ge k)`, with Hutchinson
      traces :math:`v^\top J^k v` (:math:`v \sim \mathcal{N}(0, I)`): unbiased. Its gradient
      is the Neumann series :math:`\sum_k (-1)^k v^\top J^k \partial J\, v / P(N \ge k+1)`
      (Chen et al. 2019), so no graph of the power series is kept.
    * ``"auto"`` (default): exact up to ``auto_exact_dim`` (4) dimensions, else roulette.

    In evaluation mode the log-determinant is exact up to ``eval_exact_dim`` (64)
    dimensions whatever ``logdet`` says, so test densities carry no estimator noise.

    Args:
        dim: event size :math:`D`.
        net: the residual branch :math:`g` with :math:`\operatorname{Lip}(g) < 1` (e.g.
            :class:`LipschitzMLP`).
        logdet: ``"auto"``, ``"roulette"`` or ``"exact"`` (training mode).
        n_exact: series terms always computed (roulette).
        p: success probability of the geometric number of extra terms (roulette).
        tol: fixed-point tolerance of the inverse (max-norm between iterates).
        max_iter: iteration cap of the inverse.
        cache_size: 1 (default) or 0.

    References:
        Behrmann, Grathwohl, Chen, Duvenaud, Jacobsen. Invertible Residual Networks. ICML
        2019, arXiv:1811.00995.
        Chen, Behrmann, Duvenaud, Jacobsen. Residual Flows for Invertible Generative
        Modeling. NeurIPS 2019, arXiv:1906.02735.

    Example:
        >>> t = residual_block(2, [16], logdet="exact")
        >>> x = torch.randn(5, 2)
        >>> y = t(x)
        >>> torch.allclose(t.inv(y.clone()), x, atol=1e-5)
        True
    """

    _ladj_direction = "inverse"
    #: ``"auto"`` trains with the exact log-det up to this size: D products cost less than
    #: the roulette's expected n_exact + 1/p products plus its gradient pass
    auto_exact_dim = 4
    #: evaluation mode (``eval()``) is exact up to this size, so test densities carry no
    #: estimator noise; beyond it the roulette's value is used (unbiased, random)
    eval_exact_dim = 64

    def __init__(
        self,
        dim: int,
        net: nn.Module,
        *,
        logdet: str = "auto",
        n_exact: int = 2,
        p: float = 0.5,
        tol: float = 1e-6,
        max_iter: int = 500,
        cache_size: int = 1,
    ) -> None:
        super().__init__((dim,), cache_size=cache_size)
        if logdet not in ("auto", "roulette", "exact"):
            raise ValueError(f"logdet must be 'auto', 'roulette' or 'exact', got {logdet!r}")
        if not 0 < p < 1:
            raise ValueError(f"p must lie in (0, 1), got {p!r}")
        # max_iter=0 returned the solver's first guess as the sample, off by ~0.2, silently
        if isinstance(max_iter, bool) or int(max_iter) != max_iter or max_iter < 1:
            raise ValueError(f"max_iter must be a whole number >= 1, got {max_iter!r}")
        if isinstance(n_exact, bool) or int(n_exact) != n_exact or n_exact < 0:
            raise ValueError(f"n_exact must be a whole number >= 0, got {n_exact!r}")
        if not 0 < tol < math.inf:
            raise ValueError(f"tol must be a positive finite number, got {tol!r}")
        lip = getattr(net, "lipschitz", None)
        if lip is not None and not lip < 1:
            raise ValueError(f"the residual branch must be a contraction, got lipschitz={lip}")
        self.net = net
        self.logdet = logdet
        self.n_exact = int(n_exact)
        self.p = float(p)
        self.tol = float(tol)
        self.max_iter = int(max_iter)

    # ------------------------------------------------------------------ log-determinants
    def _exact(self, x: torch.Tensor, gx: torch.Tensor, create_graph: bool) -> torch.Tensor:
        rows = [
            torch.autograd.grad(gx[..., i].sum(), x, retain_graph=True, create_graph=create_graph)[
                0
            ]
            for i in range(self.event_shape[0])
        ]
        jac = torch.stack(rows, -2)
        eye = torch.eye(jac.shape[-1], dtype=jac.dtype, device=jac.device)
        return torch.linalg.slogdet(eye + jac)[1]

    def _roulette(self, x: torch.Tensor, gx: torch.Tensor, create_graph: bool) -> torch.Tensor:
        # geometric number of extra terms, P(extra >= j) = (1 - p)^j, by inversion (one
        # uniform from torch's generator, so seeds reproduce it)
        u01 = float(torch.rand(()))
        extra = int(math.floor(math.log1p(-u01) / math.log1p(-self.p)))
        n = self.n_exact + extra
        v = torch.randn_like(x)
        u, value, w = v, torch.zeros(x.shape[:-1], dtype=x.dtype, device=x.device), v
        q = 1.0 - self.p
        for k in range(1, n + 1):
            u = torch.autograd.grad(gx, x, u, retain_graph=True)[0]  # v^T J^k
            # P(N >= k): 1 for the always-computed terms, then geometric
            tail = q ** max(k - self.n_exact, 0)
            value = value + ((-1) ** (k + 1) / (k * tail)) * (u * v).sum(-1)
            if k < n:
                w = w + ((-1) ** k / q ** max(k + 1 - self.n_exact, 0)) * u
        if not create_graph:
            return value
        # Neumann-series gradient: d/dtheta of w^T J v, with w held fixed
        wj = torch.autograd.grad(gx, x, w.detach(), create_graph=True)[0]
        surrogate = (wj * v).sum(-1)
        return value.detach() + surrogate - surrogate.detach()

    def _log_det(self, x: torch.Tensor, gx: torch.Tensor, create_graph: bool) -> torch.Tensor:
        d = self.event_shape[0]
        if self.training:
            exact = self.logdet == "exact" or (self.logdet == "auto" and d <= self.auto_exact_dim)
        else:
            exact = self.logdet == "exact" or d <= self.eval_exact_dim
        if exact:
            return self._exact(x, gx, create_graph)
        return self._roulette(x, gx, create_graph)

    # ------------------------------------------------------------------------ directions
    def _backward(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        grad = torch.is_grad_enabled()
        if (
            grad
            and torch._C._get_tracing_state() is not None
            and any(p.requires_grad for p in self.parameters())
        ):
            # The log-det's Jacobian comes from torch.autograd.grad with create_graph=True;
            # a trace cannot record it as a function of trained parameters, and torch's own
            # error ("Cannot insert a Tensor that requires grad as a constant") named neither
            # the layer nor the fix. With frozen parameters (HMC's potential) it traces.
            raise RuntimeError(
                "ResidualBlock's density direction (inverse, log_prob) cannot run under "
                "torch.jit.trace while its parameters require grad, as JitTrace_ELBO trains "
                "them: its log-determinant takes autograd derivatives the trace does not "
                "record. Use Trace_ELBO instead of JitTrace_ELBO (or freeze the block's "
                "parameters, as NUTS/HMC(jit_compile=True) does)."
            )
        with autograd_enabled():
            yr = y if y.requires_grad else graph_input(y).detach().requires_grad_(True)
            gy = self.net(yr)
            ladj = self._log_det(yr, gy, create_graph=grad)
        z = y + (gy if grad else gy.detach())
        return z, -(ladj if grad else ladj.detach())

    def _solve(self, x: torch.Tensor) -> torch.Tensor:
        """Fixed point of ``y -> x - g(y)``, no graph."""
        with torch.no_grad():
            y, change = x.clone(), None
            for _ in range(self.max_iter):
                y_new = x - self.net(y)
                change = (y_new - y).abs()
                y = y_new
                # all(), not max(): max() of an empty batch is an error, all() is True
                if bool((change <= self.tol).all()):
                    return y
            if change is not None:
                self._check_converged(x, y, change)
        return y

    def _check_converged(self, x: torch.Tensor, y: torch.Tensor, change: torch.Tensor) -> None:
        """Refuses a sample that is not the inverse of the density map: with a branch that
        is no contraction (a user's own network without spectral normalisation) the
        iteration wanders, and the sample went out silently, its ``log_prob`` the density of
        another point. Iterates of a contraction that stall at float rounding (large values,
        where ``tol`` is below one ulp) are converged as far as the dtype allows."""
        rounding = 1e3 * torch.finfo(y.dtype).eps * float(torch.maximum(x.abs(), y.abs()).max())
        worst = float(change.max())
        if worst <= max(self.tol, rounding):
            return
        raise ValueError(
            f"ResidualBlock's inverse (the sampling direction) did not converge in "
            f"max_iter={self.max_iter} fixed-point iterations: the last one still moved by "
            f"{worst:.3g} (tol={self.tol:g}). Its net must be a contraction (Lipschitz "
            "constant < 1): use LipschitzMLP(dim, hidden_dims, lipschitz=0.9) (residual_block "
            "builds one) or spectral-normalised layers with 1-Lipschitz activations; a "
            "contraction close to 1 needs a larger max_iter"
        )

    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if torch._C._get_tracing_state() is not None:
            # A trace keeps the number of fixed-point iterations of the input it was recorded
            # at and drops the hook that makes the gradient implicit: replayed elsewhere, the
            # value is unconverged and the gradient wrong (HMC's potential gradient by 5-15%
            # on a NeuTra guide), with no error. The density direction is explicit and traces.
            raise RuntimeError(
                "ResidualBlock's sampling direction (forward) cannot run under "
                "torch.jit.trace, as NUTS/HMC(jit_compile=True) and JitTrace_ELBO run it: its "
                "fixed-point solve and implicit gradient are not recorded by a trace. Use "
                "jit_compile=False (Trace_ELBO instead of JitTrace_ELBO); the density "
                "direction (t.inv, log_prob) traces."
            )
        y_star = self._solve(x)
        grad = torch.is_grad_enabled()
        with autograd_enabled():
            y0 = graph_input(y_star).detach().requires_grad_(True)
            g0 = self.net(y0)
            f0 = x - g0  # one more iteration, with a graph to x and the parameters
            if grad and f0.requires_grad:
                f0.register_hook(self._implicit_hook(g0, y0))
            y = f0.view_as(f0)  # the hook sits on f0, so gradients taken at y do not run it
            gy = self.net(y)
            ladj = self._log_det(y, gy, create_graph=grad)
        if not grad:
            return y.detach(), -ladj.detach()
        return y, -ladj

    def _implicit_hook(self, g0: torch.Tensor, y0: torch.Tensor):
        """Turns a gradient ``a`` at the fixed point into :math:`(I + J_g)^{-\\top} a`,
        solving :math:`u = a - J_g^\\top u` by iteration (a contraction, like the inverse).
        The products go through ``g0``, upstream of the hooked tensor, so the hook does not
        fire on its own vector-Jacobian products."""

        def hook(a: torch.Tensor) -> torch.Tensor:
            u = a
            for _ in range(self.max_iter):
                u_new = a - torch.autograd.grad(g0, y0, u, retain_graph=True)[0]
                scale = max(1.0, float(a.abs().max())) if a.numel() else 1.0
                done = bool(((u_new - u).abs() <= self.tol * scale).all())
                u = u_new
                if done:
                    break
            return u

        return hook


def residual_block(
    dim: int,
    hidden_dims: Sequence[int] = (64, 64),
    *,
    lipschitz: float = 0.9,
    logdet: str = "auto",
    n_exact: int = 2,
    p: float = 0.5,
    tol: float = 1e-6,
    max_iter: int = 500,
    cache_size: int = 1,
) -> ResidualBlock:
    """Builds a :class:`ResidualBlock` on a :class:`LipschitzMLP` branch.

    Args:
        dim: event size.
        hidden_dims: hidden widths of the branch.
        lipschitz: spectral-norm bound of each branch layer, in (0, 1); >= 1 is an error.
        logdet, n_exact, p, tol, max_iter, cache_size: see :class:`ResidualBlock`.

    Example:
        >>> residual_block(3, [8], lipschitz=0.5).net.lipschitz
        0.5
    """
    return ResidualBlock(
        dim,
        LipschitzMLP(dim, hidden_dims, lipschitz),
        logdet=logdet,
        n_exact=n_exact,
        p=p,
        tol=tol,
        max_iter=max_iter,
        cache_size=cache_size,
    )
