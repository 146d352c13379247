"""FFJORD continuous normalizing flow as a density model."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from pyro_gen.flows.arguments import check_count
from pyro_gen.flows.base import FlowModel, image_shape, pixel_output
from pyro_gen.transforms._base import as_event_shape
from pyro_gen.transforms.continuous import ODEMLP, ContinuousFlow, ODEConvNet, ODETimeMLP
from pyro_gen.transforms.dequantization import UniformDequantization

__all__ = ["CNF", "VECTOR_DYNAMICS"]

#: ``CNF(dynamics=...)`` names for vector data
VECTOR_DYNAMICS = ("concat_squash", "time_mlp")


class CNF(FlowModel):
    r"""Continuous normalizing flow (FFJORD): a stack of ODE blocks on a Gaussian base.

    .. math::

        \log p(x) = \log \mathcal{N}(z(t_1); 0, I)
            + \int_{t_0}^{t_1} \operatorname{tr}\frac{\partial f}{\partial z(t)}\,dt,
        \qquad z(t_0) = x.

    Vectors use a ConcatSquash MLP for :math:`f` (FFJORD's), or with ``dynamics="time_mlp"``
    an :class:`~pyro_gen.transforms.continuous.ODETimeMLP` (sinusoidal time embedding, one
    width), which fits flow matching's velocity fields faster. Images ``(H, W)``/``(C, H, W)``
    use a conv net and a final :class:`~pyro_gen.transforms.dequantization.ScaledSigmoid` so
    the density is on pixels in :math:`[0,1]`. The trace is exact for at most 16 dimensions
    and a Hutchinson estimate beyond (then ``log_prob`` is an unbiased estimate, not exact).

    Args:
        event_shape: ``(D,)``, ``(H, W)`` or ``(C, H, W)``.
        hidden_dims: hidden widths of the vector dynamics net (images: width of its convs).
        num_blocks: number of ODE blocks composed.
        trace: ``"exact"``, ``"hutchinson"`` or ``None`` (by size).
        method: torchdiffeq solver.
        rtol: relative tolerance.
        atol: absolute tolerance.
        adjoint: adjoint gradients.
        options: solver options, e.g. ``{"step_size": 0.1}`` for ``method="rk4"``.
        alpha: logit margin for images.
        activation: activation of the ConcatSquash dynamics nets.
        dynamics: vector dynamics network, ``"concat_squash"`` or ``"time_mlp"`` (its width is
            ``hidden_dims[0]``, its residual blocks ``len(hidden_dims)``).
        fourier_features: random Fourier features of the state fed to the ``"time_mlp"`` net
            (see :class:`~pyro_gen.transforms.continuous.ODETimeMLP`; 0: none).
        fourier_scale: std of their frequencies, in cycles per unit of the data.
        dequantization: see :class:`~pyro_gen.flows.base.FlowModel`.
        num_bins: discrete levels of the data.

    References:
        Grathwohl et al. FFJORD. ICLR 2019, arXiv:1810.01367.

    Example:
        >>> import torch
        >>> flow = CNF((2,), hidden_dims=(8,), method="rk4", options={"step_size": 0.25})
        >>> flow.log_prob(torch.randn(3, 2)).shape
        torch.Size([3])
    """

    def __init__(
        self,
        event_shape: Sequence[int] = (2,),
        hidden_dims: Sequence[int] = (64, 64),
        num_blocks: int = 1,
        *,
        trace: str | None = None,
        method: str = "dopri5",
        rtol: float = 1e-5,
        atol: float = 1e-5,
        adjoint: bool = False,
        options: dict | None = None,
        alpha: float = 0.05,
        activation: type[nn.Module] = nn.Softplus,
        dequantization: str | UniformDequantization | None = None,
        num_bins: int = 256,
        name: str | None = None,
        dynamics: str = "concat_squash",
        fourier_features: int = 0,
        fourier_scale: float = 1.0,
    ) -> None:
        event_shape = as_event_shape(event_shape)
        num_blocks = check_count("num_blocks", num_blocks)
        if dynamics not in VECTOR_DYNAMICS:
            raise ValueError(f"dynamics must be one of {VECTOR_DYNAMICS}, got {dynamics!r}")
        if dynamics == "time_mlp" and len(set(hidden_dims)) != 1:
            raise ValueError(
                f"dynamics='time_mlp' has one width for every block; got hidden_dims="
                f"{tuple(hidden_dims)}: pass equal widths, e.g. (128, 128, 128)"
            )
        if fourier_features and not (dynamics == "time_mlp" and len(event_shape) == 1):
            raise ValueError(
                f"fourier_features={fourier_features} needs vector data and dynamics='time_mlp'; "
                f"got event_shape={event_shape}, dynamics={dynamics!r}"
            )
        flow_shape = event_shape if len(event_shape) == 1 else image_shape(event_shape)
        blocks = []
        for _ in range(num_blocks):
            if len(event_shape) == 1 and dynamics == "time_mlp":
                net = ODETimeMLP(
                    event_shape[0],
                    hidden_dims[0],
                    num_layers=len(hidden_dims),
                    fourier_features=fourier_features,
                    fourier_scale=fourier_scale,
                )
            elif len(event_shape) == 1:
                net = ODEMLP(event_shape[0], hidden_dims, activation)
            else:
                net = ODEConvNet(flow_shape[0], hidden_dims[0], num_layers=len(hidden_dims))
            blocks.append(
                ContinuousFlow(
                    net,
                    flow_shape,
                    trace=trace,
                    method=method,
                    rtol=rtol,
                    atol=atol,
                    adjoint=adjoint,
                    options=options,
                )
            )
        transforms = list(blocks)
        if len(event_shape) > 1:
            transforms += pixel_output(event_shape, alpha)
        super().__init__(
            event_shape, transforms, name=name, dequantization=dequantization, num_bins=num_bins
        )
