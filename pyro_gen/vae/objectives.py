"""Training objectives for the VAE family, all Pyro ELBO objects usable with SVI or fit."""

from __future__ import annotations

import torch
from pyro import poutine
from pyro.distributions import Delta, Independent, MaskedDistribution, Normal
from pyro.distributions.util import scale_and_mask
from pyro.infer import ELBO, RenyiELBO, Trace_ELBO, TraceMeanField_ELBO
from pyro.poutine import Trace
from pyro.poutine.util import site_is_subsample
from torch.distributions import kl_divergence


def iwae(num_particles: int = 50, max_plate_nesting: int | None = None) -> RenyiELBO:
    """The importance weighted bound (IWAE) with ``num_particles`` samples,

    .. math:: \\mathcal{L}_K(x) = \\mathbb{E}\\Big[\\log \\frac{1}{K} \\sum_{k=1}^K
              \\frac{p(x, z_k)}{q(z_k \\mid x)}\\Big] \\le \\log p(x),

    i.e. Pyro's :class:`~pyro.infer.RenyiELBO` with :math:`\\alpha = 0`, particles
    vectorized (the model and guide must broadcast over a leading particle dimension,
    as every model of :mod:`pyro_gen.vae` does).

    Args:
        num_particles: :math:`K`, importance samples per example.
        max_plate_nesting: how many plates the model nests at most. None (the default, as
            in Pyro's own ELBOs) has Pyro find it from one run of the model and guide at
            the first step, so a model with a data plate and an inner plate (pixels,
            features) or a global plate around a local one works as written; pass it only
            to skip that run or when the first batch does not show the deepest nesting.

    References:
        Burda, Grosse & Salakhutdinov, Importance Weighted Autoencoders, arXiv:1509.00519.

    Example:
        >>> iwae(5).num_particles
        5
    """
    if max_plate_nesting is None:
        # Pyro's ELBOs read infinity as "guess from the trace at the first step"
        nesting: float = float("inf")
    elif isinstance(max_plate_nesting, bool) or not isinstance(max_plate_nesting, int):
        raise TypeError(
            f"iwae: max_plate_nesting must be an int or None, got {max_plate_nesting!r}; "
            "leave it None to have Pyro find it from the model's plates"
        )
    elif max_plate_nesting < 0:
        raise ValueError(
            f"iwae: max_plate_nesting must be >= 0, got {max_plate_nesting}; "
            "leave it None to have Pyro find it from the model's plates"
        )
    else:
        nesting = max_plate_nesting
    return _IWAE(
        alpha=0.0,
        num_particles=num_particles,
        vectorize_particles=True,
        max_plate_nesting=nesting,
    )


class _IWAE(RenyiELBO):
    """Pyro's RenyiELBO whose first-step guess of ``max_plate_nesting`` leaves the random
    streams as it found them, so a seeded run draws the same particles whether the nesting
    was guessed or given (and as it did when iwae fixed the nesting at 1)."""

    def _guess_max_plate_nesting(self, model, guide, args, kwargs) -> None:
        cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
        devices = list(range(torch.cuda.device_count())) if cuda else []
        with torch.random.fork_rng(devices=devices):
            # the guess may create a guide's parameters (an autoguide's first call): from a
            # stream of its own, seeded from this one, so that the particles drawn after it
            # (from the restored stream) do not repeat the numbers they were initialized with
            seed = int(torch.randint(2**62, ()))
            torch.default_generator.manual_seed(seed)
            if cuda:
                torch.cuda.manual_seed_all(seed)
            super()._guess_max_plate_nesting(model, guide, args, kwargs)


