"""The VAE family's models and guides inside the user's own plate over the examples, Pyro's
minibatch idiom: ``with pyro.plate("data", N, subsample=idx): vae.model(x[idx])`` (or any
other name). They opened their own ``pyro.plate("data")`` and met "Multiple sample sites
named 'data'" (the same name) or put the examples at dim -2 under the user's plate (another
name). The user's plate is now theirs over the examples: the loss is the flat batch's scaled
by ``N / B`` (same draws, same seed), an SGD step is the flat batch's at ``N / B`` times the
learning rate, and a plate at dim -1 over other examples gets one error. The Bayesian VAE,
whose decoder weights are global latents, and AutoAmortizedNormal, which like Pyro's
autoguides opens the model's plates itself, refuse such a plate with what to do instead
(Pyro said "duplicate plate 'data'"); built from the user's program, the autoguide works."""

from __future__ import annotations

import math
from collections.abc import Callable

import pyro
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO, TraceEnum_ELBO
from pyro.optim import SGD, Adam

from pyro_gen.vae import SSVAE, VAE, AutoAmortizedNormal, BayesianVAE, DiscreteVAE, HierarchicalVAE

N, B = 40, 8
X = torch.rand(N, 6, generator=torch.Generator().manual_seed(0)).round()
Y = torch.arange(N) % 3
IDX = torch.arange(5, 5 + B)


def _trace_elbo():
    return Trace_ELBO()


def _enum_elbo():
    return TraceEnum_ELBO(max_plate_nesting=1)


# name: (builder, full-data arguments, ELBO)
MODELS: dict[str, tuple[Callable, tuple, Callable]] = {
    "vae": (lambda: VAE((6,), z_dim=2, hidden_dim=8), (X,), _trace_elbo),
    "hierarchical_top_down": (
        lambda: HierarchicalVAE((6,), z_dims=(3, 2), hidden_dim=8),
        (X,),
        _trace_elbo,
    ),
    "hierarchical_bottom_up": (
        lambda: HierarchicalVAE((6,), z_dims=(3, 2), hidden_dim=8, inference="bottom_up"),
        (X,),
        _trace_elbo,
    ),
    "ssvae_labelled": (
        lambda: SSVAE((6,), num_classes=3, z_dim=2, hidden_dims=(8,)),
        (X, Y),
        _trace_elbo,
    ),
    "ssvae_unlabelled": (
        lambda: SSVAE((6,), num_classes=3, z_dim=2, hidden_dims=(8,)),
        (X,),
        _enum_elbo,
    ),
    "discrete_relaxed": (
        lambda: DiscreteVAE((6,), num_latents=2, num_categories=3, hidden_dims=(8,)),
        (X,),
        _trace_elbo,
    ),
    "discrete_enumerated": (
        lambda: DiscreteVAE(
            (6,), num_latents=1, num_categories=3, hidden_dims=(8,), inference="enumerate"
        ),
        (X,),
        _enum_elbo,
    ),
}


def _build(name: str):
    pyro.clear_param_store()
    pyro.set_rng_seed(1)  # the same weights for each build
    return MODELS[name][0]()


def _within(part: Callable, plate_name: str, idx: torch.Tensor) -> Callable:
    """The user's program: ``part`` on the rows ``idx`` under their own subsampled plate."""

    def program(*args):
        with pyro.plate(plate_name, N, subsample=idx):
            return part(*(a[idx] for a in args))

    return program


def _loss(elbo, model, guide, *args) -> float:
    pyro.set_rng_seed(0)
    return elbo.loss(model, guide, *args)


