"""Semi-amortized inference: refine the amortized posterior of one batch by SVI steps, or fit
each example's Normal posterior from scratch (no amortization at all), for a pyro_gen VAE or
any Pyro model and guide."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO, TraceEnum_ELBO
from pyro.poutine.messenger import Messenger
from torch.distributions.relaxed_categorical import ExpRelaxedCategorical
from torch.nn import functional as F

from pyro_gen.data.random_state import rng_left_alone
from pyro_gen.infer.evaluation_scorer import one_line_message
from pyro_gen.infer.log_weights import find_data_plate, max_plate_nesting
from pyro_gen.vae.diagnostics import own_posterior_family, posterior_params
from pyro_gen.vae.example_rows import check_every_example
from pyro_gen.vae.latent_statistics import chosen_latent, diagonal_normal
from pyro_gen.vae.pairs import evaluated_pair
from pyro_gen.vae.posterior_point import PosteriorPoint
from pyro_gen.vae.sites import LATENT

_STARTS = ("encoder", "standard_normal")


class _LocalNormal(Messenger):
    """Draws the guide's ``site`` from the per-example Normal(loc, softplus(raw)) instead of
    the guide's own distribution; the rest of the guide runs as written (a lower layer of a
    hierarchy then follows the refined value)."""

    def __init__(self, site: str, loc: torch.Tensor, raw: torch.Tensor, event_dim: int):
        super().__init__()
        self.site, self.loc, self.raw, self.event_dim = site, loc, raw, event_dim

    def _pyro_sample(self, msg: dict) -> None:
        if msg["name"] == self.site:
            msg["fn"] = dist.Normal(self.loc, F.softplus(self.raw)).to_event(self.event_dim)


@dataclass
class _Refinement:
    model: Callable
    guide: Callable
    site: str
    loc: torch.Tensor
    raw: torch.Tensor
    event_dim: int
    nesting: int
    enumerated: bool  # sites marked for enumeration: the ELBO the user trains sums them out
    vectorize: bool = True  # particles in a plate, until the model or guide refuses one

    def refined_guide(self, *args: Any, **kwargs: Any) -> Any:
        with _LocalNormal(self.site, self.loc, self.raw, self.event_dim):
            return self.guide(*args, **kwargs)

    def loss(self, x: torch.Tensor, context: dict, num_particles: int, differentiable: bool) -> Any:
        """The negative ELBO of the refined guide (``Trace_ELBO``, or ``TraceEnum_ELBO``
        where sites are marked for enumeration), its particles vectorized while the model
        and guide run under a particle plate, else drawn one at a time (with a warning)."""
        while True:
            kind = TraceEnum_ELBO if self.enumerated else Trace_ELBO
            elbo = kind(
                num_particles=num_particles,
                vectorize_particles=self.vectorize,
                max_plate_nesting=self.nesting,
            )
            run = elbo.differentiable_loss if differentiable else elbo.loss
            try:
                return run(self.model, self.refined_guide, x, **context)
            except Exception as error:  # noqa: BLE001 - the unvectorized run shows a real one
                if not self.vectorize or num_particles == 1:
                    raise
                self.vectorize = False
                warnings.warn(
                    f"the model or guide does not run under a particle plate, so the "
                    f"refinement draws its {num_particles} particles one at a time, which is "
                    f"slower: {type(error).__name__}: {one_line_message(error)}",
                    stacklevel=4,
                )


def _support_is_real(fn: Any) -> bool:
    support = fn.support
    while hasattr(support, "base_constraint"):
        support = support.base_constraint
    return support is dist.constraints.real


def _on_log_simplex(fn: Any) -> bool:
    while isinstance(fn, (dist.Independent, dist.MaskedDistribution)):
        fn = fn.base_dist
    return isinstance(fn, ExpRelaxedCategorical)


def _site_start(
    guide_trace: Any, model_trace: Any, site: str
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The guide's loc and scale of ``site`` (a diagonal Normal's own, else the mean and
    standard deviation of draws), and its event dimensions."""
    fn = guide_trace.nodes[site]["fn"]
    base = fn
    while isinstance(base, (dist.Independent, dist.MaskedDistribution)):
        base = base.base_dist
    if isinstance(base, dist.Delta):
        raise ValueError(
            f"refine_posterior refines the guide's distribution of site {site!r}, but the "
            "guide gives it a Delta (a point, or a Pyro autoguide that draws its latents "
            "through an auxiliary site): refine a guide that samples the site itself, such "
            "as AutoAmortizedNormal or a hand-written one"
        )
    for role, f in (("guide", fn), ("model", model_trace.nodes[site]["fn"])):
        if _on_log_simplex(f):
            raise ValueError(
                f"refine_posterior refines the guide's site {site!r} with a Normal, but the "
                f"{role}'s distribution of it is a relaxed categorical on the log-simplex "
                "(torch declares it real, but its draws satisfy logsumexp = 0, which a Normal "
                "would leave): choose a continuous latent with site=..."
            )
        # a TransformedDistribution's support is its last transform's codomain, which torch
        # often leaves as Real: the model's own distribution says where the site lies
        if not _support_is_real(f):
            raise ValueError(
                f"refine_posterior refines the guide's site {site!r} with a Normal, but the "
                f"{role}'s distribution of it has support {f.support}: choose a "
                "real-valued latent with site=..."
            )
    normal = diagonal_normal(fn)
    shape = fn.batch_shape + fn.event_shape
    if normal is not None:
        return normal.loc.expand(shape), normal.scale.expand(shape), len(fn.event_shape)
    draws = fn.sample((64,))  # a flow: its first two moments
    return draws.mean(0), draws.std(0), len(fn.event_shape)


