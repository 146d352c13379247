"""Posterior families :math:`q(z \\mid x)` for the VAE family: the building blocks of its guide.

A posterior family is a module whose ``forward(x, context=None, **kwargs)`` *returns the
distribution* of the latent for a batch ``x``; it has no ``pyro.sample`` statement, so it
is not a Pyro guide by itself. :class:`~pyro_gen.vae.VAE` turns it into one: its guide
samples the family's distribution at the latent site under the data plate. Amortized
families also expose ``encode(x)`` giving a Normal ``(loc, scale)``, used by the VampPrior
and the diagnostics. To replace the whole guide with any Pyro guide instead (a hand-written
function, :class:`~pyro_gen.vae.autoguide.AutoAmortizedNormal`, a Pyro autoguide), see
:class:`~pyro_gen.vae.VAE`.
"""

from __future__ import annotations

import pyro.distributions as dist
import torch
from pyro.nn import ConditionalAutoRegressiveNN
from torch import nn
from torch.nn import functional as F

from pyro_gen.distributions.flow import FlowDistribution
from pyro_gen.transforms._base import PicklableModule
from pyro_gen.vae.encoders import Encoder


class Posterior(PicklableModule):
    """Base class of posterior families: ``forward(x, context=None, **kwargs)`` returns the
    distribution of the latent for the batch ``x`` (batch shape ``(B,)``); the VAE's guide
    samples it. Passing one as a VAE's ``guide=`` is refused with a pointer to ``posterior=``.

    Example:
        >>> class Fixed(Posterior):
        ...     def forward(self, x, context=None, **kwargs):
        ...         return dist.Normal(torch.zeros(x.shape[0], 2), 1.0).to_event(1)
        >>> from pyro_gen.vae import VAE
        >>> VAE((4, 4), z_dim=2, hidden_dim=8, posterior=Fixed()).posterior(torch.rand(3, 4, 4))
        Independent(Normal(loc: torch.Size([3, 2]), scale: torch.Size([3, 2])), 1)
    """

    def forward(
        self, x: torch.Tensor, context: torch.Tensor | None = None, **kwargs
    ) -> dist.TorchDistribution:
        raise NotImplementedError


