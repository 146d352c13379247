"""VAEs with categorical latents: relaxed (Gumbel-softmax / Concrete) or enumerated exactly.

The latent is :math:`L` independent categorical variables of :math:`K` categories each,
one-hot vectors :math:`z_l`, with a uniform prior, and the decoder reads their concatenation.
A discrete sample has no reparameterization gradient; two ways around it:

- **relaxed** (``inference="relaxed"``): prior and guide are replaced by their Concrete
  relaxations at temperature :math:`\\tau`: :math:`\\tilde z = \\mathrm{softmax}((\\log \\pi +
  g) / \\tau)` with Gumbel noise :math:`g`, a reparameterized point on the simplex that
  approaches a one-hot vector as :math:`\\tau \\to 0` (at the price of higher-variance
  gradients). The ELBO uses the relaxed densities of both (Maddison et al.), computed in log
  space (``ExpRelaxedCategorical``; the change of variables to the simplex cancels between
  prior and guide) so that small temperatures do not underflow. The temperature is a
  buffer, annealed during training by :func:`anneal_temperature` (Jang et al.: from 1 down
  to 0.5, :math:`\\tau_t = \\max(\\tau_{\\min}, \\tau_0 e^{-rt})`).
- **enumerate** (``inference="enumerate"``, :math:`L = 1`): the guide's categorical is
  summed over all :math:`K` values by ``TraceEnum_ELBO``, so the ELBO is exact, with no
  Monte Carlo noise, and :meth:`DiscreteVAE.log_prob` gives :math:`\\log p(x)` exactly.

References:
    Jang, Gu & Poole, Categorical Reparameterization with Gumbel-Softmax, ICLR 2017,
    arXiv:1611.01144.
    Maddison, Mnih & Teh, The Concrete Distribution, ICLR 2017, arXiv:1611.00712.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions.torch_distribution import TorchDistributionMixin
from torch.distributions.relaxed_categorical import ExpRelaxedCategorical as _ExpRelaxedCategorical

from pyro_gen.infer.callbacks import changes_only_tensors
from pyro_gen.nn.mlp import layer_widths
from pyro_gen.nn.registration import register_module
from pyro_gen.plates import data_plate
from pyro_gen.transforms._base import PicklableModule, as_event_shape, sample_count
from pyro_gen.vae._utils import mlp, numel
from pyro_gen.vae.decoders import MLPDecoder
from pyro_gen.vae.likelihoods import Likelihood
from pyro_gen.vae.sites import DATA_PLATE, LATENT, OBS


class ExpRelaxedCategorical(_ExpRelaxedCategorical, TorchDistributionMixin):
    """torch's log-space Concrete distribution, usable at a ``pyro.sample`` site."""

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(ExpRelaxedCategorical, _instance)
        return super().expand(batch_shape, _instance=new)


def check_temperature(temperature: Any) -> float:
    """``temperature`` as a float after checking it is positive and finite.

    Example:
        >>> check_temperature(0.5)
        0.5
    """
    value = float(temperature)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(
            f"the relaxation temperature must be positive and finite, got {temperature!r} "
            "(small values approach one-hot samples; anneal towards about 0.5)"
        )
    return value


