"""Evaluation of any model/guide pair: test ELBO and importance-weighted log-likelihood.

Both estimators score each example under the model's data plate, found from the trace (see
:func:`~pyro_gen.infer.log_weights.find_data_plate`), so they work for any Pyro model, give
per-example values (``per_example=True``) for standard errors, and do not depend on the
batch size. Sites outside the data plate (global latents such as the weights of a Bayesian
layer or a shared mean) are counted once for the whole data set, not once per batch: each
particle's global latents are drawn once and held fixed on every batch, so the estimate of
particle :math:`k` is that of one joint draw :math:`(g_k, z_{1k}, \\dots, z_{Nk})` from
the guide.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any, TypeVar

import pyro
import torch
from pyro import poutine
from pyro.infer import TraceMeanField_ELBO
from pyro.poutine import Trace
from pyro.poutine.util import site_is_subsample
from tqdm.auto import tqdm

from pyro_gen.data.batching import Call, Transform, batch_calls, with_transform
from pyro_gen.infer.log_weights import (
    PARTICLE_PLATE,
    DataPlate,
    LogWeights,
    enumeration_problem,
    find_data_plate,
    is_delta,
    max_plate_nesting,
    sample_sites,
    scaled_site,
    split_log_weights,
)
from pyro_gen.infer.program import program, trace_once

#: Particles drawn at once by evaluate_elbo (IWAE takes ``chunk=``).
ELBO_CHUNK = 100

T = TypeVar("T")

# Drawing a site from p(site | parents) cancels its density from the weight: for a leaf that
# is its exact posterior, so only a site another density depends on makes the bound looser.
_DRAWN = (
    "each is proposed from its conditional given its parents, which loosens the bound only "
    "where another site's density depends on it (an observed child); for a site nothing "
    "depends on (a leaf such as obs_mask's x_unobserved) that draw is its exact posterior "
    "and the bound is unchanged. Where a site has such dependents, add a guide site for it "
    "to tighten the bound"
)


def module_device(module: torch.nn.Module) -> torch.device:
    """The device of a module's first parameter or buffer (CPU for a stateless module)."""
    return _device([module]) or torch.device("cpu")


@contextmanager
def _eval_mode(modules: list[torch.nn.Module]) -> Iterator[None]:
    # Evaluation mode (dropout off, batch norm frozen) for the score, restored afterwards.
    training = [m.training for m in modules]
    for m in modules:
        m.eval()
    try:
        yield
    finally:
        for m, mode in zip(modules, training):
            m.train(mode)


def _device(modules: list[torch.nn.Module]) -> torch.device | None:
    """Where the first parameter or buffer of ``modules`` lives; None when they have none."""
    for m in modules:
        for t in itertools.chain(m.parameters(), m.buffers()):
            return t.device
    return None


def _subsample_sites(*traces: Trace) -> Trace:
    """A trace of the plates' subsample sites (their indices) in ``traces``, for replay."""
    kept = Trace()
    for trace in traces:
        for name, site in trace.nodes.items():
            if site["type"] == "sample" and site_is_subsample(site) and name not in kept.nodes:
                kept.add_node(name, **site)
    return kept


def _only(trace: Trace, names: tuple[str, ...], plate: DataPlate) -> Trace:
    """A trace of the named sites that lie outside the data plate (for replay)."""
    kept = Trace()
    for name in names:
        site = trace.nodes[name]
        if all(f.name != plate.name for f in site["cond_indep_stack"]):
            kept.add_node(name, **site)
    return kept


