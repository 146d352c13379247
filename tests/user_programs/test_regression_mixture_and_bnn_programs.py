"""Users' Pyro programs of kinds from Pyro's tutorials that the other user-program tests do
not hold, trained with ``fit`` and with Pyro's ``SVI``, scored with the evaluation helpers,
checkpointed and resumed:

- empirical Bayes regression as a ``PyroModule``: a ``PyroSample`` prior whose scale is a
  constrained ``PyroParam`` of the same module, ``AutoMultivariateNormal``,
  ``TraceMeanField_ELBO``;
- a truncated stick-breaking Dirichlet-process mixture (Pyro's DP-mixture tutorial) with the
  assignments enumerated by ``TraceEnum_ELBO`` and an ``ExponentialLR`` scheduler stepped
  by a callback;
- a Bayesian neural network of ``PyroModule[nn.Linear]`` layers with ``PyroSample`` weights,
  ``AutoLowRankMultivariateNormal`` and ``ClippedAdam``.

Checks are against Pyro's own behaviour (``fit(compile=False)`` takes ``SVI.step``'s steps
bit for bit on one batch per epoch; a resumed run equals a straight one) and closed forms
(the evidence of a Gaussian linear regression under its exact posterior).
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pyro.optim
import pytest
import torch
import torch.nn.functional as F
from pyro.infer import SVI, Trace_ELBO, TraceEnum_ELBO, TraceMeanField_ELBO
from pyro.infer.autoguide import AutoLowRankMultivariateNormal, AutoMultivariateNormal
from pyro.nn import PyroModule, PyroParam, PyroSample
from pyro.ops.indexing import Vindex
from torch.distributions import constraints

from pyro_gen.infer import evaluate_elbo, fit, iwae_log_likelihood
from tests.user_programs.test_user_programs import assert_same_store, resumed_and_straight

_g = torch.Generator().manual_seed(0)


def _state(*modules: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The param store and the modules' own parameters (a PyroModule's PyroParams)."""
    state = {k: v.detach().clone() for k, v in pyro.get_param_store().items()}
    for i, m in enumerate(modules):
        state.update({f"{i}.{k}": v.detach().clone() for k, v in m.named_parameters()})
    return state


def _svi(model, guide, optim, loss, batch, steps: int, after_step=None) -> None:
    svi = SVI(model, guide, optim, loss)
    for _ in range(steps):
        svi.step(*batch)
        if after_step is not None:
            after_step()


# ---------------------------------------------------------------------------------------
# empirical Bayes regression: the prior's scale is a PyroParam the ELBO trains

X = torch.randn(30, 3, generator=_g)
Y = X @ torch.tensor([1.0, -2.0, 0.5]) + 0.3 * torch.randn(30, generator=_g)


class EmpiricalBayes(PyroModule):
    def __init__(self) -> None:
        super().__init__()
        self.prior_scale = PyroParam(torch.tensor(1.0), constraint=constraints.positive)
        self.w = PyroSample(lambda self: dist.Normal(0.0, self.prior_scale).expand([3]).to_event(1))
        self.noise = PyroParam(torch.tensor(1.0), constraint=constraints.interval(0.01, 5.0))

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        w = self.w
        with pyro.plate("data", x.shape[0]):
            # (x * w).sum(-1) rather than x @ w broadcasts over a particle plate
            return pyro.sample("y", dist.Normal((x * w).sum(-1), self.noise), obs=y)


def _empirical_bayes():
    model = EmpiricalBayes()
    guide = AutoMultivariateNormal(model)
    guide(X, Y)  # its parameters exist before the first step (fit's docstring)
    return model, guide


def test_empirical_bayes_fit_is_pyro_svi_and_resumes_exactly(tmp_path):
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    model, guide = _empirical_bayes()
    _svi(model, guide, pyro.optim.Adam({"lr": 0.05}), TraceMeanField_ELBO(), (X, Y), 15)
    expected = _state(model)

    def run(directory, steps):
        pyro.clear_param_store()
        model, guide = _empirical_bayes()
        fit(model, [(X, Y)], guide=guide, steps=steps, optim=pyro.optim.Adam({"lr": 0.05}),
            loss=TraceMeanField_ELBO(), compile=False, checkpoint_dir=directory,
            progress=False)  # fmt: skip
        return _state(model)

    resumed, straight = resumed_and_straight(run, tmp_path, steps=15, stop=6)
    assert_same_store(straight, expected, exact=True)
    assert_same_store(resumed, straight, exact=True)
    assert float(expected["prior_scale"]) != 1.0  # the hyperparameter was trained


