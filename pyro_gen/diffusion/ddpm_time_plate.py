"""The time-plate form of :class:`~pyro_gen.diffusion.DDPM` and its objectives.

The model and guide score the steps :class:`~pyro_gen.diffusion.ddpm_time_steps.TimeStepDraws`
draws: with ``objective="elbo"`` the bound's terms (the KL at ``"x_prev"`` for
:math:`t > 1`, the decoder at ``"x_0"`` for :math:`t = 1`); with ``objective="simple"``
Ho et al.'s :math:`L_{simple}` as a factor, plus the bound with a stop-gradient on the
mean for ``variance="learned_range"`` (:math:`L_{hybrid}`).
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine

from pyro_gen.diffusion.context import check_outer_dims, data_plate
from pyro_gen.diffusion.ddpm_time_steps import TimeStepDraws
from pyro_gen.diffusion.network import register_module
from pyro_gen.diffusion.parameterization import convert

__all__ = ["TimePlateForm"]


class TimePlateForm(TimeStepDraws):
    """Mixin of :class:`~pyro_gen.diffusion.DDPM`: :meth:`plate_model` and :meth:`plate_guide`.

    Reads the DDPM's ``schedule``, ``event_dim``, ``name``, ``objective``, ``param``,
    ``variance``, ``hybrid_weight``, ``to_model_space``, ``p_mean_logvar``, ``decoder`` and
    ``_normal``.

    Example:
        >>> from pyro_gen.diffusion import DDPM
        >>> from pyro_gen.nn.time_embedding import TimeMLP
        >>> m = DDPM(TimeMLP(2, 16, num_layers=1), (2,), timesteps=10)
        >>> x = torch.randn(5, 2)
        >>> guide = pyro.poutine.trace(m.plate_guide).get_trace(x)
        >>> model = pyro.poutine.trace(pyro.poutine.replay(m.plate_model, guide)).get_trace(x)
        >>> [n for n, s in model.nodes.items() if s["type"] == "sample"]
        ['data', 't', 'x_10', 'time', 'x_t', 'x_prev', 'x_0']
    """

    def plate_model(self, x: torch.Tensor, **context) -> None:
        """Time-plate model (see the DDPM's docstring); ``context`` goes to the network."""
        register_module(self.name, self)
        s, nd = self.schedule, self.event_dim
        x0 = self.to_model_space(x, outer=True)
        check_outer_dims(x0, nd, type(self).__name__)
        B = x0.shape[x0.dim() - nd - 1]  # outer plates' dims (a latent's particles) before it
        with data_plate(B, "DDPM"), self._time_steps(x0, guide=False) as t:
            mean, std = s.q_mean_std(x0, t, nd)
            x_t = pyro.sample("x_t", dist.Normal(mean, std).to_event(nd))
            obs = x0.expand(x_t.shape)
            if self.objective == "elbo":
                p = self.p_mean_logvar(x_t, t, **context)
                self._bound_sites(p["mean"], p["log_var"], t, obs)
                return
            p = self.p_mean_logvar(x_t, t, **context)
            ab = s.extract("alphas_cumprod", t, nd)
            eps = convert(obs, "x0", "eps", x_t, ab)
            native = "eps" if self.param == "score" else self.param
            target = convert(eps, "eps", native, x_t, ab)
            pred = convert(p["pred"], self.param, native, x_t, ab)
            # sum over the event dims only: any batch dims (time, data, particles) remain
            sq = (pred - target).pow(2)
            pyro.factor("L_simple", -0.5 * sq.flatten(sq.dim() - nd).sum(-1))
            if self.variance == "learned_range":
                p = self.p_mean_logvar(x_t, t, detach_mean=True, **context)
                with poutine.scale(scale=self.hybrid_weight):
                    self._bound_sites(p["mean"], p["log_var"], t, obs)

    def _bound_sites(self, mean, log_var, t, obs) -> None:
        with poutine.mask(mask=t > 1):
            pyro.sample("x_prev", self._normal(mean, log_var))
        with poutine.mask(mask=t == 1):
            pyro.sample("x_0", self.decoder(mean, log_var), obs=obs)

    def plate_guide(self, x: torch.Tensor) -> None:
        """Time-plate guide: forward marginal at ``"x_t"``, forward posterior at ``"x_prev"``."""
        s, nd = self.schedule, self.event_dim
        x0 = self.to_model_space(x, outer=True)
        check_outer_dims(x0, nd, type(self).__name__)
        B = x0.shape[x0.dim() - nd - 1]  # outer plates' dims (a latent's particles) before it
        with data_plate(B, "DDPM"), self._time_steps(x0, guide=True) as t:
            mean, std = s.q_mean_std(x0, t, nd)
            x_t = pyro.sample("x_t", dist.Normal(mean, std).to_event(nd))
            if self.objective == "elbo" or self.variance == "learned_range":
                weight = 1.0 if self.objective == "elbo" else self.hybrid_weight
                mean, log_var = s.q_posterior(x0, x_t, t, nd)
                with poutine.scale(scale=weight), poutine.mask(mask=t > 1):
                    pyro.sample("x_prev", self._normal(mean, log_var))
