"""Property tests (hypothesis) over shapes, batch shapes and random inputs."""

from __future__ import annotations

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.autograd.functional import jacobian

from pyro_gen import transforms as T

SETTINGS = settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
batch_shapes = st.sampled_from([(), (1,), (3,), (2, 3)])


def _perturb(t: torch.nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in t.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen, dtype=p.dtype))


def _check(t, x: torch.Tensor, event_dims: int) -> None:
    y = t(x)
    torch.testing.assert_close(t.inv(y.clone()), x, atol=1e-6, rtol=0)
    ladj = t.log_abs_det_jacobian(x, y)
    assert ladj.shape == x.shape[: x.dim() - event_dims]
    x0 = x.reshape((-1,) + x.shape[x.dim() - event_dims :])[0]
    J = jacobian(lambda v: t(v.reshape(x0.shape)).reshape(-1), x0.reshape(-1))
    torch.testing.assert_close(
        ladj.reshape(-1)[0], torch.linalg.slogdet(J)[1], atol=1e-8, rtol=1e-6
    )


@SETTINGS
@given(
    dim=st.integers(2, 7),
    batch=batch_shapes,
    mask=st.sampled_from(["alternating", "half"]),
    parity=st.integers(0, 1),
    affine=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_vector_coupling(dim, batch, mask, parity, affine, seed) -> None:
    make = T.affine_coupling if affine else T.additive_coupling
    t = make(dim, mask=mask, parity=parity, hidden_dims=[8]).double()
    _perturb(t, seed)
    x = 3.0 * torch.randn(*batch, dim, dtype=torch.float64)
    _check(t, x, 1)


@settings(SETTINGS, max_examples=5)  # conv conditioners: the slowest Jacobians here
@given(
    c=st.integers(1, 3),
    hw=st.sampled_from([(2, 2), (2, 4), (4, 2)]),
    batch=batch_shapes,
    mask=st.sampled_from(["checkerboard", "channel"]),
    seed=st.integers(0, 2**16),
)
def test_image_coupling(c, hw, batch, mask, seed) -> None:
    if mask == "channel" and c < 2:
        c = 2
    t = T.affine_coupling((c, *hw), mask=mask, hidden_channels=4, num_blocks=1).double()
    _perturb(t, seed)
    _check(t, torch.randn(*batch, c, *hw, dtype=torch.float64), 3)


@SETTINGS
@given(
    dim=st.integers(1, 5),
    batch=batch_shapes,
    maf=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_autoregressive(dim, batch, maf, seed) -> None:
    make = T.masked_autoregressive if maf else T.inverse_autoregressive
    order = torch.randperm(dim, generator=torch.Generator().manual_seed(seed))
    t = make(dim, [max(2 * dim, 4)], order=order).double()
    _perturb(t, seed)
    _check(t, torch.randn(*batch, dim, dtype=torch.float64), 1)


@SETTINGS
@given(
    c=st.integers(1, 3),
    h=st.sampled_from([2, 4, 6]),
    w=st.sampled_from([2, 4]),
    batch=batch_shapes,
)
def test_squeeze_is_a_volume_preserving_permutation(c, h, w, batch) -> None:
    t = T.Squeeze((c, h, w))
    x = torch.randn(*batch, c, h, w)
    y = t(x)
    assert y.shape == (*batch, 4 * c, h // 2, w // 2)
    assert torch.equal(t.inv(y), x)
    assert torch.equal(y.flatten().sort().values, x.flatten().sort().values)
    assert torch.equal(t.log_abs_det_jacobian(x, y), torch.zeros(batch))


@SETTINGS
@given(c=st.integers(1, 2), levels=st.integers(1, 3), batch=batch_shapes)
def test_multiscale_shapes_and_round_trip(c, levels, batch) -> None:
    size = 2**levels
    ms = T.multi_scale((c, size, size), lambda s, last: [T.ActNorm(s)], num_levels=levels)
    ms = ms.double()
    x = torch.randn(*batch, c, size, size, dtype=torch.float64)
    z = ms.inv(x)  # initialises ActNorm on this batch
    assert z.shape == (*batch, c * size * size)
    torch.testing.assert_close(ms(z), x)
    ms.eval()
    _check(ms, torch.randn(*batch, c * size * size, dtype=torch.float64), 1)


@SETTINGS
@given(n=st.integers(1, 8), seed=st.integers(0, 1000), batch=batch_shapes)
def test_permute(n, seed, batch) -> None:
    t = T.permute(n, "random", seed=seed)
    x = torch.randn(*batch, n)
    assert torch.equal(t.inv(t(x)), x)
    assert torch.equal(t(x).sort(-1).values, x.sort(-1).values)
