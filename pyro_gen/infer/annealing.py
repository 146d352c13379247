"""KL annealing: scale the latent sites of any model/guide pair by a schedule.

Scaling a latent site by :math:`\\beta` in both model and guide turns the ELBO into

.. math::

    \\mathbb{E}_q[\\log p(x \\mid z)] - \\beta\\,\\mathrm{KL}(q(z \\mid x) \\,\\|\\, p(z)),

the warm-up objective of Bowman et al. (2016) and Sønderby et al. (2016). Observed sites are
left alone, so the reconstruction term keeps its full weight.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from pyro.poutine.enum_messenger import EnumMessenger
from pyro.poutine.messenger import Messenger
from pyro.poutine.runtime import _PYRO_STACK

BetaLike = float | Callable[[], float]


def checked_weight(value: Any, said: str, where: str = "") -> float:
    """``value`` as a KL weight, a finite number >= 0, else one error that starts with
    ``said`` (what gave it), shows it, then ``where``. A weight below zero rewards divergence
    from the prior and trained without a word; NaN surfaced as a non-finite loss; None (a
    schedule without ``return``) failed inside ``float()``.

    Example:
        >>> checked_weight(0.5, "beta is")
        0.5
        >>> checked_weight(-1, "annealing returned")
        Traceback (most recent call last):
        ...
        ValueError: annealing returned -1: the KL weight must be a finite number >= 0
    """
    rule = "the KL weight must be a finite number >= 0"
    try:
        if isinstance(value, str | bytes):
            raise TypeError
        weight = float(value)
    except (TypeError, ValueError):
        hint = " (does the schedule return its value?)" if value is None else ""
        raise TypeError(f"{said} {value!r}{where}: {rule}{hint}") from None
    if not (math.isfinite(weight) and weight >= 0):
        raise ValueError(f"{said} {value!r}{where}: {rule}")
    return weight


@dataclass
class EnumeratedSums:
    """What the model side of a :func:`kl_scale_pair` learns about the discrete sites the
    model enumerates itself (the guide does not sample them).

    ``TraceEnum_ELBO`` sums such a site out together with every site whose density depends
    on it and puts one scale outside the sum, so those sites must share it:

    - ``prior``: sites none of whose dependents is observed (a mixture prior on a latent,
      :math:`\\log \\sum_k p(k)\\, p(z \\mid k)`): the whole sum is a KL term, scaled by beta
      with its latents;
    - ``shared``: sites that some observation depends on (:math:`p(x \\mid z, k)`): the sum
      is likelihood and KL at once and keeps its scale, and so do the latents in it
      (``unscaled``), in the model and the guide.
    """

    prior: set[str] = field(default_factory=set)
    shared: set[str] = field(default_factory=set)
    unscaled: set[str] = field(default_factory=set)


class KLScaleMessenger(Messenger):
    """Multiplies the log-density scale of every latent (non-observed) sample site by beta.

    Unlike :class:`pyro.poutine.scale`, beta may be zero (the start of a warm-up) and may
    be a zero-argument callable, read afresh at every site so one wrapped model follows a
    changing schedule.

    Args:
        beta: a non-negative float, or a callable returning the current value.
        guide_sites: on a guide, a set this messenger refills with the latent sites of each
            run; on a model, the set its guide fills, with which a site the model enumerates
            and the guide does not sample is told apart (see :func:`kl_scale_pair`).
        records: True on the guide side of such a pair.
        sums: shared by the two sides of such a pair (:class:`EnumeratedSums`).
    """

    def __init__(
        self,
        beta: BetaLike,
        guide_sites: set[str] | None = None,
        records: bool = False,
        sums: EnumeratedSums | None = None,
    ) -> None:
        super().__init__()
        if not callable(beta) and not torch.is_tensor(beta):  # a tensor: a compiled input
            checked_weight(beta, "kl_scale: beta is")
        self.beta = beta
        self.guide_sites = guide_sites
        self.records = records
        self.sums = sums
        self._reset()

    def _reset(self) -> None:
        # This run's enumerated sites of the model (by dim), their dependents, and the
        # scales of sites in a sum not yet known to be prior or shared (see __exit__).
        self._enum_dims: dict[int, str] = {}
        self._dependents: dict[str, list[tuple[str, bool]]] = {}
        self._pending: list[tuple[torch.Tensor, float, list[str]]] = []
        self._open: dict[str, tuple[float, list[str]]] = {}
        self._products: dict[float, Any] = {}

    def __enter__(self) -> KLScaleMessenger:
        if self.records and self.guide_sites is not None:
            self.guide_sites.clear()  # a new run of the guide
        self._reset()
        return super().__enter__()

    def __exit__(self, *exc: Any) -> Any:
        if self.sums is not None and not self.records:
            self._learn()
        return super().__exit__(*exc)

    def _learn(self) -> None:
        sums = self.sums
        assert sums is not None
        for name in self._enum_dims.values():
            dependents = self._dependents[name]
            if not any(observed for _, observed in dependents):
                sums.prior.add(name)
                continue
            sums.shared.add(name)
            latents = {d for d, observed in dependents if not observed}
            if latents - sums.unscaled:
                warnings.warn(
                    f"KL annealing leaves {sorted(latents - sums.unscaled)} unscaled: they "
                    f"share the sum over {name!r}, which the model enumerates, with an "
                    "observation, and TraceEnum_ELBO puts one scale outside that sum",
                    stacklevel=3,
                )
            sums.unscaled.update(latents)
        # On the first run of a sum its scale was left open: set it now, before the ELBO
        # reads it, so that this run is scaled as every later one.
        for scale, beta, names in self._pending:
            if all(n in sums.prior for n in names):
                scale.mul_(beta)

    def _model_enumerated(self, msg: dict[str, Any]) -> bool:
        return (
            self.guide_sites is not None
            and not self.records
            and bool(msg["infer"].get("enumerate"))
            and msg["name"] not in self.guide_sites
        )

    def _enumerated_parents(self, msg: dict[str, Any]) -> list[str]:
        # A site depends on an enumerated one when its density varies along that one's dim.
        shape = getattr(msg["fn"], "batch_shape", ())
        return [
            name for dim, name in self._enum_dims.items() if -dim <= len(shape) and shape[dim] > 1
        ]

    def _beta(self) -> float:
        if not callable(self.beta):
            return self.beta
        beta = self.beta()
        if not torch.is_tensor(beta):  # read per site: a float compare, no device sync
            checked_weight(beta, "kl_scale: beta() returned")
        return beta

    def _scaled(self, scale: Any) -> Any:
        beta = self._beta()
        if not (torch.is_tensor(beta) and isinstance(scale, int | float)):
            return scale * beta
        # A beta tensor (an input of a compiled program): sites of one scale get one
        # product, so that a sum's sites share their scale by identity, which the compiled
        # step checks without reading the value back (compiled_elbo).
        if float(scale) not in self._products:
            self._products[float(scale)] = scale * beta
        return self._products[float(scale)]

    def _process_message(self, msg: dict[str, Any]) -> None:
        if msg["type"] != "sample":
            return
        if self.records:
            if not msg["is_observed"]:
                if self.guide_sites is not None:
                    self.guide_sites.add(msg["name"])
                if self.sums is None or msg["name"] not in self.sums.unscaled:
                    msg["scale"] = self._scaled(msg["scale"])
            return
        if self.sums is None:
            if msg["is_observed"]:
                return
            if self._model_enumerated(msg):
                return  # summed out of the model's likelihood: no KL term
            msg["scale"] = self._scaled(msg["scale"])
            return
        self._model_side(msg)

    def _model_side(self, msg: dict[str, Any]) -> None:
        sums = self.sums
        assert sums is not None
        name = msg["name"]
        enumerated = self._model_enumerated(msg)
        if enumerated and not _enumerating():
            return  # drawn from the model (no TraceEnum_ELBO): no KL term
        # A site the model enumerates is in its own sum.
        sums_in = [name] if enumerated else self._enumerated_parents(msg)
        for parent in sums_in:
            if parent != name:
                self._dependents[parent].append((name, msg["is_observed"]))
        if msg["is_observed"] or name in sums.unscaled:
            return
        if any(s in sums.shared for s in sums_in):
            return
        unknown = [s for s in sums_in if s not in sums.prior]
        if unknown:
            # First run of this sum: whether it is prior or shared shows only when the
            # model has run; the scale is a tensor (float64, as the Python numbers Pyro
            # multiplies scales as) that __exit__ sets in place.
            msg["scale"] = torch.as_tensor(msg["scale"], dtype=torch.float64).clone()
            self._open[name] = (self._beta(), unknown)
            return
        msg["scale"] = self._scaled(msg["scale"])

    def _postprocess_message(self, msg: dict[str, Any]) -> None:
        if msg["type"] == "sample" and msg["name"] in self._open:
            # Handlers outside this one (a vectorized particle plate) may have multiplied
            # the scale since: the trace holds their product, which is what to set.
            beta, names = self._open.pop(msg["name"])
            if torch.is_tensor(msg["scale"]) and msg["scale"].dtype == torch.float64:
                self._pending.append((msg["scale"], beta, names))
        if (
            msg["type"] == "sample"
            and self.sums is not None
            and not msg["is_observed"]
            and self._model_enumerated(msg)
        ):
            dim = msg["infer"].get("_enumerate_dim")
            if dim is not None:
                self._enum_dims[dim] = msg["name"]
                self._dependents.setdefault(msg["name"], [])


def _enumerating() -> bool:
    """Whether a ``poutine.enum`` (``TraceEnum_ELBO``'s) will enumerate the site at hand."""
    return any(isinstance(frame, EnumMessenger) for frame in _PYRO_STACK)


def kl_scale(fn: Callable[..., Any], beta: BetaLike) -> Callable[..., Any]:
    """Wraps a model or guide so its latent sites are scaled by ``beta``.

    Apply it to both the model and the guide: the ELBO's KL term is then scaled by beta.
    For a model that enumerates discrete sites of its own, use :func:`kl_scale_pair`.

    Args:
        fn: a Pyro model or guide.
        beta: a non-negative float, or a callable returning the current value.

    Example:
        >>> import pyro, pyro.distributions as dist, torch
        >>> def model():
        ...     pyro.sample("z", dist.Normal(0.0, 1.0))
        >>> tr = pyro.poutine.trace(kl_scale(model, 0.5)).get_trace()
        >>> tr.nodes["z"]["scale"]
        0.5
    """
    return KLScaleMessenger(beta)(fn)


def kl_scale_pair(
    model: Callable[..., Any], guide: Callable[..., Any], beta: BetaLike
) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """The model and guide with the KL term of their ELBO scaled by ``beta``: every latent
    site the guide samples is scaled on both sides.

    A discrete site that the model enumerates and the guide does not sample is summed out
    by ``TraceEnum_ELBO`` together with every site whose density depends on it, with one
    scale outside the sum (:class:`EnumeratedSums`). Where an observation depends on it,
    :math:`p(x \\mid z) = \\sum_k p(k)\\, p(x \\mid z, k)`, it is no KL term and keeps
    its scale, as do latents in the same sum (with a warning naming them). Where only
    latents do, a mixture prior :math:`\\log \\sum_k p(k)\\, p(z \\mid k)`, the sum is the
    prior term of those latents' KL and is scaled with them. Which case holds is read off
    the model's first run with enumeration (the scales of that run are set when it ends,
    before the ELBO reads them). The guide runs before the model in every ELBO, and its
    wrapper tells the model's which sites it sampled; a site the guide enumerates (a
    semi-supervised label) is a KL term and scaled, whether or not the model marks it for
    enumeration too.

    Example:
        >>> import pyro, pyro.distributions as dist, torch
        >>> def model():
        ...     k = pyro.sample("k", dist.Bernoulli(0.5), infer={"enumerate": "parallel"})
        ...     pyro.sample("z", dist.Normal(k, 1.0))
        >>> def guide():
        ...     pyro.sample("z", dist.Normal(0.0, 1.0))
        >>> m, g = kl_scale_pair(model, guide, 0.5)
        >>> g_tr = pyro.poutine.trace(g).get_trace()
        >>> m_tr = pyro.poutine.trace(pyro.poutine.replay(m, trace=g_tr)).get_trace()
        >>> m_tr.nodes["k"]["scale"], m_tr.nodes["z"]["scale"], g_tr.nodes["z"]["scale"]
        (1.0, 0.5, 0.5)
    """
    sites: set[str] = set()
    sums = EnumeratedSums()
    return (
        KLScaleMessenger(beta, guide_sites=sites, sums=sums)(model),
        KLScaleMessenger(beta, guide_sites=sites, records=True, sums=sums)(guide),
    )


class LinearAnnealing:
    """Beta rising linearly from ``start`` to ``end`` over ``warmup_steps``, then constant.

    References:
        Sønderby et al., "Ladder Variational Autoencoders", arXiv:1602.02282.

    Example:
        >>> schedule = LinearAnnealing(warmup_steps=10)
        >>> [schedule(0), schedule(5), schedule(20)]
        [0.0, 0.5, 1.0]
    """

    def __init__(self, warmup_steps: int, start: float = 0.0, end: float = 1.0) -> None:
        if warmup_steps < 1:
            raise ValueError(f"warmup_steps must be >= 1, got {warmup_steps}")
        if start < 0 or end < 0:
            raise ValueError(f"beta must be non-negative, got start={start}, end={end}")
        self.warmup_steps, self.start, self.end = warmup_steps, start, end

    def __call__(self, step: int) -> float:
        frac = min(step / self.warmup_steps, 1.0)
        return self.start + (self.end - self.start) * frac


class CyclicalAnnealing:
    """Beta repeating a linear ramp: 0 to 1 over ``ratio`` of each period, then held at 1.

    References:
        Fu et al., "Cyclical Annealing Schedule: A Simple Approach to Mitigating KL
        Vanishing", arXiv:1903.10145.

    Example:
        >>> schedule = CyclicalAnnealing(period=10, ratio=0.5)
        >>> [schedule(0), schedule(2), schedule(7), schedule(10)]
        [0.0, 0.4, 1.0, 0.0]
    """

    def __init__(self, period: int, ratio: float = 0.5) -> None:
        if period < 1:
            raise ValueError(f"period must be >= 1, got {period}")
        if not 0 < ratio <= 1:
            raise ValueError(f"ratio must lie in (0, 1], got {ratio}")
        self.period, self.ratio = period, ratio

    def __call__(self, step: int) -> float:
        phase = (step % self.period) / self.period
        return min(phase / self.ratio, 1.0) if not math.isclose(self.ratio, 0) else 1.0