class DiscreteVAE(PicklableModule):
    """VAE with :math:`L` categorical latents of :math:`K` categories (see the module
    docstring for the two ways of training it).

    The latent site ``"z"`` holds, per example, ``(L, K)`` log-space relaxed one-hot
    vectors (``relaxed``) or one ``K``-dimensional one-hot vector (``enumerate``).

    Args:
        event_shape: shape of one example.
        num_latents: :math:`L` (default 20 for ``relaxed``, 1 for ``enumerate``, which takes
            no other).
        num_categories: :math:`K`.
        hidden_dims: hidden sizes of encoder and decoder.
        likelihood: the decoder's likelihood, name or object.
        inference: ``"relaxed"`` (train with ``Trace_ELBO``) or ``"enumerate"`` (train with
            ``TraceEnum_ELBO(max_plate_nesting=1)``).
        temperature: initial :math:`\\tau` of the relaxation.
        name: prefix of the networks' names in Pyro's param store.

    Example:
        >>> vae = DiscreteVAE((8, 8), num_latents=3, num_categories=4, hidden_dims=(16,))
        >>> loss = pyro.infer.Trace_ELBO().loss(vae.model, vae.guide, torch.rand(5, 8, 8).round())
        >>> vae.temperature = 0.5
        >>> exact = DiscreteVAE((8, 8), num_categories=4, hidden_dims=(16,), inference="enumerate")
        >>> exact.log_prob(torch.rand(5, 8, 8).round()).shape
        torch.Size([5])
    """

    def __init__(
        self,
        event_shape: Sequence[int] = (28, 28),
        num_latents: int | None = None,
        num_categories: int = 10,
        hidden_dims: Sequence[int] = (400,),
        likelihood: str | Likelihood = "bernoulli",
        inference: str = "relaxed",
        temperature: float = 1.0,
        name: str = "",
    ) -> None:
        super().__init__()
        if inference not in ("relaxed", "enumerate"):
            raise ValueError(f"inference must be 'relaxed' or 'enumerate', got {inference!r}")
        if num_latents is None:
            num_latents = 20 if inference == "relaxed" else 1
        for arg, value, least in (
            ("num_latents", num_latents, 1),
            ("num_categories", num_categories, 2),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"{arg} must be an integer >= {least}, got {value!r}")
        if inference == "enumerate" and num_latents != 1:
            raise ValueError(
                f"exact enumeration sums over K^L = {num_categories}^{num_latents} joint values "
                "of the latents; use num_latents=1, or inference='relaxed'"
            )
        self.event_shape = as_event_shape(event_shape)
        self.num_latents, self.num_categories, self.inference = (
            num_latents,
            num_categories,
            inference,
        )
        hidden_dims = tuple(layer_widths(hidden_dims))
        self.encoder = mlp(numel(self.event_shape), hidden_dims, num_latents * num_categories)
        self.decoder = MLPDecoder(
            num_latents * num_categories, self.event_shape, hidden_dims, likelihood
        )
        self.register_buffer("prior_logits", torch.zeros(num_latents, num_categories))
        # a buffer, updated in place, so that a compiled step reads the current value
        self.register_buffer("_temperature", torch.tensor(check_temperature(temperature)))
        self.prefix = f"{name}." if name else ""

    @property
    def temperature(self) -> float:
        """The relaxation temperature :math:`\\tau > 0` (``relaxed`` only)."""
        return float(self._temperature)

    @temperature.setter
    def temperature(self, value: float) -> None:
        self._temperature.fill_(check_temperature(value))

    def _check(self, x: torch.Tensor) -> None:
        if x.dim() != len(self.event_shape) + 1 or tuple(x.shape[1:]) != self.event_shape:
            raise ValueError(
                f"expected x of shape (batch, {', '.join(map(str, self.event_shape))}), "
                f"got {tuple(x.shape)}"
            )

    def _latent(self, logits: torch.Tensor) -> dist.TorchDistribution:
        if self.inference == "relaxed":
            return ExpRelaxedCategorical(self._temperature, logits=logits).to_event(1)
        return dist.OneHotCategorical(logits=logits[..., 0, :])

    def _decode_input(self, z: torch.Tensor) -> torch.Tensor:
        if self.inference == "relaxed":
            z = z.exp()  # log-space sample to the simplex
            return z.reshape(z.shape[:-2] + (-1,))
        return z

    def encoder_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of :math:`q(z \\mid x)`, shape ``(batch, L, K)``."""
        h = self.encoder(x.reshape(x.shape[0], -1).to(self.prior_logits.dtype))
        return h.reshape(x.shape[0], self.num_latents, self.num_categories)

    def model(self, x: torch.Tensor | None = None, num_samples: int | None = None):
        """Uniform categorical (or its relaxation) prior, then :math:`x \\sim p(x \\mid z)`."""
        register_module(self.prefix + "decoder", self.decoder)
        if x is not None:
            self._check(x)
        batch = x.shape[0] if x is not None else (num_samples or 1)
        obs = None if x is None else self.decoder.likelihood.prepare(x)
        with data_plate(batch, type(self).__name__, DATA_PLATE):
            z = pyro.sample(LATENT, self._latent(self.prior_logits))
            return pyro.sample(OBS, self.decoder(self._decode_input(z)), obs=obs)

    def guide(self, x: torch.Tensor) -> torch.Tensor:
        """Amortized :math:`q(z \\mid x)`: relaxed draws, or marked for parallel enumeration."""
        self._check(x)
        register_module(self.prefix + "encoder", self.encoder)
        infer = {"enumerate": "parallel"} if self.inference == "enumerate" else {}
        with data_plate(x.shape[0], type(self).__name__, DATA_PLATE):
            return pyro.sample(LATENT, self._latent(self.encoder_logits(x)), infer=infer)

    @torch.no_grad()
    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Exact :math:`\\log p(x) = \\log \\frac{1}{K} \\sum_k p(x \\mid z = k)` per example
        (``enumerate`` only: :math:`K^L` decoder passes otherwise)."""
        if self.inference != "enumerate":
            raise ValueError("log_prob is exact only for inference='enumerate' (num_latents=1)")
        self._check(x)
        eye = torch.eye(self.num_categories, dtype=self.prior_logits.dtype, device=x.device)
        px = self.decoder(eye[:, None, :])  # (K, 1) over the batch
        log_lik = px.log_prob(self.decoder.likelihood.prepare(x))  # (K, batch)
        return torch.logsumexp(log_lik, 0) - math.log(self.num_categories)

    @torch.no_grad()
    def assignments(self, x: torch.Tensor) -> torch.Tensor:
        """The most probable category of each latent under the guide, ``(batch, L)``."""
        self._check(x)
        return self.encoder_logits(x).argmax(-1)

    @torch.no_grad()
    def sample(self, num_samples: int) -> torch.Tensor:
        """Decoder means at one-hot draws from the prior, ``(num_samples, *event_shape)``."""
        num_samples = sample_count(num_samples)
        k = dist.Categorical(logits=self.prior_logits).sample((num_samples,))  # (N, L)
        onehot = torch.nn.functional.one_hot(k, self.num_categories).to(self.prior_logits.dtype)
        return self.decoder.mean(onehot.reshape(num_samples, -1))


