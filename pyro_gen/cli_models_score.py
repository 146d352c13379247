"""The diffusion family of the ``pyro-gen`` command: the DDPM, and score models trained by
denoising score matching on a forward SDE (``ncsn``: VE by default, sampled by annealed
Langevin dynamics; ``sde``: VP by default, sampled by predictor-corrector).

Every one of them samples with every score-based sampler (the DDPM as the discretised VP SDE
it is), and ``evaluate`` gives the probability-flow ODE likelihood.

Example:
    >>> sorted(SCORE_MODELS), SCORE_SAMPLERS
    (['ddpm', 'ncsn', 'sde'], ('langevin', 'euler-maruyama', 'pc', 'ode'))
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from typing import Any

import torch
from pyro.infer import TraceMeanField_ELBO

from pyro_gen.cli_evaluate import density_results, with_se
from pyro_gen.cli_spec import PIXEL_LEVELS, Evaluation, ModelSpec
from pyro_gen.infer import bits_per_dim_from_nats
from pyro_gen.infer.evaluation import module_device

#: the score-based samplers' command-line names (``pyro_gen.diffusion.SAMPLERS`` spelled
#: with hyphens, as options are)
SCORE_SAMPLERS = ("langevin", "euler-maruyama", "pc", "ode")
# ... of which the adaptive ODE solver picks its own steps (rtol and atol are its knobs)
ADAPTIVE_SAMPLERS = ("ode",)


def _score_sample(model: Any, n: int, sampler: str, steps: int | None) -> torch.Tensor:
    from pyro_gen.diffusion import sample

    return sample(model, n, sampler.replace("-", "_"), steps=steps)


# ---------------------------------------------------------------------------------------
# ncsn and sde


def _score_net(event_shape: tuple[int, ...], opts: dict[str, Any]) -> torch.nn.Module:
    from pyro_gen.nn import TimeMLP, UNet

    if len(event_shape) == 1:
        return TimeMLP(event_shape[0], opts["hidden_dim"])
    height = event_shape[-2]
    mults = (1, 2, 2) if height % 4 == 0 else (1, 2) if height % 2 == 0 else (1,)
    return UNet(event_shape[0], 32, mults)


def _build_score(event_shape: tuple[int, ...], opts: dict[str, Any]) -> torch.nn.Module:
    from pyro_gen.diffusion import ScoreModel, make_sde

    net = _score_net(event_shape, opts)
    return ScoreModel(net, make_sde(opts["sde"]), event_shape, weighting=opts["weighting"])


def _score_sampler(default: str) -> Callable[[Any, int, str | None, int | None], torch.Tensor]:
    def draw(model: Any, n: int, sampler: str | None, steps: int | None) -> torch.Tensor:
        return _score_sample(model, n, sampler or default, steps)

    return draw


def _score_unused(opts: dict[str, Any], data: str) -> dict[str, str]:
    if data in PIXEL_LEVELS:  # see _score_net
        return {
            "hidden_dim": (
                "sets the MLP width of score models on 2D data, and image ones have a U-Net of "
                "fixed width"
            )
        }
    return {}


def _score_spec(sde: str, sampler: str) -> ModelSpec:
    return ModelSpec(
        build=_build_score,
        # continuous data: pixels dequantized into [0, 1], so the ODE density bounds bits/dim
        data_kind=lambda o: "dequantized",
        options=("sde", "weighting", "hidden_dim"),
        defaults={"sde": sde, "hidden_dim": 128},
        unused_options=_score_unused,
        evaluate=density_results,
        # the probability-flow ODE density of the test points, its own solve (no bound)
        evaluate_options=lambda o, data: ("num_test",),
        samplers=SCORE_SAMPLERS,
        fixed_step_samplers=ADAPTIVE_SAMPLERS,
        default_sampler=sampler,
        sample=_score_sampler(sampler),
        discrete=lambda o: False,
        bound=lambda o: "negated DSM loss",
        plot_density=lambda o: False,
        held_out_in_fit=lambda o: False,
    )


# ---------------------------------------------------------------------------------------
# ddpm


def _build_ddpm(event_shape: tuple[int, ...], opts: dict[str, Any]) -> torch.nn.Module:
    from pyro_gen.diffusion import build_ddpm

    return build_ddpm(
        event_shape,
        schedule=opts["schedule"],
        param=opts["param"],
        objective=opts["diffusion_objective"],
        timesteps=opts["timesteps"],
        num_bins=opts.get("num_bins", 256),
        ema_decay=opts.get("ema_decay") or None,  # runs from before the option: no EMA
    )


def _ddpm_step_callbacks(opts: dict[str, Any]) -> tuple[Callable[..., Any], ...]:
    from pyro_gen.diffusion import ema_callback

    return (ema_callback,) if opts.get("ema_decay") else ()


def _ddpm_sample(model: Any, n: int, sampler: str | None, steps: int | None) -> torch.Tensor:
    if sampler in SCORE_SAMPLERS:
        return _score_sample(model, n, sampler, steps)
    kwargs = {k: v for k, v in (("sampler", sampler), ("steps", steps)) if v is not None}
    return model.sample(n, **kwargs)


# Steps of the bound sampled per example when T is larger (sampled_variational_bound): with
# L_0 exact and 16 geometric strata for the rest, 17 network passes an example where the
# whole bound takes T (1,000 for MNIST: hours on a CPU for the test set).
BOUND_STRATA = 16


def _ddpm_bound(ev: Evaluation) -> dict[str, Any]:
    """The test ELBO and bits/dim from it for images: every one of the T terms of the bound
    (one draw of :math:`x_t` each) for T up to 17, else the unbiased stratified estimate of
    :func:`~pyro_gen.diffusion.sampled_variational_bound` (:math:`L_T` and :math:`L_0`
    exact, one step drawn per example in each of 16 geometric strata of the rest).

    The time plate's own estimate (one step per example, weighted by T) is unbiased but
    heavy-tailed: on moons (T = 100, 1,000 test points) its standard error was 1.9 nats
    against 0.056 for the whole bound, a variance 1,000 times larger at a hundredth of the
    cost, and with 64 points (T = 20) it read -24 +- 8 where the bound was -512 +- 60. On a
    trained moons DDPM (T = 500, 2,000 points) the stratified estimate read 2.91 +- 0.06
    nats against the whole bound's 2.84 +- 0.04, its spread over examples 1.4 times larger
    at 1/29 of the cost. Its joint is no density either, so there is no
    IWAE (iwae_log_likelihood refuses it). The bound is the network's whatever the training
    objective: L_simple reweights its terms and drops the decoder, so its negation is no
    ELBO."""
    from pyro_gen.diffusion import sampled_variational_bound, variational_bound

    view, model = ev.view, ev.model
    x = view.transform(view.x) if view.transform is not None else view.x
    x = x.to(module_device(model), torch.get_default_dtype())
    progress = not getattr(ev.args, "no_progress", False)
    steps = model.schedule.num_timesteps
    with torch.no_grad():
        if steps <= BOUND_STRATA + 1:
            bound = variational_bound(model, x, progress=progress)
        else:
            bound = sampled_variational_bound(model, x, strata=BOUND_STRATA)
    results: dict[str, Any] = {"num_test": int(x.shape[0])}
    with_se(results, "test_elbo", -bound["total"])
    results["bound_passes_per_example"] = min(steps, BOUND_STRATA + 1)
    if view.levels is not None:
        dims = math.prod(view.event_shape)
        results["bits_per_dim"] = bits_per_dim_from_nats(results["test_elbo"], dims)
    return results


def _ddpm_evaluate(ev: Evaluation) -> dict[str, Any]:
    from pyro_gen.diffusion import (
        DDPMScore,
        probability_flow_bits_per_dim,
        probability_flow_log_prob,
    )

    results = _ddpm_bound(ev)
    if not ev.args.probability_flow:
        return results
    view, ema = ev.view, ev.model.ema
    x = view.transform(view.x) if view.transform is not None else view.x
    # The weights that sample, loaded once around the whole solve: DDPMScore's own swap per
    # score call changes them in place under the exact divergence's autograd graph.
    with ema.average_parameters() if ema is not None else contextlib.nullcontext():
        score = DDPMScore(ev.model, use_ema=False)
        if view.levels is not None:
            # Two ways to meet the discrete pixels: uniform dequantization (Song et al.),
            # which a first noise level wider than a bin makes costly even for an exact
            # score, and the DDPM's own decoder, term by term comparable with the bound.
            bpd = probability_flow_bits_per_dim(score, x, num_bins=view.levels)
            with_se(results, "probability_flow_bits_per_dim", bpd)
            bpd = probability_flow_bits_per_dim(score, x, num_bins=view.levels, endpoint="decoder")
            with_se(results, "probability_flow_decoder_bits_per_dim", bpd)
        else:
            with_se(results, "probability_flow_log_likelihood", probability_flow_log_prob(score, x))
    return results


SCORE_MODELS: dict[str, ModelSpec] = {
    "ncsn": _score_spec("ve", "langevin"),
    "sde": _score_spec("vp", "pc"),
    "ddpm": ModelSpec(
        build=_build_ddpm,
        data_kind=lambda o: "unit",
        options=("schedule", "param", "diffusion_objective", "timesteps", "ema_decay"),
        # Analytic KL per time step: the reduced-variance form of the bound.
        loss=lambda shape, o: TraceMeanField_ELBO(),
        step_callbacks=_ddpm_step_callbacks,
        # Runs from before --ema-decay existed have none and sample without an average.
        added_later={"ema_decay": 0},
        evaluate=_ddpm_evaluate,
        # its bound has no IWAE (see _ddpm_bound); the ODE likelihood on request
        evaluate_options=lambda o, data: ("num_test", "probability_flow"),
        samplers=("ancestral", "ddim", *SCORE_SAMPLERS),
        # the ancestral chain runs all T steps (DDIM takes fewer): --steps was refused by
        # DDPM.sample, in its own words (sampler='ddim'), once the run was loaded
        fixed_step_samplers=("ancestral", *ADAPTIVE_SAMPLERS),
        default_sampler="ancestral",
        sample=_ddpm_sample,
        # fit scores held-out data with the training objective: L_simple is no bound
        bound=lambda o: (
            "ELBO" if o["diffusion_objective"] == "elbo" else "negated L_simple (not a bound)"
        ),
    ),
}