def _refinement(
    vae: Any,
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    *,
    start: str,
    built_in: bool,
    site: str | None,
    context: dict,
) -> _Refinement:
    """The model, the guide and the starting per-example Normal of its latent ``site``: a
    built-in VAE's encoder output, else the guide's own distribution of the site with the
    guide's other latents at their point estimates (a layer below another at the upper
    layer's mean)."""
    if start not in _STARTS:
        raise ValueError(f"start must be 'encoder' or 'standard_normal', got {start!r}")
    with rng_left_alone():  # finding the starting point leaves the RNG where it was
        guide_trace = poutine.trace(PosteriorPoint()(guide)).get_trace(x, **context)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(
            x, **context
        )
        if built_in:
            site, event_dim = LATENT, 1
            loc0, scale0 = posterior_params(vae, x, **context)
        else:
            check_every_example(model_trace, find_data_plate(model_trace), x, "refine_posterior")
            site = chosen_latent(guide_trace, model_trace, site, "refine")
            loc0, scale0, event_dim = _site_start(guide_trace, model_trace, site)
    if start == "standard_normal":
        loc0, scale0 = torch.zeros_like(loc0), torch.ones_like(scale0)
    loc = loc0.detach().clone().requires_grad_(True)
    raw = torch.log(torch.expm1(scale0.detach().clamp(min=1e-5))).requires_grad_(True)
    nesting = max_plate_nesting(guide_trace, model_trace)
    enumerated = any(
        node["type"] == "sample" and node["infer"].get("enumerate")
        for trace in (guide_trace, model_trace)
        for node in trace.nodes.values()
    )
    return _Refinement(model, guide, site, loc, raw, event_dim, nesting, enumerated)


def _refine(
    refinement: _Refinement,
    x: torch.Tensor,
    num_steps: int,
    lr: float,
    num_particles: int,
    context: dict,
) -> None:
    r = refinement
    opt = torch.optim.Adam([r.loc, r.raw], lr=lr)
    for _ in range(num_steps):
        loss = r.loss(x, context, num_particles, differentiable=True)
        grads = torch.autograd.grad(loss, [r.loc, r.raw])
        opt.zero_grad()
        r.loc.grad, r.raw.grad = grads
        opt.step()


