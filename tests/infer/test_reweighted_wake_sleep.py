"""Pyro's ReweightedWakeSleep, a loss of two terms (the model's and the guide's), through
``fit``, ``CompiledSVI`` and the Lightning adapter, against Pyro's own SVI loop.

RWS trains models with discrete latents (a sigmoid belief network here), for which the
reparameterized ELBO has no gradient; its ``loss_and_grads`` returns a tuple, which Pyro's
``SVI.step`` returns as it is.
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, ReweightedWakeSleep
from torch import nn

from pyro_gen.infer import fit
from pyro_gen.infer.compiled import CompiledSVI
from pyro_gen.infer.fit_read_back import NonFiniteLossError

D, Z, N, B = 12, 3, 64, 16


class SigmoidBeliefNet(nn.Module):
    """Binary latents z ~ Bernoulli(1/2)^Z, pixels x | z ~ Bernoulli(sigmoid(W z + b)), and an
    amortized guide q(z | x) = Bernoulli(sigmoid(V x + c)), written as plain Pyro."""

    def __init__(self) -> None:
        super().__init__()
        self.decoder = nn.Linear(Z, D)
        self.encoder = nn.Linear(D, Z)

    def model(self, x: torch.Tensor) -> None:
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Bernoulli(x.new_full((Z,), 0.5)).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(z)).to_event(1), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Bernoulli(logits=self.encoder(x)).to_event(1))


def rws() -> ReweightedWakeSleep:
    return ReweightedWakeSleep(num_particles=4, vectorize_particles=True, max_plate_nesting=1)


def _setup(seed: int = 0) -> tuple[SigmoidBeliefNet, list[torch.Tensor]]:
    pyro.clear_param_store()
    torch.manual_seed(seed)
    net = SigmoidBeliefNet()
    data = torch.bernoulli(torch.full((N, D), 0.3))
    return net, list(data.split(B))  # the user's own batches, taken in this order


def _pyro_run(epochs: int) -> tuple[list[tuple[float, float]], dict[str, torch.Tensor]]:
    net, batches = _setup()
    pyro.set_rng_seed(1)
    svi = SVI(net.model, net.guide, pyro.optim.Adam({"lr": 0.05}), rws())
    losses = [svi.step(b) for _ in range(epochs) for b in batches]
    return losses, {k: v.detach().clone() for k, v in net.state_dict().items()}


@pytest.mark.parametrize("compile", [False, None])
def test_fit_trains_as_pyros_svi_loop(compile: bool | None) -> None:
    """Per-epoch train_loss is the mean of the model's term (the negative importance
    weighted bound per example); the guide's term trains the encoder too. compile=False is
    Pyro's step bit for bit; the default takes the fused Adam update (equal to rounding)."""
    steps, expected = _pyro_run(epochs=2)
    assert all(isinstance(s, tuple) and len(s) == 2 for s in steps)
    net, batches = _setup()
    pyro.set_rng_seed(1)
    result = fit(
        net.model,
        batches,
        guide=net.guide,
        loss=rws(),
        optim=pyro.optim.Adam({"lr": 0.05}),
        epochs=2,
        progress=False,
        compile=compile,
    )
    per_epoch = [sum(s[0] for s in steps[i : i + 4]) / N for i in (0, 4)]
    got = [h["train_loss"] for h in result.history]
    exact = compile is False
    tol = {"rtol": 0.0, "atol": 0.0} if exact else {"rtol": 1e-5, "atol": 1e-5}
    torch.testing.assert_close(torch.tensor(got), torch.tensor(per_epoch), **tol)
    for name, value in net.state_dict().items():
        torch.testing.assert_close(value, expected[name], **tol)
    assert not torch.equal(net.encoder.weight, _setup()[0].encoder.weight)  # the guide trained


def test_compiled_svi_step_returns_both_terms_as_pyro() -> None:
    steps, _ = _pyro_run(epochs=1)
    net, batches = _setup()
    pyro.set_rng_seed(1)
    svi = CompiledSVI(net.model, net.guide, pyro.optim.Adam({"lr": 0.05}), rws())
    got = [svi.step(b) for b in batches]
    assert all(isinstance(g, tuple) and len(g) == 2 for g in got)
    torch.testing.assert_close(
        torch.tensor([[float(t) for t in g] for g in got]), torch.tensor(steps, dtype=torch.float32)
    )


class _GuideTermBecomesNaN(ReweightedWakeSleep):
    """RWS whose guide term reads NaN at one step (the model's term stays finite)."""

    def __init__(self, at: int) -> None:
        super().__init__(num_particles=4, vectorize_particles=True, max_plate_nesting=1)
        self.at, self.calls = at, 0

    def loss_and_grads(self, model, guide, *args, **kwargs):  # noqa: ANN001, ANN201
        theta, phi = super().loss_and_grads(model, guide, *args, **kwargs)
        self.calls += 1
        return theta, (math.nan if self.calls == self.at else phi)


def test_a_non_finite_guide_term_skips_the_update_and_names_the_step() -> None:
    net, batches = _setup()
    loss = _GuideTermBecomesNaN(at=3)
    svi = CompiledSVI(net.model, net.guide, pyro.optim.Adam({"lr": 0.05}), loss)
    svi.step(batches[0]), svi.step(batches[1])
    before = {k: v.clone() for k, v in net.state_dict().items()}
    theta, phi = svi.step(batches[2])
    assert not math.isfinite(float(theta)) and not math.isfinite(float(phi))
    for k, v in net.state_dict().items():  # the update was skipped
        assert torch.equal(v, before[k]), k
    net, batches = _setup()
    with pytest.raises(NonFiniteLossError, match="non-finite at step 3 .*nan"):
        fit(net.model, batches, guide=net.guide, loss=_GuideTermBecomesNaN(at=3),
            epochs=1, progress=False)  # fmt: skip
    assert all(torch.isfinite(p).all() for p in net.parameters())


@pytest.mark.filterwarnings(r"ignore:You are trying to `self.log\(\)`")
def test_lightning_adapter_trains_with_both_terms() -> None:
    """The adapter's surrogate carries the gradients ``loss_and_grads`` left (both terms')
    and reports the model's term."""
    pytest.importorskip("lightning")
    from pyro_gen.lightning import LightningSVI

    net, batches = _setup()
    svi = LightningSVI(net.model, net.guide, loss=rws(), example_batch=[batches[0]])
    pyro.set_rng_seed(3)
    theta, _ = rws().loss_and_grads(net.model, net.guide, batches[0])
    expected = {n: p.grad.clone() for n, p in net.named_parameters()}
    for p in net.parameters():
        p.grad = None
    pyro.set_rng_seed(3)
    value = svi._loss(svi._call([batches[0]]))
    assert float(value.detach()) == pytest.approx(theta)
    value.backward()
    for n, p in net.named_parameters():
        torch.testing.assert_close(p.grad, expected[n])
    assert svi.validation_step([batches[1]], 0).ndim == 0
