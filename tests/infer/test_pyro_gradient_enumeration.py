"""CompiledSVI's gradients on Pyro's test_enum.py pairs: discrete sites enumerated in guide
and model, masks and scales, Markov chains (an HMM in the model and in the guide), against
closed forms and hand-summed models.

The pairs are written again here (read from Pyro, not copied) and run through
:class:`~pyro_gen.infer.compiled.CompiledSVI` (``fit``'s default step) and through Pyro's
``loss.loss_and_grads``, each call on the same seed from the same param store
(pyro_gradient_checks.same_as_pyro): the loss and every parameter's gradient must be Pyro's,
to float rounding, and the step must take the path the pair states (its recorded program, or
Pyro's step after one log line saying why)."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
from pyro.distributions import constraints
from pyro.infer import TraceEnum_ELBO, config_enumerate
from torch.distributions import kl_divergence

from tests.infer.pyro_gradient_checks import COMPILED, _assert_near, _grads, same_as_pyro

# float64 throughout (tests/conftest.py, whose autouse fixture also clears the param store)
pytestmark = pytest.mark.usefixtures("float64_default")


# --- test_enum.py: discrete sites enumerated in guide and model ----------------------------


def _closed_form_grads(value: torch.Tensor) -> dict[str, torch.Tensor]:
    """d value / d(unconstrained param) for every param in the store."""
    names = list(pyro.get_param_store().keys())
    params = [pyro.param(name).unconstrained() for name in names]
    grads = torch.autograd.grad(value, params, allow_unused=True)
    return {n: g for n, g in zip(names, grads) if g is not None}


@pytest.mark.parametrize("scale", [10.0])
def test_elbo_bern_enumerated_in_the_guide(scale, caplog):
    """Pyro's test_elbo_bern (parallel): the loss and gradient are scale * KL(q || p) and its
    gradient, exactly, the guide's Bernoulli summed out."""

    @poutine.scale(scale=scale)
    def model():
        with pyro.plate("particles", 1):
            pyro.sample("z", dist.Bernoulli(0.25).expand_by([1]))

    @config_enumerate
    @poutine.scale(scale=scale)
    def guide():
        q = pyro.param("q", torch.tensor(0.5))
        with pyro.plate("particles", 1):
            pyro.sample("z", dist.Bernoulli(q).expand_by([1]))

    results, _ = same_as_pyro(
        model, guide, lambda: TraceEnum_ELBO(), [((), {})] * 3, COMPILED, caplog
    )
    q = pyro.param("q")
    kl = scale * kl_divergence(dist.Bernoulli(q), dist.Bernoulli(0.25))
    assert results[-1][0] == pytest.approx(float(kl.detach()), rel=1e-12)
    _assert_near(results[-1][1], _closed_form_grads(kl), 1e-12)


def test_elbo_normal_enumerated_by_sampling_in_the_guide(caplog):
    """Pyro's test_elbo_normal (parallel, num_samples=20000): a reparameterized guide site
    enumerated by 20000 draws; the gradient is that of KL(N(q, 1) || N(0, 1)) within 0.01."""

    def model():
        with pyro.plate("particles", 1):
            pyro.sample("z", dist.Normal(0.0, 1.0).expand_by([1]))

    @config_enumerate(num_samples=20000)
    def guide():
        q = pyro.param("q", torch.tensor(1.0))
        with pyro.plate("particles", 1):
            pyro.sample("z", dist.Normal(q, 1.0).expand_by([1]))

    results, _ = same_as_pyro(
        model, guide, lambda: TraceEnum_ELBO(), [((), {})] * 3, COMPILED, caplog
    )
    kl = kl_divergence(dist.Normal(pyro.param("q"), 1.0), dist.Normal(0.0, 1.0))
    _assert_near(results[-1][1], _closed_form_grads(kl), 0.01)