@contextmanager
def _refined(
    vae: Any,
    x: torch.Tensor,
    guide: Callable | None,
    site: str | None,
    start: str,
    num_steps: int,
    lr: float,
    num_particles: int,
    context: dict,
) -> Iterator[_Refinement]:
    """The refinement after ``num_steps``, with model and guide still in evaluation mode."""
    built_in = own_posterior_family(vae, guide, site)
    with evaluated_pair(vae, guide, x, context) as (model, guide_fn):
        r = _refinement(
            vae, model, guide_fn, x, start=start, built_in=built_in, site=site, context=context
        )
        _refine(r, x, num_steps, lr, num_particles, context)
        yield r


def refine_posterior(
    vae: Any,
    x: torch.Tensor,
    num_steps: int = 50,
    lr: float = 1e-2,
    num_particles: int = 8,
    start: str = "encoder",
    *,
    guide: Callable | None = None,
    site: str | None = None,
    **context: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Start from the amortized Normal posterior of each example of ``x`` and take
    ``num_steps`` Adam steps on the ELBO with respect to the per-example loc and scale
    only (model and guide networks are left untouched). Returns the refined ``(loc, scale)``,
    each shaped as the latent's value.

    This closes part of the amortization gap, so an evaluation with the refined guide
    gives a tighter bound than the encoder alone. With ``start="standard_normal"`` every
    example starts from :math:`\mathcal{N}(0, I)` instead: classical per-example variational
    inference, which shows what the encoder's starting point is worth for a given number of
    steps.

    A pyro_gen VAE with its own guide starts from its encoder's loc and scale (for a flow
    posterior, the Normal before the flow steps). Any other guide (a user's model callable
    with ``guide=``, an assigned guide) has its latent ``site`` (default: its only latent in
    the data plate) replaced by the per-example Normal, starting from the guide's own loc
    and scale there (a flow's: the mean and standard deviation of draws); the rest of the
    guide runs as written, so a lower layer of a hierarchy follows the refined value.
    Model and guide run in evaluation mode.

    Args:
        vae: a pyro_gen VAE, or a Pyro model callable ``model(x, **context)``.
        x: the batch.
        num_steps: Adam steps.
        lr: Adam's learning rate.
        num_particles: samples of the ELBO per step (vectorized).
        start: ``"encoder"`` (semi-amortized) or ``"standard_normal"`` (per-example).
        guide: a Pyro guide (default: the module's).
        site: the real-valued latent site to refine.
        **context: the model's other arguments (e.g. ``mask``).

    Raises:
        ValueError: an unknown ``start``; no single latent to refine (name it with
            ``site=``); a site that is not real-valued.

    References:
        Kim et al., Semi-Amortized Variational Autoencoders, arXiv:1802.02550.
        Cremer, Li & Duvenaud, Inference Suboptimality in VAEs, arXiv:1801.03558.

    Example:
        >>> from pyro_gen.vae import VAE
        >>> loc, scale = refine_posterior(VAE((8, 8), 2, 8), torch.rand(3, 8, 8), num_steps=2)
        >>> loc.shape
        torch.Size([3, 2])
    """
    with _refined(vae, x, guide, site, start, num_steps, lr, num_particles, context) as r:
        return r.loc.detach(), F.softplus(r.raw.detach())


def semi_amortized_elbo(
    vae: Any,
    x: torch.Tensor,
    num_steps: int = 50,
    lr: float = 1e-2,
    num_particles: int = 100,
    refine_particles: int = 8,
    start: str = "encoder",
    *,
    guide: Callable | None = None,
    site: str | None = None,
    **context: Any,
) -> float:
    """Mean ELBO per example of ``x`` (nats) under the refined posterior of
    :func:`refine_posterior` (run with ``refine_particles`` samples per step, from ``start``,
    on ``guide``'s ``site``), estimated with ``num_particles`` samples.

    Example:
        >>> from pyro_gen.vae import VAE
        >>> isinstance(semi_amortized_elbo(VAE((8, 8), 2, 8), torch.rand(3, 8, 8), 2), float)
        True
    """
    refined = _refined(vae, x, guide, site, start, num_steps, lr, refine_particles, context)
    with refined as r, torch.no_grad():
        loss = r.loss(x, context, num_particles, differentiable=False)
    return -loss / x.shape[0]
