"""Posterior summaries of :class:`~pyro_gen.vae.autoguide.AutoAmortizedNormal`: the
encoded medians of the local sites, and medians and quantiles of every site as Pyro's
autoguides give them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyro.distributions as dist
import torch
from torch.distributions import biject_to

__all__ = ["SummariesMixin"]


class SummariesMixin:
    """AutoAmortizedNormal's posterior summaries (a mixin: the state is the guide's)."""

    @torch.no_grad()
    def encode(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        """Posterior median of each local site (the loc mapped to its support), for every
        example in the model's arguments."""
        self.setup(*args, **kwargs)
        params = self._local_params(self._rows(args, kwargs))
        return {
            name: biject_to(self.local_sites[name]["support"])(loc)
            for name, (loc, _) in params.items()
        }

    @torch.no_grad()
    def median(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        """Posterior median of every latent site: globals, and locals per example."""
        self.setup(*args, **kwargs)
        out = {} if self.global_guide is None else self.global_guide.median(*args, **kwargs)
        out.update(self.encode(*args, **kwargs))
        return out

    @torch.no_grad()
    def quantiles(
        self, quantiles: Sequence[float] | torch.Tensor, *args: Any, **kwargs: Any
    ) -> dict[str, torch.Tensor]:
        """Posterior quantiles of every latent site (globals, and locals per example), the
        quantiles first: ``{name: tensor of shape (len(quantiles),) + site shape}``.

        As Pyro's :class:`~pyro.infer.autoguide.AutoNormal` gives them (and so an
        :class:`~pyro.infer.autoguide.AutoGuideList` holding this guide can): the quantiles
        of each unconstrained coordinate's Normal mapped onto the site's support. Those are
        the marginal quantiles where the support is mapped coordinate by coordinate (real,
        positive, an interval); for a simplex or a Cholesky factor they are a summary only.
        The quantile 0.5 is :meth:`median`.

        Example:
            >>> import pyro
            >>> import pyro.distributions as dist
            >>> def model(x):
            ...     with pyro.plate("data", x.shape[0]):
            ...         pyro.sample("s", dist.LogNormal(0.0, 1.0))
            >>> from pyro_gen.vae import AutoAmortizedNormal
            >>> guide = AutoAmortizedNormal(model, hidden_dims=(4,))
            >>> q = guide.quantiles([0.1, 0.5, 0.9], torch.randn(3, 2))
            >>> q["s"].shape, bool((q["s"][0] < q["s"][1]).all() and (q["s"][1] < q["s"][2]).all())
            (torch.Size([3, 3]), True)
        """
        self.setup(*args, **kwargs)
        out = (
            {}
            if self.global_guide is None
            else self.global_guide.quantiles(quantiles, *args, **kwargs)
        )
        for name, (loc, scale) in self._local_params(self._rows(args, kwargs)).items():
            q = torch.as_tensor(quantiles, dtype=loc.dtype, device=loc.device)
            values = dist.Normal(loc, scale).icdf(q.reshape((-1,) + (1,) * loc.dim()))
            out[name] = biject_to(self.local_sites[name]["support"])(values)
        return out
