"""Particles of a model/guide pair drawn on one batch and split into per-example log-weights.

Global latents are drawn on the first batch and replayed on every later one, and a plate's
own subsample is replayed for every particle chunk of a batch. Model latents the guide lacks
are summed out where they are enumerated and that can be done example by example, else
drawn from the model, with a warning where that loosens the bound (a scored density depends
on them; :mod:`~pyro_gen.infer.drawn_site_dependents`). Guide latents marked for parallel
enumeration are summed out too (the guide runs under ``poutine.enum``, as in
``TraceEnum_ELBO``), or refused where that cannot be done example by example. Particles are
vectorized under a particle plate when the model and guide broadcast over it, else drawn
one at a time, with a warning.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

import pyro
import torch
from pyro import poutine
from pyro.poutine import Trace
from pyro.poutine.replay_messenger import ReplayMessenger
from pyro.poutine.util import site_is_subsample

from pyro_gen.data.batching import Call
from pyro_gen.infer.drawn_site_dependents import describe, scored_dependents
from pyro_gen.infer.evaluation_checks import check_site_densities, check_sliced_rows
from pyro_gen.infer.evaluation_guide_enumeration import (
    GuideEnumerationError,
    marked_for_enumeration,
)
from pyro_gen.infer.log_weights import (
    PARTICLE_PLATE,
    DataPlate,
    LogWeights,
    enumeration_problem,
    find_data_plate,
    max_plate_nesting,
    scaled_site,
    split_log_weights,
)

__all__ = ["ParticleScorer"]

# Drawing a site from p(site | parents) cancels its density from the weight: for a leaf that
# is its exact posterior, so only a site another density depends on makes the bound looser.
_DRAWN = (
    "each is proposed from its conditional given its parents, which loosens the bound only "
    "where another site's density depends on it (an observed child); for a site nothing "
    "depends on (a leaf such as obs_mask's x_unobserved) that draw is its exact posterior "
    "and the bound is unchanged. Where a site has such dependents, add a guide site for it "
    "to tighten the bound"
)


def _subsample_sites(*traces: Trace) -> Trace:
    """A trace of the plates' subsample sites (their indices) in ``traces``, for replay."""
    kept = Trace()
    for trace in traces:
        for name, site in trace.nodes.items():
            if site["type"] == "sample" and site_is_subsample(site) and name not in kept.nodes:
                kept.add_node(name, **site)
    return kept


def _last_site(program: str, trace: Trace) -> str:
    """Where a traced program failed, in words: after its last recorded sample site (the
    failing statement itself is not recorded) and that site's value shape."""
    sites = [
        site
        for site in trace.nodes.values()
        if site["type"] == "sample" and not site_is_subsample(site)
    ]
    if not sites:
        return f"the {program} failed before its first sample site"
    shape = tuple(getattr(sites[-1]["value"], "shape", ()))
    return f"the {program} failed after its site {sites[-1]['name']!r} (value shape {shape})"


def one_line_message(error: Exception) -> str:
    """The error's message without the trace-shape table that Pyro appends to errors raised
    inside a trace (its rows repeat what :func:`_last_site` says), on one line.

    Example:
        >>> one_line_message(ValueError("shapes differ.\\n  at site x\\n Trace Shapes:\\n  x 3"))
        'shapes differ. at site x'
    """
    text = re.split(r"\n\s*Trace Shapes:", str(error), maxsplit=1)[0]
    return " ".join(line.strip() for line in text.splitlines() if line.strip()).rstrip(".")


class _ReplayValues(ReplayMessenger):
    """Pyro's replay of the sites' values, each keeping this call's ``infer`` dict.

    Pyro's replay also puts the replayed trace's ``infer`` in place, which for a messenger
    guide (``AutoNormalMessenger`` and its kin) holds the first batch's prior, broadcast
    over the particle plate; a replayed site is not broadcast again, so the guide's check of
    that prior against the site's distribution failed on every batch after the first.
    """

    def _pyro_sample(self, msg: dict) -> None:
        infer = msg["infer"]
        super()._pyro_sample(msg)
        msg["infer"] = infer


def _only(trace: Trace, names: tuple[str, ...], plate: DataPlate) -> Trace:
    """A trace of the named sites that lie outside the data plate (for replay)."""
    kept = Trace()
    for name in names:
        site = trace.nodes[name]
        if all(f.name != plate.name for f in site["cond_indep_stack"]):
            kept.add_node(name, **site)
    return kept


