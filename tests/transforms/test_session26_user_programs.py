"""pyro_gen transforms in Pyro programs of the kinds in Pyro's tests and tutorials:
``JitTrace_ELBO`` over a flow with ``BatchNorm``, and image couplings built with sizes users
get wrong.

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


IMAGE_COUPLINGS = {
    "affine_coupling": lambda **kw: T.affine_coupling((2, 4, 4), **kw),
    "additive_coupling": lambda **kw: T.additive_coupling((2, 4, 4), mask="channel", **kw),
    "spline_coupling": lambda **kw: T.spline_coupling((2, 4, 4), num_bins=4, **kw),
    "conditional_affine_coupling": lambda **kw: T.conditional_affine_coupling((2, 4, 4), 3, **kw),
    "conditional_spline_coupling": lambda **kw: T.conditional_spline_coupling((2, 4, 4), 3, **kw),
}


@pytest.mark.parametrize("value", [0, -1, 2.5, True])
@pytest.mark.parametrize("name", list(IMAGE_COUPLINGS))
def test_an_image_conditioner_width_that_is_no_count_is_one_clear_error(name, value) -> None:
    # 0 built empty convolutions (a coupling stuck at the identity), -1 failed in torch with
    # "Trying to create tensor with negative dimension", 2.5 in a conv's groups check
    with pytest.raises(ValueError, match=r"^hidden_channels must be a whole number >= 1, got "):
        IMAGE_COUPLINGS[name](hidden_channels=value, num_blocks=1)


@pytest.mark.parametrize("name", list(IMAGE_COUPLINGS))
def test_an_image_conditioner_depth_is_a_count_from_zero(name) -> None:
    for value in (-1, 2.5):
        with pytest.raises(ValueError, match=r"^num_blocks must be a whole number >= 0, got "):
            IMAGE_COUPLINGS[name](hidden_channels=4, num_blocks=value)
    t = IMAGE_COUPLINGS[name](hidden_channels=4, num_blocks=0)
    if isinstance(t, T.ConditionalCoupling):
        t = t.condition(torch.randn(3))
    x = torch.randn(2, 2, 4, 4)
    torch.testing.assert_close(t.inv(t(x)), x)
