"""The velocity field of flow matching written as a skip connection plus a scaled network
output, so that a network of unit-scale outputs starts near the right field whatever the data's
scale (:class:`~pyro_gen.diffusion.flow_matching.FlowMatching`'s ``data_std=``)."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from pyro_gen.transforms._base import PicklableModule

__all__ = ["PreconditionedVelocity"]


class PreconditionedVelocity(PicklableModule):
    r"""Velocity field :math:`f(x, t) = c_{skip}(s)\, x + c_{out}(s)\, F_\theta(x, t)` on
    flow matching's path, with the coefficients of the best linear predictor (as in Karras et
    al.'s EDM preconditioning).

    For data of per-coordinate variance :math:`v` and :math:`x_s = (1 - s) x + c_s z`,
    :math:`c_s = \sigma_{min} + (1 - \sigma_{min}) s`, the target :math:`u = (1 -
    \sigma_{min}) z - x` (in path time) has

    .. math::

        c_{skip} = \frac{\operatorname{Cov}(u, x_s)}{\operatorname{Var}(x_s)}
                 = \frac{(1 - \sigma_{min}) c_s - (1 - s) v}{(1 - s)^2 v + c_s^2}, \qquad
        c_{out}^2 = (1 - \sigma_{min})^2 + v - c_{skip}\operatorname{Cov}(u, x_s),

    so :math:`F_\theta` regresses a target of unit scale at every time: near the data end
    (:math:`c_{skip} \to -1`, :math:`c_{out} \to 1`) it predicts the base draw, as an
    eps-prediction score network does; near the base end, the data scaled by its std. The field
    is exact for Gaussian data with :math:`F_\theta = 0`. Why: with the data's std 2.3 (the
    checkerboard), a plain velocity network carries a linear part of size 4 beside the sharp
    corrections at the square edges. Measured on the checkerboard (``TimeMLP`` 128x3,
    ``benchmarks/RESULTS.md``): KL 0.14 nats instead of 0.18 after 60 CPU seconds, but no gain
    after 5 CPU minutes (0.058 against 0.056), so it is an option, not the default.

    Args:
        net: :math:`F_\theta(x, t)`, called with the flow's time ``t``.
        data_std: :math:`\sqrt v`, the data's standard deviation (one number).
        sigma_min: the path's std at the data end (that of
            :class:`~pyro_gen.diffusion.flow_matching.FlowMatching`).
        t0: the flow's data-end time.
        t1: the flow's base-end time.

    Example:
        >>> import torch
        >>> f = PreconditionedVelocity(lambda x, t: torch.zeros_like(x), data_std=2.0)
        >>> f(torch.ones(1, 2), torch.tensor(0.0))  # Gaussian data at s = 0: u = -x
        tensor([[-1., -1.]])
    """

    def __init__(
        self,
        net: Any,
        data_std: float,
        *,
        sigma_min: float = 0.0,
        t0: float = 0.0,
        t1: float = 1.0,
    ) -> None:
        super().__init__()
        if not data_std > 0:
            raise ValueError(f"data_std must be positive, got {data_std}")
        self.net, self.var = net, float(data_std) ** 2
        self.sigma_min, self.t0, self.t1 = float(sigma_min), float(t0), float(t1)

    def forward(self, x: Tensor, t: Tensor, **context: Any) -> Tensor:
        # one time for the batch (an ODE solve) or one per example (training)
        s = (t.to(x) - self.t0) / (self.t1 - self.t0)
        s = s.reshape(s.shape + (1,) * (x.dim() - s.dim())) if s.dim() else s
        c = self.sigma_min + (1 - self.sigma_min) * s
        cov = (1 - self.sigma_min) * c - (1 - s) * self.var
        var = (1 - s) ** 2 * self.var + c**2
        c_skip = cov / var
        c_out = ((1 - self.sigma_min) ** 2 + self.var - c_skip * cov).clamp_min(1e-12).sqrt()
        # velocities in flow time: d/dt = d/ds / (t1 - t0)
        return (c_skip * x + c_out * self.net(x, t, **context)) / (self.t1 - self.t0)