def test_non_mean_field_bern_bern_gradient(caplog):
    """Pyro's test_non_mean_field_bern_bern_elbo_gradient (parallel): q(z | y) depends on the
    enumerated y; the gradient is the closed form's, exactly."""

    def model():
        with pyro.plate("particles", 1):
            y = pyro.sample("y", dist.Bernoulli(0.33).expand_by([1]))
            pyro.sample("z", dist.Bernoulli(0.55 * y + 0.10))

    @config_enumerate
    def guide():
        q1 = pyro.param("q1", torch.tensor(0.43))
        q2 = pyro.param("q2", torch.tensor(0.27))
        with pyro.plate("particles", 1):
            y = pyro.sample("y", dist.Bernoulli(q1).expand_by([1]))
            pyro.sample("z", dist.Bernoulli(q2 * y + 0.10))

    results, _ = same_as_pyro(
        model, guide, lambda: TraceEnum_ELBO(), [((), {})] * 3, COMPILED, caplog
    )
    q1, q2 = pyro.param("q1"), pyro.param("q2")
    kl = kl_divergence(dist.Bernoulli(q1), dist.Bernoulli(0.33))
    kl = kl + q1 * kl_divergence(dist.Bernoulli(q2 + 0.10), dist.Bernoulli(0.65))
    kl = kl + (1.0 - q1) * kl_divergence(dist.Bernoulli(0.10), dist.Bernoulli(0.10))
    assert results[-1][0] == pytest.approx(float(kl.detach()), rel=1e-12)
    _assert_near(results[-1][1], _closed_form_grads(kl), 1e-12)


def _enum_params() -> None:
    for name, value in [
        ("guide_probs_x", [0.1, 0.9]),
        ("model_probs_x", [0.4, 0.6]),
        ("model_probs_y", [[0.75, 0.25], [0.55, 0.45]]),
        ("model_probs_z", [[0.3, 0.7], [0.2, 0.8]]),
    ]:
        pyro.param(name, torch.tensor(value), constraint=constraints.simplex)


def _probs():
    return [pyro.param(f"model_probs_{k}") for k in "xyz"]


def enum_plate_models(num_masked: int, scale: float):
    """Pyro's test_elbo_enumerate_plate_2: y enumerated inside the data plate (the harder of
    _1 and _2: its enumeration dim meets the plate's), the examples masked from
    ``num_masked`` on, under ``poutine.scale``; the hand model sums y out as a sequential
    plate over the unmasked examples only."""

    def auto_model(data):
        _enum_params()
        probs_x, probs_y, probs_z = _probs()
        x = pyro.sample("x", dist.Categorical(probs_x))
        mask = torch.arange(len(data)) < num_masked
        with poutine.scale(scale=scale), pyro.plate("data", len(data)), poutine.mask(mask=mask):
            y = pyro.sample("y", dist.Categorical(probs_y[x]), infer={"enumerate": "parallel"})
            pyro.sample("z", dist.Categorical(probs_z[y]), obs=data)

    def hand_model(data):
        _enum_params()
        probs_x, probs_y, probs_z = _probs()
        x = pyro.sample("x", dist.Categorical(probs_x))
        with poutine.scale(scale=scale):
            for i in pyro.plate("data", num_masked):
                y = pyro.sample(
                    f"y_{i}", dist.Categorical(probs_y[x]), infer={"enumerate": "parallel"}
                )
                pyro.sample(f"z_{i}", dist.Categorical(probs_z[y]), obs=data[i])

    @config_enumerate
    def guide(data):
        _enum_params()
        pyro.sample("x", dist.Categorical(pyro.param("guide_probs_x")))

    return auto_model, hand_model, guide


