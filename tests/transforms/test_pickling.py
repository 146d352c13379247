"""pyro_gen modules pickle (``torch.save`` of the whole module, ``copy.deepcopy``) after
``pyro.module`` registered them: the param store leaves a weakref on every parameter."""

from __future__ import annotations

import copy
import inspect
import io

import pyro
import pytest
import torch

import pyro_gen.diffusion as Df
import pyro_gen.distributions as D
import pyro_gen.flows as F
import pyro_gen.transforms as T
from pyro_gen.distributions.mixture import MixturePrior
from pyro_gen.distributions.vamp import VampPrior
from pyro_gen.nn.time_embedding import TimeMLP
from pyro_gen.transforms._base import PicklableModule


def test_public_modules_drop_the_param_store_weakrefs() -> None:
    # every public module class of these packages (the transforms' own classes are in the
    # registry's contract test) gets its __getstate__ from PicklableModule
    for package in (T, D, F, Df):
        for name in package.__all__:
            obj = getattr(package, name)
            if inspect.isclass(obj) and issubclass(obj, torch.nn.Module):
                if obj in (Df.EMA, Df.NoiseSchedule):  # hold no Pyro-registered parameters
                    continue
                assert issubclass(obj, PicklableModule | T.FlowTransformModule), name


BUILDERS = {
    "flow_model": lambda: F.build("realnvp", (2,), num_layers=2, hidden_dims=(4,)),
    "dequantized_flow": lambda: F.FlowModel(
        (2,), [T.affine_coupling(2, hidden_dims=[4])], dequantization="variational", num_bins=4
    ),
    "flow": lambda: D.Flow(2, [T.conditional_affine_coupling(2, 3, hidden_dims=[4])]),
    "ddpm": lambda: Df.DDPM(TimeMLP(2, 8, num_layers=1), (2,), "linear", timesteps=4),
    "mixture_prior": lambda: MixturePrior(2, num_components=3),
    "vamp_prior": lambda: VampPrior((4,), num_components=3),
}


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_pickles_after_pyro_module(name: str) -> None:
    module = BUILDERS[name]()
    pyro.module(name, module)
    assert any(hasattr(p, "unconstrained") for p in module.parameters())
    buf = io.BytesIO()
    torch.save(module, buf)
    buf.seek(0)
    for copied in (torch.load(buf, weights_only=False), copy.deepcopy(module)):
        assert copied.state_dict().keys() == module.state_dict().keys()
        for (k, a), b in zip(copied.state_dict().items(), module.state_dict().values()):
            torch.testing.assert_close(a, b, msg=k)
    # the param store still works with the module afterwards (its weakrefs come back)
    pyro.module(name, module)
    assert all(hasattr(p, "unconstrained") for p in module.parameters())
