"""Building a model touches no global state, as building a Pyro autoguide does not: the
param store is the user's, and it is written only when a model or guide runs.

``VAE(guide="auto")`` and ``HierarchicalVAE(guide="auto")`` build their encoder at
construction (so a ``state_dict`` loads before the first step) by tracing the model once.
That trace registered the new model's decoder under the default names (``"decoder$$$..."``);
a second VAE with the same names, built earlier and trained next with plain ``SVI``, then
scored with its own decoder while the optimizer stepped the stored tensors: its decoder never
trained, silently (and ``JitTrace_ELBO`` failed with "Cannot insert a Tensor that requires
grad as a constant")."""

from __future__ import annotations

import pyro
import pytest
import torch
from pyro.infer import SVI, JitTrace_ELBO, Trace_ELBO

from pyro_gen.vae import VAE, HierarchicalVAE

SHAPE = (4, 4)


def _build(kind: str) -> torch.nn.Module:
    if kind == "vae":
        return VAE(SHAPE, z_dim=2, hidden_dim=8, guide="auto")
    return HierarchicalVAE(SHAPE, z_dims=(3, 2), hidden_dim=8, guide="auto")


@pytest.mark.parametrize("kind", ["vae", "hierarchical"])
def test_building_an_auto_guided_model_leaves_the_param_store_alone(kind) -> None:
    pyro.clear_param_store()
    pyro.param("users_own", torch.ones(2))
    _build(kind)
    assert list(pyro.get_param_store().keys()) == ["users_own"]
    assert torch.equal(pyro.param("users_own"), torch.ones(2))


@pytest.mark.parametrize("Elbo", [Trace_ELBO, JitTrace_ELBO])
def test_a_vae_built_before_another_still_trains_its_decoder(Elbo) -> None:
    torch.manual_seed(0)
    pyro.clear_param_store()
    first = VAE(SHAPE, z_dim=2, hidden_dim=8)
    _build("vae")  # same default names; only built, never run
    before = [p.detach().clone() for p in first.decoder.parameters()]
    elbo = Elbo(ignore_jit_warnings=True) if Elbo is JitTrace_ELBO else Elbo()
    svi = SVI(first.model, first.guide, pyro.optim.Adam({"lr": 1e-2}), elbo)
    x = torch.rand(4, *SHAPE).round()
    for _ in range(2):
        svi.step(x)
    for old, new in zip(before, first.decoder.parameters()):
        assert not torch.equal(old, new)
