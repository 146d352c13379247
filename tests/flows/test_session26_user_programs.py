"""Ready-made flows in programs a Pyro user writes: an image CNF scored under two plates
and drawn by a vectorized ``Predictive``, and the size arguments users get wrong.

An image CNF's conv dynamics took one batch dim only, so ``log_prob`` of a ``(G, N, C, H, W)``
batch (a flow likelihood under nested plates, or ``Predictive(parallel=True)``'s particles)
failed inside ``conv2d``, and the error blamed the user's argument order. ``num_layers=0`` or
``-1`` (``depth``, CNF's ``num_blocks``) built a flow with no layers at all, a fixed standard
normal that SVI "trained" without a word; a ``num_levels`` too deep for the image failed in a
squeeze of a shape the user never passed.
"""

from __future__ import annotations

import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import Predictive

from pyro_gen.flows import CNF, MAF, NICE, NSF, Glow, RealNVP, ResidualFlow
from pyro_gen.transforms.ode_dynamics import ODEConvNet

FAST_ODE = dict(method="rk4", options={"step_size": 0.5})


def _image_cnf() -> CNF:
    torch.manual_seed(0)
    flow = CNF((1, 4, 4), hidden_dims=(4,), **FAST_ODE)
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.2 * torch.randn_like(p))  # away from the zero drift
    return flow


def test_conv_dynamics_take_any_batch_shape_and_one_time_per_example() -> None:
    torch.manual_seed(0)
    f = ODEConvNet(2, 4)
    z, t = torch.randn(3, 2, 2, 4, 4), torch.rand(3, 2)
    out = f(z, t)
    assert out.shape == z.shape
    for i in range(3):
        for j in range(2):
            torch.testing.assert_close(out[i, j], f(z[i, j], t[i, j]))
    # one time for all, and a single unbatched image
    torch.testing.assert_close(f(z, torch.tensor(0.3))[1], f(z[1], torch.tensor(0.3)))
    torch.testing.assert_close(f(z[0, 0], torch.tensor(0.3)), f(z[0, :1], torch.tensor(0.3))[0])


def test_an_image_cnf_scores_a_batch_under_two_plates_as_its_elements() -> None:
    flow = _image_cnf().eval()
    x = torch.rand(2, 3, 1, 4, 4)
    lp = flow.log_prob(x)
    assert lp.shape == (2, 3)
    torch.testing.assert_close(lp, flow.log_prob(x.reshape(6, 1, 4, 4)).reshape(2, 3))

    def model(x: torch.Tensor) -> None:
        with pyro.plate("groups", x.shape[0], dim=-2), pyro.plate("items", x.shape[1], dim=-1):
            pyro.sample("x", flow.distribution(), obs=x)

    trace = poutine.trace(model).get_trace(x)
    torch.testing.assert_close(trace.log_prob_sum(), lp.sum())


def test_a_vectorized_predictive_draws_an_image_cnf() -> None:
    flow = _image_cnf().eval()
    torch.manual_seed(1)
    draws = Predictive(flow.model, num_samples=2, parallel=True)(num_samples=3)["x"]
    assert draws.shape == (2, 3, 1, 4, 4)
    assert torch.isfinite(draws).all() and draws.unique().numel() == draws.numel()
    # the (2, 3) draws scored as one batch get the densities of their six elements
    flat = draws.reshape(6, 1, 4, 4)
    torch.testing.assert_close(flow.log_prob(draws).reshape(6), flow.log_prob(flat))


SIZE_ARGUMENTS = {
    "NICE num_layers": lambda v: NICE((2,), num_layers=v, hidden_dims=(4,)),
    "RealNVP num_layers": lambda v: RealNVP((2,), num_layers=v, hidden_dims=(4,)),
    "RealNVP image num_layers": lambda v: RealNVP(
        (1, 4, 4), num_layers=v, hidden_channels=4, num_blocks=1
    ),
    "MAF num_layers": lambda v: MAF((2,), num_layers=v, hidden_dims=(4,)),
    "NSF num_layers": lambda v: NSF((2,), num_layers=v, hidden_dims=(4,)),
    "ResidualFlow num_layers": lambda v: ResidualFlow((2,), num_layers=v, hidden_dims=(4,)),
    "Glow depth": lambda v: Glow((2,), depth=v, hidden_dims=(4,)),
    "CNF num_blocks": lambda v: CNF((2,), num_blocks=v, hidden_dims=(4,)),
    "Glow num_levels": lambda v: Glow(
        (1, 4, 4), depth=1, num_levels=v, hidden_channels=4, num_blocks=1
    ),
    "RealNVP num_levels": lambda v: RealNVP(
        (1, 4, 4), num_layers=1, num_levels=v, hidden_channels=4, num_blocks=1
    ),
    "RealNVP hidden_channels": lambda v: RealNVP(
        (1, 4, 4), num_layers=1, hidden_channels=v, num_blocks=1
    ),
}


