"""A diffusion model scoring a latent of the user's own Pyro model, trained with vectorized
particles (``Trace_ELBO(num_particles=P, vectorize_particles=True)``).

The user's program draws a global latent and hands the diffusion model data that depend on it,
``m.model(x - shift)``: under vectorized particles those data have the particles' dim in
front, ``(P, 1, B, *event)``. DDPM (both forms), ScoreModel and FlowMatching refused them
("expected data of shape (batch, 2), got (3, 1, 6, 2)"), although the same program ran one
particle at a time. Checked, deterministically: each particle's ELBO term in the vectorized
run equals the ELBO of the one-particle program replayed on that particle's draws; a user
whose data carry no outer plate still gets one error.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from torch import nn

from pyro_gen.diffusion import DDPM, VPSDE, FlowMatching, ScoreModel
from pyro_gen.transforms.continuous import ContinuousFlow

D = torch.float64
P, B = 3, 5


class Net(nn.Module):
    """A user's network of (x, t) for 2-D points."""

    def __init__(self, outputs: int = 2) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(3, outputs).double()

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = t.to(x.dtype).expand(x.shape[:1])[:, None] / 4
        return 0.5 * self.lin(torch.cat([x, t], -1))


# time_samples=T: the time plate takes every step, so its index draw (not replayable by
# poutine.condition) is the same in both runs; the per-example step offsets are the site "t"
MODELS = {
    "ddpm_time_plate": lambda: DDPM(Net(), (2,), timesteps=4, time_samples=4),
    "ddpm_full_chain": lambda: DDPM(Net(), (2,), timesteps=3, form="full_chain"),
    # Ho et al.'s L_simple with Nichol & Dhariwal's learned variances (L_hybrid)
    "ddpm_hybrid": lambda: DDPM(
        Net(4), (2,), timesteps=4, time_samples=4, objective="simple", variance="learned_range"
    ),
    # eval mode: step 1 and one step per stratum of 2..T for every example
    "ddpm_eval_strata": lambda: DDPM(Net(), (2,), timesteps=6, eval_strata=2).eval(),
    "score": lambda: ScoreModel(Net(), VPSDE(), (2,), time_samples=2),
    "score_bound": lambda: ScoreModel(Net(), VPSDE(), (2,), weighting="likelihood", bound=True),
    "flow_matching": lambda: FlowMatching(ContinuousFlow(Net(), (2,)), time_samples=2),
}


def _programs(m):
    def model(x):
        shift = pyro.sample("shift", dist.Normal(torch.zeros(2, dtype=D), 1.0).to_event(1))
        m.model(x - shift)

    def guide(x):
        loc = torch.full((2,), 0.3, dtype=D)
        shift = pyro.sample("shift", dist.Normal(loc, 0.1).to_event(1))
        m.guide(x - shift)

    return model, guide


def _particles(fn):
    def vectorized(*args):
        with pyro.plate("particles", P, dim=-3):
            return fn(*args)

    return vectorized


def _is_draw(site) -> bool:
    # sample sites of the program, not the plates' index draws
    return site["type"] == "sample" and type(site["fn"]).__name__ != "_Subsample"


def _elbo_terms(model, guide, x, values=None):
    if values is None:  # a fresh draw, the model replayed on it
        g = poutine.trace(guide).get_trace(x)
        return poutine.trace(poutine.replay(model, trace=g)).get_trace(x), g
    # both at the given draws
    g = poutine.trace(poutine.condition(guide, values)).get_trace(x)
    return poutine.trace(poutine.condition(model, values)).get_trace(x), g


def _per_particle(trace) -> torch.Tensor:
    trace.compute_log_prob()
    total = torch.zeros(P, dtype=D)
    for site in trace.nodes.values():
        if _is_draw(site) and site["log_prob"].dim():
            total = total + site["log_prob"].reshape(P, -1).sum(1)
    return total


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_each_vectorized_particle_scores_as_the_one_particle_program(kind):
    m = MODELS[kind]()
    model, guide = _programs(m)
    x = torch.randn(B, 2, dtype=D)
    torch.manual_seed(1)
    vm, vg = _elbo_terms(_particles(model), _particles(guide), x)
    vectorized = _per_particle(vm) - _per_particle(vg)
    drawn = {n: s["value"] for n, s in vg.nodes.items() if _is_draw(s) and not s["is_observed"]}
    assert "shift" in drawn and len(drawn) > 1
    for p in range(P):
        one_m, one_g = _elbo_terms(model, guide, x, {n: v[p] for n, v in drawn.items()})
        alone = one_m.log_prob_sum() - one_g.log_prob_sum()
        torch.testing.assert_close(vectorized[p], alone, rtol=1e-10, atol=1e-10)
    # and Pyro's own vectorized ELBO runs on it
    elbo = pyro.infer.Trace_ELBO(num_particles=P, vectorize_particles=True, max_plate_nesting=2)
    assert torch.isfinite(torch.tensor(elbo.loss(model, guide, x)))


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_data_of_the_wrong_event_shape_still_get_one_error(kind):
    m = MODELS[kind]()
    with pytest.raises(ValueError, match=r"data of shape \(batch, .*2.*got \(3, 1, 5, 3\)"):
        m.model(torch.zeros(3, 1, 5, 3, dtype=D))
