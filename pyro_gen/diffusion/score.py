r"""Score models trained by denoising score matching, as Pyro model/guide pairs, and the score
of a trained DDPM read as a VP-SDE score model.

Denoising score matching (Vincent 2011) replaces the unknown score of the perturbed data by the
score of the Gaussian transition, which differs from it by a constant in expectation:

.. math::

    \mathcal L(\theta) = \mathbb E_{t}\, \lambda(t)\, \mathbb E_{x_0, \epsilon}
    \tfrac12 \big\| s_\theta(x_t, t) + \epsilon / \sigma(t) \big\|^2, \qquad
    x_t = \alpha(t) x_0 + \sigma(t) \epsilon.

Weightings :math:`\lambda`: ``"sigma2"`` (:math:`\sigma^2`, Song & Ermon; the noise-prediction
MSE), ``"likelihood"`` (:math:`g(t)^2`, Song et al. 2021: the objective is then, up to terms free
of :math:`\theta`, a bound on the negative log-likelihood of the SDE model, see
:mod:`pyro_gen.diffusion.bound`) and ``"none"``.

References:
    Vincent. A Connection Between Score Matching and Denoising Autoencoders. 2011.
    Song, Ermon. Generative Modeling by Estimating Gradients of the Data Distribution.
    arXiv:1907.05600. Song, Durkan, Murray, Ermon. Maximum Likelihood Training of Score-Based
    Diffusion Models. arXiv:2101.09258.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch import Tensor, nn

from pyro_gen.diffusion.bound import bound_sites
from pyro_gen.diffusion.context import (
    check_no_positional_labels,
    check_outer_dims,
    check_sampler_choice,
    data_plate,
    expand_context,
)
from pyro_gen.diffusion.network import call_network, register_module
from pyro_gen.diffusion.parameterization import PARAMETERIZATIONS
from pyro_gen.diffusion.sde import SDE, ScheduleSDE, as_sde
from pyro_gen.transforms._base import PicklableModule, as_event_shape

if TYPE_CHECKING:
    from pyro_gen.diffusion.ddpm import DDPM

__all__ = [
    "WEIGHTINGS",
    "DDPMScore",
    "ScoreModel",
    "as_score_model",
    "dsm_loss",
    "dsm_weight",
]

ScoreFn = Callable[[Tensor, Tensor], Tensor]
WEIGHTINGS = ("sigma2", "likelihood", "none")


def dsm_weight(sde: SDE, t: Tensor, weighting: str) -> Tensor:
    """:math:`\\lambda(t)` of the DSM objective for ``weighting`` in :data:`WEIGHTINGS`."""
    if weighting == "sigma2":
        return sde.marginal(t)[1] ** 2
    if weighting == "likelihood":
        return sde.diffusion(t) ** 2
    if weighting == "none":
        return torch.ones_like(t)
    raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")


def dsm_loss(
    score_fn: ScoreFn,
    sde: SDE,
    x0: Tensor,
    t: Tensor,
    noise: Tensor,
    event_dim: int,
    weighting: str = "sigma2",
) -> Tensor:
    """Per-example denoising score matching term,
    :math:`\\lambda(t)\\tfrac12\\|s_\\theta(x_t, t) + \\epsilon/\\sigma\\|^2`.

    Args:
        score_fn: ``score_fn(x_t, t)``.
        sde: the forward process.
        x0: data, shape ``batch + event``.
        t: times, shape ``batch``.
        noise: :math:`\\epsilon`, shaped like ``x0``.
        event_dim: number of event dims (summed over).
        weighting: one of :data:`WEIGHTINGS`.

    Returns:
        tensor of shape ``batch``.

    Example:
        >>> from pyro_gen.diffusion.sde import VPSDE
        >>> sde, x0, eps, t = VPSDE(), torch.randn(4, 2), torch.randn(4, 2), torch.rand(4)
        >>> exact = lambda x, s: -eps / sde.expand(sde.marginal(s)[1], x)  # the oracle
        >>> dsm_loss(exact, sde, x0, t, eps, event_dim=1).abs().max().item() < 1e-10
        True
    """
    mean, sigma = sde.marginal_params(x0, t)
    x_t = mean + sigma * noise
    return _dsm_terms(score_fn(x_t, t), noise, sigma, dsm_weight(sde, t, weighting), event_dim)


def _dsm_terms(score: Tensor, noise: Tensor, sigma: Tensor, weight: Tensor, event_dim: int):
    sq = (score + noise / sigma).pow(2)
    sq = sq.flatten(sq.dim() - event_dim).sum(-1) if event_dim else sq
    return 0.5 * weight * sq


def default_time_scale(net: nn.Module) -> float:
    r"""The factor on :math:`t \in [0, 1]` that ``net`` was made for: 1000 where it embeds
    time with :class:`~pyro_gen.nn.SinusoidalTimeEmbedding` (made for DDPM steps), else 1.

    Example:
        >>> from pyro_gen.nn import TimeMLP
        >>> default_time_scale(TimeMLP(2, 8)), default_time_scale(nn.Linear(3, 2))
        (1000.0, 1.0)
    """
    from pyro_gen.nn.time_embedding import SinusoidalTimeEmbedding

    steps = any(isinstance(m, SinusoidalTimeEmbedding) for m in net.modules())
    return 1000.0 if steps else 1.0


class ScoreModel(PicklableModule):
    r"""A noise-conditional score network :math:`s_\theta(x, t)` for a forward SDE, trained by
    denoising score matching as a Pyro model/guide pair.

    Sites (model and guide alike, so each contributes exactly zero to the ELBO):
    ``"t"`` :math:`\sim U(\epsilon_t, 1)` and ``"x_t"`` :math:`\sim p_{0t}(\cdot \mid x_0)`,
    under the plates ``"data"`` (dim -1) and ``"time"`` (dim -2, ``time_samples`` draws per
    example, scaled by ``1/time_samples`` so it is an average over time). The model adds the
    DSM term as ``pyro.factor("dsm", -loss)``; ``Trace_ELBO`` then returns the DSM loss, so
    :func:`~pyro_gen.infer.fit`, the compiled step and checkpoints train it unchanged.

    With ``bound=True`` (likelihood weighting) the model is the continuous-time variational bound
    of :mod:`pyro_gen.diffusion.bound`: the DSM factor is scaled by :math:`1 - \epsilon_t` (the
    length of the time interval) and the sites ``"x_1"`` (prior term) and ``"x_eps"`` / observed
    ``"x"`` (reconstruction term) are added, so the negative ELBO *is* the bound on
    :math:`-\log p(x)`. With a :class:`~pyro_gen.diffusion.learned_sde.LearnedVPSDE` this is a
    Variational Diffusion Model: its schedule's parameters are registered with the network's
    and trained by the same bound.

    The network sees :math:`t \cdot` ``time_scale`` and predicts in parameterization ``param``
    (``"eps"``, ``"score"``, ``"x0"`` or ``"v"``), converted to a score by
    :meth:`SDE.convert <pyro_gen.diffusion.sde.SDE.convert>`.

    Args:
        net: ``net(x, t)`` with ``x`` of shape ``(B, *event_shape)`` and ``t`` a float ``(B,)``
            (the time times ``time_scale``); keyword arguments of :meth:`model` (``y=labels``)
            and ``sample(..., context={"y": labels})`` reach it as ``net(x, t, y=...)``.
        sde: the forward process (:class:`~pyro_gen.diffusion.sde.VESDE`, ``VPSDE``, ...), a
            name for :func:`~pyro_gen.diffusion.make_sde`, or a DDPM's variance schedule (its
            betas), read through :class:`~pyro_gen.diffusion.sde.ScheduleSDE`.
        event_shape: shape of one example.
        param: what ``net`` predicts.
        weighting: :math:`\lambda(t)`, one of :data:`WEIGHTINGS`.
        eps: smallest training time :math:`\epsilon_t` (the score explodes at 0).
        time_samples: time draws per example and step.
        time_scale: factor on :math:`t` before the network. Default: 1000 for a network that
            embeds time with :class:`~pyro_gen.nn.SinusoidalTimeEmbedding` (pyro_gen's
            ``TimeMLP`` and ``UNet``: its frequencies span 1 to 1e-4 per unit, made for the
            steps 1 to 1000 of a DDPM), else 1: a network of the user's sees
            :math:`t \in [\epsilon_t, 1]` itself, as the docs of score models write it.
        bound: train the continuous-time variational bound (needs ``weighting="likelihood"``).
        name: the ``pyro.module`` name.

    Example:
        >>> from pyro_gen.diffusion.sde import VPSDE
        >>> from pyro_gen.nn.time_embedding import TimeMLP
        >>> m = ScoreModel(TimeMLP(2, 16, num_layers=1), VPSDE(), (2,))
        >>> loss = pyro.infer.Trace_ELBO().loss(m.model, m.guide, torch.randn(8, 2))
        >>> m.sample(3, sampler="euler_maruyama", steps=10).shape
        torch.Size([3, 2])
    """

    def __init__(
        self,
        net: nn.Module,
        sde: SDE | str | torch.Tensor,
        event_shape: Sequence[int],
        *,
        param: str = "eps",
        weighting: str = "sigma2",
        eps: float = 1e-3,
        time_samples: int = 1,
        time_scale: float | None = None,
        bound: bool = False,
        name: str = "score_model",
    ) -> None:
        super().__init__()
        if param not in PARAMETERIZATIONS:
            raise ValueError(f"param must be one of {PARAMETERIZATIONS}, got {param!r}")
        if weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
        if not 0 <= eps < 1:
            raise ValueError(f"eps (the smallest training time) must lie in (0, 1), got {eps}")
        sde = as_sde(sde)  # a name or a DDPM's schedule, as a DDPM takes them
        if eps == 0 and not float(sde.marginal(torch.tensor(0.0))[1].detach()) > 0:
            raise ValueError(
                f"eps (the smallest training time) must lie in (0, 1) for {type(sde).__name__}: "
                "its sigma(0) is 0, where the score explodes"
            )
        if not bound and any(p.requires_grad for p in sde.parameters()):
            raise ValueError(
                f"{type(sde).__name__} has a learnable schedule, which only the variational bound "
                "trains correctly (DSM alone would shrink it): pass bound=True, "
                "weighting='likelihood'"
            )
        if bound and weighting != "likelihood":
            raise ValueError(
                f"bound=True trains the variational bound, whose weighting is 'likelihood'; got "
                f"weighting={weighting!r}"
            )
        if int(time_samples) != time_samples or time_samples < 1:
            raise ValueError(f"time_samples must be a whole number >= 1, got {time_samples}")
        self.net, self.sde = net, sde
        self.event_shape = torch.Size(as_event_shape(event_shape))
        self.param, self.weighting = param, weighting
        self.eps, self.time_samples = float(eps), int(time_samples)
        self.time_scale = default_time_scale(net) if time_scale is None else float(time_scale)
        self.name = name
        self.bound = bool(bound)

    @property
    def event_dim(self) -> int:
        return len(self.event_shape)

    def score(self, x: Tensor, t: Tensor | float, **context: Any) -> Tensor:
        """:math:`s_\\theta(x, t)` for ``x`` of shape ``batch + event_shape`` (any batch);
        ``context`` (one row per example) goes to the network as keyword arguments."""
        batch = x.shape[: x.dim() - self.event_dim]
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(batch)
        flat_t = t.reshape(-1)
        context = expand_context(context, batch)
        flat = x.reshape(-1, *self.event_shape)
        times = flat_t * self.time_scale
        try:
            pred = call_network(self.net, flat, times, "score model", **context)
        except (RuntimeError, IndexError) as err:
            # a network of whole steps (an nn.Embedding, as a DDPM's may be) failed deep in
            # torch on the float times ("Expected tensor for argument #1 'indices' ...")
            try:
                call_network(self.net, flat, times.round().long(), "score model", **context)
            except Exception:
                raise err from None
            raise TypeError(
                "the score model gives its network float times t * time_scale (t in [eps, 1]), "
                "and this network takes only whole steps (it failed on float times and ran on "
                "long ones); give it a time input that takes floats (e.g. "
                "pyro_gen.nn.SinusoidalTimeEmbedding), or train a DDPM, which passes steps"
            ) from err
        if pred.shape[:1] != flat.shape[:1] or pred.numel() != flat.numel():
            # torch's reshape error ("shape '[1, 8, 2]' is invalid ...") named no network
            raise ValueError(
                f"the score model's network returned shape {tuple(pred.shape)} for x of shape "
                f"{tuple(flat.shape)}; it must predict ({self.param!r}) one value per "
                "coordinate of x, shaped like x"
            )
        return self.sde.convert(pred.reshape(x.shape), self.param, "score", x, t)

    def _check(self, x: Tensor) -> int:
        """The number of examples of ``x``; outer plates' dims (a latent's vectorized
        particles, when the model scores a latent of the user's) may come before the batch."""
        nd = self.event_dim
        if x.dim() < nd + 1 or x.shape[x.dim() - nd :] != self.event_shape:
            raise ValueError(
                f"{type(self).__name__} expects data of shape (batch, *{tuple(self.event_shape)}),"
                f" got {tuple(x.shape)}"
            )
        check_outer_dims(x, nd, type(self).__name__)
        return x.shape[x.dim() - nd - 1]

    def _sites(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        B, K = self._check(x), self.time_samples
        low = x.new_full((K, B), self.eps)
        t = pyro.sample("t", dist.Uniform(low, torch.ones_like(low)))
        # t is (K, B), or (..., K, B) under outer plates (vectorized particles): coefficients
        # take the event dims and broadcast against the data (B, *event_shape)
        # t ~ U(eps, 1) is in range by construction: no data-dependent check, which would stop
        # fit's compiled step from recording the program
        alpha, sigma = self.sde.marginal(t)
        ones = (1,) * self.event_dim
        mean = alpha.reshape(t.shape + ones) * x
        std = sigma.reshape(t.shape + ones).expand_as(mean)
        x_t = pyro.sample("x_t", dist.Normal(mean, std).to_event(self.event_dim))
        return t, x_t, mean, std

    # The plate over examples for evaluate_elbo: the objective's plate of time samples
    # encloses every site too.
    data_plate = "data"

    @property
    def joint_is_density(self) -> bool:
        """False: on data, :meth:`model` and :meth:`guide` are a training objective (a
        denoising score-matching loss at sampled times), not a density over each example's
        latents and their proposal, so :func:`~pyro_gen.infer.iwae_log_likelihood` refuses
        the pair (on a trained moons score model it read -0.54 nats where the exact
        log-likelihood was -9.73); the exact log-likelihood is :meth:`log_prob`."""
        return False

    def model(
        self,
        x: Tensor | None = None,
        num_samples: int = 1,
        *,
        sampler: str | None = None,
        sampler_kwargs: dict[str, Any] | None = None,
        **context: Any,
    ) -> Tensor | None:
        """DSM objective on data ``x`` (see class docstring), ``(batch, *event_shape)`` or
        with outer plates' dims in front (a latent of the user's model under vectorized
        particles, ``(P, 1, batch, *event_shape)``). Without data, the generative
        program: ``"x_1"`` from the prior, carried to the data end by ``sampler`` (one of
        :data:`~pyro_gen.diffusion.score_samplers.SAMPLERS`, default ``"pc"`` as
        :meth:`sample`; ``sampler_kwargs`` its settings, e.g. ``{"steps": 100}`` or
        ``{"rtol": 1e-3}`` for ``"ode"``) to the site ``"x"``, under
        ``pyro.plate("data", num_samples)`` (or the caller's plate over the examples, as in
        training), so :class:`~pyro.infer.Predictive` and ``poutine`` see the draws (outer
        plates add their dims, as vectorized samples do):
        ``Predictive(m.model, num_samples=4)(None, 100, sampler="ode")``. ``context`` (e.g.
        ``y=labels``, one row per example) goes to the network as ``net(x, t, **context)``:
        ``fit(m, {"x": x, "y": y})`` trains a conditional score model."""
        from pyro_gen.diffusion.score_samplers import SAMPLERS

        options = check_sampler_choice(x, sampler, sampler_kwargs, SAMPLERS, type(self).__name__)
        if x is None:
            return self._generate(num_samples, context, sampler or "pc", options)
        register_module(self.name, self)
        check_no_positional_labels(x, num_samples, type(self).__name__)
        B, K = self._check(x), self.time_samples
        with data_plate(B, "ScoreModel"):
            with poutine.scale(scale=1 / K), pyro.plate("time", K, dim=-2):
                t, x_t, mean, std = self._sites(x)
                noise = (x_t - mean) / std
                weight = dsm_weight(self.sde, t, self.weighting)
                score = self.score(x_t, t, **context)
                loss = _dsm_terms(score, noise, std, weight, self.event_dim)
                pyro.factor("dsm", -(1 - self.eps if self.bound else 1.0) * loss)
            if self.bound:
                bound_sites(self.sde, x, self.eps, self.event_dim, model=True)
        return None

    def _generate(self, num_samples: int, context: dict, sampler: str, options: dict) -> Tensor:
        ref = next(iter([*self.parameters(), *self.buffers()]), torch.zeros(()))
        zeros = torch.zeros(self.event_shape, dtype=ref.dtype, device=ref.device)
        # the caller's plate over the examples, as training takes it: a plate of its own under
        # it drew num_samples x num_samples examples (or met "duplicate plate 'data'")
        with data_plate(num_samples, "ScoreModel"):
            prior = dist.Normal(zeros, self.sde.prior_std).to_event(self.event_dim)
            x1 = pyro.sample("x_1", prior)
            # the sampler takes one flat batch; outer plates' dims are restored after
            flat = x1.reshape(-1, *self.event_shape)
            context = expand_context(context, x1.shape[: x1.dim() - self.event_dim])
            draws = self.sample(flat.shape[0], sampler, x_init=flat, context=context, **options)
            draws = draws.reshape(x1.shape)
            # the sampler's output is an implicit distribution of x_1: a Delta site, as a
            # GAN generator's example
            return pyro.sample("x", dist.Delta(draws, event_dim=self.event_dim))

    def guide(self, x: Tensor | None = None, num_samples: int = 1, **context: Any) -> None:
        """The fixed time and perturbation distributions (nothing when ``x`` is None); it
        takes the model's ``context`` and needs none of it."""
        if x is None:
            return None
        check_no_positional_labels(x, num_samples, type(self).__name__)
        B, K = self._check(x), self.time_samples
        with data_plate(B, "ScoreModel"):
            with poutine.scale(scale=1 / K), pyro.plate("time", K, dim=-2):
                self._sites(x)
            if self.bound:
                bound_sites(self.sde, x, self.eps, self.event_dim, model=False)
        return None

    def sample(self, num_samples: int, sampler: str = "pc", **kwargs: Any) -> Tensor:
        """Samples by ``sampler`` (see :func:`~pyro_gen.diffusion.score_samplers.sample`;
        ``context={"y": labels}`` conditions a network trained with ``model(x, y=...)``)."""
        from pyro_gen.diffusion.score_samplers import sample

        return sample(self, num_samples, sampler, **kwargs)

    def log_prob(self, x: Tensor, **kwargs: Any) -> Tensor:
        """Probability-flow ODE log-density (see
        :func:`~pyro_gen.diffusion.ode_likelihood.probability_flow_log_prob`)."""
        from pyro_gen.diffusion.ode_likelihood import probability_flow_log_prob

        return probability_flow_log_prob(self, x, **kwargs)


class DDPMScore(PicklableModule):
    r"""A trained :class:`~pyro_gen.diffusion.DDPM` read as a score model of its
    :class:`~pyro_gen.diffusion.sde.ScheduleSDE`: time :math:`t` is the fractional step
    :math:`tT` given to the network, and its prediction becomes a score with the SDE's
    :math:`(\alpha(t), \sigma(t))`. Works in the DDPM's model space (images in [-1, 1]).

    Example:
        >>> from pyro_gen.diffusion import build_ddpm
        >>> s = DDPMScore(build_ddpm((2,), timesteps=10, hidden_dim=8))
        >>> s.score(torch.randn(4, 2), torch.full((4,), 0.5)).shape
        torch.Size([4, 2])
    """

    def __init__(self, ddpm: DDPM, use_ema: bool = True) -> None:
        super().__init__()
        self.ddpm = ddpm
        self.sde = ScheduleSDE(ddpm.schedule)
        self.event_shape = ddpm.net_shape
        self.use_ema = use_ema
        self.eps = 1.0 / ddpm.schedule.num_timesteps

    @property
    def event_dim(self) -> int:
        return len(self.event_shape)

    def to_model_space(self, x: Tensor) -> Tensor:
        """Data to the DDPM's space (see :meth:`DDPM.to_model_space`), with any batch dims:
        stacked batches ``(K, B, *event_shape)`` too, which the score itself takes."""
        return self.ddpm.to_model_space(x, outer=True)

    def from_model_space(self, x: Tensor) -> Tensor:
        """The DDPM's space to data (images clamped to [0, 1])."""
        return self.ddpm.from_model_space(x)

    def score(self, x: Tensor, t: Tensor | float, **context: Any) -> Tensor:
        """:math:`-\\hat\\epsilon / \\sigma(t)` from the DDPM's network at step :math:`tT`
        (``context`` goes to the network)."""
        batch = x.shape[: x.dim() - self.event_dim]
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(batch)
        ddpm = self.ddpm
        steps = t * ddpm.schedule.num_timesteps
        ema = self.use_ema and ddpm.ema is not None
        with ddpm.ema.average_parameters() if ema else contextlib.nullcontext():
            pred = self._predict(x, steps, context)
        return self.sde.convert(pred, ddpm.param, "score", x, t)

    def _predict(self, x: Tensor, steps: Tensor, context: dict) -> Tensor:
        try:
            return self.ddpm.predict(x, steps, **context)[0]
        except (RuntimeError, IndexError, TypeError) as err:
            # a network of the user's written for whole steps (an nn.Embedding of steps, as
            # the DDPM's docs allow: "t a long tensor") failed deep in torch on fractional ones
            try:
                self.ddpm.predict(x, steps.round().long().clamp(min=1), **context)
            except Exception:
                raise err from None
            raise TypeError(
                "the score-based samplers and the probability-flow likelihood read a DDPM at "
                "fractional steps t*T (a float tensor), and this DDPM's network takes only whole "
                "steps (it failed on float steps and ran on long ones). Give it a time input "
                "that takes floats (e.g. pyro_gen.nn.SinusoidalTimeEmbedding), or sample with "
                "ddpm.sample(n, 'ancestral' or 'ddim')"
            ) from err


def as_score_model(model: Any) -> Any:
    """``model`` as something with ``.sde``, ``.score(x, t)`` and ``.event_shape``: a
    :class:`ScoreModel` (or any object with those) as is, a DDPM through :class:`DDPMScore`.

    Raises:
        TypeError: when ``model`` cannot provide a score.
    """
    from pyro_gen.diffusion.ddpm import DDPM

    if isinstance(model, DDPM):
        return DDPMScore(model)
    if all(hasattr(model, a) for a in ("sde", "score", "event_shape")):
        shape = model.event_shape
        if not isinstance(shape, tuple | list | torch.Size):
            # an int (as pyro_gen's constructors take) met "'int' object is not iterable"
            # deep in the samplers and likelihoods
            raise TypeError(
                f"{type(model).__name__}.event_shape must be the shape of one example as a "
                f"tuple, e.g. ({shape!r},) for vectors or () for scalars; got {shape!r}"
            )
        return model
    raise TypeError(
        f"{type(model).__name__} cannot provide a score: the score-based samplers and the "
        "probability-flow likelihood need a ScoreModel, a DDPM, or an object with .sde, "
        ".score(x, t) and .event_shape"
    )
