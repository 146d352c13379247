r"""What a flow-matching model does with its trained flow: transport base draws by the flow's
ODE (:meth:`FlowODE.transport`, :meth:`FlowODE.sample`, the generative program of
``model(None, num_samples)``) and its exact log-likelihood (:meth:`FlowODE.log_prob`).

Why apart from :mod:`~pyro_gen.diffusion.flow_matching`: the training objective there needs
no ODE solve; everything here is one, through the flow's own solver settings.
"""

from __future__ import annotations

import functools
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from torch import Tensor

from pyro_gen.diffusion.context import data_plate, expand_context
from pyro_gen.diffusion.network import call_network
from pyro_gen.transforms._base import sample_count
from pyro_gen.transforms.continuous import ode_log_likelihood, solve_ode

__all__ = ["OWNER", "FlowODE", "base_draws"]

#: how errors of the velocity network name it
OWNER = "flow matching"


class FlowODE:
    """Mixin of :class:`~pyro_gen.diffusion.FlowMatching`: the trained flow's ODE solves.

    Reads the model's ``flow`` (a :class:`~pyro_gen.transforms.continuous.ContinuousFlow`),
    ``event_shape`` and ``event_dim``.

    Example:
        >>> from pyro_gen.diffusion import FlowMatching
        >>> from pyro_gen.transforms.continuous import cnf
        >>> fm = FlowMatching(cnf(2, (8,), rtol=1e-3, atol=1e-3))
        >>> fm.transport(torch.zeros(4, 2)).shape, fm.log_prob(torch.zeros(4, 2)).shape
        (torch.Size([4, 2]), torch.Size([4]))
    """

    def _generate(self, num_samples: int, context: dict, solver: dict) -> Tensor:
        ref = _reference(self)
        zeros = torch.zeros(self.event_shape, dtype=ref.dtype, device=ref.device)
        # the caller's plate over the examples, as training takes it: a plate of its own under
        # it drew num_samples x num_samples examples (or met "duplicate plate 'data'")
        with data_plate(num_samples, "FlowMatching"):
            z = pyro.sample("z", dist.Normal(zeros, 1.0).to_event(self.event_dim))
            # the ODE takes one flat batch; outer plates' dims are restored after
            context = expand_context(context, z.shape[: z.dim() - self.event_dim])
            x = self.transport(z.reshape(-1, *self.event_shape), context=context, **solver)
            x = x.reshape(z.shape)
            # a deterministic map of z: a Delta site, as a GAN generator's example
            return pyro.sample("x", dist.Delta(x, event_dim=self.event_dim))

    def _solver_kwargs(self, kwargs: dict) -> dict:
        f = self.flow
        out = dict(method=f.method, rtol=f.rtol, atol=f.atol, options=f.options)
        out.update(kwargs)
        return out

    def _dynamics(self, context: dict[str, Any] | None, rows: int) -> Any:
        """The flow's velocity with ``context`` (one row per example) bound, called through
        :func:`call_network`: data of another dtype than the network met torch's "mat1 and
        mat2 must have the same dtype" in sample, transport and log_prob (a score model's
        said what to convert)."""
        context = dict(context or {})
        expand_context(context, (rows,))  # one row per example, or a clear error
        return functools.partial(call_network, self.flow.dynamics, owner=OWNER, **context)

    @torch.no_grad()
    def transport(self, z: Tensor, context: dict[str, Any] | None = None, **solver: Any) -> Tensor:
        """Solve the ODE from base points ``z`` (time :math:`t_1`) to the data end (no trace);
        ``context`` (one row per point) goes to the velocity network."""
        f = self.flow
        dynamics = self._dynamics(context, z.shape[0])
        if z.numel() == 0:
            # no points: an adaptive solver divides by the empty error norm ("underflow in dt")
            return z.clone()
        times = torch.tensor([f.t1, f.t0], dtype=z.dtype, device=z.device)
        return solve_ode(lambda t, y: dynamics(y, t), z, times, **self._solver_kwargs(solver))[-1]

    def sample(
        self,
        num_samples: int,
        context: dict[str, Any] | None = None,
        *,
        generator: torch.Generator | None = None,
        **solver: Any,
    ) -> Tensor:
        """Draws of the flow (base draws transported by the ODE); ``context`` (one row per
        sample, e.g. ``{"y": labels}``) goes to the velocity network; ``generator`` draws the
        base points (the ODE is deterministic); ``solver`` overrides the flow's
        ``method``/``rtol``/``atol``/``options``."""
        return self.transport(base_draws(self, num_samples, generator), context, **solver)

    def log_prob(self, x: Tensor, context: dict[str, Any] | None = None, **solver: Any) -> Tensor:
        """Exact :math:`\\log p(x)` through the flow's ODE (solver settings as :meth:`sample`,
        plus ``trace``); with ``context`` (one row per example), :math:`\\log p(x \\mid y)`.
        An evaluation: solved without gradients (the result does not require grad); the
        continuous flow model it was built on (``FlowMatching(cnf)``: ``cnf.log_prob(x)``)
        gives the same density, differentiable.

        ``x`` is ``(batch, *event_shape)`` or stacked batches ``(K, batch, *event_shape)``
        (the result keeps the batch dims; ``context`` has one row per example of the last).
        Why: the models' own check read dims before the batch as the training program's outer
        plates, so stacked batches met an error about a time plate this solve does not have;
        the ODE treats each example alone, so they go through as one flat batch."""
        f, nd = self.flow, self.event_dim
        if x.dim() < nd + 1 or x.shape[x.dim() - nd :] != self.event_shape:
            raise ValueError(
                f"FlowMatching.log_prob takes x of shape (batch, *{tuple(self.event_shape)}) or "
                f"stacked batches (K, batch, *{tuple(self.event_shape)}), got {tuple(x.shape)}"
            )
        batch = x.shape[: x.dim() - nd]
        context = expand_context(dict(context or {}), batch)  # one row per flat example
        x = x.reshape(-1, *self.event_shape)
        dynamics = self._dynamics(context, x.shape[0])
        if x.numel() == 0:
            # no examples: torch's Independent.log_prob cannot sum an empty batch's event
            return x.new_zeros(batch)
        kwargs = self._solver_kwargs(solver)
        kwargs.setdefault("trace", f.trace)
        base = dist.Normal(x.new_zeros(()), 1.0).expand(self.event_shape).to_event(nd)
        with torch.no_grad():
            lp = ode_log_likelihood(dynamics, x, f.t0, f.t1, base.log_prob, event_dim=nd, **kwargs)
        return lp.reshape(batch)


def _reference(fm: FlowODE) -> Tensor:
    """A tensor in the dtype and on the device of the flow's draws: its first floating
    parameter or buffer, else torch's default. A velocity field of the user's without
    parameters (an exact field) met a bare StopIteration from next(parameters())."""
    tensors = (v for v in [*fm.flow.parameters(), *fm.flow.buffers()] if v.is_floating_point())
    return next(tensors, torch.zeros(()))


def base_draws(fm: FlowODE, num_samples: int, generator: torch.Generator | None) -> Tensor:
    """``num_samples`` draws of the flow's standard Normal base, in its dtype and on its device.

    Example:
        >>> from pyro_gen.diffusion import FlowMatching
        >>> from pyro_gen.transforms.continuous import cnf
        >>> base_draws(FlowMatching(cnf(2, (8,))), 3, torch.Generator().manual_seed(0)).shape
        torch.Size([3, 2])
    """
    # a generator= among the solver's settings failed inside torchdiffeq ("odeint() got an
    # unexpected keyword argument 'generator'"): it belongs to these draws
    ref = _reference(fm)
    shape = (sample_count(num_samples), *fm.event_shape)
    return torch.randn(shape, generator=generator, dtype=ref.dtype, device=ref.device)
