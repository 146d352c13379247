"""The variational autoencoder as a Pyro model/guide pair assembled from parts."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pyro
import torch
from pyro.infer.autoguide import AutoGuide
from torch import nn
from torch.nn import functional as F

from pyro_gen.nn.registration import register_module
from pyro_gen.plates import data_plate, generated_rows
from pyro_gen.transforms._base import as_event_shape, sample_count
from pyro_gen.vae._utils import setup_off_the_store
from pyro_gen.vae.decoders import Decoder, MLPDecoder
from pyro_gen.vae.encoders import MLPEncoder
from pyro_gen.vae.guide_slot import GuideSlot
from pyro_gen.vae.likelihoods import Likelihood
from pyro_gen.vae.missing import fill_missing, mask_pixels, observed_rows
from pyro_gen.vae.posteriors import NormalPosterior, Posterior
from pyro_gen.vae.priors import NormalPrior
from pyro_gen.vae.sites import DATA_PLATE, LATENT, OBS


class VAE(GuideSlot):
    """Variational autoencoder :math:`p(z)\\,p(x \\mid z)` with an amortized guide
    :math:`q(z \\mid x)`, trained by maximizing

    .. math:: \\mathcal{L}(x) = \\mathbb{E}_{q(z \\mid x)}[\\log p(x \\mid z)]
              - \\mathrm{KL}(q(z \\mid x) \\,\\|\\, p(z)) \\le \\log p(x).

    The prior, the decoder (network + likelihood) and the guide are separate parts,
    each replaceable without touching the others. Defaults give the standard VAE: a
    784-400-50 softplus MLP encoder and decoder, a standard Normal prior and a Bernoulli
    likelihood.

    **The guide.** ``vae.guide`` is a Pyro guide. By default it is :meth:`default_guide`,
    which samples the latent from a *posterior family* (``posterior=``, a module returning
    :math:`q(z \\mid x)` as a distribution, e.g.
    :class:`~pyro_gen.vae.posteriors.IAFPosterior`) under the data plate. Any Pyro guide
    replaces it without touching the model, in one of three ways:

    - ``VAE(..., guide=my_guide)``, or ``guide="auto"`` for an
      :class:`~pyro_gen.vae.autoguide.AutoAmortizedNormal` traced from this model;
    - ``vae.guide = AutoAmortizedNormal(vae.model)`` (``vae.guide = None`` restores the
      built-in guide);
    - ``pyro_gen.infer.fit(vae, data, guide=my_guide)`` for one run, leaving ``vae`` as is.

    A guide sets the site ``"z"`` under the plate ``"data"`` (names in
    :mod:`pyro_gen.vae.sites`) and takes the model's arguments ``(x, y=None, **kwargs)``.

    **Missing data.** ``model(x, mask=m)`` scores only the entries where the boolean ``m``
    (shape of ``x``) is true, and the built-in guide encodes ``x`` with the missing entries
    set to zero; trained with :func:`~pyro_gen.vae.objectives.iwae` this is MIWAE (see
    :mod:`pyro_gen.vae.missing`, and :func:`~pyro_gen.vae.missing.impute` to fill them in).

    Args:
        event_shape: shape of one example (``(28, 28)`` for MNIST).
        z_dim: latent size.
        hidden_dim: hidden width of the default encoder and decoder.
        likelihood: likelihood name or object for the default decoder.
        prior: a prior module (``forward(context) -> Distribution``); default standard
            Normal. A prior with a ``bind(guide)`` method (VampPrior) is bound to the guide.
        decoder: a :class:`~pyro_gen.vae.decoders.Decoder`; default MLP.
        posterior: the posterior family of the built-in guide (``forward(x, context) ->
            Distribution``); default :class:`~pyro_gen.vae.posteriors.NormalPosterior` over
            an MLP encoder (built only when no ``guide`` is given).
        guide: any Pyro guide for this model, replacing the built-in one; ``"auto"`` builds
            an :class:`~pyro_gen.vae.autoguide.AutoAmortizedNormal` from this model.
        num_classes: if given, a conditional VAE: ``model(x, y=labels)`` passes the
            one-hot label to prior, decoder and guide (a float ``y`` is used as is).
        name: prefix for the names under which networks enter Pyro's param store, so
            that two VAEs can share one store.

    References:
        Kingma & Welling, Auto-Encoding Variational Bayes, arXiv:1312.6114.
        Rezende, Mohamed & Wierstra, Stochastic Backpropagation, arXiv:1401.4082.
        Sohn, Lee & Yan, Learning Structured Output Representation using Deep Conditional
        Generative Models, NeurIPS 2015 (conditional VAE).

    Example:
        >>> vae = VAE(event_shape=(8, 8), z_dim=2, hidden_dim=16)
        >>> svi = pyro.infer.SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}),
        ...                      pyro.infer.Trace_ELBO())
        >>> loss = svi.step(torch.rand(4, 8, 8).round())
        >>> vae.sample(3).shape
        torch.Size([3, 8, 8])

        Swapping the guide for an autoguide traced from the model:

        >>> from pyro_gen.vae import AutoAmortizedNormal
        >>> vae.guide = AutoAmortizedNormal(vae.model, hidden_dims=(16,))
        >>> svi = pyro.infer.SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}),
        ...                      pyro.infer.Trace_ELBO())
        >>> loss = svi.step(torch.rand(4, 8, 8).round())
        >>> list(vae.guide.local_sites)
        ['z']
    """

    def __init__(
        self,
        event_shape: Sequence[int] = (28, 28),
        z_dim: int = 50,
        hidden_dim: int = 400,
        likelihood: str | Likelihood = "bernoulli",
        prior: nn.Module | None = None,
        decoder: Decoder | None = None,
        guide: Callable[..., Any] | str | None = None,
        num_classes: int | None = None,
        posterior: Posterior | nn.Module | None = None,
        name: str = "",
    ) -> None:
        super().__init__()
        if z_dim < 1:
            raise ValueError(f"the latent size must be at least 1, got z_dim={z_dim}")
        self.event_shape = as_event_shape(event_shape)
        self.z_dim = z_dim
        self.num_classes = num_classes
        c = num_classes or 0
        self.prior = prior if prior is not None else NormalPrior(z_dim)
        self.decoder = (
            decoder
            if decoder is not None
            else MLPDecoder(z_dim, self.event_shape, (hidden_dim,), likelihood, context_dim=c)
        )
        self.prefix = f"{name}." if name else ""
        if isinstance(guide, str) and guide != "auto":
            raise ValueError(f"guide must be a Pyro guide callable or 'auto', got {guide!r}")
        if isinstance(posterior, AutoGuide):
            raise TypeError(
                f"{type(posterior).__name__} is a Pyro guide, not a posterior family (a module "
                f"returning a distribution): pass it as VAE(..., guide=...)"
            )
        if posterior is None and guide is None:
            posterior = NormalPosterior(
                MLPEncoder(self.event_shape, z_dim, (hidden_dim,), context_dim=c)
            )
        self.posterior = posterior
        if hasattr(self.prior, "bind"):
            if num_classes is not None:
                # the components are the encoder's posteriors at pseudo-inputs, which carry
                # no label: bind would fail inside the conditional encoder, or the first step
                raise ValueError(
                    f"a VampPrior cannot serve a conditional VAE (num_classes={num_classes}): "
                    "its components are the encoder's posteriors at unlabelled pseudo-inputs; "
                    "use another prior (NormalPrior, MixturePrior, FlowPrior) or drop "
                    "num_classes"
                )
            if posterior is None:
                raise ValueError(
                    "the VampPrior's components come from the VAE's posterior family: pass "
                    "posterior=... (an amortized Normal family), not only a guide"
                )
            self.prior.bind(posterior)
        if guide == "auto":
            from pyro_gen.vae.autoguide import AutoAmortizedNormal

            guide = AutoAmortizedNormal(
                self.model,
                hidden_dims=(hidden_dim,),
                input_fn=self._encoder_input,
                name=self.prefix + "encoder",
            )
            # build the encoder now, so that a state_dict loads before the first step
            dummy = torch.full((2, *self.event_shape), 0.5)
            kw = {} if num_classes is None else {"y": torch.zeros(2, dtype=torch.long)}
            setup_off_the_store(guide.setup, dummy, **kw)
        if guide is not None:
            self.set_guide(guide)

    def _check_guide(self, guide: Callable[..., Any]) -> None:
        if hasattr(self.prior, "bind"):
            raise ValueError(
                "the VampPrior's components come from the VAE's posterior family, which a "
                "replacing guide would leave untrained: keep the built-in guide and choose "
                "its family with posterior=..."
            )

    # -- helpers ---------------------------------------------------------------------
    def _context(self, y: torch.Tensor | None, batch: int | None = None) -> torch.Tensor | None:
        if self.num_classes is None:
            if y is not None:
                raise ValueError("y was given but this VAE is not conditional (num_classes=None)")
            return None
        if y is None:
            raise ValueError("this conditional VAE needs labels: call with y=...")
        if y.is_floating_point():
            return y
        return F.one_hot(y.long(), self.num_classes).float()

    def _encoder_input(self, x: torch.Tensor, y: torch.Tensor | None = None, **kwargs):
        """Input rows of the ``"auto"`` guide: the flattened image and the one-hot label."""
        h = observed_rows(x, kwargs.get("mask"))
        context = self._context(y)
        return h if context is None else torch.cat([h, context.to(h.dtype)], -1)

    def _check(self, x: torch.Tensor) -> None:
        n = len(self.event_shape)
        if x.dim() < n + 1 or tuple(x.shape[-n:]) != self.event_shape:
            raise ValueError(
                f"expected x of shape (batch, {', '.join(map(str, self.event_shape))}), "
                f"got {tuple(x.shape)}"
            )

    # -- protocol --------------------------------------------------------------------
    def model(
        self,
        x: torch.Tensor | None = None,
        y: torch.Tensor | None = None,
        num_samples: int | None = None,
        mask: torch.Tensor | None = None,
        **kwargs,
    ) -> torch.Tensor:
        """Generative model :math:`z \\sim p(z),\\ x \\sim p(x \\mid z)`.

        Without ``x`` it generates ``num_samples`` examples (default 1), or one per label
        (or context row) of ``y`` for a conditional VAE. ``mask`` (True where observed,
        shape of ``x``) restricts the likelihood to the observed entries. Extra keyword
        arguments (e.g. ``idx`` for a per-example guide) are ignored.
        """
        register_module(self.prefix + "prior", self.prior)
        register_module(self.prefix + "decoder", self.decoder)
        context = self._context(y)
        if x is not None:
            self._check(x)
            batch = x.shape[0]
        elif context is not None:
            batch = generated_rows(type(self).__name__, context, y, num_samples)
        else:
            batch = num_samples or 1
        if mask is not None and x is None:
            raise ValueError("mask= marks the observed entries of x: pass x too")
        obs = None if x is None else self.decoder.likelihood.prepare(fill_missing(x, mask))
        with data_plate(batch, type(self).__name__, DATA_PLATE):
            z = pyro.sample(LATENT, self.prior(context=context))
            px = mask_pixels(self.decoder(z, context=context), mask)
            return pyro.sample(OBS, px, obs=obs)

    def default_guide(
        self,
        x: torch.Tensor | None = None,
        y: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        **kwargs,
    ) -> torch.Tensor:
        """Built-in guide: samples :math:`z \\sim q(z \\mid x)` from the posterior family
        under the data plate (missing entries of ``x`` set to zero); ``kwargs`` go to the
        family."""
        if x is None:
            raise ValueError("the guide needs observed data x")
        self._check(x)
        if self.posterior is None:
            raise ValueError(
                "this VAE was built with a replacing guide and no posterior family; assign a "
                "guide (vae.guide = ...) or build it with posterior=..."
            )
        register_module(self.prefix + "encoder", self.posterior)
        context = self._context(y)
        x = fill_missing(x, mask)
        with data_plate(x.shape[0], type(self).__name__, DATA_PLATE):
            return pyro.sample(LATENT, self.posterior(x, context=context, **kwargs))

    @torch.no_grad()
    def sample(
        self, num_samples: int, y: torch.Tensor | None = None, mean: bool = True
    ) -> torch.Tensor:
        """Draw ``num_samples`` images: decoder means (``mean=True``) or likelihood draws,
        shape ``(num_samples, *event_shape)``."""
        num_samples = sample_count(num_samples)
        context = self._context(y)
        if context is not None and context.shape[0] != num_samples:
            raise ValueError(f"y must hold one label per sample ({num_samples})")
        prior = self.prior(context=context)
        # a prior that ignores the context has no batch dims: draw num_samples from it
        z = prior.sample((num_samples,) if prior.batch_shape == () else ())
        return self.decode(z, y, mean=mean)

    @torch.no_grad()
    def encode(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Posterior mean of the latent (the median for an assigned guide that has one, such
        as a Pyro autoguide; otherwise a draw)."""
        if self.custom_guide is not None:
            return self._guide_latent(LATENT, x, **({} if y is None else {"y": y}))
        context = self._context(y)
        if hasattr(self.posterior, "encode"):
            return self.posterior.encode(x, context)[0]
        return self.posterior(x, context=context).sample()

    @torch.no_grad()
    def decode(
        self, z: torch.Tensor, y: torch.Tensor | None = None, mean: bool = True
    ) -> torch.Tensor:
        """Decode latents to images (means or draws) in data space, floats in [0, 1]."""
        context = self._context(y)
        if mean:
            return self.decoder.mean(z, context)
        out = self.decoder(z, context=context).sample()
        if not out.is_floating_point():  # categorical levels back to [0, 1], in z's dtype
            out = out.to(z.dtype) / (self.decoder.likelihood.num_params - 1)
        return out

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Decoder mean at the posterior mean of ``x``."""
        return self.decode(self.encode(x, y), y)
