r"""Flow matching and rectified flow: training a continuous flow's velocity field by regression,
with no ODE solve, as a Pyro model/guide pair.

pyro_gen's :class:`~pyro_gen.transforms.continuous.ContinuousFlow` has the data at time
:math:`t_0` and the Gaussian base at :math:`t_1`. With :math:`s = (t - t_0)/(t_1 - t_0)`, a data
point :math:`x` and a base draw :math:`z`, the conditional path and its velocity are

.. math::

    x_s = (1 - s)\, x + (\sigma_{min} + (1 - \sigma_{min}) s)\, z, \qquad
    u_s(x_s \mid x, z) = \frac{(1 - \sigma_{min}) z - x}{t_1 - t_0},

(Lipman et al.'s optimal-transport path, time reversed; :math:`\sigma_{min} = 0` is Liu et al.'s
rectified flow). Regressing :math:`f_\theta(x_s, t)` on :math:`u_s` has the same minimiser as
regressing on the marginal field :math:`\mathbb E[u_s \mid x_s]`, which transports the data to
the base; the trained flow's exact likelihood is the same ODE's
(:func:`~pyro_gen.transforms.continuous.ode_log_likelihood`).

Why a model/guide pair and not a loss object: the objective is a sum of per-example terms with
no network or optimizer of its own, so sites under ``pyro.plate("data")`` give minibatch
scaling, ``fit``, the compiled step and checkpoints unchanged, as for the DDPM and the score
model. The time ``"t"`` and base draw ``"z"`` are sampled alike in model and guide (each
contributes exactly zero) and the regression is ``pyro.factor("flow_matching", ...)``, so
``Trace_ELBO`` returns the flow-matching loss. What the trained flow does through its ODE
(sampling, the generative program, the exact log-likelihood) is in
:mod:`~pyro_gen.diffusion.flow_matching_ode`, a mixin of :class:`FlowMatching`, which stays
defined here so checkpoints that record ``pyro_gen.diffusion.flow_matching.FlowMatching`` load.

References:
    Lipman, Chen, Ben-Hamu, Nickel, Le. Flow Matching for Generative Modeling. ICLR 2023,
    arXiv:2210.02747. Liu, Gong, Liu. Flow Straight and Fast: Learning to Generate and Transfer
    Data with Rectified Flow. ICLR 2023, arXiv:2209.03003.
"""

from __future__ import annotations

from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch import Tensor

from pyro_gen.diffusion.context import (
    check_outer_dims,
    check_sampler_choice,
    data_plate,
    expand_context,
    slice_context,
)
from pyro_gen.diffusion.flow_matching_ode import OWNER, FlowODE, base_draws
from pyro_gen.diffusion.network import call_network, register_module
from pyro_gen.diffusion.preconditioned_velocity import PreconditionedVelocity
from pyro_gen.transforms._base import PicklableModule
from pyro_gen.transforms.continuous import ContinuousFlow

__all__ = [
    "OBJECTIVES",
    "TIME_SAMPLINGS",
    "WEIGHTINGS",
    "FlowMatching",
    "PreconditionedVelocity",
    "base_draws",
]

#: names accepted by ``FlowMatching(objective=...)``
OBJECTIVES = ("cfm", "rectified")
#: names accepted by ``FlowMatching(time_sampling=...)``, with their default ``time_params``
TIME_SAMPLINGS = {"uniform": (), "logit_normal": (0.0, 1.0), "logit_uniform": (-4.6, 2.5)}
#: names accepted by ``FlowMatching(weighting=...)``
WEIGHTINGS = ("velocity", "noise")


def _brief(value: Any) -> str:
    return f"tensor of shape {tuple(value.shape)}" if torch.is_tensor(value) else repr(value)


def _the_flow(flow: Any) -> ContinuousFlow:
    if isinstance(flow, ContinuousFlow):
        return flow
    transforms = getattr(flow, "transforms", None)
    if (
        isinstance(transforms, list)
        and len(transforms) == 1
        and isinstance(transforms[0], ContinuousFlow)
    ):
        return transforms[0]
    raise TypeError(
        f"flow matching trains one ContinuousFlow (or a flow model made of exactly one, such as "
        f"a vector CNF); got {type(flow).__name__}"
    )


