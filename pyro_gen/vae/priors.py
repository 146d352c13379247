"""Priors :math:`p(z)` for the VAE family.

A prior is a module whose ``forward(context=None)`` returns a distribution with event
shape ``(z_dim,)`` and a batch shape that broadcasts under ``pyro.plate("data")``.
Learnable priors keep their parameters as module parameters, so ``pyro.module`` in the
model registers them.
"""

from __future__ import annotations

import pyro.distributions as dist
import torch
from torch import nn

from pyro_gen.distributions.flow import Flow
from pyro_gen.distributions.prior_module import PriorModule
from pyro_gen.transforms import affine_coupling


class NormalPrior(PriorModule):
    """Standard Normal prior :math:`p(z) = \\mathcal{N}(0, I)`.

    Example:
        >>> p = NormalPrior(3)()
        >>> p.event_shape, round(p.log_prob(torch.zeros(3)).item(), 4)
        (torch.Size([3]), -2.7568)
    """

    def __init__(self, z_dim: int) -> None:
        super().__init__()
        if z_dim < 1:
            raise ValueError(f"the latent size must be at least 1, got z_dim={z_dim}")
        self.z_dim = z_dim
        self.register_buffer("loc", torch.zeros(z_dim))
        self.register_buffer("scale", torch.ones(z_dim))

    def forward(self, context: torch.Tensor | None = None, **kwargs) -> dist.TorchDistribution:
        return dist.Normal(self.loc, self.scale).to_event(1)


class FlowPrior(PriorModule):
    """Flow prior: a RealNVP (affine coupling) pushforward of a standard Normal,

    .. math:: z = f_L \\circ \\dots \\circ f_1(\\epsilon),\\ \\epsilon \\sim \\mathcal{N}(0, I),
              \\qquad \\log p(z) = \\log \\mathcal{N}(f^{-1}(z)) + \\log\\left|\\det
              \\frac{\\partial f^{-1}}{\\partial z}\\right|.

    Coupling layers make both the density of a guide sample (needed in the ELBO) and
    sampling a single network pass; the masked halves alternate between layers. Built on
    :class:`pyro_gen.distributions.flow.Flow` and :func:`pyro_gen.transforms.affine_coupling`.

    Args:
        z_dim: latent size (at least 2).
        num_flows: number of coupling layers.
        hidden_dims: hidden sizes of each coupling network.

    References:
        Dinh, Sohl-Dickstein & Bengio, Density estimation using Real NVP, arXiv:1605.08803.
        Chen et al., Variational Lossy Autoencoder, arXiv:1611.02731 (flow priors).

    Example:
        >>> prior = FlowPrior(2, num_flows=2, hidden_dims=(8,))
        >>> prior().log_prob(torch.zeros(3, 2)).shape
        torch.Size([3])
    """

    def __init__(
        self, z_dim: int, num_flows: int = 4, hidden_dims: tuple[int, ...] = (64, 64)
    ) -> None:
        super().__init__()
        if z_dim < 2:
            raise ValueError(f"FlowPrior needs z_dim >= 2 for coupling layers, got {z_dim}")
        self.z_dim = z_dim
        self.flow = Flow(
            (z_dim,),
            [
                affine_coupling(z_dim, parity=i % 2, hidden_dims=tuple(hidden_dims))
                for i in range(num_flows)
            ],
        )

    def forward(self, context: torch.Tensor | None = None, **kwargs) -> dist.TorchDistribution:
        return self.flow()


def make_prior(
    name: str,
    z_dim: int,
    event_shape: tuple[int, ...] | None = None,
    num_components: int | None = None,
) -> nn.Module:
    """Build a prior by name: ``normal``, ``mog`` (10 components), ``vamp`` (500
    pseudo-inputs; needs ``event_shape``) or ``flow``.

    Example:
        >>> type(make_prior("mog", 2)).__name__
        'MixturePrior'
    """
    from pyro_gen.distributions.mixture import MixturePrior
    from pyro_gen.distributions.vamp import VampPrior

    if name == "normal":
        return NormalPrior(z_dim)
    if name == "mog":
        return MixturePrior(z_dim, num_components or 10)
    if name == "vamp":
        if event_shape is None:
            raise ValueError("the VampPrior needs the data event_shape")
        return VampPrior(event_shape, num_components or 500)
    if name == "flow":
        return FlowPrior(z_dim)
    raise ValueError(f"unknown prior {name!r}; choose normal, mog, vamp or flow")
