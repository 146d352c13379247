"""AutoAmortizedNormal's ``init_loc_fn``, held to Pyro's meaning (tests/infer/test_autoguide.py
in pyro-ppl/pyro: test_init_loc_fn, test_shapes and the helpful errors over every init
strategy): right after setup the guide's location for every example is the strategy's value
(the posterior median is the init value mapped to the support), for local sites of every
support and for the global sites beside them; per-example and broadcast values; one-line
errors naming the site; training, checkpoints and the compiled step with it."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer.autoguide import (
    init_to_feasible,
    init_to_generated,
    init_to_mean,
    init_to_median,
    init_to_sample,
    init_to_uniform,
    init_to_value,
)
from torch.distributions import biject_to

from pyro_gen.vae import AutoAmortizedNormal
from tests.vae.autoguide_init_model import LOCAL, MEANS, N, model


def started(init_loc_fn, x, **options):
    guide = AutoAmortizedNormal(model, hidden_dims=(16,), init_loc_fn=init_loc_fn, **options)
    guide.setup(x)
    return guide


def per_example(value, rows):
    return value.expand((rows,) + value.shape)


@pytest.mark.parametrize(
    "init_loc_fn, expected",
    [
        (init_to_mean, MEANS),
        # every support's feasible point: its bijection's image of 0
        (
            init_to_feasible,
            {
                "a": torch.tensor(1.0),
                "z": torch.zeros(2),
                "s": torch.tensor(1.0),
                "w": torch.full((3,), 1 / 3),
                "c": torch.zeros(2),
                "L": torch.eye(2),
            },
        ),
    ],
    ids=["mean", "feasible"],
)
def test_every_example_starts_at_the_strategys_value(init_loc_fn, expected):
    """As Pyro's test_init_loc_fn: the median right after setup is the init value, here the
    prior mean or the feasible point in closed form, for every example of the first call
    and for examples the guide has not seen, whatever the batch size."""
    x = torch.randn(N, 3)
    guide = started(init_loc_fn, x)
    for rows in (N, 11):
        median = guide.median(torch.randn(rows, 3))
        assert median["a"].item() == pytest.approx(expected["a"].item(), abs=1e-5)
        for name in LOCAL:
            want = per_example(expected[name], rows)
            assert torch.allclose(median[name], want, atol=1e-5), name


@pytest.mark.parametrize(
    "init_loc_fn",
    [
        init_to_median,
        init_to_sample,
        init_to_uniform,
        init_to_uniform(radius=0.5),
        init_to_generated(generate=lambda: init_to_sample),
    ],
    ids=["median", "sample", "uniform", "uniform(0.5)", "generated"],
)
def test_strategies_that_draw_start_every_example_at_one_of_their_draws(init_loc_fn):
    """Strategies that draw (init_to_sample, init_to_uniform, init_to_median's 15-draw
    estimate) draw per example; every example, seen or not, starts at the first example's
    value (in the support), with the location head's weights 0: their differences are
    noise, which fitted per example left a prior-only model's posterior off the prior
    after 150 steps (test_autoguide_pyro_suite's test_median with init_to_sample). The
    global AutoNormal starts at its own value."""
    x = torch.randn(N, 3)
    guide = started(init_loc_fn, x)
    for rows in (N, 9):
        median = guide.median(torch.randn(rows, 3))
        for name in LOCAL:
            value = guide.prototype_trace.nodes[name]["value"]
            support = guide.prototype_trace.nodes[name]["fn"].support
            assert bool(support.check(value).all()), name
            if init_loc_fn is not init_to_median or name in ("z", "s"):
                # (a multivariate site has no median: Pyro falls back to init_to_feasible)
                assert not torch.allclose(value[0], value[1]), name  # drawn per example
            want = per_example(value[0], rows)
            assert torch.allclose(median[name], want, atol=1e-5), name
        global_value = guide.global_guide.prototype_trace.nodes["a"]["value"]
        assert median["a"].item() == pytest.approx(global_value.item(), rel=1e-5)
    assert not guide.net[-1].weight[: guide.net[-1].out_features // 2].any()


def test_a_custom_init_loc_fn_as_in_pyros_test_init_loc_fn():
    """Pyro's test_init_loc_fn, with the sites of a model with a data plate: a function of
    the site returning chosen values, one per example for the locals."""
    inits = {
        "x": torch.randn(()),
        "y": torch.randn(5),
        "u": torch.randn(N),
        "v": torch.randn(N, 5),
    }

    def pyro_model(data):
        pyro.sample("x", dist.Normal(0.0, 1.0))
        pyro.sample("y", dist.MultivariateNormal(torch.zeros(5), torch.eye(5, 5)))
        with pyro.plate("data", data.shape[0]):
            pyro.sample("u", dist.Normal(0.0, 1.0))
            pyro.sample("v", dist.MultivariateNormal(torch.zeros(5), torch.eye(5, 5)))

    def init_loc_fn(site):
        return inits[site["name"]]

    guide = AutoAmortizedNormal(pyro_model, hidden_dims=(16,), init_loc_fn=init_loc_fn)
    data = torch.randn(N, 2)
    guide(data)
    median = guide.median(data)
    for name, value in inits.items():
        assert torch.allclose(median[name], value, atol=1e-4), name


def test_init_to_value_per_example_and_broadcast():
    """``init_to_value`` takes one value per example (the plate's shape) or one that
    broadcasts over the plate (one example's shape, or a scalar); sites it leaves out take
    its fallback. Per-example values are met on the examples of the first call; a
    broadcast value on every example."""
    x = torch.randn(N, 3)
    values = {
        "z": torch.tensor([0.5, -2.0]),  # one example's shape
        "s": torch.linspace(0.5, 3.0, N),  # one per example (positive)
        "w": torch.tensor([[0.7, 0.2, 0.1]]),  # (1, 3): broadcasts over the plate
        "a": 2.5,  # a Python number, for the global
    }
    guide = started(init_to_value(values=values, fallback=init_to_mean), x)
    median = guide.median(x)
    assert median["a"].item() == pytest.approx(2.5, rel=1e-5)
    assert torch.allclose(median["z"], per_example(values["z"], N), atol=1e-5)
    assert torch.allclose(median["s"], values["s"], atol=1e-4)
    assert torch.allclose(median["w"], values["w"].expand(N, 3), atol=1e-5)
    assert torch.allclose(median["c"], per_example(MEANS["c"], N), atol=1e-5)  # fallback
    unseen = guide.median(torch.randn(9, 3))
    assert torch.allclose(unseen["z"], per_example(values["z"], 9), atol=1e-5)
    assert torch.allclose(unseen["w"], values["w"].expand(9, 3), atol=1e-5)


def test_per_example_values_explained_by_the_inputs_carry_over_to_new_examples():
    """A per-example value that is an affine function of the inputs (a warm start from a
    linear map, say) is fitted by the encoder's location head, so examples the guide has
    not seen start where that function puts them (the linear encoder, hidden_dims=())."""

    def linear(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(0.0, 1.0).expand([2]).to_event(1))

    weight = torch.tensor([[1.0, -1.0], [0.5, 0.0], [2.0, 1.0]])
    x = torch.randn(8, 3)
    values = {"z": x @ weight + torch.tensor([0.3, -0.2])}
    guide = AutoAmortizedNormal(linear, hidden_dims=(), init_loc_fn=init_to_value(values=values))
    guide.setup(x)
    x_new = torch.randn(20, 3)
    want = x_new @ weight + torch.tensor([0.3, -0.2])
    assert torch.allclose(guide.median(x_new)["z"], want, atol=1e-4)


def test_inner_plates_and_an_outer_plate_of_the_model():
    """Per-example values of a local under an inner plate (dim -2) and under an outer plate
    of the model reach each example's own entries."""

    def plates(x):
        groups, data = pyro.plate("groups", 2, dim=-3), pyro.plate("data", x.shape[0], dim=-2)
        with groups, data, pyro.plate("parts", 3, dim=-1):
            pyro.sample("u", dist.LogNormal(0.0, 1.0))

    x = torch.randn(5, 4)
    value = torch.rand(2, 5, 3) + 0.1
    guide = AutoAmortizedNormal(
        plates, hidden_dims=(16,), init_loc_fn=init_to_value(values={"u": value})
    )
    guide.setup(x)
    assert guide.plate_name == "data"
    assert torch.allclose(guide.median(x)["u"], value, atol=1e-4)


def test_init_scale_is_kept_with_an_init_loc_fn():
    """As Pyro's test_init_scale: the scales start at init_scale (root mean square within a
    factor 2), the locations at the init values."""
    x = torch.randn(100, 5)
    guide = started(init_to_mean, x, init_scale=0.05)
    median, one_sd = guide.quantiles([0.5, 0.8413447], x)["z"]  # Phi(1) = 0.8413447
    assert torch.allclose(median, per_example(MEANS["z"], 100), atol=1e-5)
    rms = (one_sd - median).pow(2).mean().sqrt().item()
    assert 0.5 * 0.05 < rms < 2.0 * 0.05


def test_the_default_keeps_the_spread_of_the_encoders_random_weights():
    """Without init_loc_fn the locations start around the feasible point 0, spread over
    the examples by the encoder's random last layer (measured 15 nats better on MNIST than
    a common start, benchmarks/RESULTS.md), while init_to_feasible starts every example at
    exactly 0."""
    x = torch.randn(N, 3)
    default = AutoAmortizedNormal(model, hidden_dims=(16,))
    default.setup(x)
    loc = biject_to(dist.constraints.real).inv(default.median(x)["z"])
    assert loc.abs().max() > 1e-3 and loc.mean().abs() < 1.0
    feasible = started(init_to_feasible, x)
    assert torch.equal(feasible.median(x)["z"], torch.zeros(N, 2))


def test_a_misshapen_value_is_named_in_one_line():
    x = torch.randn(N, 3)
    wrong = {"z": torch.zeros(4), "s": torch.ones(N + 1), "a": torch.ones(2)}
    for name, value in wrong.items():
        guide = AutoAmortizedNormal(
            model, hidden_dims=(4,), init_loc_fn=init_to_value(values={name: value})
        )
        with pytest.raises(ValueError, match=rf"site '{name}' a value of shape") as error:
            guide(x)
        assert "\n" not in str(error.value)
        assert "broadcast" in str(error.value)


@pytest.mark.parametrize(
    "name, value",
    [
        ("s", -torch.ones(N)),  # positive
        ("w", torch.tensor([0.5, 0.6, 0.1])),  # simplex: sums to 1.2
        ("L", torch.tensor([[1.0, 0.0], [0.5, 0.5]])),  # not a correlation's Cholesky factor
        ("a", torch.tensor(0.0)),  # the global, positive
    ],
)
def test_a_value_outside_the_support_is_named_in_one_line(name, value):
    guide = AutoAmortizedNormal(
        model, hidden_dims=(4,), init_loc_fn=init_to_value(values={name: value})
    )
    with pytest.raises(ValueError, match=rf"site '{name}' a value outside its support") as error:
        guide(torch.randn(N, 3))
    assert "\n" not in str(error.value)


def test_a_guide_with_an_init_loc_fn_pickles():
    """Pyro's strategies are module functions and partials, so the guide (whose global
    AutoNormal keeps its strategy, as Pyro's autoguides do) still pickles."""
    import pickle

    x = torch.randn(N, 3)
    guide = started(init_to_value(values={"z": torch.ones(2)}, fallback=init_to_median), x)
    copy = pickle.loads(pickle.dumps(guide))
    pyro.set_rng_seed(0)
    a = guide(x)
    pyro.set_rng_seed(0)
    b = copy(x)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_init_loc_fn_must_be_callable():
    with pytest.raises(TypeError, match="init_loc_fn must be a Pyro init strategy"):
        AutoAmortizedNormal(model, init_loc_fn={"z": torch.zeros(2)})
