"""A VAE with a Bayesian decoder: a prior on the decoder's weights, inferred with the latents.

.. math:: \\theta \\sim p(\\theta), \\qquad z_i \\sim p(z), \\qquad
          x_i \\sim p(x \\mid z_i, \\theta), \\quad i = 1..N,

with the guide :math:`q(\\theta)\\,\\prod_i q(z_i \\mid x_i)`: Pyro's global/local split. The
weights :math:`\\theta` are *global* latents, outside the data plate, drawn once for the
whole data set and given a mean-field Normal guide by Pyro's
:class:`~pyro.infer.autoguide.AutoNormal`; each :math:`z_i` is a *local* latent under the
data plate, with an amortized encoder. The decoder is a :class:`~pyro.nn.PyroModule` whose
weights are :class:`~pyro.nn.PyroSample` sites. With ``num_data=N`` the data plate is
subsampled, so a minibatch of :math:`B` scales the local terms by :math:`N/B` and the ELBO
counts the weights' KL once per data set, as it should:

.. math:: \\mathcal{L} = \\mathbb{E}_{q(\\theta)}\\Big[\\sum_{i=1}^N
          \\mathcal{L}_i(\\theta)\\Big] - \\mathrm{KL}(q(\\theta) \\,\\|\\, p(\\theta)).

References:
    Kingma & Welling, Auto-Encoding Variational Bayes, arXiv:1312.6114 (appendix F, the
    full variational Bayes of the decoder's parameters).
    Blundell et al., Weight Uncertainty in Neural Networks, arXiv:1505.05424.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer.autoguide import AutoNormal
from pyro.nn import PyroModule, PyroSample
from torch import nn
from torch.nn import functional as F

from pyro_gen.nn.mlp import layer_widths
from pyro_gen.nn.registration import register_module
from pyro_gen.plates import enclosing_plate
from pyro_gen.transforms._base import PicklableModule, as_event_shape, sample_count
from pyro_gen.vae._utils import numel
from pyro_gen.vae.encoders import MLPEncoder
from pyro_gen.vae.likelihoods import Likelihood, make_likelihood
from pyro_gen.vae.sites import DATA_PLATE, LATENT, OBS


def _layer_prior(layer: BayesianLinear, *, weight: bool) -> dist.TorchDistribution:
    """The Normal prior of a :class:`BayesianLinear` layer's weight or bias."""
    if weight:
        return layer._prior(layer.out_features, layer.in_features).to_event(2)
    return layer._prior(layer.out_features).to_event(1)


class BayesianLinear(PyroModule):
    """A linear layer whose weight and bias are sampled from a Normal prior.

    Under a particle plate (vectorized ELBO or evaluation) the weights carry leading particle
    dimensions ``(K, 1, out, in)``, the ``1`` standing for the data plate; the layer then
    applies each particle's weights to that particle's rows ``(K, B, in)``.

    Example:
        >>> layer = BayesianLinear(3, 2, prior_scale=1.0)
        >>> layer(torch.randn(5, 3)).shape
        torch.Size([5, 2])
    """

    def __init__(self, in_features: int, out_features: int, prior_scale: float = 1.0) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        # the prior's parameters are buffers, so that module.to(device) moves the prior too
        self.register_buffer("prior_loc", torch.zeros(()), persistent=False)
        self.register_buffer("prior_scale", torch.tensor(float(prior_scale)), persistent=False)
        # module-level priors, not lambdas, so that torch.save(layer) can pickle them
        self.weight = PyroSample(functools.partial(_layer_prior, weight=True))
        self.bias = PyroSample(functools.partial(_layer_prior, weight=False))

    def _prior(self, *shape: int) -> dist.Normal:
        return dist.Normal(self.prior_loc, self.prior_scale).expand(shape)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        weight, bias = self.weight, self.bias
        if weight.dim() > 2:  # drop the data plate's singleton dim of global draws
            weight, bias = weight.squeeze(-3), bias
        return torch.matmul(h, weight.transpose(-1, -2)) + bias


class BayesianMLPDecoder(PyroModule):
    """An MLP decoder with :class:`BayesianLinear` layers and softplus between them,
    followed by a :class:`~pyro_gen.vae.likelihoods.Likelihood`.

    Example:
        >>> dec = BayesianMLPDecoder(2, (4,), hidden_dims=(8,))
        >>> dec(torch.randn(5, 2)).batch_shape
        torch.Size([5])
    """

    def __init__(
        self,
        z_dim: int,
        event_shape: Sequence[int],
        hidden_dims: Sequence[int] = (400,),
        likelihood: str | Likelihood = "bernoulli",
        prior_scale: float = 1.0,
        name: str = "decoder",
    ) -> None:
        super().__init__(name=name)
        self.event_shape = as_event_shape(event_shape)
        self.likelihood = make_likelihood(likelihood)
        dims = [
            z_dim,
            *layer_widths(hidden_dims),
            numel(self.event_shape) * self.likelihood.num_params,
        ]
        self.layers = PyroModule[nn.ModuleList](
            [BayesianLinear(a, b, prior_scale) for a, b in zip(dims[:-1], dims[1:])]
        )

    def params(self, z: torch.Tensor) -> torch.Tensor:
        h = z
        for i, layer in enumerate(self.layers):
            h = layer(h if i == 0 else F.softplus(h))
        return h.reshape(h.shape[:-1] + self.event_shape + (self.likelihood.num_params,))

    def forward(self, z: torch.Tensor) -> dist.TorchDistribution:
        return self.likelihood(self.params(z), len(self.event_shape))


