"""Parametrized tests over every registered transform (see registry.py): the bijection
itself (``test_transform``) and Pyro's transform contract (``test_pyro_contract``)."""

from __future__ import annotations

import copy
import inspect
import io

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.distributions import constraints
from pyro.distributions.conditional import (
    ConditionalComposeTransformModule,
    ConditionalTransform,
)
from pyro.distributions.torch_transform import ComposeTransformModule
from pyro.infer.reparam import UnitJacobianReparam
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


# ------------------------------------------------------------------ the Pyro contract
# Checked on pyro_gen's own transforms (Pyro's reused ones are its own business: most
# cannot change their cache size, and its modules do not pickle after pyro.module).
OURS = [c for c in CASES if all(cls.__module__.startswith("pyro_gen.") for cls in c.covers)]


def _boom(*args, **kwargs):
    raise RuntimeError("boom: the inverse ran")


def _sample_in(constraint, shape: tuple[int, ...], far: float) -> torch.Tensor:
    """Points of ``constraint`` (batch ``BATCH`` of ordinary ones, ``BATCH`` far out)."""
    base = constraint
    while isinstance(base, constraints.independent):
        base = base.base_constraint
    if base is constraints.real:
        typical = torch.randn(BATCH, *shape, dtype=torch.float64)
        return torch.cat([typical, far * torch.sign(typical) + typical])
    if isinstance(base, constraints.interval):
        lo, hi = float(base.lower_bound), float(base.upper_bound)
        u = torch.rand(2 * BATCH, *shape, dtype=torch.float64)
        u[BATCH:] = torch.where(u[BATCH:] < 0.5, 1e-12 * u[BATCH:], 1 - 1e-12 * u[BATCH:])
        u[-1].fill_(1.0)  # the end points themselves
        u[-2].fill_(0.0)
        return lo + (hi - lo) * u
    raise NotImplementedError(f"no sampler for constraint {constraint}; add one here")


