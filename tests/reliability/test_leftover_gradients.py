"""fit's first update starts from zero gradients, whatever the user left in ``.grad``."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pyro.optim
import pytest
import torch

from pyro_gen.infer import fit


def _first_step(compile: bool | None, leftover: bool) -> dict[str, torch.Tensor]:
    """One SGD step of a model with two ``pyro.param`` s (one constrained: its gradient sits
    on its unconstrained tensor) and a ``pyro.module`` network, after the user's own
    ``loss.backward()`` when ``leftover``."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    net = torch.nn.Linear(2, 2)
    x = torch.randn(16, 2)

    def model(x: torch.Tensor) -> None:
        pyro.module("net", net)
        loc = pyro.param("loc", torch.zeros(2))
        scale = pyro.param("scale", torch.ones(2), constraint=dist.constraints.positive)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(net(x) + loc, scale).to_event(1), obs=x)

    if leftover:  # e.g. the user checked a loss by hand before training
        loc = pyro.param("loc", torch.zeros(2))
        scale = pyro.param("scale", torch.ones(2), constraint=dist.constraints.positive)
        (net(x).sum() + 5.0 * loc.sum() + scale.sum()).backward()
    fit(
        model,
        x,
        guide=lambda x: None,
        steps=1,
        batch_size=16,
        optim=pyro.optim.SGD({"lr": 0.1}),
        compile=compile,
        progress=False,
    )
    store = pyro.get_param_store()
    return {**{n: store[n].detach().clone() for n in ("loc", "scale")}, **net.state_dict()}


@pytest.mark.parametrize("compile", [None, True, False])
def test_first_step_ignores_leftover_gradients(compile: bool | None) -> None:
    """Pyro's SVI adds gradients already in ``.grad`` to its first step's; fit's first
    update moved ``loc`` by 0.5 more (lr 0.1 times the leftover 5)."""
    clean = _first_step(compile, leftover=False)
    after_backward = _first_step(compile, leftover=True)
    for name, value in clean.items():
        assert torch.equal(value, after_backward[name]), name
