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
from collections.abc import Callable, Iterator
from typing import Any

import torch
from pyro.infer import TraceMeanField_ELBO

from pyro_gen.cli_evaluate import bound_results, density_results, with_se
from pyro_gen.cli_spec import Evaluation, ModelSpec

#: the score-based samplers' command-line names (``pyro_gen.diffusion.SAMPLERS`` spelled
#: with hyphens, as options are)
SCORE_SAMPLERS = ("langevin", "euler-maruyama", "pc", "ode")


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


def _score_spec(sde: str, sampler: str) -> ModelSpec:
    return ModelSpec(
        build=_build_score,
        # continuous data: pixels dequantized into [0, 1], so the ODE density bounds bits/dim
        data_kind=lambda o: "dequantized",
        options=("sde", "weighting", "hidden_dim"),
        defaults={"sde": sde, "hidden_dim": 128},
        evaluate=density_results,
        samplers=SCORE_SAMPLERS,
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


@contextlib.contextmanager
def _scored_by_its_bound(model: Any) -> Iterator[None]:
    """A DDPM trained on L_simple runs its bound's sites while scored: its own objective
    reweights the terms and drops the decoder, so its negation is no ELBO (on moons,
    -17.6 where the bound, every term computed, was -403 nats). The network is the same."""
    objective = model.objective
    model.objective = "elbo"
    try:
        yield
    finally:
        model.objective = objective


def _ddpm_evaluate(ev: Evaluation) -> dict[str, Any]:
    from pyro_gen.diffusion import (
        DDPMScore,
        probability_flow_bits_per_dim,
        probability_flow_log_prob,
    )

    # The time-plate form's joint reweights one sampled step by T: an unbiased estimate of
    # the bound, but exp of it is no importance weight (on moons after one epoch its "IWAE"
    # read +539 nats against a test ELBO of -2.9), and iwae_log_likelihood refuses it. The
    # full chain's is, at T network calls per sample.
    iw = ev.model.joint_is_density
    with _scored_by_its_bound(ev.model):
        results = bound_results(ev, discrete=True, importance_weighted=iw)
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
        samplers=("ancestral", "ddim", *SCORE_SAMPLERS),
        sample=_ddpm_sample,
        # fit scores held-out data with the training objective: L_simple is no bound
        bound=lambda o: (
            "ELBO" if o["diffusion_objective"] == "elbo" else "negated L_simple (not a bound)"
        ),
    ),
}
