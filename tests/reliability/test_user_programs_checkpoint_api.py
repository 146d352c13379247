"""The checkpoint functions a user calls around their own training loop (Pyro's SVI loop, as
in Pyro's tutorials, with ``save_checkpoint`` after an epoch): their mistakes are named.
``modules=net`` (not a dict) and a torch optimizer in place of a Pyro one failed deep inside
with ``'Linear' object has no attribute 'items'`` / ``'Adam' object has no attribute
'get_state'``; a checkpoint path in a missing folder failed naming the temporary file
(``.c.pt.x1y2z3.tmp``) rather than the path the user gave.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pyro.optim
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO

from pyro_gen.infer.checkpoint import load_checkpoint, restore_checkpoint, save_checkpoint
from tests.reliability.identical_state import assert_identical

X = torch.randn(12, 2)


class Regression(pyro.nn.PyroModule):
    def __init__(self) -> None:
        super().__init__()
        self.linear = pyro.nn.PyroModule[torch.nn.Linear](2, 1)

    def forward(self, x: torch.Tensor) -> None:
        with pyro.plate("data", x.shape[0]):
            pyro.sample("y", dist.Normal(self.linear(x).squeeze(-1), 1.0), obs=x.sum(-1))


def svi_epoch(model: Regression, optim: pyro.optim.PyroOptim) -> None:
    svi = SVI(model, lambda x: None, optim, Trace_ELBO())
    for _ in range(3):
        svi.step(X)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"modules": "net"}, "modules must map names to torch.nn.Module .* got Regression"),
        ({"modules": "list"}, "modules must map names .* got list"),
        ({"optim": "torch"}, r"optim must be a pyro.optim.PyroOptim such as .* got Adam"),
    ],
)
def test_a_wrong_modules_or_optim_is_named_when_saving_and_restoring(tmp_path, kwargs, message):
    pyro.clear_param_store()
    net, optim = Regression(), pyro.optim.Adam({"lr": 0.01})
    svi_epoch(net, optim)
    path = tmp_path / "c.pt"
    save_checkpoint(path, modules={"model": net}, optim=optim)
    wrong = {
        "modules": {"net": net, "list": [net]}.get(kwargs.get("modules"), {"model": net}),
        "optim": torch.optim.Adam(net.parameters()) if "optim" in kwargs else optim,
    }
    with pytest.raises(TypeError, match=message):
        save_checkpoint(tmp_path / "other.pt", **wrong)
    assert not (tmp_path / "other.pt").exists()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(TypeError, match=message):
        restore_checkpoint(load_checkpoint(path), **wrong)
    assert_identical(net.state_dict(), before)  # nothing restored


def test_a_checkpoint_path_in_a_missing_folder_is_named_as_given(tmp_path):
    net = Regression()
    path = tmp_path / "no" / "such" / "c.pt"
    with pytest.raises(FileNotFoundError) as info:
        save_checkpoint(path, modules={"model": net}, optim=pyro.optim.Adam({}))
    assert info.value.filename == str(path)


def test_save_then_restore_around_pyros_own_loop_continues_exactly(tmp_path):
    """The correct calls still round-trip: two epochs equal one, a checkpoint, a restore
    into fresh objects, and one more epoch, bit for bit."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    net, optim = Regression(), pyro.optim.Adam({"lr": 0.01})
    initial = {k: v.clone() for k, v in net.state_dict().items()}
    svi_epoch(net, optim)
    svi_epoch(net, optim)
    straight = {k: v.clone() for k, v in net.state_dict().items()}

    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    net, optim = Regression(), pyro.optim.Adam({"lr": 0.01})
    net.load_state_dict(initial)
    svi_epoch(net, optim)
    save_checkpoint(tmp_path / "c.pt", modules={"model": net}, optim=optim)
    pyro.clear_param_store()
    resumed, resumed_optim = Regression(), pyro.optim.Adam({"lr": 0.01})
    svi_epoch(resumed, resumed_optim)  # registers the params and optimizer state to restore
    restore_checkpoint(
        load_checkpoint(tmp_path / "c.pt"), modules={"model": resumed}, optim=resumed_optim
    )
    svi_epoch(resumed, resumed_optim)
    assert_identical(resumed.state_dict(), straight)