@pytest.mark.parametrize("plate_name", ["data", "batch"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_the_users_subsampled_plate_scales_the_flat_batchs_loss(name, plate_name):
    m = _build(name)
    _, args, elbo = MODELS[name]
    flat = _loss(elbo(), m.model, m.guide, *(a[IDX] for a in args))
    model, guide = _within(m.model, plate_name, IDX), _within(m.guide, plate_name, IDX)
    within = _loss(elbo(), model, guide, *args)
    assert math.isfinite(flat)
    assert within == pytest.approx(N / B * flat, rel=1e-5)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_an_sgd_step_under_the_users_plate_is_the_flat_step_scaled(name):
    # the gradients under the user's plate are N/B times the flat batch's, for every weight
    _, args, elbo = MODELS[name]
    steps = {}
    for under_plate in (True, False):
        m = _build(name)
        if under_plate:
            model, guide, lr, data = (
                _within(m.model, "data", IDX),
                _within(m.guide, "data", IDX),
                1e-3,
                args,
            )
        else:
            model, guide, lr, data = m.model, m.guide, 1e-3 * N / B, tuple(a[IDX] for a in args)
        pyro.set_rng_seed(0)
        SVI(model, guide, SGD({"lr": lr}), elbo()).step(*data)
        steps[under_plate] = {k: v.detach().clone() for k, v in m.state_dict().items()}
    start = _build(name).state_dict()
    assert any(not torch.equal(steps[True][k], start[k]) for k in start)  # it moved
    for k in start:
        torch.testing.assert_close(steps[True][k], steps[False][k], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_pyros_svi_trains_with_the_minibatch_idiom(name):
    m = _build(name)
    _, args, elbo = MODELS[name]

    def model(*args):
        with pyro.plate("data", N, subsample_size=B) as idx:
            m.model(*(a[idx] for a in args))

    def guide(*args):
        with pyro.plate("data", N, subsample_size=B) as idx:
            m.guide(*(a[idx] for a in args))

    start = {k: v.detach().clone() for k, v in m.state_dict().items()}
    svi = SVI(model, guide, Adam({"lr": 1e-2}), elbo())
    losses = [svi.step(*args) for _ in range(3)]
    assert all(math.isfinite(loss) for loss in losses)
    assert any(not torch.equal(v, m.state_dict()[k]) for k, v in start.items())


@pytest.mark.parametrize("name", sorted(MODELS))
def test_a_plate_over_other_examples_is_one_error(name):
    m = _build(name)
    _, args, _ = MODELS[name]
    batch = tuple(a[IDX] for a in args)
    for part in (m.model, m.guide):
        with pyro.plate("data", N), pytest.raises(ValueError, match="plate 'data' holds 40"):
            part(*batch)


def test_generating_under_the_users_plate_draws_its_examples():
    m = _build("vae")
    with pyro.plate("draws", 5):
        assert m.model(num_samples=5).shape == (5, 6)


@pytest.mark.parametrize("num_data", [None, N])
def test_the_bayesian_vae_refuses_a_plate_around_its_global_weights(num_data):
    pyro.clear_param_store()
    m = BayesianVAE((6,), z_dim=2, hidden_dims=(8,), num_data=num_data)
    for call in (lambda: m.model(X[IDX]), lambda: m.guide(X[IDX]), lambda: m.model()):
        with pyro.plate("data", N, subsample=IDX), pytest.raises(ValueError, match="num_data=N"):
            call()
    # its own plate still scales a minibatch of num_data
    assert math.isfinite(Trace_ELBO().loss(m.model, m.guide, X[IDX]))


@pytest.mark.parametrize("plate_name", ["data", "batch"])
def test_an_autoguide_built_from_the_users_program_scales_the_flat_batchs_loss(plate_name):
    losses = {}
    for under_plate in (True, False):
        m = _build("vae")
        if under_plate:
            model, data = _within(m.model, plate_name, IDX), (X,)
            plates = lambda x: pyro.plate(plate_name, N, subsample=IDX)  # noqa: E731
        else:
            model, data, plates = m.model, (X[IDX],), None
        guide = AutoAmortizedNormal(model, hidden_dims=(8,), create_plates=plates)
        pyro.set_rng_seed(0)
        guide(*data)  # its encoder, built at the first call, draws the same weights
        losses[under_plate] = _loss(Trace_ELBO(), model, guide, *data)
    assert losses[True] == pytest.approx(N / B * losses[False], rel=1e-5)


def test_an_autoguide_called_under_the_users_plate_says_how_to_build_it():
    m = _build("vae")
    m.guide = AutoAmortizedNormal(m.model, hidden_dims=(8,))
    with (
        pyro.plate("data", N, subsample=IDX),
        pytest.raises(ValueError, match="AutoAmortizedNormal\\(model\\)"),
    ):
        m.guide(X[IDX])