def _init_buffer(site: str) -> str:
    return "_init_" + site.replace(".", "_")


def _is_site_of(names: frozenset[str], msg: dict) -> bool:
    return msg["name"] in names


def _initial_value(vae: nn.Module, buffers: dict[str, str], site: dict) -> torch.Tensor:
    """A weight site's initial value: the buffer ``buffers[site]`` of ``vae``."""
    return getattr(vae, buffers[site["name"]])


class BayesianVAE(PicklableModule):
    """VAE with a Bayesian decoder; its guide pairs an
    :class:`~pyro.infer.autoguide.AutoNormal` over the decoder's weights (global) with an
    amortized Normal encoder for :math:`z` (local). See the module docstring.

    Args:
        event_shape: shape of one example.
        z_dim: latent size.
        hidden_dims: hidden sizes of encoder and decoder.
        likelihood: the decoder's likelihood, name or object.
        prior_scale: standard deviation of the Normal prior on every decoder weight.
        num_data: training-set size :math:`N`; the data plate is then subsampled, scaling a
            minibatch's local terms by :math:`N/B` (None: each batch is the data set;
            ``fit`` on batches of a larger set then warns, ``UnscaledBatchWarning``).
        init_scale: initial standard deviation of the weights' guide.

    Example:
        >>> vae = BayesianVAE((8, 8), z_dim=2, hidden_dims=(16,), num_data=100)
        >>> loss = pyro.infer.Trace_ELBO().loss(vae.model, vae.guide, torch.rand(10, 8, 8).round())
        >>> sorted(vae.weight_sites())[:2]
        ['decoder.layers.0.bias', 'decoder.layers.0.weight']
    """

    def __init__(
        self,
        event_shape: Sequence[int] = (28, 28),
        z_dim: int = 50,
        hidden_dims: Sequence[int] = (400,),
        likelihood: str | Likelihood = "bernoulli",
        prior_scale: float = 1.0,
        num_data: int | None = None,
        init_scale: float = 0.01,
    ) -> None:
        super().__init__()
        if not (prior_scale > 0 and math.isfinite(prior_scale)):
            raise ValueError(f"prior_scale must be positive, got {prior_scale!r}")
        if num_data is not None and (isinstance(num_data, bool) or num_data < 1):
            raise ValueError(f"num_data must be a positive integer or None, got {num_data!r}")
        self.event_shape, self.z_dim, self.num_data = as_event_shape(event_shape), z_dim, num_data
        self.decoder = BayesianMLPDecoder(z_dim, event_shape, hidden_dims, likelihood, prior_scale)
        self.encoder = MLPEncoder(event_shape, z_dim, hidden_dims)
        # the weights' guide starts at a usual deterministic initialization (uniform in
        # +-1/sqrt(fan_in), as nn.Linear), not at the prior's zero mean, where every
        # hidden unit would be the same
        initial = {}
        for name in self.weight_sites():
            layer = self.decoder.layers[int(name.split(".")[2])]
            shape = (
                (layer.out_features, layer.in_features)
                if name.endswith("weight")
                else (layer.out_features,)
            )
            bound = 1 / math.sqrt(layer.in_features)
            initial[name] = _init_buffer(name)
            # a buffer, so that the guide, set up at its first call, starts on the model's device
            self.register_buffer(
                initial[name], torch.empty(shape).uniform_(-bound, bound), persistent=False
            )
        # partials of module-level functions, not lambdas, so that torch.save(vae) pickles
        weights_only = poutine.block(
            self.model, expose_fn=functools.partial(_is_site_of, frozenset(initial))
        )
        self.weight_guide = AutoNormal(
            weights_only,
            init_loc_fn=functools.partial(_initial_value, self, initial),
            init_scale=init_scale,
        )

    def weight_sites(self) -> list[str]:
        """Names of the decoder's weight sites (the global latents)."""
        return [
            f"decoder.layers.{i}.{kind}"
            for i in range(len(self.decoder.layers))
            for kind in ("weight", "bias")
        ]

    def _plate(self, x: torch.Tensor) -> pyro.plate:
        batch = x.shape[0]
        if self.num_data is None:
            return pyro.plate(DATA_PLATE, batch)
        # an explicit subsample: the minibatch is given, only the N/B scale is wanted
        return pyro.plate(DATA_PLATE, self.num_data, subsample=torch.arange(batch, device=x.device))

    def _refuse_callers_plate(self) -> None:
        """The decoder's weights are global latents: under a caller's plate over the examples
        (Pyro's minibatch idiom around the whole model) each example would draw its own,
        which fails deep in the decoder or AutoNormal; this model opens its plate itself."""
        frame = enclosing_plate(-1)
        if frame is not None:
            raise ValueError(
                "BayesianVAE draws its decoder's weights once, outside its plate over the "
                f"examples; under the caller's plate {frame.name!r} at dim -1 each example "
                "would draw its own. Call vae.model and vae.guide outside any plate over "
                "the examples; for minibatches of a data set of N examples build it with "
                "num_data=N, so that its own plate scales the examples' terms by N/B"
            )

    def _check(self, x: torch.Tensor) -> None:
        self._refuse_callers_plate()
        if x is None:  # the model generates without x; the guide encodes it
            raise ValueError("BayesianVAE.guide needs the examples x (it encodes them)")
        if x.dim() != len(self.event_shape) + 1 or tuple(x.shape[1:]) != self.event_shape:
            raise ValueError(
                f"expected x of shape (batch, {', '.join(map(str, self.event_shape))}), "
                f"got {tuple(x.shape)}"
            )
        if self.num_data is not None and x.shape[0] > self.num_data:
            raise ValueError(f"a batch of {x.shape[0]} is larger than num_data={self.num_data}")

    def model(self, x: torch.Tensor | None = None, num_samples: int | None = None) -> torch.Tensor:
        """:math:`\\theta \\sim p(\\theta)` (outside the data plate), then per example
        :math:`z \\sim \\mathcal{N}(0, I)`, :math:`x \\sim p(x \\mid z, \\theta)`. Without
        ``x`` it generates ``num_samples`` examples (default 1), as every model of the family
        does: under ``Predictive(vae.model, guide=vae.weight_guide, num_samples=S)`` with
        the weights drawn from their guide (sequentially: with ``parallel=True`` Pyro 1.9
        reshapes the draws of a guide that opens no plate wrongly for weights of two dims).

        Example:
            >>> vae = BayesianVAE((8, 8), z_dim=2, hidden_dims=(16,))
            >>> vae.model(num_samples=3).shape
            torch.Size([3, 8, 8])
        """
        if x is None:
            self._refuse_callers_plate()
            # generating: a plain plate (no N/B scale, nothing is scored), on the modules'
            # device and dtype
            like = self.decoder.layers[0].prior_loc
            data_plate = pyro.plate(DATA_PLATE, sample_count(num_samples or 1))
        else:
            self._check(x)
            like = x
            data_plate = self._plate(x)  # one plate entered twice (one subsample site)
        with data_plate:
            z = pyro.sample(LATENT, dist.Normal(like.new_zeros(self.z_dim), 1.0).to_event(1))
        # the decoder is called outside the plate, so its weight sites are global
        px = self.decoder(z)
        obs = None if x is None else self.decoder.likelihood.prepare(x)
        with data_plate:
            return pyro.sample(OBS, px, obs=obs)

    def guide(self, x: torch.Tensor) -> torch.Tensor:
        """:math:`q(\\theta)` (AutoNormal, global) and :math:`q(z \\mid x)` (amortized,
        local)."""
        self._check(x)
        register_module("encoder", self.encoder)
        loc, scale, _ = self.encoder(x)
        with self._plate(x):
            z = pyro.sample(LATENT, dist.Normal(loc, scale).to_event(1))
        # after z, in the model's order of sites, which TraceMeanField_ELBO checks (it
        # warned that it could not verify the mean-field restriction)
        self.weight_guide(x)
        return z

    @torch.no_grad()
    def sample(self, num_samples: int, num_decoders: int = 1) -> torch.Tensor:
        """Decoder means at prior draws of :math:`z`, under ``num_decoders`` draws of the
        weights from their guide: shape ``(num_decoders, num_samples, *event_shape)``; the
        spread over the first dimension is the decoder's epistemic uncertainty."""
        num_samples = sample_count(num_samples)
        device = next(self.encoder.parameters()).device
        out = []
        for _ in range(num_decoders):
            weights = self.weight_guide(torch.zeros(1, *self.event_shape, device=device))
            decoder = poutine.condition(self.decoder.params, data=weights)
            params = decoder(torch.randn(num_samples, self.z_dim, device=device))
            out.append(self.decoder.likelihood.mean(params))
        return torch.stack(out)


__all__ = ["BayesianLinear", "BayesianMLPDecoder", "BayesianVAE"]