class FreeBitsELBO(ELBO):
    """ELBO with free bits: the KL of each latent dimension, averaged over the batch, is
    not penalized below ``free_bits`` nats,

    .. math:: \\mathcal{L} = \\mathbb{E}_q[\\log p(x \\mid z)] - \\sum_j
              \\max\\big(\\lambda, \\mathbb{E}_{x \\in \\text{batch}}\\,
              \\mathrm{KL}_j(x)\\big),

    which stops the optimizer from switching latent dimensions off early. Per-dimension KL
    is analytic when guide and model sites are both diagonal Normals (a bare ``Normal``, or
    under ``.to_event`` and a ``.mask(m)`` shared by both, whose masked entries count
    nothing, the floor included); otherwise the
    Monte Carlo KL of the whole site is clamped at :math:`\\lambda` times its size. A latent
    that a Pyro autoguide (``AutoNormal``) draws as ``<name>_unconstrained`` is floored on
    the Monte Carlo KL of that draw, as a whole; a guide that draws several latents in one
    auxiliary site (``AutoDiagonalNormal``) is refused, their KLs being inseparable, and so
    is a point estimate (``AutoDelta``, a ``Delta`` site), which has no KL to floor.
    Meant for training; report the plain ELBO.

    Pyro scales and masks count as in the ELBO, each latent's KL weighted by its site's
    scale and mask, which must therefore be the same in model and guide (KL annealing scales
    both: :func:`~pyro_gen.infer.annealing.kl_scale_pair`); a latent weighted on one side
    only is refused with a ValueError naming it.

    Args:
        free_bits: :math:`\\lambda` in nats per latent dimension.
        num_particles: Monte Carlo samples per step.

    References:
        Kingma et al., Improved Variational Inference with Inverse Autoregressive Flow,
        arXiv:1606.04934 (free bits).

    Example:
        >>> from pyro_gen.vae import VAE
        >>> vae = VAE((8, 8), z_dim=2, hidden_dim=8)
        >>> loss = FreeBitsELBO(0.5).loss(vae.model, vae.guide, torch.rand(3, 8, 8).round())
        >>> isinstance(loss, float)
        True
    """

    def __init__(self, free_bits: float = 0.25, num_particles: int = 1) -> None:
        super().__init__(num_particles=num_particles)
        self.free_bits = float(free_bits)

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        total = 0.0
        for _ in range(self.num_particles):
            guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
            model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(
                *args, **kwargs
            )
            if torch.is_grad_enabled():
                _check_reparameterized(model_trace, guide_trace)
            model_trace.compute_log_prob()
            guide_trace.compute_log_prob()
            elbo = 0.0
            for site in model_trace.nodes.values():
                if site["type"] == "sample" and site["is_observed"]:
                    elbo = elbo + site["log_prob"].sum()  # already scaled and masked
            paired = _unconstrained_draws(guide_trace, model_trace)
            for name, q_site in guide_trace.nodes.items():
                if q_site["type"] != "sample" or q_site["is_observed"]:
                    continue
                if site_is_subsample(q_site):
                    continue
                if name not in model_trace.nodes:
                    if q_site["infer"].get("is_auxiliary", False) and name not in paired.values():
                        _refuse_joint_draw(name)
                    continue
                if name not in paired and _is_point(q_site["fn"]):
                    _refuse_point(name)
                p_site = model_trace.nodes[name]
                _check_same_weighting(name, q_site, p_site)
                aux_site = guide_trace.nodes[paired[name]] if name in paired else None
                elbo = elbo - self._clamped_kl(q_site, p_site, aux_site)
            total = total - elbo
        return total / self.num_particles

    def _clamped_kl(self, q_site: dict, p_site: dict, aux_site: dict | None = None) -> torch.Tensor:
        """The site's KL with each dimension's floor: with example weights :math:`w_b`
        (the site's scale, such as a subsampled plate's N/B, times its mask),
        :math:`\\sum_j \\max(\\lambda \\sum_b w_b, \\sum_b w_b \\mathrm{KL}_{bj})`, i.e.
        :math:`\\lambda` against the batch mean of each dimension's KL, scaled.

        ``aux_site`` is an autoguide's unconstrained draw of this latent (the latent site
        is then a ``Delta`` carrying only the log-Jacobian): its density is the guide's,
        so it is part of this latent's KL."""
        q, p = q_site["fn"], p_site["fn"]
        value = q_site["value"]
        batch = value.shape[: value.dim() - q.event_dim]
        n = max(batch.numel(), 1)
        ones = torch.ones(batch, dtype=value.dtype, device=value.device)
        weights = scale_and_mask(ones, q_site["scale"], q_site["mask"]).expand(batch)
        weights = weights.reshape(n)
        # an autoguide's latent is a Delta: never a diagonal Normal, so the Monte Carlo
        # branch below takes it, with its unconstrained draw's density
        q_normal, q_mask = _diagonal_normal(q)
        p_normal, p_mask = _diagonal_normal(p)
        if q_normal is not None and p_normal is not None and _same_mask(q_mask, p_mask):
            kl = kl_divergence(q_normal, p_normal)  # (*batch, *event)
            counted = weights[:, None].expand(n, kl[(0,) * len(batch)].numel())
            if q_mask is not None:  # a .mask(m) on the density: padding counts nothing
                mask = q_mask.to(kl.device).expand(kl.shape)
                counted = counted * mask.reshape(n, -1).to(counted.dtype)
            per_dim = (counted * kl.reshape(n, -1)).sum(0)
            # each dimension's floor is lambda per example it counts
            return per_dim.clamp(min=self.free_bits * counted.sum(0)).sum()
        # the sites' log_prob are scaled and masked already
        kl = (q_site["log_prob"] - p_site["log_prob"]).sum()
        if aux_site is not None:
            kl = kl + aux_site["log_prob"].sum()
        size = max(value[(0,) * len(batch)].numel(), 1) if len(batch) else value.numel()
        return kl.clamp(min=self.free_bits * size * weights.sum())

    def _get_trace(self, model, guide, args, kwargs):  # required by ELBO, unused
        raise NotImplementedError

    def loss(self, model, guide, *args, **kwargs) -> float:
        with torch.no_grad():
            return self.differentiable_loss(model, guide, *args, **kwargs).item()

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        loss.backward()
        return loss.item()