@pytest.mark.parametrize("value", [0, -1, 2.5, True])
@pytest.mark.parametrize("name", list(SIZE_ARGUMENTS))
def test_a_size_argument_that_is_no_count_is_one_clear_error(name: str, value) -> None:
    argument = name.split()[-1]
    with pytest.raises(ValueError, match=rf"^{argument} must be a whole number >= 1, got "):
        SIZE_ARGUMENTS[name](value)


@pytest.mark.parametrize("value", [-1, 2.5])
def test_num_blocks_of_an_image_conditioner_is_a_count_from_zero(value) -> None:
    with pytest.raises(ValueError, match=r"^num_blocks must be a whole number >= 0, got "):
        RealNVP((1, 4, 4), num_layers=1, hidden_channels=4, num_blocks=value)
    # zero residual blocks is a conv net all the same (in, hidden, out convolutions)
    flow = RealNVP((1, 4, 4), num_layers=1, hidden_channels=4, num_blocks=0)
    assert flow.log_prob(torch.rand(2, 1, 4, 4)).shape == (2,)


@pytest.mark.parametrize(
    "make, most",
    [
        (lambda: Glow((1, 4, 4), depth=1, num_levels=3, hidden_channels=4, num_blocks=1), 2),
        (lambda: Glow((1, 6, 6), depth=1, num_levels=2, hidden_channels=4, num_blocks=1), 1),
        (lambda: RealNVP((1, 4, 4), num_layers=1, num_levels=3, hidden_channels=4), 2),
        (lambda: NSF((1, 4, 4), num_layers=1, num_levels=3, hidden_channels=4), 2),
    ],
    ids=["glow_4x4", "glow_6x6", "realnvp_4x4", "nsf_4x4"],
)
def test_too_many_levels_for_the_image_name_the_most_it_takes(make, most: int) -> None:
    with pytest.raises(ValueError, match=rf"num_levels=\d does not fit .* at most {most} "):
        make()


def test_the_levels_the_image_takes_are_built() -> None:
    # the most levels are still allowed, beyond the default's cap of 3
    glow = Glow((1, 16, 16), depth=1, num_levels=4, hidden_channels=4, num_blocks=1)
    assert glow.sample(2).shape == (2, 1, 16, 16)
    realnvp = RealNVP((1, 4, 4), num_layers=1, num_levels=2, hidden_channels=4, num_blocks=1)
    assert realnvp.log_prob(torch.rand(3, 1, 4, 4)).shape == (3,)
    # one level without a squeeze leaves odd sizes to the masks, as before
    assert RealNVP((1, 3, 5), num_layers=1, hidden_channels=4, num_blocks=1).sample(1).shape == (
        1,
        1,
        3,
        5,
    )


def test_glow_on_odd_images_says_that_every_level_squeezes() -> None:
    with pytest.raises(ValueError, match=r"Glow squeezes at every level, so H and W must be even"):
        Glow((3, 3), depth=1, hidden_channels=4, num_blocks=1)


@pytest.mark.parametrize("value", [0, 2.5])
def test_num_bins_that_is_no_count_is_one_clear_error(value) -> None:
    # bits_per_dim(x, num_bins=0) failed with "math domain error"; 2.5 bins were taken as 2,
    # a bits/dim of the wrong number of levels without a word
    flow = RealNVP((2,), num_layers=2, hidden_dims=(4,))
    with pytest.raises(ValueError, match=r"^num_bins must be a whole number >= 1, got "):
        flow.bits_per_dim(torch.rand(3, 2), num_bins=value)
    with pytest.raises(ValueError, match=r"^num_bins must be a whole number >= 1, got "):
        RealNVP((2,), num_layers=2, hidden_dims=(4,), num_bins=value)
