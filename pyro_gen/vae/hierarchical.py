"""Hierarchical VAEs with L stochastic layers, bottom-up or top-down (ladder) inference."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch import nn
from torch.nn import functional as F

from pyro_gen.nn.registration import register_module
from pyro_gen.plates import data_plate
from pyro_gen.transforms._base import as_event_shape, sample_count
from pyro_gen.vae._utils import mlp, setup_off_the_store
from pyro_gen.vae.decoders import Decoder, MLPDecoder
from pyro_gen.vae.encoders import MLPEncoder
from pyro_gen.vae.guide_slot import GuideSlot
from pyro_gen.vae.likelihoods import Likelihood
from pyro_gen.vae.missing import fill_missing, mask_pixels, observed_rows
from pyro_gen.vae.priors import NormalPrior
from pyro_gen.vae.sites import DATA_PLATE, OBS, latent_site


class ConditionalNormal(nn.Module):
    """:math:`p(z_l \\mid z_{l+1}) = \\mathcal{N}(\\mu(z_{l+1}), \\sigma^2(z_{l+1}))`, an MLP
    with softplus layers; returns ``(loc, scale)``."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dims: Sequence[int]) -> None:
        super().__init__()
        self.net = mlp(in_dim, hidden_dims, 2 * out_dim)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc, raw = self.net(z).chunk(2, -1)
        return loc, F.softplus(raw) + 1e-4


