"""Imputation for any Pyro model/guide pair that takes ``mask=``: the user's own VAE, a
hierarchical one, any model whose observed site holds the data as given.

:func:`~pyro_gen.vae.missing.impute` weighs draws of the guide by
:math:`w_k \\propto p(x_{obs}, z_k) / q(z_k \\mid x_{obs})`; for a model that is not a
one-layer :class:`~pyro_gen.vae.VAE`, the distribution of :math:`x` given a particle is read
from the model's trace (its observed site's ``fn``), so nothing about the model's networks
needs to be known. Particles are drawn in chunks under a particle plate (one at a time where
the model or guide does not broadcast over it), and the estimates are accumulated chunk by
chunk with a running normaliser, so memory does not grow with the number of particles.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

import pyro
import torch
from pyro import poutine
from pyro.poutine import Trace

from pyro_gen.infer.evaluation_scorer import one_line_message
from pyro_gen.infer.log_weights import (
    PARTICLE_PLATE,
    DataPlate,
    find_data_plate,
    max_plate_nesting,
    split_log_weights,
)
from pyro_gen.vae.observed_site import observed_data_site
from pyro_gen.vae.pairs import evaluated_pair, model_and_guide

__all__ = ["impute_with_guide"]


def _traces(
    model: Callable, guide: Callable, args: tuple, kwargs: dict, particles: int | None, dim: int
) -> tuple[Trace, Trace]:
    with ExitStack() as stack:
        if particles is not None:
            stack.enter_context(pyro.plate(PARTICLE_PLATE, particles, dim=dim))
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        replayed = poutine.replay(model, trace=guide_trace)
        model_trace = poutine.trace(replayed).get_trace(*args, **kwargs)
    return guide_trace, model_trace


def impute_with_guide(
    vae: Any,
    guide: Callable | None,
    x: torch.Tensor,
    mask: torch.Tensor,
    *,
    site: str | None,
    num_samples: int,
    num_imputations: int | None,
    chunk: int,
    context: dict[str, Any],
) -> torch.Tensor:
    """The conditional-mean imputation of ``x`` (missing entries already zero), or
    ``num_imputations`` draws by sampling importance resampling, for a module's
    ``model(x, mask=mask, **context)`` and guide, or a model callable and ``guide`` (see
    :func:`~pyro_gen.vae.missing.impute`). Model and guide run in evaluation mode (a module's,
    and the networks they register with ``pyro.module``), then are left as they were.

    Example:
        >>> import pyro.distributions as dist
        >>> def model(x, mask=None):
        ...     with pyro.plate("data", x.shape[0]):
        ...         z = pyro.sample("z", dist.Normal(0.0, 1.0))
        ...         d = dist.Normal(z.unsqueeze(-1) + torch.zeros(x.shape), 0.1).mask(mask)
        ...         pyro.sample("x", d.to_event(1), obs=x)
        >>> def guide(x, mask=None):  # the prior: the weights do the work
        ...     with pyro.plate("data", x.shape[0]):
        ...         pyro.sample("z", dist.Normal(0.0, 1.0))
        >>> x, mask = torch.tensor([[2.0, 0.0]]), torch.tensor([[True, False]])
        >>> filled = impute_with_guide(model, guide, x, mask, site=None, num_samples=4000,
        ...                            num_imputations=None, chunk=1000, context={})
        >>> round(float(filled[0, 1]), 1)  # z given x_obs = 2 is near 2: so is x_mis
        2.0
    """
    model_and_guide(vae, guide)  # a wrong pair is named as such, not as a missing mask
    args, kwargs = (x,), {"mask": mask, **context}
    with ExitStack() as evaluating:
        try:
            model, guide = evaluating.enter_context(evaluated_pair(vae, guide, x, kwargs))
            guide_trace, model_trace = _traces(model, guide, args, kwargs, None, -1)
        except TypeError as error:
            raise TypeError(
                f"impute calls model(x, mask=mask, ...) and guide(x, mask=mask, ...); they "
                f"failed with: {error}. Give both a mask argument (True where observed) and "
                "mask the likelihood with it: dist.Bernoulli(...).mask(mask)"
            ) from error
        plate = find_data_plate(model_trace)
        name = observed_data_site(model_trace, plate, x, site, "impute")
        dim = -max_plate_nesting(guide_trace, model_trace) - 1
        shared = split_log_weights(model_trace, guide_trace, plate, particle_dim=dim).global_sites
        if shared:
            raise ValueError(
                f"impute weighs each example's particles on their own, which global latents "
                f"(guide sites {list(shared)} outside plate {plate.name!r}) would couple "
                "across the data: condition on their values instead "
                "(pyro.condition(model, data={...}) and the same for the guide)"
            )
        vectorize = True

        def particles(k: int) -> tuple[torch.Tensor, Any]:
            nonlocal vectorize
            if vectorize and k > 1:
                try:
                    return _weighted(model, guide, args, kwargs, k, dim, plate, name)
                except Exception as error:  # noqa: BLE001 - the loop below shows a genuine error
                    vectorize = False
                    warnings.warn(
                        f"the model or guide does not run under a particle plate ({k} particles "
                        f"at dim {dim}), so impute draws particles one at a time, which is "
                        f"slower: {type(error).__name__}: {one_line_message(error)}",
                        stacklevel=5,  # the caller of impute (under no_grad)
                    )
            parts = [
                _weighted(model, guide, args, kwargs, None, dim, plate, name) for _ in range(k)
            ]
            return torch.cat([w for w, _ in parts]), [fn for _, fn in parts]

        num_draws = 1 if num_imputations is None else num_imputations
        total = torch.full((x.shape[0],), -torch.inf, device=x.device, dtype=torch.float64)
        # integer pixels (uint8) are filled with the model's means, which are fractions
        dtype = x.dtype if x.is_floating_point() else torch.get_default_dtype()
        filled = torch.zeros((num_draws, *x.shape), device=x.device, dtype=dtype)
        for start in range(0, num_samples, chunk):
            log_w, fns = particles(min(chunk, num_samples - start))
            log_w = log_w.to(torch.float64)
            chunk_total = torch.logsumexp(log_w, 0)
            new_total = torch.logaddexp(total, chunk_total)
            if num_imputations is None:
                means = _values(fns, x, len(log_w), lambda fn: fn.mean)
                w = torch.exp(log_w - new_total).to(dtype)
                w = w.reshape(w.shape + (1,) * (x.dim() - 1))
                filled[0] = filled[0] * torch.exp(total - new_total).to(dtype).reshape(
                    w.shape[1:]
                ) + (w * means).sum(0)
            else:
                # Streaming resampling: each imputation keeps its draw, or takes one from this
                # chunk with the chunk's share of the weight so far (then a particle by weight).
                take = torch.rand(num_draws, x.shape[0], device=x.device) < torch.exp(
                    chunk_total - new_total
                )
                for m in range(num_draws):
                    pick = torch.distributions.Categorical(logits=log_w.T).sample()  # (B,)
                    draws = _values(fns, x, len(log_w), lambda fn: fn.sample())
                    chosen = draws[pick, torch.arange(x.shape[0], device=x.device)]
                    where = take[m].reshape((-1,) + (1,) * (x.dim() - 1))
                    filled[m] = torch.where(where, chosen.to(dtype), filled[m])
            total = new_total
        filled = filled[0] if num_imputations is None else filled
    return torch.where(mask, x.to(filled.dtype), filled)


def _weighted(
    model: Callable,
    guide: Callable,
    args: tuple,
    kwargs: dict,
    particles: int | None,
    dim: int,
    plate: DataPlate,
    name: str,
) -> tuple[torch.Tensor, Any]:
    """``(log w (K, B), fn)``: the particles' per-example log-weights and the distribution
    of the observed site given them."""
    guide_trace, model_trace = _traces(model, guide, args, kwargs, particles, dim)
    weights = split_log_weights(
        model_trace, guide_trace, plate, particle_dim=dim, num_particles=particles or 1
    )
    return weights.local, model_trace.nodes[name]["fn"]


def _values(fns: Any, x: torch.Tensor, k: int, read: Callable[[Any], torch.Tensor]) -> torch.Tensor:
    """``read(fn)`` as ``(k, *x.shape)``, for a vectorized ``fn`` or a list of single ones
    (a site whose distribution does not depend on the particle is broadcast over them)."""
    if isinstance(fns, list):
        return torch.stack([read(fn).reshape(x.shape) for fn in fns])
    return read(fns).reshape(-1, *x.shape).expand(k, *x.shape)
