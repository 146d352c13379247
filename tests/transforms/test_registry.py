"""One parametrized test over every registered transform (see registry.py)."""

from __future__ import annotations

import inspect

import pytest
import torch
from pyro.distributions.conditional import ConditionalTransform
from torch.autograd.functional import jacobian
from torch.distributions import Transform

import pyro_gen.transforms as T

from .registry import CASES, Case

BATCH = 3


def _sum_event(ladj: torch.Tensor, batch_dims: int) -> torch.Tensor:
    return ladj.reshape(ladj.shape[:batch_dims] + (-1,)).sum(-1)


def _perturb(module: torch.nn.Module, scale: float) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn_like(p))


def _concrete(case: Case, t, context: torch.Tensor | None):
    return t.condition(context) if case.context_dim is not None else t


def _context(case: Case, *batch: int, dtype=torch.float64, device=None):
    if case.context_dim is None:
        return None
    return torch.randn(*batch, case.context_dim, dtype=dtype, device=device)


def _prepare(case: Case) -> torch.nn.Module | Transform:
    """Builds, perturbs, warms up (data-dependent init / running stats) and sets eval mode."""
    torch.manual_seed(0)
    t = case.build()
    if isinstance(t, torch.nn.Module):
        t = t.double()
        _perturb(t, case.perturb)
    ctx = _context(case, 16)
    ct = _concrete(case, t, ctx)
    out_shape = tuple(ct.forward_shape((16, *case.shape)))
    if case.invertible:
        with torch.no_grad():
            ct.inv(2.0 + 1.5 * torch.randn(out_shape, dtype=torch.float64))
    else:
        with torch.no_grad():
            ct(torch.randn(16, *case.shape, dtype=torch.float64))
    if isinstance(t, torch.nn.Module):
        t.eval()
    return t


def _param(case: Case):
    marks = [pytest.mark.xfail(reason=case.known_bug, strict=True)] if case.known_bug else []
    return pytest.param(case, id=case.name, marks=marks)


@pytest.fixture
def _dtype_for(request):
    case = request.node.callspec.params["case"]
    old = torch.get_default_dtype()
    if case.default_float64:
        torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