def _outputs_agree(a, b, x, y) -> None:
    torch.testing.assert_close(a(x.clone()), b(x.clone()), atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(a.inv(y.clone()), b.inv(y.clone()), atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("case", [_param(c) for c in OURS])
@pytest.mark.usefixtures("_dtype_for")
def test_pyro_contract(case: Case, tmp_path) -> None:
    """with_cache, ComposeTransformModule(cache_size=1), true domains, pickling, param store."""
    t = _prepare(case)
    is_module = isinstance(t, torch.nn.Module)
    ctx = _context(case, 2 * BATCH)
    ct = _concrete(case, t, ctx)
    in_shape = case.shape
    out_shape = tuple(ct.forward_shape(in_shape))
    x = torch.randn(2 * BATCH, *in_shape, dtype=torch.float64)
    y = ct(x.clone())
    params = list(t.parameters()) if is_module else []

    # with_cache: same size -> itself; a twin of the other size computes the same map
    assert ct.with_cache(ct._cache_size) is ct
    c1, c0 = ct.with_cache(1), ct.with_cache(0)
    _outputs_agree(c1, ct, x, y)
    _outputs_agree(c0, ct, x, y)
    # the cached twin returns its own input for its own output, without inverting ...
    y1 = c1(x)
    c1._inverse = _boom
    assert c1.inv(y1) is x
    ladj = c1.log_abs_det_jacobian(x, y1)
    torch.testing.assert_close(ladj, c0.log_abs_det_jacobian(x.clone(), y1.clone()))
    # ... and the uncached one inverts
    y0 = c0(x)
    c0._inverse = _boom
    with pytest.raises(RuntimeError, match="boom"):
        c0.inv(y0)
    del c1._inverse, c0._inverse
    if params:
        # twins share parameters: a change made through the module shows in both, and a
        # cached value from before the change is not returned after it
        with torch.no_grad():
            for p in params:
                p.add_(0.05 * torch.randn_like(p))
        _outputs_agree(c1, _concrete(case, t, ctx), x, y)
        assert not torch.allclose(c1(x.clone()), y1)
        x_again = c1.inv(y1)
        assert x_again is not x
        torch.testing.assert_close(c1(x_again), y1, atol=case.roundtrip_atol, rtol=1e-6)
        y = ct(x.clone())
    if is_module and case.context_dim is None:
        t.train()
        assert c1.training and c0.training
        t.eval()
        assert not c1.training and not c0.training

    # ComposeTransformModule(cache_size=1) (conditional: ConditionalComposeTransformModule)
    if case.context_dim is None:
        comp = ComposeTransformModule([t], cache_size=1)
        assert {id(p) for p in comp.parameters()} == {id(p) for p in params}
    else:
        comp = ConditionalComposeTransformModule([t], cache_size=1).condition(ctx)
    base = dist.Normal(torch.zeros(2 * BATCH, *in_shape, dtype=torch.float64), 1.0)
    d = dist.TransformedDistribution(base.to_event(len(in_shape)), comp)
    z = d.rsample()
    uncached = dist.TransformedDistribution(base.to_event(len(in_shape)), ct.with_cache(0))
    reference = uncached.log_prob(z.clone())
    comp.parts[0]._inverse = _boom
    torch.testing.assert_close(d.log_prob(z), reference, atol=case.ladj_atol, rtol=1e-8)
    del comp.parts[0]._inverse

    # declared domain/codomain are where the map and its inverse are defined, far out too
    ys = _sample_in(ct.codomain, out_shape, case.far)
    assert bool(ct.codomain.check(ys).all())
    xs = ct.inv(ys)
    assert bool(torch.isfinite(xs).all()) and bool(ct.domain.check(xs).all())
    back = ct(xs.clone())
    scale = ys.abs().flatten(1).amax(1).clamp(min=1.0).reshape(-1, *[1] * len(out_shape))
    torch.testing.assert_close(back / scale, ys / scale, atol=case.roundtrip_atol, rtol=0)
    xd = _sample_in(ct.domain, in_shape, case.far)
    yd = ct(xd)
    assert bool(torch.isfinite(yd).all()) and bool(ct.codomain.check(yd).all())

    # pickling (torch.save of the whole module, deepcopy) after pyro.module
    if is_module:
        pyro.module("t", t)
    buf = io.BytesIO()
    torch.save(t, buf)
    buf.seek(0)
    for copied in (torch.load(buf, weights_only=False), copy.deepcopy(t)):
        _outputs_agree(_concrete(case, copied, ctx), ct, x, y)
    if case.context_dim is None:
        torch.save(ComposeTransformModule([t], cache_size=1), io.BytesIO())
    if not is_module:
        return

    # Pyro's param store: save, load, and restore into a module built afresh
    pyro.get_param_store().save(tmp_path / "params.pt")
    pyro.clear_param_store()
    pyro.get_param_store().load(tmp_path / "params.pt")
    torch.manual_seed(123)  # a different draw of any random initialization
    fresh = case.build().double().eval()
    pyro.module("t", fresh, update_module_params=True)
    for (name, p), q in zip(fresh.named_parameters(), params, strict=True):
        torch.testing.assert_close(p, q, atol=0, rtol=0, msg=name)
    if case.batch_stats:
        # running statistics are buffers: state_dict / torch.save carry them (checked
        # above); Pyro's param store holds parameters only, so compare where they are unused
        fresh.train()
        t.train()
        torch.testing.assert_close(
            _concrete(case, fresh, ctx).inv(y.clone()), _concrete(case, t, ctx).inv(y.clone())
        )
        t.eval()
        return
    _outputs_agree(_concrete(case, fresh, ctx), ct, x, y)


def test_unit_jacobian_reparam_takes_volume_preserving_transforms() -> None:
    # UnitJacobianReparam calls transform.with_cache() and scores its own sample
    for t in (T.additive_coupling(4, hidden_dims=[8]), T.permute(4, "random", seed=0)):
        _perturb(t, 0.3)

        def model():
            return pyro.sample("z", dist.Normal(torch.zeros(4), 2.0).to_event(1))

        reparam = UnitJacobianReparam(t)
        tr = poutine.trace(poutine.reparam(model, config={"z": reparam})).get_trace()
        tr.compute_log_prob()
        z, z_t = tr.nodes["z"]["value"], tr.nodes["z_transformed"]["value"]
        torch.testing.assert_close(t(z), z_t)
        expected = dist.Normal(torch.zeros(4), 2.0).to_event(1).log_prob(z)
        torch.testing.assert_close(tr.nodes["z_transformed"]["log_prob"], expected)
