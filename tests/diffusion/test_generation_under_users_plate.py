"""A DDPM generating (``model(None, B)``) inside the user's own plate over the B examples, as
its training programs already may: generation opened a plate of its own, so under the user's
``pyro.plate("batch", B)`` it silently drew B x B examples (its plate went to dim -2), and
under ``pyro.plate("data", B)`` it failed with "duplicate plate 'data'". The user's plate is
now its plate over the examples, for the reverse chain and for any other sampler (DDIM here);
a plate over another number of examples is one clear error."""

from __future__ import annotations

import pyro
import pytest
import torch
from pyro import poutine

from pyro_gen.diffusion import DDPM
from tests.diffusion.user_network import Net

B = 3
SAMPLERS = {"ancestral": {}, "ddim": {"sampler": "ddim", "sampler_kwargs": {"steps": 2}}}


def _ddpm() -> DDPM:
    return DDPM(Net(), (2,), "linear", timesteps=4, form="full_chain")


@pytest.mark.parametrize("plate_name", ["data", "batch"])
@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_generates_one_example_per_element_of_the_users_plate(plate_name, sampler) -> None:
    torch.manual_seed(0)
    with pyro.plate(plate_name, B):
        trace = poutine.trace(_ddpm().model).get_trace(None, B, **SAMPLERS[sampler])
    for site in ("x_4", "x_0", "x"):
        node = trace.nodes[site]
        assert node["value"].shape == (B, 2)
        assert [f.name for f in node["cond_indep_stack"]] == [plate_name]
    # the same draws as without the user's plate, from the same seed
    torch.manual_seed(0)
    flat = poutine.trace(_ddpm().model).get_trace(None, B, **SAMPLERS[sampler])
    torch.testing.assert_close(trace.nodes["x"]["value"], flat.nodes["x"]["value"])


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_a_plate_over_another_number_of_examples_is_one_error(sampler) -> None:
    with pyro.plate("batch", B + 2), pytest.raises(ValueError, match="plate 'batch' holds 5"):
        _ddpm().model(None, B, **SAMPLERS[sampler])