class _Scorer:
    """Draws particles of guide and model on batches and splits their log-weights.

    Global latents are drawn on the first batch and replayed on every later one, keyed by
    particle chunk, so particle k sees one draw of them for the whole data set.
    """

    def __init__(
        self,
        model: Callable,
        guide: Callable,
        plate_name: str | None,
        analytic_kl: bool,
        importance: bool = False,
    ) -> None:
        self.model, self.guide, self.plate_name = model, guide, plate_name
        self.analytic_kl, self.importance = analytic_kl, importance
        self.plate: DataPlate | None = None
        self.particle_dim = -1
        self.has_shared = False
        self.enumerate, self.enumerable = False, True
        self.reviewed: set[str] = set()
        self.vectorize, self.vectorized_once = True, False
        self.fixed: dict[Any, tuple[Trace, Trace]] = {}
        self.subsamples: Trace | None = None

    def new_batch(self) -> None:
        """Forgets the subsample indices drawn for the previous batch."""
        self.subsamples = None

    def _traces(self, call: Call, num_particles: int | None, key: Any) -> tuple[Trace, Trace]:
        guide, fixed = self.guide, self.fixed.get(key)
        if fixed is not None:
            guide = poutine.replay(guide, trace=fixed[0])
        # A plate that draws its own subsample (subsample_size=) must pick the same examples
        # for every particle chunk of a batch: the chunks' log-weights are combined example
        # by example, so indices drawn afresh would mix the weights of different examples.
        subsamples = self.subsamples
        if subsamples is not None:
            guide = poutine.replay(guide, trace=subsamples)
        with ExitStack() as stack:
            if num_particles is not None:
                stack.enter_context(
                    pyro.plate(PARTICLE_PLATE, num_particles, dim=self.particle_dim)
                )
            guide_trace = poutine.trace(guide).get_trace(*call.args, **call.kwargs)
            replay = guide_trace
            extra = [*(fixed[1].nodes.items() if fixed is not None else ())]
            extra += [*(subsamples.nodes.items() if subsamples is not None else ())]
            if extra:
                replay = guide_trace.copy()
                for name, site in extra:
                    if name not in guide_trace.nodes:
                        replay.add_node(name, **site)
            model = self.model
            if self.enumerate:
                # inside the replay, as TraceEnum_ELBO puts it: enum then sees the replayed
                # sites too and records the enumeration dims their densities depend on
                model = poutine.enum(model, first_available_dim=self.particle_dim - 1)
            model = poutine.replay(model, trace=replay)
            model_trace = poutine.trace(model).get_trace(*call.args, **call.kwargs)
        if subsamples is None:
            self.subsamples = _subsample_sites(guide_trace, model_trace)
        return guide_trace, model_trace

    def setup(self, call: Call) -> None:
        """Finds the data plate and the nesting depth from a draw without particles."""
        guide_trace, model_trace = self._traces(call, None, None)
        self.plate = find_data_plate(model_trace, self.plate_name)
        _check_densities(guide_trace, model_trace, self.importance)
        problem = scaled_site(self.plate, model_trace, guide_trace) if self.importance else None
        if problem is not None:
            raise ValueError(
                f"iwae_log_likelihood cannot weight by this model: {problem}, so exp of its "
                "log-weight is no importance weight and the estimate would bound nothing. "
                "Evaluate it with every plate at full size and no poutine.scale, or use "
                "evaluate_elbo, which keeps scales"
            )
        self.particle_dim = -max_plate_nesting(guide_trace, model_trace) - 1
        weights = split_log_weights(
            model_trace,
            guide_trace,
            self.plate,
            particle_dim=self.particle_dim,
            analytic_kl=self.analytic_kl,
        )
        self.has_shared = weights.has_shared
        self._review(call, model_trace, weights.prior_sites)

    def _review(self, call: Call, model_trace: Trace, prior_sites: tuple[str, ...]) -> bool:
        """Decides, once per site, what to do with model latents that have no guide site:
        sum out those marked for TraceEnum_ELBO where that can be done example by example
        (inside the data plate, nested plates and pyro.markov chains included), draw the rest
        from the model. Returns
        whether enumeration has just been switched on (so the batch must be redone)."""
        new = [n for n in prior_sites if n not in self.reviewed]
        self.reviewed.update(new)
        marked = [n for n in new if model_trace.nodes[n]["infer"].get("enumerate") == "parallel"]
        switched = False
        if marked and self.enumerable:
            self.enumerate = True
            try:
                problem = enumeration_problem(self._traces(call, None, None)[1], self.plate)
            except Exception as error:  # the model does not run under poutine.enum
                problem = f"{type(error).__name__}: {error}"
            if problem is None:
                switched = True
                new = [n for n in new if n not in marked]
            else:
                self.enumerate = self.enumerable = False
                warnings.warn(
                    f"evaluation cannot sum out the model's discrete sites {marked} example "
                    f"by example ({problem}), so it draws them from the model: {_DRAWN}",
                    stacklevel=5,
                )
                new = [n for n in new if n not in marked]
        if new:
            warnings.warn(
                f"model sites {new} have no guide site, so evaluation draws them from the "
                f"model: {_DRAWN}",
                stacklevel=5,
            )
        return switched

    def _weights(self, call: Call, num_particles: int, key: Any) -> LogWeights:
        vectorized = num_particles > 1
        guide_trace, model_trace = self._traces(call, num_particles if vectorized else None, key)
        assert self.plate is not None
        weights = split_log_weights(
            model_trace,
            guide_trace,
            self.plate,
            particle_dim=self.particle_dim,
            num_particles=num_particles if vectorized else 1,
            analytic_kl=self.analytic_kl,
        )
        if self._review(call, model_trace, weights.prior_sites):
            return self._weights(call, num_particles, key)
        if self.has_shared and key not in self.fixed:
            self.fixed[key] = (
                _only(guide_trace, weights.global_sites, self.plate),
                _only(model_trace, weights.prior_sites, self.plate),
            )
        return weights

    def chunk(self, call: Call, num_particles: int, key: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(local (K, B), shared (K,))`` for ``num_particles`` particles, vectorized under
        a particle plate when the model and guide broadcast, else one at a time."""
        if num_particles > 1 and self.vectorize:
            try:
                weights = self._weights(call, num_particles, key)
                self.vectorized_once = True
                return weights.local, weights.shared
            except Exception as error:
                if self.vectorized_once:
                    raise  # it broadcast before, so this is a genuine error
                self.vectorize = False
                warnings.warn(
                    "the model or guide does not run under a vectorized particle plate "
                    f"({type(error).__name__}: {error}); drawing particles one at a time, "
                    "which is slower. Write them to broadcast over extra leading batch "
                    "dimensions to vectorize",
                    stacklevel=4,
                )
        parts = [self._weights(call, 1, (key, j)) for j in range(num_particles)]
        return torch.cat([w.local for w in parts]), torch.cat([w.shared for w in parts])


def _score_batches(
    model: Any,
    data: Any,
    *,
    guide: Callable | None,
    batch_size: int,
    num_particles: int,
    chunk: int,
    transform: Transform | None,
    plate_name: str | None,
    progress: bool,
    desc: str,
    reduce: Callable[[torch.Tensor, torch.Tensor], T],
    local_samples: int = 1,
    analytic_kl: bool = False,
    importance: bool = False,
) -> tuple[list[T], bool]:
    """Applies ``reduce(local (K, B), shared (K,))`` to every batch's log-weights; also says
    whether the model has sites outside the data plate. With ``local_samples`` M > 1 each
    particle's local log-weight is the log-mean-exp of M draws given its global latents."""
    pair = program(model, guide)
    calls = batch_calls(
        data, batch_size, shuffle=False, device=_device(list(pair.modules.values()))
    )
    # One run finds the modules a plain function closes over (to switch their mode); it
    # and its transformed batch leave the RNG where it was.
    rng = pyro.util.get_rng_state()
    trace_once(pair, with_transform(calls.peek(), transform))
    pyro.util.set_rng_state(rng)
    model_fn, guide_fn, modules = pair.model, pair.guide, list(pair.modules.values())
    chunks = range(0, num_particles, chunk)
    try:
        total = len(calls) * len(chunks) * local_samples
    except TypeError:
        total = None
    if plate_name is None:
        plate_name = declared_plate(model)
    scorer = _Scorer(model_fn, guide_fn, plate_name, analytic_kl, importance)
    results = []
    with torch.no_grad(), _eval_mode(modules):
        bar = tqdm(total=total, desc=desc, unit="chunk", disable=not progress, leave=False)
        try:
            for call in calls:
                call = with_transform(call, transform)
                if scorer.plate is None:
                    scorer.setup(call)
                scorer.new_batch()
                parts = []
                for key, start in enumerate(chunks):
                    draws = []
                    for _ in range(local_samples):  # the chunk's global draws are replayed
                        draws.append(scorer.chunk(call, min(chunk, num_particles - start), key))
                        bar.update()
                    local = draws[0][0]
                    if local_samples > 1:
                        local = _wide(torch.stack([d[0] for d in draws])).logsumexp(0)
                        local = local - math.log(local_samples)
                    parts.append((local, draws[0][1]))
                local = torch.cat([p[0] for p in parts])
                results.append(reduce(local, torch.cat([p[1] for p in parts])))
        finally:
            bar.close()
    if not results:
        raise ValueError("data yields no batches: there is nothing to evaluate")
    return results, scorer.has_shared


def _wide(t: torch.Tensor) -> torch.Tensor:
    # Sums over a whole data set lose digits in float32; MPS has no float64.
    return t if t.device.type == "mps" else t.to(torch.float64)


def _check_densities(guide_trace: Trace, model_trace: Trace, importance: bool) -> None:
    """Refuses a model that observes its data through a Delta (no likelihood to estimate),
    and point-mass guide sites for importance weighting (warns for the ELBO)."""
    for name, site in sample_sites(model_trace):
        if site["is_observed"] and is_delta(site["fn"]):
            density = site["fn"].log_prob(site["value"], *site["args"], **site["kwargs"])
            if not bool(torch.isfinite(density).all()):
                raise ValueError(
                    f"observed site {name!r} is a Delta (an implicit model, such as a GAN "
                    "generator): the data have density 0 under it almost everywhere, so "
                    "there is no likelihood to estimate. Score such a model by its samples "
                    "(pyro_gen.metrics: mode_coverage, sample_quality)"
                )
    latents = [(n, s) for n, s in sample_sites(guide_trace) if not s["is_observed"]]
    # An autoguide's Delta sites carry their density (a Jacobian) from an auxiliary draw;
    # without one they are point estimates (AutoDelta, MAP).
    if any(s["infer"].get("is_auxiliary", False) for _, s in latents):
        return
    points = [n for n, s in latents if is_delta(s["fn"])]
    if not points:
        return
    if importance:
        raise ValueError(
            f"guide sites {points} are point masses (Delta, as AutoDelta's): a point mass "
            "has no density to weight by, so the estimate would be log p(x, z) at those "
            "points, which is no bound on log p(x) (it can lie above it). Guide them with a "
            "density (AutoNormal, a flow guide), or use evaluate_elbo for the MAP objective"
        )
    warnings.warn(
        f"guide sites {points} are point masses (Delta, as AutoDelta's), so evaluate_elbo "
        "gives log p(x, z) at those points (the MAP objective, without the entropy a "
        "density would add), not a lower bound on log p(x)",
        stacklevel=5,
    )


def _own_pair_module(model: Any) -> torch.nn.Module | None:
    """The module whose own model/guide pair ``model`` stands for (the module, or its bound
    ``model`` method), else None."""
    owner = model if isinstance(model, torch.nn.Module) else getattr(model, "__self__", None)
    if owner is not None and (model is owner or model == getattr(owner, "model", None)):
        return owner
    return None


def declared_plate(model: Any) -> str | None:
    """The data plate a module names (``data_plate``) for its own pair: its objective may
    hold another plate that encloses every site too (a score model's time samples)."""
    return getattr(_own_pair_module(model), "data_plate", None)


def _check_density(model: Any) -> None:
    """Refuses a module's own model/guide pair when the module declares (with
    ``joint_is_density = False``) that on data it is a training objective estimating a bound,
    not a joint density over each example's latents with its proposal."""
    owner = _own_pair_module(model)
    if owner is not None and not getattr(owner, "joint_is_density", True):
        raise ValueError(
            f"{type(owner).__name__}'s model and guide on data are a training objective "
            "that estimates a bound (its joint_is_density is False), not a density over each "
            "example's whole latent trajectory and its proposal: exp of its log-weight is no "
            "importance weight, so an IWAE of it bounds nothing. Use evaluate_elbo for the "
            "bound it estimates, or an exact likelihood of the model (the probability-flow "
            "log_prob of a score or flow-matching model or a DDPM, or for a DDPM "
            "iwae_log_likelihood(m.chain_model, data, guide=m.chain_guide), the IWAE over "
            "its whole chain)"
        )


def _check_counts(**counts: int) -> None:
    for name, value in counts.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


def evaluate_elbo(
    model: Any,
    data: Any,
    *,
    guide: Callable | None = None,
    batch_size: int = 500,
    num_particles: int = 1,
    transform: Transform | None = None,
    loss: Any = None,
    plate_name: str | None = None,
    per_example: bool = False,
    progress: bool = False,
) -> float | torch.Tensor:
    """The ELBO per example on ``data``, in nats (higher is better).

    With global latents :math:`g` (sites outside the data plate) and local latents
    :math:`z_i`, the data set's ELBO divided by the number of examples :math:`N`,

    .. math::

        \\frac{1}{N}\\Big(\\mathbb{E}_{q(g)}\\Big[\\log\\frac{p(g)}{q(g)}\\Big]
        + \\sum_{i=1}^N \\mathbb{E}_{q(g)\\,q(z_i \\mid x_i, g)}
        \\Big[\\log\\frac{p(x_i, z_i \\mid g)}{q(z_i \\mid x_i, g)}\\Big]\\Big),

    estimated with ``num_particles`` draws; each draw's :math:`g` is held fixed over all
    batches, so the result does not depend on ``batch_size`` and is exact for an exact
    posterior guide. Each example counts once: a subsampled data plate's scale :math:`N/B`
    is removed, while other scales (``poutine.scale``, masks, an inner subsampled plate)
    are kept. (A model that subsamples its data itself, with ``subsample_size=``, scores
    the examples it draws, one draw per batch shared by all particles; pass it minibatches
    with ``subsample=`` indices to score every example.)
    Discrete model sites marked ``infer={"enumerate": "parallel"}`` that the guide does not
    sample are summed out of each example, as ``TraceEnum_ELBO`` does; a latent the guide
    lacks otherwise is drawn from the model, with a warning. ``loss`` is accepted so that
    :func:`~pyro_gen.infer.fit` can pass its objective: the estimate is always the plain
    ELBO (what a free-bits or IWAE objective bounds), the objective's ``num_particles`` is
    used when ``num_particles`` is 1, and with a ``TraceMeanField_ELBO`` the KL of each
    latent is taken in closed form where torch knows it (the same expectation, less noise;
    an autoguide's Delta sites keep their log-density, the Jacobian that Pyro's
    KL(Delta || p) drops, as NumPyro's does since pyro-ppl/numpyro#1625).

    Args:
        model: a pyro_gen module (its ``model`` and ``guide``) or any Pyro model callable.
        data: a tensor, a tuple or dict of tensors, or an iterable of batches (see
            :func:`~pyro_gen.data.batching.batch_calls`).
        guide: a Pyro guide replacing the module's guide; required for a plain callable.
        batch_size: examples per batch when ``data`` is sliced.
        num_particles: Monte Carlo draws from the guide.
        transform: applied to each batch (see :func:`~pyro_gen.data.batching.with_transform`).
        loss: the training objective (its ``num_particles`` and type are read).
        plate_name: the plate over examples; found from the trace when None.
        per_example: return each example's value (shape ``(N,)``, float64) instead of the
            mean. With global latents an example's value is its expected local term plus
            an equal :math:`1/N` share of the global term, so the values still sum to the
            data set's ELBO; their spread then reflects the local terms only.
        progress: show a progress bar over batches and particle chunks.

    Raises:
        ValueError: the data plate cannot be found (pass ``plate_name=``), a guide site is
            not in the model, a count is not a positive integer, or the model observes its
            data through a Delta (an implicit model: no likelihood). Guide sites that are
            point masses (``AutoDelta``) get a warning: the estimate is then log p(x, z).

    Example:
        >>> import pyro, pyro.distributions as dist, torch
        >>> def model(x):
        ...     with pyro.plate("N", x.shape[0]):
        ...         pyro.sample("x", dist.Normal(0.0, 1.0), obs=x)
        >>> round(evaluate_elbo(model, torch.zeros(10), guide=lambda x: None), 4)
        -0.9189
    """
    if loss is not None and num_particles == 1:
        num_particles = int(getattr(loss, "num_particles", 1))
    _check_counts(num_particles=num_particles)

    def reduce(local: torch.Tensor, shared: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return _wide(local).mean(0), _wide(shared).mean()

    results, _ = _score_batches(
        model,
        data,
        guide=guide,
        batch_size=batch_size,
        num_particles=num_particles,
        chunk=min(num_particles, ELBO_CHUNK),
        transform=transform,
        plate_name=plate_name,
        progress=progress,
        desc="evaluate_elbo",
        reduce=reduce,
        analytic_kl=isinstance(loss, TraceMeanField_ELBO),
    )
    values = torch.cat([local for local, _ in results]).cpu().double()
    # Global terms are counted once, from the first batch's draws (the later batches replay
    # the same draws), and shared equally by the examples.
    values = values + float(results[0][1]) / values.numel()
    return values if per_example else float(values.mean())


def iwae_log_likelihood(
    model: Any,
    data: Any,
    *,
    guide: Callable | None = None,
    num_samples: int = 5000,
    batch_size: int = 100,
    chunk: int = 500,
    transform: Transform | None = None,
    plate_name: str | None = None,
    per_example: bool = False,
    progress: bool = False,
    local_samples: int = 1,
) -> float | torch.Tensor:
    """Importance-weighted estimate of the log-likelihood per example, in nats.

    The guide is the proposal. Without global latents each example gets the IWAE bound of
    Burda et al. with :math:`K` = ``num_samples`` draws,

    .. math::

        \\log p(x_i) \\ge \\mathbb{E}\\Big[\\log \\frac{1}{K} \\sum_{k=1}^K
            \\frac{p(x_i, z_{ik})}{q(z_{ik} \\mid x_i)}\\Big], \\quad z_{ik} \\sim q,

    tight as :math:`K \\to \\infty`. With global latents :math:`g` (sites outside the data
    plate) the examples are not independent, and the estimate is of :math:`\\log p(X) / N`
    for the whole data set: :math:`K` global draws :math:`g_k \\sim q(g)` are made once and
    held fixed on every batch, each example gets :math:`M` = ``local_samples`` local draws
    :math:`z_{ikm}` per :math:`g_k`, averaged into
    :math:`\\hat w_i(g_k) = \\frac{1}{M} \\sum_m
    \\frac{p(x_i, z_{ikm} \\mid g_k)}{q(z_{ikm} \\mid x_i, g_k)}`, and

    .. math::

        \\frac{1}{N} \\log \\frac{1}{K} \\sum_{k=1}^K \\exp\\Big(
            \\log\\frac{p(g_k)}{q(g_k)} + \\sum_{i=1}^N \\log \\hat w_i(g_k)\\Big),

    a lower bound in expectation (the inner average is unbiased for :math:`p(X \\mid g_k)`)
    that does not depend on the batch size. It is tight as :math:`K \\to \\infty`, but for
    a large data set the sum over examples makes the weights uneven, and with :math:`M = 1`
    it approaches :math:`\\log p(X)/N` slowly unless the local guide is good; a larger
    :math:`M` tightens the local part at :math:`M` times the cost. Without global latents
    the :math:`K M` draws are simply each example's importance samples.
    Particles are drawn ``chunk`` at a time under a vectorized plate (one at a time, with a
    warning, when the model does not broadcast over it), so memory stays bounded. Data
    plate and enumerated sites are handled as in :func:`evaluate_elbo`; masks are kept, but
    a scaled site is refused, since exp of a scaled log-weight is no importance weight.

    References:
        Burda, Grosse, Salakhutdinov, "Importance Weighted Autoencoders", arXiv:1509.00519.

    Args:
        model: a pyro_gen module or any Pyro model callable.
        data: a tensor, a tuple or dict of tensors, or an iterable of batches.
        guide: a Pyro guide replacing the module's guide; required for a plain callable.
        num_samples: :math:`K`, importance samples (per example, or per global draw).
        batch_size: examples per batch when ``data`` is sliced.
        chunk: particles drawn at once.
        transform: applied to each batch.
        plate_name: the plate over examples; found from the trace when None.
        per_example: return each example's value (shape ``(N,)``, float64) instead of the
            mean. With global latents an example's value is its mean local log-weight over
            the global draws plus an equal :math:`1/N` share of the rest of the estimate, so
            the values sum to the estimate of :math:`\\log p(X)`.
        progress: show a progress bar over batches and particle chunks.
        local_samples: :math:`M`, local draws per global draw (see above).

    Raises:
        ValueError: the data plate cannot be found (pass ``plate_name=``), a guide site is
            not in the model, or a count is not a positive integer; or the joint is no
            density: a guide site is a point mass (``AutoDelta``), the data are observed
            through a Delta (an implicit model), a site has a scale other than 1
            (``poutine.scale``, a subsampled plate besides the data plate's N/B), or the
            module says ``joint_is_density = False``
            (a training objective estimating a bound, such as a time-plate DDPM).

    Example:
        >>> import pyro, pyro.distributions as dist, torch
        >>> def model(x):  # z ~ N(0, 1), x | z ~ N(z, 1)
        ...     with pyro.plate("data", x.shape[0]):
        ...         z = pyro.sample("z", dist.Normal(0.0, 1.0))
        ...         pyro.sample("x", dist.Normal(z, 1.0), obs=x)
        >>> def guide(x):  # the exact posterior
        ...     with pyro.plate("data", x.shape[0]):
        ...         pyro.sample("z", dist.Normal(x / 2, 0.5**0.5))
        >>> x = torch.tensor([0.0, 1.0])
        >>> exact = dist.Normal(0.0, 2**0.5).log_prob(x)
        >>> iwae = iwae_log_likelihood(model, x, guide=guide, num_samples=10, per_example=True)
        >>> torch.allclose(iwae, exact.double(), atol=1e-5)
        True
    """
    _check_counts(num_samples=num_samples, chunk=chunk, local_samples=local_samples)
    _check_density(model)

    def reduce(local: torch.Tensor, shared: torch.Tensor) -> tuple[torch.Tensor, ...]:
        local = _wide(local)
        return (
            torch.logsumexp(local, 0) - math.log(num_samples),  # per example, no globals
            local.mean(0),  # mean local log-weight, with globals
            local.sum(1),  # each global draw's local sum
            _wide(shared),
        )

    results, has_shared = _score_batches(
        model,
        data,
        guide=guide,
        batch_size=batch_size,
        num_particles=num_samples,
        chunk=min(chunk, num_samples),
        transform=transform,
        plate_name=plate_name,
        progress=progress,
        desc="iwae_log_likelihood",
        reduce=reduce,
        local_samples=local_samples,
        importance=True,
    )
    if not has_shared:
        values = torch.cat([r[0] for r in results]).cpu().double()
        return values if per_example else float(values.mean())
    joint = results[0][3] + sum(r[2] for r in results)  # (K,): log-weights of p(X, g, Z)
    total = float(torch.logsumexp(joint, 0)) - math.log(num_samples)
    values = torch.cat([r[1] for r in results]).cpu().double()
    values = values + (total - float(values.sum())) / values.numel()
    return values if per_example else total / values.numel()


def bits_per_dim_from_nats(log_likelihood_nats: float, num_dims: int) -> float:
    """Converts a log-likelihood per example (nats) into bits per dimension (lower is better).

    Example:
        >>> round(bits_per_dim_from_nats(-784 * math.log(2), 784), 6)
        1.0
    """
    return -log_likelihood_nats / (num_dims * math.log(2))