class FlowMatching(FlowODE, PicklableModule):
    r"""Conditional flow matching / rectified flow for a
    :class:`~pyro_gen.transforms.continuous.ContinuousFlow`, as a model/guide pair.

    Model (under ``pyro.plate("data")`` and ``pyro.plate("time", time_samples)``, scaled to an
    average over time): ``"t"`` :math:`\sim U(0, 1)` (the fraction :math:`s`), ``"z"``
    :math:`\sim \mathcal N(0, I)` unless a coupling ``z`` is passed (reflow), and
    ``pyro.factor("flow_matching", -\tfrac12\|f_\theta(x_s, t) - u_s\|^2)``.

    What the velocity network should be, measured on the 2D checkerboard
    (``benchmarks/RESULTS.md``): one with a sinusoidal time embedding (``CNF(...,
    dynamics="time_mlp")``) reached KL 0.056 nats after 5 CPU minutes where FFJORD's
    ConcatSquash net was at 0.205 after 2; drawing more times near the data end, ``sigma_min``
    0.01 and larger batches did not help, and the exact-trace ODE density was the same at
    tolerances 1e-5 and 1e-7. What helped was the loss weight: ``weighting="noise"`` (an
    eps-prediction score model's weighting, which quiets the base end's noisy targets) took the
    KL after 2 CPU minutes from 0.100 to 0.074 nats with uniform times and to 0.069 with
    ``time_sampling="logit_uniform"`` (a VE score model's noise levels), where the time laws
    alone did not help (logit-normal 0.122, logit-uniform 0.108; one seed each); after 5 CPU
    minutes that pair reached 0.035 (two seeds), below RealNVP (0.062) and MAF (0.084) trained
    under the same budget. The defaults stay Lipman et al.'s objective (uniform times, plain
    regression), the one also measured on eight Gaussians and moons.

    The velocity network is the flow's ``dynamics(x, t)``, called with the flow's time
    :math:`t = t_0 + s (t_1 - t_0)` (in :math:`[0, 1]` by default, the data at 0): in training
    ``t`` holds one time per example, shape ``(B,)``, while the ODE solves of :meth:`sample`
    and :meth:`log_prob` pass one 0-dim time for the batch, so a network of the user's should
    take either (``t.expand(x.shape[:1])``). Keyword arguments of :meth:`model` (``y=labels``,
    one row per example) reach it as ``dynamics(x, t, y=...)``, and ``context={"y": labels}``
    in :meth:`sample` / :meth:`log_prob` gives the conditional flow.

    Args:
        flow: a :class:`ContinuousFlow`, or a flow model whose ``transforms`` are exactly one
            (a vector :class:`~pyro_gen.flows.CNF`; training it here trains that model).
        objective: ``"cfm"`` (with ``sigma_min``) or ``"rectified"`` (:math:`\sigma_{min}=0`,
            and a coupling ``z`` may be passed to :meth:`model`, see :func:`reflow_pairs`).
        sigma_min: std of the path at the data end for ``"cfm"``.
        time_samples: time draws per example and step.
        name: the ``pyro.module`` name.
        data_std: when given, the flow's velocity network becomes the residual of a
            :class:`PreconditionedVelocity` for data of this std (the flow is changed in
            place, so its own ``log_prob`` and ``sample`` use the same field); None keeps the
            plain velocity network.
        time_sampling: the law of the path fraction :math:`s` at site ``"t"``:
            ``"uniform"`` (Lipman et al.), ``"logit_normal"`` (:math:`\operatorname{logit} s
            \sim \mathcal N(m, v^2)`, Esser et al. 2024) or ``"logit_uniform"``
            (:math:`\operatorname{logit} s \sim U(a, b)`: the noise-to-signal ratio
            :math:`s/(1-s)` log-uniform, as a VE score model's noise levels; the default
            :math:`(a, b) = (-4.6, 2.5)` is :math:`\sigma \in [0.01, 12]`).
        time_params: ``(m, v)`` or ``(a, b)`` for the logit laws (None: those of
            :data:`TIME_SAMPLINGS`).
        weighting: ``"velocity"`` (the plain regression) or ``"noise"``: each term times
            :math:`(1 - s)^2`, which makes it the squared error of the base draw :math:`z`
            implied by the velocity (:math:`u = (z - x_s)/(1 - s)` in path time), the weighting
            of an eps-prediction score model; it down-weights the base end, where the target's
            irreducible variance (the data's) is largest.

    Example:
        >>> from pyro_gen.transforms.continuous import cnf
        >>> fm = FlowMatching(cnf(2, (16,), rtol=1e-3, atol=1e-3))
        >>> loss = pyro.infer.Trace_ELBO().loss(fm.model, fm.guide, torch.randn(8, 2))
        >>> fm.sample(3).shape, fm.log_prob(torch.randn(3, 2)).shape
        (torch.Size([3, 2]), torch.Size([3]))
    """

    def __init__(
        self,
        flow: Any,
        *,
        objective: str = "cfm",
        sigma_min: float = 1e-4,
        time_samples: int = 1,
        name: str = "flow_matching",
        data_std: float | None = None,
        time_sampling: str = "uniform",
        time_params: tuple[float, float] | None = None,
        weighting: str = "velocity",
    ) -> None:
        super().__init__()
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
        if time_sampling not in TIME_SAMPLINGS:
            raise ValueError(
                f"time_sampling must be one of {tuple(TIME_SAMPLINGS)}, got {time_sampling!r}"
            )
        if weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
        params = TIME_SAMPLINGS[time_sampling] if time_params is None else tuple(time_params)
        if time_sampling == "uniform" and params:
            raise ValueError(f"time_sampling='uniform' takes no time_params, got {params}")
        if time_sampling != "uniform" and (
            len(params) != 2
            or (time_sampling == "logit_normal" and not params[1] > 0)
            or (time_sampling == "logit_uniform" and not params[0] < params[1])
        ):
            what = "(loc, scale > 0)" if time_sampling == "logit_normal" else "(low, high > low)"
            raise ValueError(
                f"time_params for time_sampling={time_sampling!r} must be {what} of logit s, "
                f"got {params}"
            )
        self.time_sampling, self.weighting = time_sampling, weighting
        self.time_params = tuple(float(v) for v in params)
        if not 0 <= sigma_min < 1:
            raise ValueError(f"sigma_min must lie in [0, 1), got {sigma_min}")
        if int(time_samples) != time_samples or time_samples < 1:
            raise ValueError(f"time_samples must be a whole number >= 1, got {time_samples}")
        self.flow = _the_flow(flow)
        self.objective = objective
        self.sigma_min = 0.0 if objective == "rectified" else float(sigma_min)
        self.time_samples, self.name = int(time_samples), name
        if data_std is not None and not isinstance(self.flow.dynamics, PreconditionedVelocity):
            f = self.flow
            f.dynamics = PreconditionedVelocity(
                f.dynamics, data_std, sigma_min=self.sigma_min, t0=f.t0, t1=f.t1
            )

    @property
    def event_shape(self) -> torch.Size:
        return torch.Size(self.flow.event_shape)

    @property
    def event_dim(self) -> int:
        return len(self.event_shape)

    def path(self, x: Tensor, z: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
        """The conditional point :math:`x_s` and target velocity :math:`u_s` (in flow time)."""
        s = s.reshape(s.shape + (1,) * self.event_dim)
        x_s = (1 - s) * x + (self.sigma_min + (1 - self.sigma_min) * s) * z
        return x_s, ((1 - self.sigma_min) * z - x) / (self.flow.t1 - self.flow.t0)

    def velocity(self, x: Tensor, s: Tensor, **context: Any) -> Tensor:
        """:math:`f_\\theta(x, t)` at the path fraction ``s`` (one per example); ``context``
        (one row per example) goes to the network."""
        t = self.flow.t0 + s * (self.flow.t1 - self.flow.t0)
        batch = x.shape[: x.dim() - self.event_dim]
        context = expand_context(context, batch)
        flat_x, flat_t = x.reshape(-1, *self.event_shape), t.expand(batch).reshape(-1)
        cause = None
        try:
            flat = call_network(self.flow.dynamics, flat_x, flat_t, OWNER, **context)
        except (RuntimeError, IndexError, TypeError) as err:
            flat, cause = None, err
        if flat is None or flat.shape != flat_x.shape:
            self._refuse_times(flat_x, flat_t, context, flat, cause)
        return flat.reshape(x.shape)

    def _refuse_times(self, x: Tensor, t: Tensor, context: dict, out: Any, cause: Any) -> None:
        """One error for a velocity network that failed on one time per example: written for
        the ODE solves' single 0-dim time (ContinuousFlow's contract), it met torch's shape
        errors, or broadcast ``t`` of shape (B,) against (B, 1) into (B, B) silently."""
        try:
            one = self.flow.dynamics(x[:1], t[0], **slice_context(context, 0, 1))
            takes_one_time = one.shape == x[:1].shape
        except Exception:
            takes_one_time = False
        if takes_one_time:
            raise ValueError(
                "FlowMatching trains the velocity network with one time per example, t of shape "
                f"(batch,) = {tuple(t.shape)}; this network takes only the single 0-dim time of "
                "an ODE solve (it ran on one). Make it broadcast either: e.g. "
                "t = t.expand(x.shape[:1]) before using t"
            ) from cause
        if cause is not None:
            raise cause
        raise ValueError(
            f"the velocity network returned shape {tuple(out.shape)} for points of shape "
            f"{tuple(x.shape)}; it must return a velocity shaped like its input"
        )

    def _check(self, x: Tensor, z: Tensor | None) -> int:
        """The number of examples of ``x`` (outer plates' dims, a latent's vectorized
        particles, may come before the batch), with the coupling ``z`` checked."""
        nd = self.event_dim
        if x.dim() < nd + 1 or x.shape[x.dim() - nd :] != self.event_shape:
            raise ValueError(
                f"FlowMatching expects data of shape (batch, *{tuple(self.event_shape)}), got "
                f"{tuple(x.shape)}"
            )
        check_outer_dims(x, nd, "FlowMatching")
        if z is not None:
            # fit's (x, y) tuples and DataLoader batches put labels here, the coupling's slot
            labels = (
                "; labels (or other network inputs) go by name: model(x, y=labels), and in fit "
                "a dict {'x': x, 'y': y}, not a tuple (x, y)"
            )
            if self.objective != "rectified":
                raise ValueError(
                    "a coupling z (reflow: the second argument, after x) needs "
                    "objective='rectified'" + labels
                )
            if not torch.is_tensor(z) or z.shape != x.shape or not z.is_floating_point():
                what = f"{tuple(z.shape)} {z.dtype}" if torch.is_tensor(z) else type(z).__name__
                raise ValueError(
                    f"coupling z must be shaped like x {tuple(x.shape)} (base draws), got {what}"
                    + labels
                )
        return x.shape[x.dim() - nd - 1]

    def _time_law(self, zeros: Tensor) -> dist.Distribution:
        """The law of ``"t"`` with the batch shape of ``zeros``."""
        if self.time_sampling == "uniform":
            return dist.Uniform(zeros, zeros + 1)
        a, b = self.time_params
        base = (
            dist.Normal(zeros + a, b)
            if self.time_sampling == "logit_normal"
            else dist.Uniform(zeros + a, zeros + b)
        )
        return dist.TransformedDistribution(base, [dist.transforms.SigmoidTransform()])

    def _sites(self, x: Tensor, z: Tensor | None) -> tuple[Tensor, Tensor]:
        K, B = self.time_samples, x.shape[x.dim() - self.event_dim - 1]
        law = self._time_law(x.new_zeros(K, B))
        # the law's log-density cancels between model and guide; the logit laws' is masked out
        # because the round trip s -> logit s can land just outside the base's support at its
        # edge (a draw of exactly a), and -inf - (-inf) made one loss NaN in 16 million draws
        with poutine.mask(mask=self.time_sampling == "uniform"):
            s = pyro.sample("t", law)
        if z is None:
            base = dist.Normal(x.new_zeros(()), 1.0).expand((K, B, *self.event_shape))
            # (K, B, *event), or with the outer plates' dims (vectorized particles) in front
            return s, pyro.sample("z", base.to_event(self.event_dim))
        # the coupling over the time plate (dim -2); with outer dims, z has that dim already
        zb = z if z.dim() > self.event_dim + 1 else z.unsqueeze(0)
        return s, zb.expand(torch.broadcast_shapes(zb.shape, (K, B, *self.event_shape)))

    # The plate over examples for evaluate_elbo: the objective's plate of time samples
    # encloses every site too.
    data_plate = "data"

    @property
    def joint_is_density(self) -> bool:
        """False: on data, :meth:`model` and :meth:`guide` are a training objective (a
        flow-matching regression loss at sampled times), not a density over each example's
        latents and their proposal, so :func:`~pyro_gen.infer.iwae_log_likelihood` refuses
        the pair (on a trained moons score model it read -0.54 nats where the exact
        log-likelihood was -9.73); the exact log-likelihood is :meth:`log_prob`."""
        return False

    def model(
        self,
        x: Tensor | None = None,
        z: Tensor | None = None,
        num_samples: int = 1,
        *,
        sampler: str | None = None,
        sampler_kwargs: dict[str, Any] | None = None,
        **context: Any,
    ):
        """Flow-matching objective on ``x`` (with an optional coupling ``z`` shaped like it),
        ``(batch, *event_shape)`` or with outer plates' dims in front (a latent of the user's
        model under vectorized particles, ``(P, 1, batch, *event_shape)``). Without data,
        the generative program: base draws ``"z"`` transported by the flow's ODE to the site
        ``"x"``, under ``pyro.plate("data", num_samples)`` (or the caller's plate over the
        examples, as in training), so :class:`~pyro.infer.Predictive` and ``poutine`` see
        the draws; ``sampler="ode"`` (the one there is) with ``sampler_kwargs`` sets its
        solver as :meth:`sample`'s keywords do (``{"method": "rk4", "options":
        {"step_size": 0.1}}``), as the diffusion models' programs take theirs. ``context``
        (``y=labels``, one row per example) goes to the velocity network."""
        options = check_sampler_choice(x, sampler, sampler_kwargs, ("ode",), "FlowMatching")
        if x is None and z is not None:
            # model(None, 5), as a DDPM's or a score model's program is called, put the count
            # in the coupling's slot: one draw came back, silently
            raise ValueError(
                f"FlowMatching.model(x, z, num_samples) got z={_brief(z)} without data: the "
                "second argument is the coupling z of reflow training, used only with x; give "
                "the number of draws by name, model(None, num_samples=5)"
            )
        if x is None:
            return self._generate(num_samples, context, options)
        register_module(self.name, self.flow)
        B = self._check(x, z)
        with (
            data_plate(B, "FlowMatching"),
            poutine.scale(scale=1 / self.time_samples),
            pyro.plate("time", self.time_samples, dim=-2),
        ):
            s, zz = self._sites(x, z)
            x_s, target = self.path(x, zz, s)
            sq = (self.velocity(x_s, s, **context) - target).pow(2)
            if self.event_dim:  # scalar data (event shape ()) have no event dims to sum
                sq = sq.flatten(sq.dim() - self.event_dim).sum(-1)
            if self.weighting == "noise":
                sq = sq * (1 - s).pow(2)
            pyro.factor("flow_matching", -0.5 * sq)
        return None

    def guide(
        self,
        x: Tensor | None = None,
        z: Tensor | None = None,
        num_samples: int = 1,
        **context: Any,
    ):
        """The fixed time and base draws (nothing when ``x`` is None); it takes the model's
        ``context`` and needs none of it."""
        if x is None:
            return None
        B = self._check(x, z)
        with (
            data_plate(B, "FlowMatching"),
            poutine.scale(scale=1 / self.time_samples),
            pyro.plate("time", self.time_samples, dim=-2),
        ):
            self._sites(x, z)
        return None
