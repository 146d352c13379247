"""The user's param store is theirs: a checkpoint of a user's program holds the params the
program registers or trains, not the other entries of the store (another model's params,
left there by the user), so that a resume neither writes over them nor refuses to go on
because one of them changed, and a resume into a cleared store does not bring them back.
"""

from __future__ import annotations

from pathlib import Path

import pyro
import pyro.distributions as dist
import pyro.optim
import torch
from pyro.distributions import constraints

from pyro_gen.infer import fit
from pyro_gen.infer.checkpoint import load_checkpoint

X = torch.randn(8, 3)  # 2 batches of 4 an epoch


def model(x: torch.Tensor) -> None:
    scale = pyro.param("scale", torch.ones(3), constraint=constraints.positive)
    with pyro.plate("data", x.shape[0]):
        pyro.sample("x", dist.Normal(0.0, scale).to_event(1), obs=x)


def train(run: Path, epochs: int) -> None:
    fit(model, X, guide=lambda x: None, batch_size=4, epochs=epochs, progress=False,
        compile=False, optim=pyro.optim.SGD({"lr": 0.01, "momentum": 0.9}),
        checkpoint_dir=run)  # fmt: skip


def straight_scale(epochs: int) -> torch.Tensor:
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    fit(model, X, guide=lambda x: None, batch_size=4, epochs=epochs, progress=False,
        compile=False, optim=pyro.optim.SGD({"lr": 0.01, "momentum": 0.9}))  # fmt: skip
    return pyro.param("scale").detach().clone()


def test_a_resume_leaves_the_users_other_params_alone(tmp_path):
    """A param of another model in the store when the run started was saved in the
    checkpoint and restored over the user's value on resume (7 became 0); one of another
    shape refused the resume ("param 'other_model' has shape (5,) here but (2,) in the
    checkpoint"), naming a param the model never used; a cleared store got it back."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    pyro.param("other_model", torch.zeros(2))
    train(tmp_path, epochs=1)
    assert list(load_checkpoint(tmp_path / "checkpoint.pt")["param_store"]["params"]) == ["scale"]

    pyro.clear_param_store()
    pyro.param("other_model", torch.full((2,), 7.0))
    train(tmp_path, epochs=2)
    assert torch.equal(pyro.param("other_model").detach(), torch.full((2,), 7.0))

    pyro.clear_param_store()
    pyro.param("other_model", torch.zeros(5), constraint=constraints.simplex)
    train(tmp_path, epochs=3)
    assert pyro.param("other_model").shape == (5,)

    pyro.clear_param_store()
    train(tmp_path, epochs=4)
    assert list(pyro.get_param_store().keys()) == ["scale"]
    resumed = pyro.param("scale").detach().clone()
    assert torch.equal(resumed, straight_scale(epochs=4))  # and the resumes were exact