def _unconstrained_draws(guide_trace: Trace, model_trace: Trace) -> dict[str, str]:
    """``{latent: auxiliary site}`` for the latents a Pyro autoguide (``AutoNormal``, the
    global part of ``AutoAmortizedNormal``) draws as ``<latent>_unconstrained`` and then
    records as a ``Delta``: the floor must weigh the KL of that draw, not the Delta's
    log-Jacobian alone (which left free bits without effect on every such latent)."""
    paired = {}
    for name, site in guide_trace.nodes.items():
        aux = guide_trace.nodes.get(f"{name}_unconstrained")
        if (
            site["type"] == "sample"
            and name in model_trace.nodes
            and aux is not None
            and aux["type"] == "sample"
            and aux["infer"].get("is_auxiliary", False)
            and isinstance(site["fn"], Delta)
        ):
            paired[name] = f"{name}_unconstrained"
    return paired


def _refuse_joint_draw(name: str) -> None:
    """An auxiliary draw paired with no single latent (``AutoDiagonalNormal``'s joint
    ``_AutoDiagonalNormal_latent``) holds the density of several latents at once: no
    latent's KL can be floored, and flooring the Deltas' terms alone (their log-Jacobian
    minus log p) floored the wrong quantity without a word."""
    raise ValueError(
        f"FreeBitsELBO floors the KL of each latent, but guide site {name!r} is an auxiliary "
        "draw of several latents at once (AutoDiagonalNormal, AutoMultivariateNormal, "
        "AutoLowRankMultivariateNormal), whose KLs cannot be told apart: guide with "
        "AutoNormal or AutoAmortizedNormal (one Normal per latent), or train with Trace_ELBO"
    )


def _is_point(fn: object) -> bool:
    """Whether ``fn`` is a point mass: a ``Delta`` (under its ``.mask``/``.to_event``
    wrappers) with no density. A Delta given ``log_density=log q(z)`` of a draw the guide
    made itself carries a density, so its KL is as well defined as any other's."""
    while isinstance(fn, (Independent, MaskedDistribution)):
        fn = fn.base_dist
    return isinstance(fn, Delta) and not bool(torch.as_tensor(fn.log_density).any())


def _refuse_point(name: str) -> None:
    """A point estimate (``AutoDelta``, a hand-written ``Delta``) has no density of its own,
    so its "KL" is ``-log p(z)`` alone: flooring that floored the prior's density at the
    point, which means nothing, and was done without a word."""
    raise ValueError(
        f"FreeBitsELBO floors the KL of each latent, but guide site {name!r} is a point "
        "estimate (a Delta, as AutoDelta gives), which has no KL (only -log p(z)): for free "
        "bits guide it with a density (AutoNormal, or AutoAmortizedNormal for latents under "
        "the data plate), or train the point estimate (MAP) with Trace_ELBO"
    )


def _check_reparameterized(model_trace: Trace, guide_trace: Trace) -> None:
    """FreeBitsELBO's gradient is the pathwise one: every latent it draws must be
    reparameterized, or the gradient misses its score-function term without a word."""
    for trace, program in ((guide_trace, "guide"), (model_trace, "model")):
        for name, site in trace.nodes.items():
            if (
                site["type"] != "sample"
                or site["is_observed"]
                or site_is_subsample(site)
                or (program == "model" and name in guide_trace.nodes)
            ):
                continue
            if not getattr(site["fn"], "has_rsample", False):
                raise ValueError(
                    f"FreeBitsELBO differentiates through the latents it draws, and {program} "
                    f"site {name!r} ({type(site['fn']).__name__}) cannot be reparameterized, "
                    "so its gradient would be biased: train a model with discrete latents "
                    "with TraceEnum_ELBO (enumerating them) or TraceGraph_ELBO, or relax them "
                    "(RelaxedOneHotCategorical)"
                )


