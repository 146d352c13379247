"""DDPM as a Pyro model/guide pair: a Markovian hierarchical VAE whose guide is the fixed
forward noising process and whose model is the learned reverse chain.

This module holds the model's settings, its data space and sampling; its reverse step, its
two forms on data and the single terms of its bound live beside it, one concept per file
(:mod:`~pyro_gen.diffusion.ddpm_reverse_step`, :mod:`~pyro_gen.diffusion.ddpm_chain`,
:mod:`~pyro_gen.diffusion.ddpm_time_plate` with the steps it draws in
:mod:`~pyro_gen.diffusion.ddpm_time_steps`, and :mod:`~pyro_gen.diffusion.ddpm_bound_terms`).
:class:`DDPM` stays defined here, so checkpoints, which record
``pyro_gen.diffusion.ddpm.DDPM``, load unchanged.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import nn

from pyro_gen.diffusion.context import check_no_positional_labels, expand_context, slice_context
from pyro_gen.diffusion.ddpm_bound_terms import BoundTerms
from pyro_gen.diffusion.ddpm_chain import FullChainForm
from pyro_gen.diffusion.ddpm_reverse_step import ReverseStep
from pyro_gen.diffusion.ddpm_time_plate import TimePlateForm
from pyro_gen.diffusion.ema import EMA
from pyro_gen.diffusion.parameterization import PARAMETERIZATIONS
from pyro_gen.diffusion.schedules import NoiseSchedule, as_schedule
from pyro_gen.transforms._base import PicklableModule, as_event_shape, sample_count

__all__ = ["DDPM"]

VARIANCES = ("fixed_small", "fixed_large", "learned_range")


class DDPM(FullChainForm, TimePlateForm, BoundTerms, ReverseStep, PicklableModule):
    """Denoising diffusion probabilistic model written as a Pyro model/guide pair.

    **Full-chain form** (``form="full_chain"``, usable for small :math:`T`). The model is the
    reverse Markov chain and the guide is the forward process factored so each site pairs with
    the model's:

    .. math::

        p_\\theta(x_{0:T}) = p(x_T) \\prod_{t=1}^T p_\\theta(x_{t-1} \\mid x_t), \\qquad
        q(x_{1:T} \\mid x_0) = q(x_T \\mid x_0) \\prod_{t=2}^T q(x_{t-1} \\mid x_t, x_0).

    Sites ``x_T`` (named ``f"x_{T}"``), ``x_{T-1}``, ..., ``x_1`` and the observed ``x_0``.
    ``Trace_ELBO`` is then the exact DDPM bound (Monte Carlo) and ``TraceMeanField_ELBO``
    replaces each latent term by its closed-form Gaussian KL.

    **Time-plate form** (``form="time_plate"``, the default, the reduced-variance objective of
    Ho et al.). The sum over :math:`t` becomes a Pyro plate ``"time"`` of size :math:`T`,
    subsampled to ``time_samples`` steps per example, which Pyro scales by
    :math:`T/\\text{time\\_samples}`:

    .. math::

        \\mathcal L = L_T + T\\, \\mathbb E_{t \\sim U\\{1..T\\}} \\mathbb E_{q(x_t \\mid x_0)}
        \\big[ \\mathbb 1_{t>1} D_{KL}(q(x_{t-1} \\mid x_t, x_0) \\| p_\\theta(x_{t-1}
        \\mid x_t)) - \\mathbb 1_{t=1} \\log p_\\theta(x_0 \\mid x_1) \\big].

    Inside the plate, site ``"x_t"`` has the forward marginal :math:`q(x_t \\mid x_0)` in both
    model and guide (so it contributes exactly zero), site ``"x_prev"`` pairs
    :math:`p_\\theta` with the forward posterior (masked to :math:`t > 1`), and the observed
    ``"x_0"`` is masked to :math:`t = 1`. A per-example uniform site ``"t"`` (identical in model
    and guide, hence contributing zero) shifts the plate's subsampled indices so each example
    sees its own steps. With ``TraceMeanField_ELBO`` the KLs are analytic: an unbiased estimate
    of the same bound as the full chain at a fraction of its cost per step (not of its variance:
    one sampled step per example has a larger standard deviation than the whole chain, see
    tutorials/diffusion_as_hierarchical_vae.ipynb). In eval mode (``ddpm.eval()``, as
    :func:`~pyro_gen.infer.fit` and :func:`~pyro_gen.infer.evaluate_elbo` score held-out
    data) the plate estimates the same bound with less noise: step 1 (:math:`L_0`, the
    largest term) is taken for every example and steps :math:`2..T` are split into
    ``eval_strata`` intervals of geometrically growing length :math:`n_k`, from each of which
    every example draws its own step :math:`t_k`, scaled by :math:`n_k`;
    :math:`\\sum_k n_k L_{t_k - 1}` has the expectation :math:`\\sum_{t \\ge 2} L_{t-1}`
    (stratified sampling, :func:`~pyro_gen.diffusion.sampled_variational_bound`'s design).
    On held-out moons (T = 500) its spread over points was 5.3 nats against 137 for one
    uniform step, for 5 network passes per point instead of 1 (``eval_strata=4``, the
    default: 100 times the information per pass; 16 strata, 17 passes, gave 2.3 nats;
    benchmarks/RESULTS.md).
    This "model" conditions on :math:`x_0` and is a training objective, not a generative
    story; ``model(None)`` always runs the full generative chain.

    ``objective="simple"`` replaces the KLs by :math:`\\tfrac12\\|\\text{target} -
    \\text{prediction}\\|^2` in the network's own parameterization (eps-MSE for ``"eps"`` and
    ``"score"``), Ho et al.'s :math:`L_{simple}`: a *reweighted* bound that drops each term's
    weight :math:`\\beta_t^2 / (2\\sigma_t^2 \\alpha_t (1-\\bar\\alpha_t))` and the decoder; it
    is not the bound. With ``variance="learned_range"`` it adds ``hybrid_weight`` times the
    bound with a stop-gradient on the mean (Nichol & Dhariwal's :math:`L_{hybrid}`).

    Reverse-step variances: ``"fixed_small"`` (posterior variance :math:`\\tilde\\beta_t`),
    ``"fixed_large"`` (:math:`\\beta_t`, with :math:`\\tilde\\beta_2` at :math:`t=1`), or
    ``"learned_range"``: the network emits extra channels :math:`v` and
    :math:`\\log\\sigma_t^2 = f\\log\\beta_t + (1-f)\\log\\tilde\\beta_t` with
    :math:`f = \\tfrac{v+1}{2}` clamped to [0, 1], so :math:`\\sigma_t^2` stays between
    :math:`\\tilde\\beta_t` and :math:`\\beta_t`, the range the parameterization names. Nichol
    & Dhariwal leave :math:`f` unbounded; an untrained network's :math:`v` then left
    [-1, 1] by far once the chain reached values of a few hundred, and :math:`\\sigma_t^2`
    overflowed: ancestral samples of a fresh default DDPM were NaN in 116 of 256 draws.

    Data: vectors ``(B, D)`` (``data="continuous"``: Gaussian :math:`L_0`, bound in nats) or
    images ``(B, H, W)`` / ``(B, C, H, W)`` with floats in [0, 1] (``data="image"``), mapped
    to [-1, 1] inside the model, with a discretized Gaussian :math:`L_0` over ``num_bins``
    levels so the bound is in bits/dim.

    Args:
        net: ``net(x_t, t) -> prediction`` with ``x_t`` of shape ``(B, *event_shape)``
            (images of event shape ``(H, W)`` as ``(B, 1, H, W)``, in [-1, 1]) and ``t`` a long
            tensor of 1-based steps; output has the input's shape (twice the channels /
            features for ``learned_range``).
            Keyword arguments given to :meth:`model` (``y=labels``) and ``sample(...,
            context={"y": labels})`` reach it as ``net(x_t, t, y=...)``: a conditional model.
            The score-based samplers and likelihoods (:class:`~pyro_gen.diffusion.DDPMScore`)
            call it with fractional float steps.
        event_shape: shape of one example.
        schedule: a :class:`NoiseSchedule`, a name for :func:`make_schedule`, or the betas
            :math:`\\beta_{1:T}` themselves (a 1-D tensor or list, each in (0, 1)).
        timesteps: :math:`T` when ``schedule`` is a name.
        param: what the network predicts: ``"eps"``, ``"x0"``, ``"v"`` or ``"score"``.
        variance: ``"fixed_small"``, ``"fixed_large"`` or ``"learned_range"``.
        objective: ``"elbo"`` or ``"simple"``.
        form: ``"time_plate"`` or ``"full_chain"`` (what ``model``/``guide`` run on data).
        time_samples: time steps drawn per example in the time-plate form.
        eval_strata: in eval mode, the time plate draws one step per example from each of
            ``eval_strata`` geometric strata of steps 2..T, with :math:`L_0` exact: 1 +
            ``eval_strata`` network passes per example (0: the training draw also in eval
            mode).
        data: ``"continuous"``, ``"image"`` or ``"auto"`` (image when ``event_shape`` has 2 or 3
            dims).
        num_bins: levels of the discretized decoder (256 for 8-bit pixels, 17 for sklearn
            digits).
        hybrid_weight: weight of the bound in the hybrid objective.
        clip_denoised: clamp predicted :math:`x_0` to [-1, 1] while sampling (default: images).
        ema_decay: if given, keep an :class:`EMA` of the network for ``sample``. It moves
            only when :meth:`update_ema` is called, which belongs after each optimizer step:
            ``fit(m, x, step_callbacks=[ema_callback])``. ``model`` itself has no side
            effects, so the compiled training step can record it.
        name: the ``pyro.module`` name.

    References:
        Ho, Jain, Abbeel. Denoising Diffusion Probabilistic Models. arXiv:2006.11239.
        Sohl-Dickstein et al. Deep Unsupervised Learning using Nonequilibrium Thermodynamics.
        arXiv:1503.03585. Nichol, Dhariwal. Improved DDPM. arXiv:2102.09672.

    Example:
        >>> import pyro
        >>> from pyro_gen.nn.time_embedding import TimeMLP
        >>> m = DDPM(TimeMLP(2, 16, num_layers=1), (2,), "linear", timesteps=4)
        >>> loss = pyro.infer.TraceMeanField_ELBO().loss(m.model, m.guide, torch.randn(5, 2))
        >>> m.sample(3).shape
        torch.Size([3, 2])
    """

    def __init__(
        self,
        net: nn.Module,
        event_shape: Sequence[int],
        schedule: NoiseSchedule | str | Sequence[float] | torch.Tensor = "linear",
        *,
        timesteps: int = 1000,
        param: str = "eps",
        variance: str = "fixed_small",
        objective: Literal["elbo", "simple"] = "elbo",
        form: Literal["time_plate", "full_chain"] = "time_plate",
        time_samples: int = 1,
        eval_strata: int = 4,
        data: Literal["auto", "continuous", "image"] = "auto",
        num_bins: int = 256,
        hybrid_weight: float = 1e-3,
        clip_denoised: bool | None = None,
        ema_decay: float | None = None,
        name: str = "ddpm",
    ) -> None:
        super().__init__()
        if param not in PARAMETERIZATIONS:
            raise ValueError(f"param must be one of {PARAMETERIZATIONS}, got {param!r}")
        if variance not in VARIANCES:
            raise ValueError(f"variance must be one of {VARIANCES}, got {variance!r}")
        if objective not in ("elbo", "simple"):
            raise ValueError(f"objective must be 'elbo' or 'simple', got {objective!r}")
        if form not in ("time_plate", "full_chain"):
            raise ValueError(f"form must be 'time_plate' or 'full_chain', got {form!r}")
        self.net = net
        self.schedule = as_schedule(schedule, timesteps)
        T = self.schedule.num_timesteps
        if not 1 <= time_samples <= T:
            raise ValueError(f"time_samples must lie in [1, T={T}], got {time_samples}")
        if isinstance(eval_strata, bool) or int(eval_strata) != eval_strata or eval_strata < 0:
            raise ValueError(f"eval_strata must be a whole number >= 0, got {eval_strata!r}")
        self.event_shape = torch.Size(as_event_shape(event_shape))
        if data == "auto":
            data = "image" if len(self.event_shape) in (2, 3) else "continuous"
        if data not in ("continuous", "image"):
            raise ValueError(f"data must be 'continuous', 'image' or 'auto', got {data!r}")
        self.data = data
        self.net_shape = (
            torch.Size((1, *self.event_shape))
            if data == "image" and len(self.event_shape) == 2
            else self.event_shape
        )
        self.event_dim = len(self.net_shape)
        if variance == "learned_range" and self.event_dim == 0:
            # the variance output is a second channel, which scalar data (event shape ()) lack:
            # the chunk along dim 1 failed in torch ("dimension out of range")
            raise ValueError(
                "variance='learned_range' needs a feature dim for the network's extra variance "
                "output, and event_shape=() has none: use event_shape=(1,) with data of shape "
                "(N, 1), or variance='fixed_small'"
            )
        self.param, self.variance, self.objective, self.form = param, variance, objective, form
        self.time_samples = int(time_samples)
        self.eval_strata = int(eval_strata)
        self.num_bins = int(num_bins)
        self.hybrid_weight = float(hybrid_weight)
        self.clip_denoised = (data == "image") if clip_denoised is None else clip_denoised
        self.name = name
        s = self.schedule
        large = torch.cat([s.posterior_variance[1:2] if T > 1 else s.betas[:1], s.betas[1:]])
        self.register_buffer("large_log_variance", large.log())
        self.ema = EMA(self.net, ema_decay) if ema_decay is not None else None

    # ------------------------------------------------------------------ data space
    def to_model_space(self, x: torch.Tensor, outer: bool = False) -> torch.Tensor:
        """Validate data and map it to the network's space (images: [0, 1] -> [-1, 1]); with
        ``outer``, data may have outer plates' dims before the batch dim (the model's own)."""
        nd = len(self.event_shape)
        rows = x.dim() == nd + 1 or (outer and x.dim() > nd + 1)
        if not rows or x.shape[x.dim() - nd :] != self.event_shape:
            raise ValueError(
                f"expected data of shape (batch, {', '.join(map(str, self.event_shape))}), "
                f"got {tuple(x.shape)}"
            )
        if not torch.is_floating_point(x):
            # continuous data too: integers went on into the ELBO, where Pyro's Normal refused
            # its own noise scale ("Expected scale > 0"), naming neither data nor dtype
            raise TypeError(
                f"data must be floating point, got {x.dtype}: pass x.float() (images: "
                "x.float() / 255, in [0, 1])"
            )
        if self.data == "continuous":
            return x
        if bool((x < 0).any() or (x > 1).any()):
            raise ValueError(
                f"image data must lie in [0, 1]; got min {float(x.min()):.3g}, "
                f"max {float(x.max()):.3g} (images: x.float() / 255; data of event shape "
                f"{tuple(self.event_shape)} that are not images: DDPM(..., data='continuous'))"
            )
        return (x * 2 - 1).reshape(x.shape[: x.dim() - nd] + self.net_shape)

    def from_model_space(self, x: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`to_model_space` (images clamped to [0, 1])."""
        if self.data == "continuous":
            return x
        # every batch dim kept: draws under outer plates (Predictive's vectorized samples)
        batch = x.shape[: x.dim() - len(self.net_shape)]
        return ((x + 1) / 2).clamp(0, 1).reshape(batch + self.event_shape)

    # ------------------------------------------------------------------ network
    def sample_reference(self) -> torch.Tensor:
        """A tensor whose dtype and device the generative chain draws in: the network's first
        floating parameter, else the schedule's. A user's float64 network in a DDPM built
        under float32 defaults trains on float64 data, and its float32 noise draws (the
        schedule's dtype) were refused by the network when sampling."""
        net_params = self.net.parameters() if isinstance(self.net, nn.Module) else ()
        params = (p for p in net_params if p.is_floating_point())
        return next(params, self.schedule.betas)

    def update_ema(self) -> None:
        """Move the EMA of the network towards its current weights; call it once after each
        optimizer step (:func:`~pyro_gen.diffusion.ema.ema_callback` does so inside ``fit``).

        Raises:
            ValueError: when the model was built without ``ema_decay``.
        """
        if self.ema is None:
            raise ValueError("this DDPM keeps no EMA; build it with ema_decay=0.999 (say)")
        self.ema.update()

    # ------------------------------------------------------------------ protocol
    @property
    def joint_is_density(self) -> bool:
        """Whether :meth:`model` and :meth:`guide` on data are a joint density over the
        whole chain and its proposal, so that importance weights over them are valid
        (:func:`~pyro_gen.infer.iwae_log_likelihood` refuses the pair otherwise): the full
        chain's are; the time plate samples and reweights steps independently, an unbiased
        estimate of the bound whose exp is no importance weight."""
        return self.form == "full_chain"

    def model(
        self,
        x: torch.Tensor | None = None,
        num_samples: int = 1,
        *,
        sampler: str | None = None,
        sampler_kwargs: dict[str, Any] | None = None,
        **context: Any,
    ) -> torch.Tensor | None:
        """Time-plate or full-chain model on data ``(batch, *event_shape)``, or with outer
        plates' dims in front (a latent of the user's model under vectorized particles,
        ``(P, 1, batch, *event_shape)``); the generative chain when ``x`` is None,
        or another ``sampler`` with its ``sampler_kwargs`` (see :meth:`generate`).
        ``context`` (e.g. ``y=labels``, one row per example) goes to the network as
        ``net(x_t, t, **context)``: ``fit(m, {"x": x, "y": y})`` trains a class-conditional
        DDPM."""
        check_no_positional_labels(x, num_samples, type(self).__name__)
        options = self.sampler_options(x, sampler, sampler_kwargs)
        if x is None:
            return self.generate(num_samples, sampler or "ancestral", options, context)
        if self.form == "full_chain":
            return self.chain_model(x, num_samples, **context)
        return self.plate_model(x, **context)

    def guide(self, x: torch.Tensor | None = None, num_samples: int = 1, **context: Any) -> None:
        """The fixed forward process matching :meth:`model`'s form (nothing when ``x`` is None);
        it takes the model's ``context`` and needs none of it."""
        if x is None:
            return None
        check_no_positional_labels(x, num_samples, type(self).__name__)
        if self.form == "full_chain":
            return self.chain_guide(x)
        return self.plate_guide(x)

    def sample(
        self,
        num_samples: int,
        sampler: Literal["ancestral", "ddim"] = "ancestral",
        *,
        steps: int | None = None,
        eta: float = 0.0,
        use_ema: bool = True,
        progress: bool = False,
        batch_size: int | None = None,
        context: dict[str, Any] | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Draw samples in data space (images in [0, 1]), see :mod:`pyro_gen.diffusion.samplers`.

        Args:
            num_samples: how many.
            sampler: ``"ancestral"`` (all T steps of :math:`p_\\theta`) or ``"ddim"``.
            steps: DDIM steps (default T); must be in [1, T].
            eta: DDIM stochasticity (0 deterministic, 1 the DDPM posterior variance).
            use_ema: sample with the EMA weights when the model keeps them.
            progress: tqdm bar over the steps.
            batch_size: draw in chunks of this size.
            context: keyword arguments for the network, one row per sample (e.g.
                ``{"y": labels}`` for a model trained with ``model(x, y=labels)``).
            generator: the random generator of every draw (a seeded ``torch.Generator``
                repeats the samples without touching the global seed).
        """
        from pyro_gen.diffusion.samplers import ancestral_sample, ddim_sample

        num_samples = sample_count(num_samples)
        if sampler not in ("ancestral", "ddim"):
            raise ValueError(
                f"sampler must be 'ancestral' or 'ddim', got {sampler!r} (the score-based "
                "samplers 'pc', 'euler_maruyama', 'ode', 'langevin' take a DDPM through "
                "pyro_gen.diffusion.sample(model, num_samples, sampler))"
            )
        if batch_size is not None and (
            isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1
        ):
            # a negative size met torch's "negative dimension", a float range()'s TypeError
            raise ValueError(f"batch_size must be a whole number >= 1, got {batch_size!r}")
        if sampler == "ancestral" and steps not in (None, self.schedule.num_timesteps):
            raise ValueError("ancestral sampling runs all T steps; use sampler='ddim' for fewer")
        batch_size = int(batch_size or max(num_samples, 1))
        context = dict(context or {})
        expand_context(context, (num_samples,))  # one row per sample, or a clear error
        out = []
        use_ema = use_ema and self.ema is not None
        ctx = self.ema.average_parameters() if use_ema else contextlib.nullcontext()
        with ctx:
            # one chunk of none for num_samples=0: an empty draw of the right shape
            for start in range(0, num_samples, batch_size) or [0]:
                n = min(batch_size, num_samples - start)
                chunk = slice_context(context, start, start + n)
                if sampler == "ancestral":
                    draw = ancestral_sample(
                        self, n, progress=progress, context=chunk, generator=generator
                    )
                else:
                    draw = ddim_sample(
                        self, n, steps=steps, eta=eta, progress=progress, context=chunk,
                        generator=generator,
                    )  # fmt: skip
                out.append(draw)
        return torch.cat(out)

    def bits_per_dim(self, x: torch.Tensor, **kwargs) -> float:
        """Mean bound in bits/dim over ``x`` (all T terms, see
        :func:`~pyro_gen.diffusion.likelihood.variational_bound`)."""
        import inspect

        from pyro_gen.diffusion.likelihood import variational_bound

        known = inspect.signature(variational_bound).parameters
        for name in kwargs:
            if name not in known:
                # labels passed as model(x, y=labels) are; here they met "variational_bound()
                # got an unexpected keyword argument 'y'"
                raise TypeError(
                    f"bits_per_dim got an unknown keyword {name!r}; the network's inputs (labels) "
                    f"go as context={{{name!r}: ...}}, one row per example"
                )
        return float(variational_bound(self, x, **kwargs)["total"].mean()) / (
            math.prod(self.event_shape) * math.log(2)
        )
