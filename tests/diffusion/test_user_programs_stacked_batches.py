"""Data with an extra leading batch dim, ``(groups, batch, *event_shape)``, as a user who
stacked several batches passes it to ``svi.step``: the time-plate models (score model, flow
matching, DDPM) read dims before the batch as outer plates' dims, ``(..., 1, batch, *event)``
with a 1 at the time plate's dim, so such data met Pyro's "Shape mismatch inside
plate('time') at site x_t dim -2, 1 vs 2", naming a plate the user never wrote (a full-chain
DDPM: "Model and guide shapes disagree at site 'x_4'"). They now say
what shape is expected and how to pass stacked batches; the two ways they name work and give
the flat batch's loss (the models' sites are the same draws in another layout)."""

from __future__ import annotations

import pyro
import pytest
import torch
from pyro.infer import Trace_ELBO

from pyro_gen.diffusion import DDPM, VPSDE, FlowMatching, ScoreModel
from pyro_gen.transforms.continuous import ContinuousFlow
from tests.diffusion.user_network import Net

MODELS = {
    "score": lambda: ScoreModel(Net(), VPSDE(), (2,)),
    "flow_matching": lambda: FlowMatching(ContinuousFlow(Net(), (2,))),
    "ddpm": lambda: DDPM(Net(), (2,), "linear", timesteps=10, variance="fixed_small"),
    "ddpm_full_chain": lambda: DDPM(
        Net(), (2,), "linear", timesteps=4, variance="fixed_small", form="full_chain"
    ),
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_stacked_batches_get_one_clear_error(name):
    pyro.clear_param_store()
    m = MODELS[name]()
    x = torch.randn(3, 4, 2)
    for part in (m.model, m.guide):
        with pytest.raises(ValueError, match=r"\(3, 4, 2\).*x\.reshape\(-1, \*event_shape\)"):
            part(x)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_the_ways_the_error_names_give_the_flat_batchs_loss(name):
    pyro.clear_param_store()
    m = MODELS[name]()
    x = torch.randn(3, 4, 2)

    def loss(model, guide, *args):
        pyro.set_rng_seed(0)
        return Trace_ELBO().loss(model, guide, *args)

    def grouped(part):
        def program(x):
            with pyro.plate("groups", x.shape[0], dim=-3):
                part(x.unsqueeze(-3))

        return program

    flat = loss(m.model, m.guide, x.reshape(-1, 2))
    assert loss(grouped(m.model), grouped(m.guide), x) == pytest.approx(flat, rel=1e-6)
    # one example: the leading dim of size 1 sits at the time plate's dim, as outer plates' do
    one = x[:1, :1]
    assert loss(m.model, m.guide, one) == pytest.approx(loss(m.model, m.guide, one[0]), rel=1e-6)