def temperature_schedule(
    start: float = 1.0, end: float = 0.5, rate: float = 1e-4
) -> Callable[[int], float]:
    """Exponential annealing :math:`\\tau_t = \\max(\\tau_{\\min}, \\tau_0 e^{-r t})` of Jang
    et al.

    Example:
        >>> schedule = temperature_schedule(1.0, 0.5, rate=1e-3)
        >>> [round(schedule(t), 3) for t in (0, 100, 10000)]
        [1.0, 0.905, 0.5]
    """
    start, end = check_temperature(start), check_temperature(end)
    if not (rate >= 0 and math.isfinite(rate)):
        raise ValueError(f"rate must be non-negative, got {rate!r}")
    return lambda step: max(end, start * math.exp(-rate * step))


def anneal_temperature(
    vae: DiscreteVAE, schedule: Callable[[int], float]
) -> Callable[[int, Any], None]:
    """A ``step_callbacks`` entry for :func:`pyro_gen.infer.fit` setting ``vae.temperature``
    to ``schedule(step)`` after every optimisation step.

    Example:
        >>> vae = DiscreteVAE((4,), num_latents=2, num_categories=3, hidden_dims=(8,))
        >>> anneal_temperature(vae, temperature_schedule(1.0, 0.5, 1.0))(10, vae)
        >>> vae.temperature
        0.5
    """

    @changes_only_tensors  # the temperature is a buffer, filled in place
    def callback(step: int, model: Any) -> None:
        vae.temperature = schedule(step)

    return callback


__all__ = [
    "DiscreteVAE",
    "ExpRelaxedCategorical",
    "anneal_temperature",
    "check_temperature",
    "temperature_schedule",
]
