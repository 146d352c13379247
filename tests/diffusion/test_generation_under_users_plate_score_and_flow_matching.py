"""A score model and a flow-matching model generating (``model(None, B)``) inside the user's
own plate over the B examples, as their training programs already may: generation opened a
plate of its own, so under the user's ``pyro.plate("batch", B)`` it silently drew B x B
examples (its plate went to dim -2), and under ``pyro.plate("data", B)`` it failed with
"duplicate plate 'data'". The user's plate is now their plate over the examples, as the
DDPM's (tests/diffusion/test_generation_under_users_plate.py); a plate over another number
of examples is one clear error."""

from __future__ import annotations

import pyro
import pytest
import torch
from pyro import poutine

from pyro_gen.diffusion import VPSDE, FlowMatching, ScoreModel
from pyro_gen.transforms.continuous import cnf
from tests.diffusion.user_network import Net

B = 3


def _score() -> ScoreModel:
    return ScoreModel(Net(), VPSDE(), (2,))


def _flow_matching() -> FlowMatching:
    return FlowMatching(cnf(2, (8,), method="rk4", options={"step_size": 0.5}))


# each model, its sampler settings, and its sites of the generative program
MODELS = {
    "score_pc": (_score, {"sampler": "pc", "sampler_kwargs": {"steps": 2}}, ("x_1", "x")),
    "score_ode": (
        _score,
        {"sampler": "ode", "sampler_kwargs": {"method": "rk4", "options": {"step_size": 0.5}}},
        ("x_1", "x"),
    ),
    "flow_matching": (_flow_matching, {"sampler": "ode"}, ("z", "x")),
}


@pytest.mark.parametrize("plate_name", ["data", "batch"])
@pytest.mark.parametrize("model", sorted(MODELS))
def test_generates_one_example_per_element_of_the_users_plate(plate_name, model) -> None:
    build, kwargs, sites = MODELS[model]
    torch.manual_seed(0)
    m = build()
    with pyro.plate(plate_name, B):
        trace = poutine.trace(m.model).get_trace(None, num_samples=B, **kwargs)
    for site in sites:
        node = trace.nodes[site]
        assert node["value"].shape == (B, 2)
        assert [f.name for f in node["cond_indep_stack"]] == [plate_name]
    # the same draws as without the user's plate, from the same seed
    torch.manual_seed(0)
    flat = poutine.trace(build().model).get_trace(None, num_samples=B, **kwargs)
    torch.testing.assert_close(trace.nodes["x"]["value"], flat.nodes["x"]["value"])


@pytest.mark.parametrize("model", sorted(MODELS))
def test_a_plate_over_another_number_of_examples_is_one_error(model) -> None:
    build, kwargs, _ = MODELS[model]
    with pyro.plate("batch", B + 2), pytest.raises(ValueError, match="plate 'batch' holds 5"):
        build().model(None, num_samples=B, **kwargs)