def test_elbo_enumerate_plate_masked_and_scaled(caplog):
    """Pyro's test_elbo_enumerate_plate_2 (masked, scale 10): the model's enumerated y and
    the guide's enumerated x, all summed out; the compiled step's loss and gradients are
    Pyro's, and exactly the hand-summed model's."""
    auto_model, hand_model, guide = enum_plate_models(num_masked=2, scale=10.0)
    data = torch.tensor([1, 0, 1])
    calls = [((data,), {})] * 3
    results, _ = same_as_pyro(
        auto_model, guide, lambda: TraceEnum_ELBO(max_plate_nesting=1), calls, COMPILED, caplog
    )
    hand = TraceEnum_ELBO(max_plate_nesting=0).differentiable_loss(hand_model, guide, data)
    assert results[-1][0] == pytest.approx(float(hand.detach()), rel=1e-12)
    _assert_near(results[-1][1], _closed_form_grads(hand), 1e-12)


@pytest.mark.parametrize("num_steps", [2])
def test_elbo_hmm_in_model(num_steps, caplog):
    """Pyro's test_elbo_hmm_in_model (parallel): a Markov chain of states enumerated in the
    model, a mean-field guide enumerated in parallel; the gradient's closed form in the
    number of steps."""
    init_probs = torch.tensor([0.5, 0.5])

    def model(data):
        trans = pyro.param(
            "transition_probs",
            torch.tensor([[0.9, 0.1], [0.1, 0.9]]),
            constraint=constraints.simplex,
        )
        locs = pyro.param("obs_locs", torch.tensor([-1.0, 1.0]))
        scale = pyro.param("obs_scale", torch.tensor(1.0), constraint=constraints.positive)
        x = None
        for i, y in pyro.markov(enumerate(data)):
            x = pyro.sample(f"x_{i}", dist.Categorical(init_probs if x is None else trans[x]))
            pyro.sample(f"y_{i}", dist.Normal(locs[x], scale), obs=y)

    @config_enumerate
    def guide(data):
        probs = pyro.param(
            "mean_field_probs", torch.ones(num_steps, 2) / 2, constraint=constraints.simplex
        )
        for i in pyro.markov(range(num_steps)):
            pyro.sample(f"x_{i}", dist.Categorical(probs[i]))

    calls = [((torch.ones(num_steps),), {})] * 3
    results, _ = same_as_pyro(model, guide, TraceEnum_ELBO, calls, COMPILED, caplog)
    expected = {
        "transition_probs": torch.tensor([[0.2, -0.2], [-0.2, 0.2]]) * (num_steps - 1),
        "obs_locs": torch.tensor([-num_steps, 0.0]),
        "obs_scale": torch.tensor(-float(num_steps)),
        "mean_field_probs": torch.tensor([[0.5, -0.5]] * num_steps),
    }
    _assert_near(results[-1][1], expected, 1e-9)


def test_elbo_hmm_in_guide(caplog):
    """Pyro's test_elbo_hmm_in_guide: the chain enumerated in parallel in the guide and in
    the model. Pyro's test checks golden values that agree with sequential enumeration; here
    the compiled step's gradient is Pyro's sequential one, computed afresh."""
    num_steps = 2
    init_probs = torch.tensor([0.5, 0.5])

    def chain(data, emit: bool) -> None:
        trans = pyro.param(
            "transition_probs",
            torch.tensor([[0.75, 0.25], [0.25, 0.75]]),
            constraint=constraints.simplex,
        )
        x = None
        for i, y in pyro.markov(enumerate(data)):
            x = pyro.sample(f"x_{i}", dist.Categorical(init_probs if x is None else trans[x]))
            if emit:
                emission = pyro.param(
                    "emission_probs",
                    torch.tensor([[0.75, 0.25], [0.25, 0.75]]),
                    constraint=constraints.simplex,
                )
                pyro.sample(f"y_{i}", dist.Categorical(emission[x]), obs=y)

    def model(data):
        chain(data, emit=True)

    def guide(data):
        chain(data, emit=False)

    data = torch.ones(num_steps)
    calls = [((data,), {})] * 3
    results, _ = same_as_pyro(
        model, config_enumerate(guide), TraceEnum_ELBO, calls, COMPILED, caplog
    )
    sequential = config_enumerate(guide, default="sequential")
    TraceEnum_ELBO().loss_and_grads(model, sequential, data)
    _assert_near(results[-1][1], _grads(), 1e-9)