@pytest.mark.parametrize("batch_size", [7, 30])
def test_empirical_bayes_evidence_under_the_exact_posterior(batch_size):
    """With the posterior of w given the module's trained hyperparameters as the guide, both
    bounds are the evidence of Gaussian linear regression, in any batch size."""
    pyro.clear_param_store()
    model = EmpiricalBayes()
    with torch.no_grad():
        model.prior_scale = torch.tensor(0.7)
        model.noise = torch.tensor(0.4)
    s2, n2 = 0.7**2, 0.4**2
    cov = torch.linalg.inv(X.T @ X / n2 + torch.eye(3) / s2)
    mean = cov @ X.T @ Y / n2

    def posterior(x, y=None):
        pyro.sample("w", dist.MultivariateNormal(mean, cov))

    evidence = dist.MultivariateNormal(torch.zeros(30), s2 * X @ X.T + n2 * torch.eye(30))
    expected = float(evidence.log_prob(Y)) / 30
    data = (X, Y)
    elbo = evaluate_elbo(model, data, guide=posterior, batch_size=batch_size, num_particles=4)
    iwae = iwae_log_likelihood(model, data, guide=posterior, batch_size=batch_size, num_samples=4)
    assert elbo == pytest.approx(expected, abs=1e-4)
    assert iwae == pytest.approx(expected, abs=1e-4)


# ---------------------------------------------------------------------------------------
# a truncated stick-breaking Dirichlet-process mixture, assignments enumerated

T = 4
POINTS = torch.cat([torch.randn(15, 2, generator=_g) + 3, torch.randn(15, 2, generator=_g) - 3])
HELD_OUT = torch.cat([torch.randn(5, 2, generator=_g) + 3, torch.randn(5, 2, generator=_g) - 3])


def _mix_weights(beta: torch.Tensor) -> torch.Tensor:
    remaining = (1 - beta).cumprod(-1)
    return F.pad(beta, (0, 1), value=1) * F.pad(remaining, (1, 0), value=1)


def dp_mixture(data: torch.Tensor) -> None:
    # the tutorial's plates over sticks and components, as event dimensions: the sticks
    # are an event of the weights, so that a particle dimension broadcasts through them
    beta = pyro.sample("beta", dist.Beta(1.0, 1.5).expand([T - 1]).to_event(1))
    mu = pyro.sample("mu", dist.Normal(torch.zeros(T, 2), 5.0).to_event(2))
    with pyro.plate("data", data.shape[0]):
        z = pyro.sample("z", dist.Categorical(_mix_weights(beta)), infer={"enumerate": "parallel"})
        pyro.sample("obs", dist.Normal(Vindex(mu)[..., z, :], 1.0).to_event(1), obs=data)


def dp_guide(data: torch.Tensor) -> None:
    kappa = pyro.param("kappa", lambda: torch.full((T - 1,), 1.5), constraint=constraints.positive)
    tau = pyro.param("tau", lambda: 3 * torch.randn(T, 2))
    pyro.sample("beta", dist.Beta(torch.ones(T - 1), kappa).to_event(1))
    pyro.sample("mu", dist.Normal(tau, 1.0).to_event(2))


def _scheduled():
    args = {"optimizer": torch.optim.Adam, "optim_args": {"lr": 0.1}, "gamma": 0.9}
    return pyro.optim.ExponentialLR(args)


def test_dp_mixture_fit_is_pyro_svi_with_its_scheduler_and_resumes_exactly(tmp_path):
    loss = TraceEnum_ELBO(max_plate_nesting=1)
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    dp_guide(POINTS)
    optim = _scheduled()
    _svi(dp_mixture, dp_guide, optim, loss, (POINTS,), 8, after_step=optim.step)
    expected = _state()

    def run(directory, steps):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        dp_guide(POINTS)  # the random start of tau, drawn as the SVI loop drew it
        optim = _scheduled()
        result = fit(dp_mixture, [POINTS], guide=dp_guide, steps=steps, optim=optim, loss=loss,
                     callbacks=[lambda record, model: optim.step()], eval_data=HELD_OUT,
                     compile=False, checkpoint_dir=directory, progress=False)  # fmt: skip
        return _state(), result.history[-1]

    (resumed, last_resumed), (straight, last) = resumed_and_straight(run, tmp_path, 8, stop=3)
    assert_same_store(straight, expected, exact=True)
    assert_same_store(resumed, straight, exact=True)
    assert last_resumed["train_loss"] == last["train_loss"]
    assert last_resumed["test_elbo"] == last["test_elbo"]