@pytest.mark.usefixtures("_dtype_for")
def test_transform(case: Case, device: torch.device, tmp_path) -> None:
    t = _prepare(case)
    ctx1 = _context(case)
    ct = _concrete(case, t, ctx1)

    # shapes, with batch dims
    xb = torch.randn(BATCH, *case.shape, dtype=torch.float64)
    ctx_b = _context(case, BATCH)
    ctb = _concrete(case, t, ctx_b)
    yb = ctb(xb)
    out_shape = tuple(ctb.forward_shape(xb.shape))
    assert tuple(yb.shape) == out_shape
    assert tuple(ctb.inverse_shape(out_shape)) == tuple(xb.shape)
    ladj_b = ctb.log_abs_det_jacobian(xb, yb)
    batch_ladj = _sum_event(ladj_b, 1) if ladj_b.dim() >= 1 else ladj_b
    assert batch_ladj.shape == (BATCH,)

    # inverse round trip (float64)
    if case.invertible:
        x_back = ctb.inv(yb.clone())  # clone: defeat caches, really invert
        torch.testing.assert_close(x_back, xb, atol=case.roundtrip_atol, rtol=0)
        y_again = ctb(x_back.clone())
        torch.testing.assert_close(y_again, yb, atol=case.roundtrip_atol, rtol=0)

    # log|det J| against autograd on one unbatched input
    x = torch.randn(case.shape, dtype=torch.float64)
    y = ct(x)
    ladj = _sum_event(ct.log_abs_det_jacobian(x, y), 0)
    n_in, n_out = x.numel(), y.numel()
    assert n_in == n_out
    J = jacobian(lambda v: ct(v.reshape(case.shape)).reshape(-1), x.reshape(-1))
    ref = torch.linalg.slogdet(J.reshape(n_out, n_in))[1]
    torch.testing.assert_close(ladj, ref, atol=case.ladj_atol, rtol=1e-6)
    if case.invertible:
        # recomputation from the inverse direction (cache miss) agrees too
        y2 = y.clone()
        x2 = ct.inv(y2)
        torch.testing.assert_close(
            _sum_event(ct.log_abs_det_jacobian(x2, y2), 0), ref, atol=case.ladj_atol, rtol=1e-6
        )

    if not isinstance(t, torch.nn.Module):
        return

    # buffers are registered (so .to(device) and state_dict carry them) and move with .to
    buffers = dict(t.named_buffers())
    sd = t.state_dict()
    for name in case.buffers:
        hits = [k for k in buffers if k == name or k.endswith("." + name)]
        assert hits, f"buffer {name!r} not registered; have {sorted(buffers)}"
        assert all(k in sd for k in hits)
    t.to(device)
    for name, b in t.named_buffers():
        assert b.device.type == device.type, name
    for name, p in t.named_parameters():
        assert p.device.type == device.type, name
    xd = xb.to(device)
    ctd = _concrete(case, t, None if ctx_b is None else ctx_b.to(device))
    yd = ctd(xd)
    assert yd.device.type == device.type
    torch.testing.assert_close(yd.cpu(), yb, atol=1e-10, rtol=0)
    t.cpu()

    # state_dict round trip into a fresh instance (through a file)
    path = tmp_path / "t.pt"
    torch.save(t.state_dict(), path)
    torch.manual_seed(123)
    fresh = case.build().double()
    fresh.load_state_dict(torch.load(path))
    fresh.eval()
    ctf = _concrete(case, fresh, ctx_b)
    torch.testing.assert_close(ctf(xb), yb, atol=1e-10, rtol=0)

    # training mode: transforms without batch statistics behave exactly as in eval mode
    # (ActNorm after its init, conditioners without dropout/batch-norm); those with batch
    # statistics really use them (their train-mode log-det: test_normalization.py)
    if case.invertible:
        y_tr = torch.randn(8, *out_shape[1:], dtype=torch.float64)
        ctx_tr = _context(case, 8)
        x_ev = _concrete(case, t, ctx_tr).inv(y_tr.clone())
        t.train()
        ct_tr = _concrete(case, t, ctx_tr)
        x_tr = ct_tr.inv(y_tr)
        ladj_tr = _sum_event(ct_tr.log_abs_det_jacobian(x_tr, y_tr), 1)
        if case.batch_stats:
            assert not torch.allclose(x_tr, x_ev)
        else:
            torch.testing.assert_close(x_tr, x_ev, atol=1e-8, rtol=1e-6)  # ODE solvers
            t.eval()
            ct_ev = _concrete(case, t, ctx_tr)
            ladj_ev = _sum_event(ct_ev.log_abs_det_jacobian(x_ev, ct_ev(x_ev)), 1)
            torch.testing.assert_close(ladj_tr, ladj_ev, atol=1e-8, rtol=1e-6)
        t.eval()

    # a gradient reaches every parameter
    if "grad" not in case.skip:
        t.train()
        ctg = _concrete(case, t, _context(case, BATCH))
        xg = torch.randn(BATCH, *case.shape, dtype=torch.float64)
        yg = ctg(xg)
        loss = (yg**2).sum() + ctg.log_abs_det_jacobian(xg, yg).sum()
        if case.invertible:
            zg = ctg.inv(torch.randn(out_shape, dtype=torch.float64))
            loss = loss + (zg**2).sum()
        t.zero_grad()
        loss.backward()
        params = list(t.named_parameters())
        assert params, "case has no parameters; add 'grad' to skip"
        for name, p in params:
            assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient for {name}"
        t.eval()


def _public_transform_classes() -> set[type]:
    out = set()
    for name in T.__all__:
        obj = getattr(T, name)
        if (
            inspect.isclass(obj)
            and issubclass(obj, Transform | ConditionalTransform)
            and obj is not T.FlowTransformModule
        ):
            out.add(obj)
    return out


def test_registry_is_complete() -> None:
    covered = {cls for case in CASES for cls in case.covers}
    missing = {cls.__name__ for cls in _public_transform_classes()} - {c.__name__ for c in covered}
    assert not missing, f"public transforms missing from tests/transforms/registry.py: {missing}"


def test_registry_covers_reused_pyro_transforms() -> None:
    from pyro.distributions import transforms as PT

    reused = {"AffineAutoregressive", "Spline", "Planar", "Radial", "Householder", "Sylvester"}
    covered = {
        c.__name__ for case in CASES for c in case.covers if c.__module__.startswith("pyro.")
    }
    assert reused <= covered | set(), f"missing reused Pyro transforms: {reused - covered}"
    assert all(hasattr(PT, n) for n in reused)