class ParticleScorer:
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
        # switched on by the first batch whose guide marks a site (not at setup, which finds
        # the plates' nesting that places the enumeration dims)
        self.enumerate_guide = False
        self.reviewed: set[str] = set()
        self.vectorize, self.vectorized_once = True, False
        self.fixed: dict[Any, tuple[Trace, Trace]] = {}
        self.subsamples: Trace | None = None
        self.failed_at: str | None = None  # where the last traced program failed

    def _trace(self, program: str, fn: Callable, call: Call) -> Trace:
        tracer = poutine.trace(fn)
        try:
            return tracer.get_trace(*call.args, **call.kwargs)
        except Exception:
            # the partial trace is the one record of how far the program got
            self.failed_at = _last_site(program, tracer.msngr.trace)
            raise

    def new_batch(self) -> None:
        """Forgets the subsample indices drawn for the previous batch."""
        self.subsamples = None

    def _traces(self, call: Call, num_particles: int | None, key: Any) -> tuple[Trace, Trace]:
        self.failed_at = None
        guide, fixed = self.guide, self.fixed.get(key)
        if fixed is not None:
            guide = _ReplayValues(trace=fixed[0])(guide)
        # A plate that draws its own subsample (subsample_size=) must pick the same examples
        # for every particle chunk of a batch: the chunks' log-weights are combined example
        # by example, so indices drawn afresh would mix the weights of different examples.
        subsamples = self.subsamples
        if subsamples is not None:
            guide = poutine.replay(guide, trace=subsamples)
        particles = None
        if num_particles is not None:
            particles = pyro.plate(PARTICLE_PLATE, num_particles, dim=self.particle_dim)
            guide = particles(guide)
        if self.enumerate_guide:
            # outside the replays, which leave their sites as drawn, and the particle plate,
            # so that draws of num_samples sites are made for each particle
            guide = poutine.enum(guide, first_available_dim=self.particle_dim - 1)
        guide_trace = self._trace("guide", guide, call)
        with ExitStack() as stack:
            if particles is not None:
                stack.enter_context(
                    pyro.plate(PARTICLE_PLATE, num_particles, dim=self.particle_dim)
                )
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
                # sites too and records the enumeration dims their densities depend on; after
                # an enumerated guide it takes the dims left of the guide's, as there
                first = None if self.enumerate_guide else self.particle_dim - 1
                model = poutine.enum(model, first_available_dim=first)
            model = poutine.replay(model, trace=replay)
            model_trace = self._trace("model", model, call)
        if subsamples is None:
            self.subsamples = _subsample_sites(guide_trace, model_trace)
        return guide_trace, model_trace

    def setup(self, call: Call, sliced: tuple[int, int] | None = None) -> None:
        """Finds the data plate and the nesting depth from a draw without particles;
        ``sliced``: ``(rows, examples)`` where evaluation cut tensor data into batches."""
        guide_trace, model_trace = self._traces(call, None, None)
        self.plate = find_data_plate(model_trace, self.plate_name, call.size)
        if sliced is not None:
            check_sliced_rows(model_trace, self.plate, *sliced)

        def rerun(replayed: Trace) -> Trace:
            guide = poutine.replay(self.guide, trace=replayed)
            return poutine.trace(guide).get_trace(*call.args, **call.kwargs)

        check_site_densities(guide_trace, model_trace, self.importance, rerun)
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
                guide_trace, model_trace = self._traces(call, None, None)
                problem = enumeration_problem(model_trace, self.plate, guide_trace)
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
            summed = marked if switched else []
            self._warn_drawn(call, new, [n for n in prior_sites if n not in summed])
        return switched

    def _warn_drawn(self, call: Call, new: list[str], drawn: list[str]) -> None:
        """Warns about the model sites ``new`` drawn from the model where that loosens the
        bound: where some scored density depends on them (named), or where that cannot be
        told. A leaf (nothing scored depends on it) costs nothing and is not warned about."""
        dependents = scored_dependents(self.model, call.args, call.kwargs, drawn)
        if dependents is None:
            warnings.warn(
                f"model sites {new} have no guide site, so evaluation draws them from the "
                f"model: {_DRAWN}",
                stacklevel=6,
            )
            return
        loosening = {n: dependents[n] for n in new if dependents.get(n)}
        if loosening:
            warnings.warn(
                f"model sites {list(loosening)} have no guide site, so evaluation draws them "
                "from the model (each from its conditional given its parents), and the bound "
                f"is looser than it need be: scored densities depend on them "
                f"({describe(loosening)}). Add a guide site for each to tighten the bound",
                stacklevel=6,
            )

    def _weights(self, call: Call, num_particles: int, key: Any) -> LogWeights:
        vectorized = num_particles > 1
        guide_trace, model_trace = self._traces(call, num_particles if vectorized else None, key)
        assert self.plate is not None
        if not self.enumerate_guide and marked_for_enumeration(guide_trace):
            self.enumerate_guide = True  # its marked sites are summed out from now on
            return self._weights(call, num_particles, key)
        weights = split_log_weights(
            model_trace,
            guide_trace,
            self.plate,
            particle_dim=self.particle_dim,
            num_particles=num_particles if vectorized else 1,
            analytic_kl=self.analytic_kl,
            importance=self.importance,
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
            except GuideEnumerationError:
                raise  # refused whether or not particles are vectorized
            except Exception as error:
                if self.vectorized_once:
                    raise  # it broadcast before, so this is a genuine error
                self.vectorize = False
                where = f"{self.failed_at} with " if self.failed_at is not None else ""
                warnings.warn(
                    "the model or guide does not run under a vectorized particle plate "
                    f"({num_particles} particles at dim {self.particle_dim}), so evaluation "
                    f"draws particles one at a time, which is slower: {where}"
                    f"{type(error).__name__}: {one_line_message(error)}. Write them to broadcast "
                    "over extra leading batch dimensions to vectorize",
                    stacklevel=4,
                )
        parts = [self._weights(call, 1, (key, j)) for j in range(num_particles)]
        return torch.cat([w.local for w in parts]), torch.cat([w.shared for w in parts])