def test_dp_mixture_elbo_sums_out_the_assignments_as_traceenum_elbo():
    """The held-out ELBO, the assignments summed out example by example and the sticks and
    means drawn once for all batches, is Pyro's ``TraceEnum_ELBO`` per point (Monte Carlo,
    both with 400 draws: they differed by at most 0.09 over four seeds). Drawing the
    assignments from the prior instead gives -20.5 for -6.3, and counting the global terms
    (-0.97 a point) once per batch of 4 would move it by 1.9."""
    pyro.clear_param_store()
    # a guide near the posterior (the means at the clusters), so 400 draws estimate closely
    pyro.param("tau", torch.tensor([[3.0, 3.0], [-3.0, -3.0], [0.0, 0.0], [0.0, 0.0]]))
    pyro.set_rng_seed(0)
    loss = TraceEnum_ELBO(max_plate_nesting=1, num_particles=400, vectorize_particles=True)
    expected = -loss.loss(dp_mixture, dp_guide, HELD_OUT) / len(HELD_OUT)
    values = evaluate_elbo(dp_mixture, HELD_OUT, guide=dp_guide, batch_size=4, num_particles=400,
                           per_example=True)  # fmt: skip
    assert values.shape == (10,)
    assert float(values.mean()) == pytest.approx(expected, abs=0.25)
    iwae = iwae_log_likelihood(dp_mixture, HELD_OUT, guide=dp_guide, batch_size=4, num_samples=400)
    assert iwae > float(values.mean())  # -4.9 for -6.3 (the draws' spread: 0.1)


# ---------------------------------------------------------------------------------------
# a Bayesian neural network of PyroModule[nn.Linear] layers

BX = torch.randn(24, 2, generator=_g)
BY = torch.sin(BX[:, 0]) + 0.1 * torch.randn(24, generator=_g)


class BNN(PyroModule):
    def __init__(self, hidden: int = 4) -> None:
        super().__init__()
        self.l1 = PyroModule[torch.nn.Linear](2, hidden)
        self.l1.weight = PyroSample(dist.Normal(0.0, 1.0).expand([hidden, 2]).to_event(2))
        self.l1.bias = PyroSample(dist.Normal(0.0, 1.0).expand([hidden]).to_event(1))
        self.l2 = PyroModule[torch.nn.Linear](hidden, 1)
        self.l2.weight = PyroSample(dist.Normal(0.0, 1.0).expand([1, hidden]).to_event(2))
        self.l2.bias = PyroSample(dist.Normal(0.0, 1.0).expand([1]).to_event(1))

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        mean = self.l2(torch.tanh(self.l1(x))).squeeze(-1)
        sigma = pyro.sample("sigma", dist.Uniform(0.0, 1.0))
        pyro.deterministic("mean", mean)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("obs", dist.Normal(mean, sigma), obs=y)
        return mean


def _bnn():
    model = BNN()
    guide = AutoLowRankMultivariateNormal(model, rank=2)
    guide(BX, BY)
    return model, guide


def _clipped():
    return pyro.optim.ClippedAdam({"lr": 0.02, "clip_norm": 1.0, "lrd": 0.99})


def test_bnn_fit_is_pyro_svi_resumes_and_is_scored(tmp_path):
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    model, guide = _bnn()
    _svi(model, guide, _clipped(), Trace_ELBO(), (BX, BY), 10)
    expected = _state()

    def run(directory, steps):
        pyro.clear_param_store()
        model, guide = _bnn()
        fit(model, [(BX, BY)], guide=guide, steps=steps, optim=_clipped(), compile=False,
            checkpoint_dir=directory, progress=False)  # fmt: skip
        return _state(), model, guide

    (resumed, _, _), (straight, model, guide) = resumed_and_straight(run, tmp_path, 10, stop=4)
    assert_same_store(straight, expected, exact=True)
    assert_same_store(resumed, straight, exact=True)
    # nn.Linear does not broadcast over a particle plate: particles are drawn one at a time
    pyro.set_rng_seed(1)
    with pytest.warns(UserWarning, match="does not run under a vectorized particle plate"):
        elbo = evaluate_elbo(model, (BX, BY), guide=guide, batch_size=7, num_particles=100)
    pyro.set_rng_seed(1)
    pyro_elbo = -Trace_ELBO(num_particles=100).loss(model, guide, BX, BY) / 24
    assert elbo == pytest.approx(pyro_elbo, abs=0.15)
    with pytest.warns(UserWarning, match="vectorized particle plate"):
        iwae = iwae_log_likelihood(model, (BX, BY), guide=guide, batch_size=7, num_samples=100)
    assert iwae > elbo - 0.05


# ---------------------------------------------------------------------------------------
# a guide written without the model's arguments


def test_a_guide_that_takes_no_data_is_told_to_take_the_models_arguments():
    """``guide=lambda: None`` for a model of data: the hint said to pass batches sliced to
    ``batch[:0]``, handing the model nothing too; now it says to give the guide the model's
    arguments (or ``data=()`` for a model without data)."""

    def model(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(0.0, 1.0), obs=x)

    def guide():
        pass

    for run in (
        lambda: evaluate_elbo(model, torch.zeros(4), guide=guide),
        lambda: fit(model, torch.zeros(4), guide=guide, steps=1, progress=False),
    ):
        with pytest.raises(ValueError, match=r"the guide \(\) does not take") as error:
            run()
        assert "It takes no data: give it the parameters" in str(error.value)
        assert "def guide(x)" in str(error.value) and "batch[:0]" not in str(error.value)
