"""The DDPM's reverse step :math:`p_\\theta(x_{t-1} \\mid x_t)`: the network's prediction
turned into the step's mean and variance, and the decoder :math:`p_\\theta(x_0 \\mid x_1)`,
which every form of the model, its bound and its samplers share."""

from __future__ import annotations

from typing import Any

import pyro.distributions as dist
import torch

from pyro_gen.diffusion.context import expand_context
from pyro_gen.diffusion.likelihood import DiscretizedGaussian
from pyro_gen.diffusion.network import call_network, check_output
from pyro_gen.diffusion.parameterization import convert

__all__ = ["ReverseStep"]


class ReverseStep:
    """Mixin of :class:`~pyro_gen.diffusion.DDPM`: the reverse step and the decoder.

    Reads the DDPM's ``net``, ``schedule``, ``event_dim``, ``net_shape``, ``param``,
    ``variance``, ``large_log_variance``, ``data`` and ``num_bins``.

    Example:
        >>> from pyro_gen.diffusion import DDPM
        >>> from pyro_gen.nn.time_embedding import TimeMLP
        >>> m = DDPM(TimeMLP(2, 16, num_layers=1), (2,), timesteps=4)
        >>> p = m.p_mean_logvar(torch.randn(5, 2), 3)
        >>> p["mean"].shape, p["log_var"].shape
        (torch.Size([5, 2]), torch.Size([5, 2]))
        >>> m.decoder(p["mean"], p["log_var"]).log_prob(torch.zeros(5, 2)).shape
        torch.Size([5])
    """

    def _times(self, t: torch.Tensor | int, like: torch.Tensor) -> torch.Tensor:
        batch = like.shape[: like.dim() - self.event_dim]
        return torch.as_tensor(t, device=like.device).long().expand(batch)

    def predict(
        self, x_t: torch.Tensor, t: torch.Tensor, **context: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the network on any batch shape; returns (prediction, variance output or None).
        ``context`` (one row per example) goes to the network as keyword arguments."""
        batch = x_t.shape[: x_t.dim() - self.event_dim]
        context = expand_context(context, batch)
        flat = x_t.reshape(-1, *self.net_shape)
        out = call_network(self.net, flat, t.reshape(-1), "DDPM", **context)
        check_output(out, flat, learned=self.variance == "learned_range")
        if self.variance == "learned_range":
            pred, v = out.chunk(2, dim=1)
            return pred.reshape(x_t.shape), v.reshape(x_t.shape)
        return out.reshape(batch + self.net_shape), None

    def p_mean_logvar(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor | int,
        *,
        clip: bool = False,
        detach_mean: bool = False,
        **context: Any,
    ) -> dict[str, torch.Tensor]:
        """Reverse step :math:`p_\\theta(x_{t-1} \\mid x_t) = \\mathcal N(\\mu, \\sigma^2 I)`.

        The mean is the forward posterior mean at the predicted :math:`\\hat x_0`:
        :math:`\\mu = c^{(1)}_t \\hat x_0 + c^{(2)}_t x_t` (for eps-prediction this is Ho et
        al.'s :math:`\\frac{1}{\\sqrt{\\alpha_t}}(x_t - \\frac{\\beta_t}{\\sqrt{1-\\bar\\alpha_t}}
        \\hat\\epsilon)`).

        ``context`` (labels, ...) goes to the network: ``net(x_t, t, **context)``.

        Returns:
            dict with ``mean``, ``log_var``, ``pred`` (raw prediction), ``x0`` and ``eps``.
        """
        t = self._times(t, x_t)
        s, nd = self.schedule, self.event_dim
        pred, v = self.predict(x_t, t, **context)
        if detach_mean:
            pred = pred.detach()
        ab = s.extract("alphas_cumprod", t, nd)
        x0 = convert(pred, self.param, "x0", x_t, ab)
        if clip:
            x0 = x0.clamp(-1, 1)
        eps = convert(x0, "x0", "eps", x_t, ab)
        mean = (
            s.extract("posterior_mean_coef1", t, nd) * x0
            + s.extract("posterior_mean_coef2", t, nd) * x_t
        )
        small = s.extract("posterior_log_variance_clipped", t, nd)
        if self.variance == "fixed_small":
            log_var = small.expand_as(mean)
        elif self.variance == "fixed_large":
            log_var = self.large_log_variance[t - 1].reshape(t.shape + (1,) * nd).expand_as(mean)
        else:
            frac = ((v + 1) / 2).clamp(0, 1)  # between the two fixed choices (class docstring)
            log_var = frac * s.extract("betas", t, nd).log() + (1 - frac) * small
        return {"mean": mean, "log_var": log_var, "pred": pred, "x0": x0, "eps": eps}

    def decoder(self, mean: torch.Tensor, log_var: torch.Tensor) -> dist.Distribution:
        """:math:`p_\\theta(x_0 \\mid x_1)`: discretized Gaussian (images) or Gaussian."""
        scale = (0.5 * log_var).exp()
        base = (
            DiscretizedGaussian(mean, scale, self.num_bins)
            if self.data == "image"
            else dist.Normal(mean, scale)
        )
        return base.to_event(self.event_dim)

    def _normal(self, mean: torch.Tensor, log_var: torch.Tensor) -> dist.Distribution:
        return dist.Normal(mean, (0.5 * log_var).exp()).to_event(self.event_dim)
