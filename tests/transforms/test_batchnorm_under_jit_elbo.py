"""``JitTrace_ELBO`` over a pyro_gen flow with ``BatchNorm``, as in Pyro's tests and tutorials.

``JitTrace_ELBO`` runs the first step eagerly and traces it; a trace keeps only what feeds its
outputs, so ``BatchNorm``'s running averages (updated in place, feeding nothing) stayed at
their first-step values: samples and eval-mode densities then came from the statistics of
one batch, silently. Pyro's own ``BatchNorm`` fails under the trace ("Unsupported value
kind: Tensor"); ours now says why and what to do.
"""

from __future__ import annotations

import warnings

import pyro
import pyro.distributions as dist
import pyro.distributions.transforms as PT
import pytest
import torch
from pyro.infer import SVI, JitTrace_ELBO, Trace_ELBO

from pyro_gen import transforms as T

DATA = torch.randn(32, 3, generator=torch.Generator().manual_seed(0)) * 2.0 + 1.0


def _train(objective, eval_first: bool, steps: int = 4) -> tuple[list[float], dict]:
    torch.manual_seed(0)
    pyro.clear_param_store()
    flow = PT.ComposeTransformModule(
        [T.masked_autoregressive(3, [8]), T.BatchNorm(3), T.affine_coupling(3, hidden_dims=[8])]
    )
    if eval_first:
        flow.eval()
    base = dist.Normal(torch.zeros(3), 1.0).to_event(1)

    def model(x: torch.Tensor) -> None:
        pyro.module("flow", flow)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.TransformedDistribution(base, flow), obs=x)

    svi = SVI(model, lambda x: None, pyro.optim.Adam({"lr": 0.05}), objective)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the jit's tracer warnings
        losses = [svi.step(DATA) for _ in range(steps)]
    return losses, {k: v.detach().clone() for k, v in flow.state_dict().items()}


def test_jit_elbo_over_a_training_batchnorm_is_one_clear_error() -> None:
    with pytest.raises(RuntimeError, match=r"BatchNorm in training mode updates its running av"):
        _train(JitTrace_ELBO(), eval_first=False)


def test_jit_elbo_over_an_eval_batchnorm_takes_the_eager_steps() -> None:
    eager_losses, eager_state = _train(Trace_ELBO(), eval_first=True)
    jit_losses, jit_state = _train(JitTrace_ELBO(), eval_first=True)
    assert jit_losses == pytest.approx(eager_losses, rel=1e-5)
    for name, value in eager_state.items():
        torch.testing.assert_close(jit_state[name], value, rtol=1e-5, atol=1e-6)
    # eval mode: the running averages are fixed statistics, untouched by either run
    assert torch.equal(eager_state["1.running_mean"], torch.zeros(3))


def test_eager_training_moves_the_running_averages_every_step() -> None:
    # the behaviour the trace lost: each step's batch moves the averages (momentum 0.1)
    _, after_one = _train(Trace_ELBO(), eval_first=False, steps=1)
    _, after_two = _train(Trace_ELBO(), eval_first=False, steps=2)
    assert not torch.equal(after_one["1.running_mean"], after_two["1.running_mean"])
