"""``fit``'s ``train_loss`` is the loss per example, whichever way the data plate is batched.

Pyro scales the sites of a plate that subsamples ``B`` of ``N`` examples by ``N / B``, so a
step's loss estimates the whole data set's: per example it is the loss over ``N``, not over
the ``B`` examples of the batch (before, a model indexing a subsampled plate reported a
train_loss ``N / B`` times too large: 23 against a test ELBO of -5.8 at N = 200, B = 50).
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from torch import nn

from pyro_gen.infer import fit

N, B = 48, 12
X = torch.randn(N, 3) + 1.0


def _encoder() -> nn.Linear:
    torch.manual_seed(0)
    return nn.Linear(3, 4)


def _pair(enc: nn.Linear, subsample: bool):
    """A global mean and one local latent per example; the data are indexed through the
    plate (``subsample=idx``, Pyro's pattern for data held by the model) or passed as a
    batch of rows (the plate's size is the batch's)."""

    def rows(arg: torch.Tensor) -> tuple[torch.Tensor, dict]:
        if subsample:
            return X[arg], {"size": N, "subsample": arg}
        return arg, {"size": arg.shape[0]}

    def model(arg: torch.Tensor) -> None:
        x, plate = rows(arg)
        mu = pyro.sample("mu", dist.Normal(torch.zeros(3), 10.0).to_event(1))
        with pyro.plate("data", **plate):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(mu + z.unsqueeze(-1), 1.0).to_event(1), obs=x)

    def guide(arg: torch.Tensor) -> None:
        x, plate = rows(arg)
        pyro.module("enc", enc)
        m = pyro.param("m", torch.zeros(3))
        pyro.sample("mu", dist.Normal(m, 0.1).to_event(1))
        with pyro.plate("data", **plate):
            h = enc(x)
            pyro.sample("z", dist.Normal(h[:, 0], nn.functional.softplus(h[:, 1])))

    return model, guide


@pytest.mark.parametrize("subsample", [True, False])
def test_train_loss_is_pyros_loss_per_example(subsample: bool) -> None:
    batches = list(torch.arange(N).split(B)) if subsample else list(X.split(B))
    pyro.clear_param_store()
    model, guide = _pair(_encoder(), subsample)
    pyro.set_rng_seed(1)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.01}), Trace_ELBO())
    guide(batches[0])  # fit's warm-up trace creates the params before the first step
    pyro.set_rng_seed(1)
    steps = [svi.step(b) for b in batches]

    pyro.clear_param_store()
    model, guide = _pair(_encoder(), subsample)
    pyro.set_rng_seed(1)
    result = fit(model, batches, guide=guide, epochs=1, progress=False, compile=False,
                 optim=pyro.optim.Adam({"lr": 0.01}))  # fmt: skip
    # Each step's loss stands for N examples when the plate subsamples, else for its B.
    per_example = sum(steps) / N / len(batches) if subsample else sum(steps) / N
    assert result.history[0]["train_loss"] == pytest.approx(per_example, rel=1e-6)


def test_a_model_subsampling_its_whole_data_reports_per_example() -> None:
    """The data passed whole, the model drawing its minibatch (``subsample_size``): one
    call's loss stands for the N examples it was given."""

    def model(x: torch.Tensor) -> None:
        with pyro.plate("data", x.shape[0], subsample_size=B) as idx:
            pyro.sample("x", dist.Normal(pyro.param("loc", torch.zeros(3)), 1.0).to_event(1),
                        obs=x[idx])  # fmt: skip

    pyro.clear_param_store()
    pyro.set_rng_seed(2)
    result = fit(model, [X], guide=lambda x: None, steps=1, progress=False,
                 compile=False, optim=pyro.optim.SGD({"lr": 1e-9}))  # fmt: skip
    pyro.set_rng_seed(2)
    loss = Trace_ELBO().loss(model, lambda x: None, X)
    assert result.history[0]["train_loss"] == pytest.approx(loss / N, rel=1e-6)


def test_lightning_logs_the_same_per_example_loss() -> None:
    pytest.importorskip("lightning")
    from pyro_gen.lightning import LightningSVI

    pyro.clear_param_store()
    model, guide = _pair(_encoder(), subsample=True)
    batch = torch.arange(B)
    svi = LightningSVI(model, guide, example_batch=[batch])
    logged = {}
    svi.log = lambda name, value, **kw: logged.__setitem__(name, float(value))  # type: ignore[method-assign]
    pyro.set_rng_seed(4)
    value = svi.training_step([batch], 0)
    assert logged["train_loss"] == pytest.approx(float(value.detach()) / N, rel=1e-6)
