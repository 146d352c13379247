"""Every model's ``sample(num_samples)`` takes a whole number >= 0 and names anything else:
torch's own errors were "The expanded size of the tensor (-1) isn't allowed in a leading,
non-existing dimension 0" and "torch.Size() takes an iterable of 'int' (item 0 is
'float')", naming neither the argument nor the model."""

from __future__ import annotations

import pytest
import torch

from pyro_gen.diffusion import build_ddpm
from pyro_gen.diffusion.score import ScoreModel
from pyro_gen.diffusion.sde import VPSDE
from pyro_gen.distributions import Flow
from pyro_gen.flows import RealNVP
from pyro_gen.gan import Generator
from pyro_gen.nn import MLPGenerator
from pyro_gen.nn.time_embedding import TimeMLP
from pyro_gen.transforms import affine_coupling
from pyro_gen.vae import VAE
from pyro_gen.vae.builders import build_vae

MODELS = {
    "VAE": lambda: VAE(event_shape=(4,), z_dim=2, hidden_dim=8),
    "hierarchical VAE": lambda: build_vae((4,), layers=2, z_dim=2, hidden_dim=8),
    "Flow": lambda: Flow(2, [affine_coupling(2, hidden_dims=[8])]),
    "RealNVP": lambda: RealNVP((2,), num_layers=2, hidden_dims=(8,)),
    "DDPM": lambda: build_ddpm((2,), timesteps=5, hidden_dim=8),
    "Generator": lambda: Generator(MLPGenerator(2, (2,), (8,))),
    "ScoreModel": lambda: ScoreModel(TimeMLP(2, 8, num_layers=1), VPSDE(), (2,)),
}


def _draw(model, n):
    if isinstance(model, ScoreModel):
        return model.sample(n, sampler="euler_maruyama", steps=2)
    return model.sample(n)


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("bad", [-1, 2.5, "3", torch.tensor(3)], ids=["-1", "2.5", "str", "tensor"])
def test_a_count_that_is_not_a_whole_number_is_named(name, bad):
    with pytest.raises(ValueError, match=r"num_samples must be a whole number >= 0, got"):
        _draw(MODELS[name](), bad)


@pytest.mark.parametrize("name", list(MODELS))
def test_zero_and_numpy_counts_draw_as_many(name):
    import numpy as np

    model = MODELS[name]()
    assert _draw(model, 0).shape[0] == 0
    assert _draw(model, np.int64(3)).shape[0] == 3