class HierarchicalVAE(GuideSlot):
    """VAE with :math:`L` stochastic layers (layer 1 next to the data),

    .. math:: p(x, z_{1:L}) = p(z_L) \\prod_{l=1}^{L-1} p(z_l \\mid z_{l+1})\\, p(x \\mid z_1).

    Two inference orders:

    - ``"bottom_up"``: :math:`q(z_1 \\mid x) \\prod_{l \\ge 2} q(z_l \\mid z_{l-1})`.
      It draws the layers in the reverse of the model's order, so it is no mean-field guide
      for :class:`~pyro.infer.TraceMeanField_ELBO`, whose analytic KL of :math:`z_l` is
      taken at a :math:`z_{l+1}` drawn from :math:`z_l` (Pyro warns that it "failed to
      verify the mean field restriction"): that loss is biased (0.05 nats for one example
      at initialization, 4x4 inputs, ``z_dims=(3, 2)``, ``hidden_dim=8``); train it with
      ``Trace_ELBO``.
    - ``"top_down"`` (ladder style): a deterministic bottom-up pass gives statistics
      :math:`(\\Delta\\mu_l(x), \\Delta\\sigma_l(x))` for every layer, then the posterior is
      sampled top-down through the generative top-down path
      :math:`(\\mu_{p,l}, \\sigma_{p,l}) = f_l(z_{l+1})` that it shares with the prior,
      as a residual correction of the prior (NVAE's parameterization):

      .. math:: q(z_l \\mid z_{l+1}, x) = \\mathcal{N}\\big(\\mu_{p,l} + \\Delta\\mu_l,\\
                (\\sigma_{p,l}\\, \\Delta\\sigma_l)^2\\big).

      The ladder VAE's precision-weighted combination collapsed every layer on the digits
      data here (all KL near zero even with warm-up), the residual form did not.

    Latent sites are named ``z1 ... zL`` (:func:`~pyro_gen.vae.sites.latent_site`).
    ``hvae.guide`` is :meth:`default_guide` until any Pyro guide over these sites is
    assigned (``hvae.guide = AutoAmortizedNormal(hvae.model)``; ``None`` restores it), as
    for :class:`~pyro_gen.vae.VAE`. ``guide="auto"`` builds that autoguide (one network
    giving a mean-field Normal over every layer's latents, against the built-in guide's
    inference order) and no built-in encoders.

    Args:
        event_shape: shape of one example.
        z_dims: latent sizes, bottom (layer 1) first, e.g. ``(50, 20)``.
        hidden_dim: hidden width of every MLP.
        likelihood: likelihood for the default decoder.
        inference: ``"top_down"`` or ``"bottom_up"``.
        prior: prior module for the top layer (default standard Normal).
        decoder: decoder from :math:`z_1` (default MLP).
        guide: any Pyro guide over ``z1 ... zL``, replacing the built-in one (which is then
            not built); ``"auto"`` builds an
            :class:`~pyro_gen.vae.autoguide.AutoAmortizedNormal` from this model, with one
            hidden layer of ``hidden_dim`` units.
        name: prefix for param-store names.

    References:
        Sønderby et al., Ladder Variational Autoencoders, arXiv:1602.02282.
        Vahdat & Kautz, NVAE: A Deep Hierarchical Variational Autoencoder, arXiv:2007.03898.
        Burda, Grosse & Salakhutdinov, Importance Weighted Autoencoders, arXiv:1509.00519.

    Example:
        >>> hvae = HierarchicalVAE((8, 8), z_dims=(4, 2), hidden_dim=16)
        >>> svi = pyro.infer.SVI(hvae.model, hvae.guide, pyro.optim.Adam({"lr": 1e-3}),
        ...                      pyro.infer.Trace_ELBO())
        >>> loss = svi.step(torch.rand(3, 8, 8).round())
        >>> hvae.sample(2).shape
        torch.Size([2, 8, 8])
    """

    def __init__(
        self,
        event_shape: Sequence[int] = (28, 28),
        z_dims: Sequence[int] = (50, 20),
        hidden_dim: int = 400,
        likelihood: str | Likelihood = "bernoulli",
        inference: str = "top_down",
        prior: nn.Module | None = None,
        decoder: Decoder | None = None,
        guide: Callable[..., Any] | str | None = None,
        name: str = "",
    ) -> None:
        super().__init__()
        if isinstance(guide, str) and guide != "auto":
            raise ValueError(f"guide must be a Pyro guide callable or 'auto', got {guide!r}")
        if inference not in ("top_down", "bottom_up"):
            raise ValueError(f"inference must be 'top_down' or 'bottom_up', got {inference!r}")
        self.event_shape = as_event_shape(event_shape)
        self.z_dims = as_event_shape(z_dims)
        if not self.z_dims or min(self.z_dims) < 1:
            raise ValueError(f"every latent size must be at least 1, got z_dims={z_dims}")
        self.num_layers = len(self.z_dims)
        self.inference = inference
        h = (hidden_dim,)
        self.prior = prior if prior is not None else NormalPrior(self.z_dims[-1])
        self.decoder = (
            decoder
            if decoder is not None
            else MLPDecoder(self.z_dims[0], self.event_shape, h, likelihood)
        )
        # p(z_l | z_{l+1}) for l = 1 .. L-1; index l-1
        self.topdown = nn.ModuleList(
            ConditionalNormal(self.z_dims[i + 1], self.z_dims[i], h)
            for i in range(self.num_layers - 1)
        )
        self.prefix = f"{name}." if name else ""
        self.encoders: nn.ModuleList | None = None  # the built-in guide's, when it is used
        if guide is None:
            encoders = [MLPEncoder(self.event_shape, self.z_dims[0], h)]
            for i in range(1, self.num_layers):
                in_dim = self.z_dims[i - 1] if inference == "bottom_up" else hidden_dim
                encoders.append(MLPEncoder((in_dim,), self.z_dims[i], h))
            self.encoders = nn.ModuleList(encoders)
        elif guide == "auto":
            from pyro_gen.vae.autoguide import AutoAmortizedNormal

            guide = AutoAmortizedNormal(
                self.model, hidden_dims=h, input_fn=observed_rows, name=self.prefix + "encoder"
            )
            # build the encoder now, so that a state_dict loads before the first step
            setup_off_the_store(guide.setup, torch.full((2, *self.event_shape), 0.5))
        if guide is not None:
            self.set_guide(guide)

    def _built_in_encoders(self) -> nn.ModuleList:
        if self.encoders is None:
            raise ValueError(
                "this hierarchical VAE was built with a replacing guide and no built-in "
                "encoders; assign a guide (hvae.guide = ...)"
            )
        return self.encoders

    def _register_generative(self) -> None:
        register_module(self.prefix + "prior", self.prior)
        register_module(self.prefix + "decoder", self.decoder)
        register_module(self.prefix + "topdown", self.topdown)

    def model(
        self,
        x: torch.Tensor | None = None,
        num_samples: int | None = None,
        mask: torch.Tensor | None = None,
        **kwargs,
    ):
        """:math:`z_L \\sim p(z_L)`, :math:`z_l \\sim p(z_l \\mid z_{l+1})`,
        :math:`x \\sim p(x \\mid z_1)`; ``mask`` (True where observed) restricts the
        likelihood to the observed entries, as in :class:`~pyro_gen.vae.VAE`."""
        self._register_generative()
        if mask is not None and x is None:
            raise ValueError("mask= marks the observed entries of x: pass x too")
        batch = x.shape[0] if x is not None else (num_samples or 1)
        obs = None if x is None else self.decoder.likelihood.prepare(fill_missing(x, mask))
        with data_plate(batch, type(self).__name__, DATA_PLATE):
            z = pyro.sample(latent_site(self.num_layers), self.prior())
            for layer in range(self.num_layers - 1, 0, -1):
                loc, scale = self.topdown[layer - 1](z)
                z = pyro.sample(latent_site(layer), dist.Normal(loc, scale).to_event(1))
            return pyro.sample(OBS, mask_pixels(self.decoder(z), mask), obs=obs)

    def default_guide(
        self, x: torch.Tensor | None = None, mask: torch.Tensor | None = None, **kwargs
    ) -> dict[str, torch.Tensor]:
        """Built-in guide: posterior over ``z1 ... zL`` in the chosen inference order (missing
        entries of ``x`` set to zero)."""
        if x is None:
            raise ValueError("the guide needs observed data x")
        encoders = self._built_in_encoders()
        x = fill_missing(x, mask)
        register_module(self.prefix + "encoders", encoders)
        out: dict[str, torch.Tensor] = {}
        with data_plate(x.shape[0], type(self).__name__, DATA_PLATE):
            if self.inference == "bottom_up":
                inp = x
                for layer in range(1, self.num_layers + 1):
                    loc, scale, _ = encoders[layer - 1](inp)
                    inp = out[latent_site(layer)] = pyro.sample(
                        latent_site(layer), dist.Normal(loc, scale).to_event(1)
                    )
                return out
            register_module(self.prefix + "topdown", self.topdown)
            stats, inp = [], x
            for enc in encoders:
                loc, scale, inp = enc(inp)
                stats.append((loc, scale))
            loc, scale = stats[-1]
            z = pyro.sample(latent_site(self.num_layers), dist.Normal(loc, scale).to_event(1))
            out[latent_site(self.num_layers)] = z
            for layer in range(self.num_layers - 1, 0, -1):
                p_loc, p_scale = self.topdown[layer - 1](z)
                b_loc, b_scale = stats[layer - 1]
                loc, scale = p_loc + b_loc, p_scale * b_scale
                z = pyro.sample(latent_site(layer), dist.Normal(loc, scale).to_event(1))
                out[latent_site(layer)] = z
        return out

    @torch.no_grad()
    def sample(self, num_samples: int, mean: bool = True) -> torch.Tensor:
        """Ancestral samples, ``(num_samples, *event_shape)`` (decoder means by default)."""
        num_samples = sample_count(num_samples)
        z = self.prior().sample((num_samples,))
        for layer in range(self.num_layers - 1, 0, -1):
            loc, scale = self.topdown[layer - 1](z)
            z = loc + scale * torch.randn_like(loc)
        if mean:
            return self.decoder.mean(z)
        # z's dtype: a float64 model's Gaussian draws were rounded to float32 (the default)
        return self.decoder(z).sample().to(z.dtype)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Posterior mean of :math:`z_1` (given a posterior draw of the layers above, for
        top-down inference; for an assigned guide, its median or a draw)."""
        if self.custom_guide is not None:
            return self._guide_latent(latent_site(1), x)
        encoders = self._built_in_encoders()
        if self.inference == "bottom_up":
            return encoders[0](x)[0]
        trace = poutine.trace(self.default_guide).get_trace(x)
        return trace.nodes[latent_site(1)]["fn"].base_dist.loc

    @torch.no_grad()
    def decode(self, z: torch.Tensor, mean: bool = True) -> torch.Tensor:
        """Decode bottom-layer latents :math:`z_1` to images in data space."""
        # z's dtype: .float() rounded a float64 model's Gaussian draws to float32
        return self.decoder.mean(z) if mean else self.decoder(z).sample().to(z.dtype)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Decoder mean at the posterior mean of :math:`z_1`."""
        return self.decode(self.encode(x))