def _diagonal_normal(fn: object) -> tuple[Normal | None, torch.Tensor | None]:
    """The Normal under ``fn``'s ``Independent`` and ``.mask(m)`` wrappers (a bare Normal
    site, the ``Normal(...).mask(m).to_event(1)`` of Pyro's DMM) and their masks, aligned
    with the Normal's shape (a mask taken outside ``.to_event`` covers whole events), or
    ``(None, None)``."""
    depth = len(getattr(fn, "event_shape", ()))
    mask = None
    while isinstance(fn, (Independent, MaskedDistribution)):
        if isinstance(fn, Independent):
            depth -= fn.reinterpreted_batch_ndims
        else:
            m = torch.as_tensor(fn._mask)
            m = m.reshape(m.shape + (1,) * depth)
            mask = m if mask is None else mask & m
        fn = fn.base_dist
    return (fn, mask) if isinstance(fn, Normal) else (None, None)


def _same_mask(q_mask: torch.Tensor | None, p_mask: torch.Tensor | None) -> bool:
    """Whether the model's density mask is the guide's (a slice of one padding mask taken on
    each side is another tensor of the same values)."""
    if p_mask is None or q_mask is None:
        return p_mask is q_mask
    return p_mask.shape == q_mask.shape and bool(torch.equal(q_mask, p_mask))


def _check_same_weighting(name: str, q_site: dict, p_site: dict) -> None:
    """The KL term of a latent takes one weighting, the guide site's scale and mask (as in
    :class:`~pyro.infer.TraceMeanField_ELBO`). A ``poutine.scale`` or ``poutine.mask``
    around the model's site alone (KL annealing written in the model, with an autoguide,
    which copies no scale) was dropped without a word: the loss was the same at every beta.
    """
    q_scale, p_scale = q_site["scale"], p_site["scale"]
    q_mask, p_mask = q_site["mask"], p_site["mask"]
    if q_mask is None and p_mask is None:
        if q_scale is p_scale:
            return
        if not (torch.is_tensor(q_scale) or torch.is_tensor(p_scale)):  # no device sync
            if q_scale == p_scale:
                return
            _refuse_weighting(
                name, f"scaled by {p_scale:g} in the model and {q_scale:g} in the guide"
            )
    value = q_site["value"]
    batch = value.shape[: value.dim() - q_site["fn"].event_dim]
    ones = torch.ones(batch, dtype=torch.float64, device=value.device)
    q_weights = scale_and_mask(ones, q_scale, q_mask)
    p_weights = scale_and_mask(ones, p_scale, p_mask)
    if not torch.allclose(q_weights.expand(batch), p_weights.expand(batch), rtol=1e-6):
        _refuse_weighting(name, "scaled or masked differently in the model and the guide")


def _refuse_weighting(name: str, how: str) -> None:
    raise ValueError(
        f"FreeBitsELBO: latent site {name!r} is {how}; its KL term takes one weight, so "
        "scale (or mask) the site in both: wrap both sites in the same poutine.scale, or "
        "anneal with pyro_gen.infer.annealing.kl_scale_pair(model, guide, beta)"
    )


def make_loss(objective: str = "elbo", num_particles: int = 50, free_bits: float = 0.25) -> ELBO:
    """A training objective by name: ``elbo`` (:class:`~pyro.infer.Trace_ELBO`),
    ``meanfield`` (:class:`~pyro.infer.TraceMeanField_ELBO`, analytic KL where it exists),
    ``iwae`` (:func:`iwae` with ``num_particles``) or ``freebits``.

    Example:
        >>> isinstance(make_loss("iwae", 10), RenyiELBO)
        True
    """
    if objective == "elbo":
        return Trace_ELBO()
    if objective == "meanfield":
        return TraceMeanField_ELBO()
    if objective == "iwae":
        return iwae(num_particles)
    if objective == "freebits":
        return FreeBitsELBO(free_bits)
    raise ValueError(f"unknown objective {objective!r}; choose elbo, meanfield, iwae, freebits")


__all__ = ["FreeBitsELBO", "iwae", "make_loss"]
