"""Which diffusion steps each example of a time-plate :class:`~pyro_gen.diffusion.DDPM` sees.

In training each example draws ``time_samples`` uniform steps. In eval mode it takes step 1
(:math:`L_0`) exactly and draws one step from each of ``eval_strata`` geometric strata of
steps 2..T, each scaled by its stratum's length: the same bound with less noise (stratified
sampling; the numbers are in the DDPM's docstring).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine

from pyro_gen.diffusion.likelihood import geometric_strata

__all__ = ["TimeStepDraws"]


class TimeStepDraws:
    """Mixin of :class:`~pyro_gen.diffusion.DDPM`: the ``"t"`` site, the prior site and the
    ``"time"`` plate that the time-plate model and guide share.

    Reads the DDPM's ``schedule``, ``event_dim``, ``time_samples``, ``eval_strata``,
    ``training`` and ``_times``.

    Example:
        >>> from pyro_gen.diffusion import DDPM
        >>> from pyro_gen.nn.time_embedding import TimeMLP
        >>> m = DDPM(TimeMLP(2, 16, num_layers=1), (2,), timesteps=100, eval_strata=4)
        >>> with m.train()._time_steps(torch.zeros(3, 2), guide=True) as t:
        ...     t.shape  # one uniform step per example
        torch.Size([1, 3])
        >>> with m.eval()._time_steps(torch.zeros(3, 2), guide=True) as t:
        ...     t.shape, t[0].tolist()  # step 1, then one step per stratum of 2..100
        (torch.Size([5, 3]), [1, 1, 1])
    """

    @contextmanager
    def _time_steps(self, x0: torch.Tensor, guide: bool) -> Iterator[torch.Tensor]:
        """Samples ``"t"`` and the prior site, enters the time plate and yields each example's
        steps (1-based, batch shape ``(k, B)``): ``time_samples`` uniform steps in training,
        one step per stratum in eval mode (see the DDPM's docstring)."""
        T, B = self.schedule.num_timesteps, x0.shape[x0.dim() - self.event_dim - 1]
        if self.training or not self.eval_strata:
            u = pyro.sample("t", dist.Uniform(x0.new_zeros(B), x0.new_ones(B)))
            self._prior_site(x0, guide)
            # The subsample indices are drawn on the data's device: drawn on the CPU (a
            # plate's default), each step would copy them to the GPU and wait for the copy.
            with pyro.plate(
                "time", T, subsample_size=self.time_samples, dim=-2, device=x0.device
            ) as idx:
                yield self._plate_times(idx, u)
            return
        self._prior_site(x0, guide)
        edges = torch.cat([torch.ones(1, dtype=torch.long), self._strata_edges(T)]).to(x0.device)
        first, size = edges[:-1, None], (edges[1:] - edges[:-1])[:, None]
        K = size.shape[0]
        # The plate scales its K subsampled steps by T / K; stratum k must count n_k times.
        weight = (size * K / T).to(x0.dtype)
        with pyro.plate("time", T, subsample=first[:, 0] - 1, dim=-2), poutine.scale(scale=weight):
            # one uniform per stratum and example (its log-density is the same in model and
            # guide, so it adds nothing): independent steps across strata
            u = pyro.sample("t", dist.Uniform(x0.new_zeros(K, B), x0.new_ones(K, B)))
            yield first + (u * size).long().clamp(max=size - 1)

    def _strata_edges(self, T: int) -> torch.Tensor:
        # steps 2..T in at most eval_strata intervals; none when T = 1
        if T == 1:
            return torch.tensor([2])
        return geometric_strata(2, T, min(self.eval_strata, T - 1))

    def _plate_times(self, idx: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        # Shifting the plate's k distinct indices by a per-example uniform offset keeps each
        # example's k steps a uniform k-subset of {1..T}, so the plate's T/k scale stays exact.
        T = self.schedule.num_timesteps
        # u has the data plate's batch shape, (B,) or, under outer plates such as vectorized
        # particles, (..., 1, B): the time plate (dim -2) broadcasts against it either way
        shift = (u * T).long().clamp(max=T - 1)
        return (idx.to(u.device)[:, None] + shift) % T + 1

    def _prior_site(self, x0: torch.Tensor, guide: bool) -> None:
        T, nd = self.schedule.num_timesteps, self.event_dim
        if guide:
            mean, std = self.schedule.q_mean_std(x0, self._times(T, x0), nd)
            pyro.sample(f"x_{T}", dist.Normal(mean, std).to_event(nd))
        else:
            pyro.sample(f"x_{T}", dist.Normal(torch.zeros_like(x0), 1.0).to_event(nd))
