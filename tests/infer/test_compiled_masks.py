"""The masked-assignment rewrite: the same values as the recorded op, and only where the
rewrite is exact."""

from __future__ import annotations

import pyro
import pytest
import torch
from torch.distributions import Uniform, kl_divergence
from torch.fx.experimental.proxy_tensor import make_fx

from pyro_gen.infer.compiled import CompiledSVI
from pyro_gen.infer.compiled_masks import fill_masked_assignments
from tests.infer.test_host_reads import MODELS

aten = torch.ops.aten


def _assignments(gm: torch.fx.GraphModule) -> int:
    writes = (aten.index_put_.default, aten.index_put.default)
    return sum(n.target in writes for n in gm.graph.nodes)


def _kl(p_low, p_high, q_low, q_high):
    # unvalidated, as Pyro's own sites hand them to the KL (validation reads the bounds)
    p, q = Uniform(p_low, p_high, validate_args=False), Uniform(q_low, q_high, validate_args=False)
    return kl_divergence(p, q)


def test_uniform_kl_becomes_a_masked_fill_with_the_same_values():
    """torch's KL(Uniform || Uniform) writes inf through a boolean mask (a host read on
    CUDA); the rewritten program gives the same values, infinities included."""
    g = torch.Generator().manual_seed(0)
    args = [torch.rand(64, generator=g) for _ in range(2)]
    args = [args[0], args[0] + 1, torch.rand(64, generator=g) * 0.2, torch.ones(64) + 0.5]
    gm = make_fx(_kl)(*args)
    assert _assignments(gm) == 1
    assert fill_masked_assignments(gm) == 1 and _assignments(gm) == 0
    for _ in range(3):  # fresh inputs, some supports nested and some not
        low = torch.rand(64, generator=g)
        new = [low, low + 1, torch.rand(64, generator=g) * 0.5, torch.ones(64) + 0.8]
        expected = _kl(*new)
        assert torch.isinf(expected).any() and torch.isfinite(expected).any()
        torch.testing.assert_close(gm(*new), expected, rtol=0, atol=0)


def _write_to_input(x, mask):
    x[mask] = 0.0
    return x * 2


def _write_read_twice(x, mask):
    y = x.exp()
    z = y + 1  # y is read before the write ...
    y[mask] = 0.0
    return y + z  # ... and after it


def _write_to_view(x, mask):
    y = x.exp()
    v = y.view(-1)
    v[mask.view(-1)] = 0.0
    return y


def _write_rows(x, rows):
    y = x.exp()
    y[rows] = 0.0  # a mask over the first dimension only
    return y


def _accumulate(x, mask):
    y = x.exp()
    return y.index_put_((mask,), torch.tensor(1.0), accumulate=True)


@pytest.mark.parametrize(
    "fn, mask_shape",
    [
        (_write_to_input, (3, 4)),
        (_write_to_view, (3, 4)),
        (_write_rows, (3,)),
        (_accumulate, (3, 4)),
    ],
)
def test_writes_the_rewrite_cannot_stand_for_are_kept(fn, mask_shape):
    x = torch.randn(3, 4)
    mask = torch.rand(mask_shape, generator=torch.Generator().manual_seed(1)) > 0.5
    gm = make_fx(fn)(x.clone(), mask)
    assert fill_masked_assignments(gm) == 0
    torch.testing.assert_close(gm(x.clone(), mask), fn(x.clone(), mask))


def test_a_tensor_read_again_after_the_write_keeps_the_write():
    """Here the written tensor is read twice; only where its sole reader is the write may the
    write become a new tensor. Either way the values are the function's."""
    x, mask = torch.randn(3, 4), torch.randn(3, 4) > 0
    gm = make_fx(_write_read_twice)(x, mask)
    rewrote = fill_masked_assignments(gm)
    assert rewrote == 0
    torch.testing.assert_close(gm(x, mask), _write_read_twice(x, mask))


def test_a_ddpm_step_records_no_masked_assignment():
    """The DDPM's time site meets the Uniform KL in every TraceMeanField_ELBO step; its
    recorded program is free of the write, and follows Pyro's loss."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    ddpm, loss, x = MODELS["ddpm"]()
    svi = CompiledSVI(ddpm.model, ddpm.guide, pyro.optim.Adam({"lr": 1e-3}), loss)
    for _ in range(4):
        svi.step(x)
    assert svi.compiled, svi.fallback_reason
    (prog,) = svi._programs.values()
    assert _assignments(prog.gm) == 0
    pyro.set_rng_seed(3)
    got = float(svi.loss_and_grads(x))
    pyro.set_rng_seed(3)
    expected = loss.loss(ddpm.model, ddpm.guide, x)
    assert got == pytest.approx(expected, rel=1e-5)
