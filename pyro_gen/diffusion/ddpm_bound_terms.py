"""Single terms of :class:`~pyro_gen.diffusion.DDPM`'s variational bound, computed directly
(outside Pyro), which :func:`~pyro_gen.diffusion.likelihood.variational_bound` and
:func:`~pyro_gen.diffusion.sampled_variational_bound` sum."""

from __future__ import annotations

import torch

from pyro_gen.diffusion.likelihood import normal_kl, sum_event

__all__ = ["BoundTerms"]


class BoundTerms:
    """Mixin of :class:`~pyro_gen.diffusion.DDPM`: :math:`L_{t-1}` per example.

    Reads the DDPM's ``schedule``, ``event_dim``, ``p_mean_logvar``, ``decoder`` and
    ``_times``.

    Example:
        >>> from pyro_gen.diffusion import DDPM
        >>> from pyro_gen.nn.time_embedding import TimeMLP
        >>> m = DDPM(TimeMLP(2, 16, num_layers=1), (2,), timesteps=4)
        >>> x0 = torch.randn(5, 2)
        >>> m.step_term(x0, 1).shape, m.step_term(x0, 3).shape
        (torch.Size([5]), torch.Size([5]))
        >>> bool((m.kl_term(x0, torch.full((5,), 3), torch.randn(5, 2)) >= 0).all())
        True
    """

    @torch.no_grad()
    def step_term(
        self, x0: torch.Tensor, t: int, noise: torch.Tensor | None = None, **context
    ) -> torch.Tensor:
        """One term of the bound per example (``x0`` in model space): :math:`L_{t-1}` with the
        analytic KL for ``t > 1``, :math:`L_0 = -\\log p_\\theta(x_0 \\mid x_1)` for ``t = 1``;
        a single draw of :math:`x_t \\sim q(x_t \\mid x_0)`, from ``noise`` (standard normal,
        shaped like ``x0``) when given, so a caller's generator decides it; ``context`` goes
        to the network."""
        tt = self._times(t, x0)
        noise = torch.randn_like(x0) if noise is None else noise
        if t > 1:
            return self.kl_term(x0, tt, noise, **context)
        x_1 = self.schedule.q_sample(x0, tt, noise, self.event_dim)
        p = self.p_mean_logvar(x_1, tt, **context)
        return -self.decoder(p["mean"], p["log_var"]).log_prob(x0)

    def kl_term(
        self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, **context
    ) -> torch.Tensor:
        """:math:`L_{t-1} = \\mathrm{KL}(q(x_{t-1} \\mid x_t, x_0) \\,\\|\\, p_\\theta(x_{t-1}
        \\mid x_t))` per example, at per-example steps ``t`` (all > 1), for the draw
        :math:`x_t` that ``noise`` gives."""
        s, nd = self.schedule, self.event_dim
        x_t = s.q_sample(x0, t, noise, nd)
        p = self.p_mean_logvar(x_t, t, **context)
        q_mean, q_log_var = s.q_posterior(x0, x_t, t, nd)
        return sum_event(normal_kl(q_mean, q_log_var, p["mean"], p["log_var"]), nd)
