"""The diffusion models' training programs inside the user's own plate over the examples,
Pyro's minibatch idiom: ``with pyro.plate("data", N, subsample=idx): m.model(x[idx])``
(or any other name). They opened their own ``pyro.plate("data")`` at dim -1 and met
"Multiple sample sites named 'data'" (the same name) or "at plates 'data' and 'batch',
collide at dim=-1" (another). The user's plate is now their plate over the examples: the loss
is the flat batch's scaled by ``N / B``, as the subsample asks (same draws, same seed); a plate
at dim -1 over other examples gets one error."""

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
    "ddpm": lambda: DDPM(Net(), (2,), "linear", timesteps=10),
    "ddpm_full_chain": lambda: DDPM(Net(), (2,), "linear", timesteps=4, form="full_chain"),
}
N, B = 40, 8


def _loss(model, guide, *args) -> float:
    pyro.set_rng_seed(0)
    return Trace_ELBO().loss(model, guide, *args)


@pytest.mark.parametrize("plate_name", ["data", "batch"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_the_users_subsampled_plate_is_the_models_plate_over_examples(name, plate_name):
    pyro.clear_param_store()
    m = MODELS[name]()
    x = torch.randn(N, 2)
    idx = torch.arange(3, 3 + B)

    def within(part):
        def program(x):
            with pyro.plate(plate_name, N, subsample=idx):
                part(x[idx])

        return program

    flat = _loss(m.model, m.guide, x[idx])
    assert _loss(within(m.model), within(m.guide), x) == pytest.approx(N / B * flat, rel=1e-6)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_a_plate_over_other_examples_is_one_error(name):
    m = MODELS[name]()
    with pyro.plate("data", N), pytest.raises(ValueError, match="plate 'data' holds 40"):
        m.model(torch.randn(B, 2))