class NormalPosterior(Posterior):
    """Amortized mean-field Normal posterior family, :math:`q(z \\mid x) = \\mathcal{N}(\\mu(x),
    \\operatorname{diag}\\sigma^2(x))`.

    Args:
        encoder: an :class:`~pyro_gen.vae.encoders.Encoder`.

    Example:
        >>> from pyro_gen.vae.encoders import MLPEncoder
        >>> q = NormalPosterior(MLPEncoder((8, 8), 2, (16,)))
        >>> q(torch.rand(5, 8, 8)).batch_shape
        torch.Size([5])
    """

    def __init__(self, encoder: Encoder) -> None:
        super().__init__()
        self.encoder = encoder
        self.z_dim = encoder.z_dim

    def encode(
        self, x: torch.Tensor, context: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        loc, scale, _ = self.encoder(x, context)
        return loc, scale

    def forward(
        self, x: torch.Tensor, context: torch.Tensor | None = None, **kwargs
    ) -> dist.TorchDistribution:
        loc, scale = self.encode(x, context)
        return dist.Normal(loc, scale).to_event(1)


class IAFPosterior(NormalPosterior):
    """Amortized flow posterior family: the encoder's Normal followed by inverse autoregressive flow
    steps conditioned on the encoder's hidden state :math:`h(x)`,

    .. math:: z_0 \\sim \\mathcal{N}(\\mu(x), \\sigma^2(x)),\\quad
              z_t = \\mu_t(z_{t-1}, h) + \\sigma_t(z_{t-1}, h) \\odot z_{t-1},

    with :math:`(\\mu_t, \\sigma_t)` from a conditional MADE (a pseudo-random variable
    order per step, the same in every build, so that a param store restores it), so
    sampling and the density of the sample are one pass each. ``encode``, from
    :class:`NormalPosterior`, gives the Normal before the flow steps (used by diagnostics,
    and as the components of a bound :class:`~pyro_gen.distributions.VampPrior`, which
    therefore are not flowed; its docstring says why).

    Args:
        encoder: an :class:`~pyro_gen.vae.encoders.Encoder` (its ``hidden_dim`` sizes the
            context).
        num_flows: number of IAF steps.
        hidden_dims: hidden sizes of each conditional MADE (default one layer of width
            ``max(4 z_dim, 64)``).

    References:
        Kingma et al., Improved Variational Inference with Inverse Autoregressive Flow,
        arXiv:1606.04934.

    Example:
        >>> from pyro_gen.vae.encoders import MLPEncoder
        >>> q = IAFPosterior(MLPEncoder((8, 8), 2, (16,)), num_flows=2)
        >>> qz = q(torch.rand(5, 8, 8))
        >>> qz.log_prob(qz.rsample()).shape
        torch.Size([5])
    """

    def __init__(
        self,
        encoder: Encoder,
        num_flows: int = 2,
        hidden_dims: tuple[int, ...] | None = None,
    ) -> None:
        super().__init__(encoder)
        z = self.z_dim
        hidden = list(hidden_dims) if hidden_dims else [max(4 * z, 64)]
        self.flows = nn.ModuleList(_iaf_steps(z, encoder.hidden_dim, hidden, num_flows))

    def forward(
        self, x: torch.Tensor, context: torch.Tensor | None = None, **kwargs
    ) -> dist.TorchDistribution:
        loc, scale, h = self.encoder(x, context)
        base = dist.Normal(loc, scale).to_event(1)
        # pyro_gen's flow distribution, whose entropy() says there is no closed form and
        # how to estimate it (Pyro's raised a NotImplementedError without a message)
        return FlowDistribution(base, [f.condition(h) for f in self.flows])


def _iaf_steps(
    dim: int, context_dim: int, hidden_dims: list[int], num_flows: int
) -> list[dist.transforms.ConditionalAffineAutoregressive]:
    """IAF steps whose connectivity (each step's variable order, its hidden units' degrees)
    is drawn from a generator with a fixed seed, their weights from the global one; two
    consecutive steps never share an order.

    Why: the connectivity lives in buffers, which Pyro's param store does not hold. Drawn
    from the global generator, a VAE built afresh to receive a store restored with
    ``pyro.get_param_store().load`` had other masks, so the restored weights gave another
    posterior, silently."""
    nets = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        order = None
        for _ in range(num_flows):
            new = torch.randperm(dim)
            if order is not None and torch.equal(new, order):
                new = order.flip(0)  # the same order twice in a row adds little
            order = new
            nets.append(
                ConditionalAutoRegressiveNN(dim, context_dim, hidden_dims, permutation=order)
            )
    for net in nets:
        for layer in net.modules():
            if isinstance(layer, nn.Linear):
                layer.reset_parameters()
    return [dist.transforms.ConditionalAffineAutoregressive(n, stable=True) for n in nets]


class PerExamplePosterior(Posterior):
    """Non-amortized mean-field posterior family: free :math:`(\\mu_n, \\sigma_n)` for
    every training example :math:`n`, looked up by the example ids passed as ``idx``.

    Train with batches carrying their ids (``model(x, idx=i)``, ``guide(x, idx=i)``; the
    VAE model ignores ``idx``). Useful as the reference an amortized guide is compared
    to (the amortization gap).

    Args:
        num_data: number of training examples :math:`N`.
        z_dim: latent size.
        init_scale: initial posterior standard deviation.

    Example:
        >>> q = PerExamplePosterior(num_data=10, z_dim=2)
        >>> q(torch.rand(3, 8, 8), idx=torch.tensor([0, 4, 9])).batch_shape
        torch.Size([3])
    """

    def __init__(self, num_data: int, z_dim: int, init_scale: float = 0.1) -> None:
        super().__init__()
        self.z_dim = z_dim
        self.locs = nn.Parameter(torch.zeros(num_data, z_dim))
        raw = torch.log(torch.expm1(torch.tensor(float(init_scale))))
        self.raw_scales = nn.Parameter(torch.full((num_data, z_dim), raw.item()))

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        idx: torch.Tensor | None = None,
        **kwargs,
    ) -> dist.TorchDistribution:
        if idx is None:
            # the other keywords are swallowed by **kwargs, so a misspelt idx= is named
            given = f" (it got the keywords {sorted(kwargs)})" if kwargs else ""
            raise ValueError(
                "PerExamplePosterior needs the example ids as idx=: call the guide as "
                f"guide(x, idx=ids), or the family as posterior(x, idx=ids){given}"
            )
        if idx.shape != x.shape[:1]:
            raise ValueError(f"idx must have shape ({x.shape[0]},), got {tuple(idx.shape)}")
        scale = F.softplus(self.raw_scales[idx]) + 1e-5
        return dist.Normal(self.locs[idx], scale).to_event(1)


def make_posterior(
    name: str,
    event_shape: tuple[int, ...],
    z_dim: int,
    hidden_dim: int = 400,
    context_dim: int = 0,
    num_flows: int = 2,
) -> nn.Module:
    """Build an amortized posterior family by name: ``normal`` or ``iaf`` (MLP encoder).

    Example:
        >>> type(make_posterior("iaf", (8, 8), 2, 16)).__name__
        'IAFPosterior'
    """
    from pyro_gen.vae.encoders import MLPEncoder

    enc = MLPEncoder(event_shape, z_dim, (hidden_dim,), context_dim=context_dim)
    if name == "normal":
        return NormalPosterior(enc)
    if name == "iaf":
        return IAFPosterior(enc, num_flows=num_flows)
    raise ValueError(f"unknown posterior family {name!r}; choose normal or iaf")
