"""Checks from Pyro's own transform suite (``tests/distributions/test_transforms.py``) that
``test_registry.py`` does not already make, run over every registered transform.

Already covered elsewhere (not repeated here): log|det J| against an autograd Jacobian and
its recomputation from the inverse direction (Pyro's ``_test_jacobian`` / ``_test_inverse``),
the inverse round trip, ``with_cache`` and ``ComposeTransformModule(cache_size=1)``, domains
and codomains, pickling, a gradient reaching every parameter.

Ported here, written afresh:

- ``_test_shape``: ``forward_shape`` / ``inverse_shape`` of the event shape and of batched
  shapes against the shapes the map really returns, the log-det's shape being exactly the
  batch shape, and a ``TransformedDistribution`` over a batched base (batch/event shapes,
  sample shapes, ``log_prob`` shapes and values, ``.expand``).
- batched inputs compute each element's own map: extra leading dims, size-1 dims that
  broadcast, and expanded (stride-0) inputs.
- ``test_inverse_conditional_transform_module`` / ``test_conditional_compose_transform_module``:
  ``cond.inv.condition(c)`` against ``cond.condition(c).inv`` for batched contexts, and a
  ``ConditionalComposeTransformModule`` mixing torch transforms and ours.
- ``_test_autodiff``: a few Adam steps of maximum likelihood from the freshly built
  (unperturbed) transform in float32 keep the loss and every gradient finite.
- ``sign`` where a transform defines it, against the sign of the Jacobian's determinant.
- float32 and float64 give the same map (to float32 precision) and keep their dtype.
"""

from __future__ import annotations

import copy
import math

import pyro.distributions as dist
import pytest
import torch
from pyro.distributions.conditional import ConditionalComposeTransformModule
from torch.autograd.functional import jacobian

from pyro_gen.transforms import FlowTransformModule

from .registry import CASES, Case
from .test_registry import _concrete, _context, _dtype_for, _prepare  # noqa: F401

BATCH_SHAPES = [(), (2,), (2, 3), (2, 1, 3)]


def _ids(cases: list[Case]) -> list:
    return [pytest.param(c, id=c.name) for c in cases]


def _out_shape(ct, case: Case) -> tuple[int, ...]:
    return tuple(ct.forward_shape(case.shape))


def _base(shape: tuple[int, ...], batch: tuple[int, ...], dtype=torch.float64):
    zeros = torch.zeros(*batch, *shape, dtype=dtype)
    return dist.Normal(zeros, torch.ones_like(zeros)).to_event(len(shape))


def _ladj_shape(ct, x: torch.Tensor) -> tuple[int, ...]:
    """Pyro's contract: the log-det has the input's shape less ``domain.event_dim`` dims
    (an element-wise transform such as Pyro's ``Spline`` has event_dim 0)."""
    return tuple(x.shape[: x.dim() - ct.domain.event_dim])


def _per_event(ct, ladj: torch.Tensor, x: torch.Tensor, event_rank: int) -> torch.Tensor:
    """The log-det summed over one event of rank ``event_rank``, as TransformedDistribution
    sums it (broadcast to the input's batch first, as its log_prob does)."""
    ladj = ladj.expand(_ladj_shape(ct, x))
    batch = x.shape[: x.dim() - event_rank]
    return ladj.reshape(*batch, -1).sum(-1)


# Pyro's BatchNorm returns the eval-mode log-det with the event's shape (D,) whatever the
# input's batch (it does not depend on x); TransformedDistribution broadcasts it, so
# densities are right, but the shape is not Pyro's own contract. Pyro's, not ours: the case
# is kept only as a reference for our BatchNorm (registry.py).
_UNBROADCAST_LADJ = {"pyro_batchnorm"}


def _ladj_shape_param(case: Case):
    if case.name in _UNBROADCAST_LADJ:
        reason = "pyro 1.9 BatchNorm: eval-mode log|det J| has shape (D,), not batch + (D,)"
        return pytest.param(case, id=case.name, marks=pytest.mark.xfail(reason=reason, strict=True))
    return pytest.param(case, id=case.name)


# ------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("case", [_ladj_shape_param(c) for c in CASES])
@pytest.mark.usefixtures("_dtype_for")
def test_shapes_for_several_batch_shapes(case: Case) -> None:
    t = _prepare(case)
    ct0 = _concrete(case, t, _context(case))
    out = _out_shape(ct0, case)
    assert tuple(ct0.inverse_shape(out)) == case.shape
    # Pyro reads the event rank from the (co)domain (TransformedDistribution sums the
    # log-det's rightmost dims by it): the rank of the event shapes, or 0 for an
    # element-wise map, and the same on both sides when the rank is kept
    k = ct0.domain.event_dim
    assert k in (0, len(case.shape))
    assert ct0.codomain.event_dim == (len(out) if k else 0)
    for batch in BATCH_SHAPES:
        ct = _concrete(case, t, _context(case, *batch))
        x = torch.randn(*batch, *case.shape, dtype=torch.float64)
        # torch.Size, as torch's transforms give: a TransformedDistribution's shapes are
        # these, and Pyro calls their .numel() (AutoGaussian)
        assert type(ct.forward_shape(x.shape)) is torch.Size
        assert type(ct.inverse_shape(torch.Size(batch + out))) is torch.Size
        assert tuple(ct.forward_shape(x.shape)) == batch + out
        assert tuple(ct.inverse_shape(batch + out)) == x.shape
        y = ct(x)
        assert tuple(y.shape) == batch + out
        # exactly the input's shape less the domain's event dims: an extra dim left in
        # would be broadcast, not summed, by TransformedDistribution.log_prob
        assert tuple(ct.log_abs_det_jacobian(x, y).shape) == _ladj_shape(ct, x)
        if case.invertible:
            x_back = ct.inv(y.clone())
            assert tuple(x_back.shape) == x.shape
            assert tuple(ct.log_abs_det_jacobian(x_back, y).shape) == _ladj_shape(ct, x)


# pyro_gen's own transforms: a fixed event shape on each side, like torch's ReshapeTransform
OURS = [c for c in CASES if all(cls.__module__.startswith("pyro_gen.") for cls in c.covers)]


@pytest.mark.parametrize("case", _ids(OURS))
def test_shapes_of_too_few_dims_are_refused_as_torch_does(case: Case) -> None:
    """torch's ReshapeTransform (fixed event shapes, as ours) raises ValueError for a shape
    with fewer dims than its event; ours returned a made-up shape (Squeeze((1, 4, 2))'s
    forward_shape((4, 2)) was (4, 4, 2, 1))."""
    torch.manual_seed(0)
    t = case.build()  # shapes only: no warm-up needed
    ctx = None if case.context_dim is None else torch.randn(case.context_dim)
    ct = _concrete(case, t, ctx)
    if not isinstance(ct, FlowTransformModule):
        pytest.skip("element-wise torch Transform: any shape is its own event (as torch's)")
    out = _out_shape(ct, case)
    reshape = torch.distributions.transforms.ReshapeTransform(case.shape, out)
    for fn, ref, shape in (
        (ct.forward_shape, reshape.forward_shape, case.shape[1:]),
        (ct.inverse_shape, reshape.inverse_shape, out[1:]),
    ):
        with pytest.raises(ValueError):
            ref(shape)
        with pytest.raises(ValueError, match="event shape"):
            fn(shape)


@pytest.mark.parametrize("case", _ids(CASES))
@pytest.mark.usefixtures("_dtype_for")
def test_batched_inputs_compute_each_elements_map(case: Case) -> None:
    """A (2, 3) batch gives what its six elements give one by one; a size-1 dim and an
    expanded (stride-0) input give what their materialised copy gives."""
    t = _prepare(case)
    batch = (2, 3)
    ctx = _context(case, *batch)
    ct = _concrete(case, t, ctx)
    x = torch.randn(*batch, *case.shape, dtype=torch.float64)
    y = ct(x)
    ladj = _per_event(ct, ct.log_abs_det_jacobian(x, y), x, len(case.shape))
    atol = max(1e-10, case.roundtrip_atol)  # adaptive ODE steps depend on the batch
    for i in range(batch[0]):
        for j in range(batch[1]):
            one = _concrete(case, t, None if ctx is None else ctx[i, j])
            yi = one(x[i, j].clone())
            torch.testing.assert_close(y[i, j], yi, atol=atol, rtol=1e-6)
            xi = x[i, j]
            ladj_i = _per_event(one, one.log_abs_det_jacobian(xi, yi), xi, len(case.shape))
            torch.testing.assert_close(ladj[i, j], ladj_i, atol=atol, rtol=1e-6)

    # expanded: one point repeated by a stride-0 view, in both directions
    x1 = torch.randn(1, *case.shape, dtype=torch.float64)
    ctx4 = _context(case, 1)
    ctx4 = None if ctx4 is None else ctx4.expand(4, -1)
    ct4 = _concrete(case, t, ctx4)
    y_exp = ct4(x1.expand(4, *case.shape))
    y_mat = ct4(x1.expand(4, *case.shape).clone())
    torch.testing.assert_close(y_exp, y_mat, atol=atol, rtol=1e-6)
    if case.invertible:
        y1 = y_mat[:1]
        out = y1.shape[1:]
        torch.testing.assert_close(
            ct4.inv(y1.expand(4, *out)), ct4.inv(y1.expand(4, *out).clone()), atol=atol, rtol=1e-6
        )

    # a non-contiguous input (the batch dim moved last and back): the same values
    xt = torch.randn(*case.shape, 4, dtype=torch.float64).movedim(-1, 0)
    assert not xt.is_contiguous()
    torch.testing.assert_close(ct4(xt), ct4(xt.contiguous()), atol=atol, rtol=1e-6)

    # a leading size-1 dim, and (conditional) a context batch that broadcasts against it
    x13 = torch.randn(1, 3, *case.shape, dtype=torch.float64)
    ctx21 = _context(case, 2, 1)
    ct21 = _concrete(case, t, ctx21)
    if ctx21 is not None:
        # Pyro's ConditionalTransformedDistribution(...).condition(ctx[:, None]).sample((3,))
        y21 = ct21(x13)
        assert y21.shape[:2] == (2, 3)
        torch.testing.assert_close(
            y21, ct21(x13.expand(2, 3, *case.shape).clone()), atol=atol, rtol=1e-6
        )
        if case.invertible:
            # log_prob of a value without the context's batch takes this direction
            y13 = y21[:1].clone()
            x21 = ct21.inv(y13)
            assert tuple(ct21.log_abs_det_jacobian(x21, y13).shape) == (2, 3)
            expected = ct21.inv(y13.expand(2, 3, *y13.shape[2:]).clone())
            torch.testing.assert_close(x21, expected, atol=atol, rtol=1e-6)
    else:
        torch.testing.assert_close(ct21(x13)[0], ct21(x13[0].clone()), atol=atol, rtol=1e-6)


# ------------------------------------------------------ TransformedDistribution shapes
@pytest.mark.parametrize("case", _ids(CASES))
@pytest.mark.usefixtures("_dtype_for")
def test_transformed_distribution_over_a_batched_base(case: Case) -> None:
    t = _prepare(case)
    batch = (2, 3)
    ct = _concrete(case, t, _context(case, *batch))
    out = _out_shape(ct, case)
    base = _base(case.shape, batch)
    d = dist.TransformedDistribution(base, [ct])
    assert d.batch_shape == batch and d.event_shape == out
    assert d.sample().shape == batch + out
    y = d.rsample((4,))
    assert y.shape == (4, *batch, *out)
    lp = d.log_prob(y)
    assert lp.shape == (4, *batch)
    if case.invertible:
        # the change of variables, from the parts: log p(y) = log N(x) - log|det J(x)|
        y = y.clone()  # a fresh tensor: really inverts
        x = ct.inv(y)
        ladj = _per_event(ct, ct.log_abs_det_jacobian(x, y), x, len(case.shape))
        expected = base.log_prob(x) - ladj
        torch.testing.assert_close(d.log_prob(y), expected, atol=case.ladj_atol, rtol=1e-6)

    # Pyro's _test_shape uses a base without .to_event: TransformedDistribution takes the
    # transform's event dims from the base's batch dims, with the same density
    zeros = torch.zeros(*batch, *case.shape, dtype=torch.float64)
    plain = dist.TransformedDistribution(dist.Normal(zeros, 1.0), [ct])
    k = max(ct.domain.event_dim, ct.codomain.event_dim)
    assert plain.batch_shape == (batch + out)[: len(batch) + len(out) - k]
    assert plain.event_shape == (batch + out)[len(batch) + len(out) - k :]
    assert plain.sample().shape == batch + out
    if case.invertible:
        y = y.clone()
        lp_plain = plain.log_prob(y)
        lp_plain = lp_plain.reshape(*lp_plain.shape[: 1 + len(batch)], -1).sum(-1)
        torch.testing.assert_close(lp_plain, d.log_prob(y.clone()), atol=case.ladj_atol, rtol=1e-6)

    # .expand: a new leading batch dim; the same transform, the same density per element
    # (a conditioned one's context broadcasts against it)
    if True:
        e = d.expand((5, *batch))
        assert e.batch_shape == (5, *batch) and e.event_shape == out
        ye = e.rsample()
        assert ye.shape == (5, *batch, *out)
        assert e.log_prob(ye).shape == (5, *batch)
        if case.invertible:
            ye = ye.clone()
            torch.testing.assert_close(
                e.log_prob(ye), d.log_prob(ye.clone()), atol=case.ladj_atol, rtol=1e-6
            )


# ------------------------------------------------------------------ conditional
CONDITIONAL = [c for c in CASES if c.context_dim is not None]


@pytest.mark.parametrize("batch", BATCH_SHAPES, ids=str)
@pytest.mark.parametrize("case", _ids(CONDITIONAL))
def test_conditional_inverse_commutes_with_condition(case: Case, batch) -> None:
    t = _prepare(case)
    ctx = _context(case, *batch)
    noise = torch.randn(*batch, *case.shape, dtype=torch.float64)
    assert t.inv.inv is t
    torch.testing.assert_close(t.inv.condition(ctx)(noise), t.condition(ctx).inv(noise.clone()))
    torch.testing.assert_close(t.inv.condition(ctx).inv(noise), t.condition(ctx)(noise.clone()))
    # and each context row conditions its own element
    if batch:
        y = t.condition(ctx)(noise)
        flat_ctx, flat_x = ctx.reshape(-1, case.context_dim), noise.reshape(-1, *case.shape)
        for k in range(flat_x.shape[0]):
            torch.testing.assert_close(
                y.reshape(-1, *case.shape)[k], t.condition(flat_ctx[k])(flat_x[k].clone())
            )


@pytest.mark.parametrize("cache_size", [0, 1])
@pytest.mark.parametrize("case", _ids(CONDITIONAL))
def test_conditional_compose_with_torch_transforms(case: Case, cache_size: int) -> None:
    t = _prepare(case)
    batch = (2, 3)
    k = len(case.shape)
    affine = dist.transforms.AffineTransform
    parts = [affine(1.0, 2.0, event_dim=k), t, affine(-0.5, 0.7, event_dim=k)]
    cond = ConditionalComposeTransformModule(parts, cache_size=cache_size)
    assert {id(p) for p in cond.parameters()} == {id(p) for p in t.parameters()} != set()
    ctx = _context(case, *batch)
    base = _base(case.shape, batch)
    d = dist.ConditionalTransformedDistribution(base, [cond]).condition(ctx)
    y = d.rsample()
    assert y.shape == batch + case.shape
    assert d.log_prob(y).shape == batch

    noise = base.rsample()
    expected = noise
    for part in parts:
        expected = (part.condition(ctx) if part is t else part)(expected)
    composed = cond.condition(ctx)
    torch.testing.assert_close(composed(noise), expected)
    torch.testing.assert_close(cond.inv.condition(ctx)(expected.clone()), noise)
    torch.testing.assert_close(composed.inv(expected.clone()), noise)
    # the density from the parts: the two affine maps' volume terms (closed form) and the
    # conditioned transform's own log-det
    inner = 2.0 * noise + 1.0
    affine_ladj = math.prod(case.shape) * (math.log(2.0) + math.log(0.7))
    ct = t.condition(ctx)
    inner_ladj = _per_event(ct, ct.log_abs_det_jacobian(inner, ct(inner)), inner, k)
    lp = base.log_prob(noise) - affine_ladj - inner_ladj
    torch.testing.assert_close(d.log_prob(expected.clone()), lp)


# ------------------------------------------------------------------ autodiff
@pytest.mark.parametrize("case", _ids([c for c in CASES if "grad" not in c.skip]))
def test_maximum_likelihood_steps_from_initialization_stay_finite(case: Case) -> None:
    """Pyro's ``_test_autodiff``: as built (no perturbation), in float32, a few Adam steps
    on -log_prob; the loss and every parameter's gradient stay finite and parameters move.
    A transform without an inverse is trained through its forward map (``t.inv``)."""
    torch.manual_seed(0)
    t = case.build()
    if not isinstance(t, torch.nn.Module):
        pytest.skip("no parameters to train")
    ctx = _context(case, 8, dtype=torch.float32)
    ct = _concrete(case, t, ctx)
    out = _out_shape(ct, case)
    flow = ct if case.invertible else ct.inv
    data_shape = out if case.invertible else case.shape
    base_shape = case.shape if case.invertible else out
    d = dist.TransformedDistribution(_base(base_shape, (), torch.float32), [flow])
    before = [p.detach().clone() for p in t.parameters()]
    optimizer = torch.optim.Adam(t.parameters(), lr=1e-2)
    x = torch.rand(8, *data_shape)
    for _ in range(3):
        optimizer.zero_grad()
        loss = -d.log_prob(x.clone()).mean()
        assert torch.isfinite(loss)
        loss.backward()
        for name, p in t.named_parameters():
            assert p.grad is None or bool(torch.isfinite(p.grad).all()), name
        optimizer.step()
    moved = [not torch.equal(a, b) for a, b in zip(before, t.parameters(), strict=True)]
    assert any(moved)
    # a guide's path: the forward map scores its own reparameterized sample (the entropy
    # term of an ELBO; for a transform without an inverse, the only density it has)
    guide = dist.TransformedDistribution(_base(case.shape, (), torch.float32), [ct])
    z = guide.rsample((8,))
    lp = guide.log_prob(z).mean()
    assert torch.isfinite(lp)
    params = [p for p in t.parameters() if p.requires_grad]
    # a volume-preserving map's entropy does not depend on its parameters (no graph)
    grads = torch.autograd.grad(lp, params, allow_unused=True) if lp.requires_grad else []
    assert all(g is None or bool(torch.isfinite(g).all()) for g in grads)


# ------------------------------------------------------------- Jacobian structure
def _autoregressive_order(ct) -> torch.Tensor | None:
    """The order in which an autoregressive transform's outputs depend on its inputs."""
    made = getattr(ct, "made", None)
    made = getattr(made, "func", made)  # a conditioned transform holds a functools.partial
    if made is not None and hasattr(made, "order"):
        return made.order
    if getattr(ct, "autoregressive", False):  # Pyro's
        return ct.arn.get_permutation()
    return None


@pytest.mark.parametrize("case", _ids(CASES))
@pytest.mark.usefixtures("_dtype_for")
def test_autoregressive_jacobian_is_triangular_in_its_order(case: Case) -> None:
    """Pyro's ``_test_jacobian`` structure check: in the network's order the Jacobian is
    lower triangular with a nonzero diagonal (what the one-pass direction and the
    sum-of-log-diagonal log-det rely on), checked at a point away from the tails."""
    t = _prepare(case)
    ct = _concrete(case, t, _context(case))
    order = _autoregressive_order(ct)
    if order is None:
        pytest.skip("not autoregressive")
    x = 0.5 * torch.randn(case.shape, dtype=torch.float64)
    J = jacobian(ct, x)  # J[i, j] = d y_i / d x_j
    P = J[order][:, order]
    assert torch.count_nonzero(torch.triu(P, diagonal=1)) == 0
    assert bool((P.diagonal() != 0).all())
    ladj = ct.log_abs_det_jacobian(x, ct(x))
    torch.testing.assert_close(ladj, P.diagonal().abs().log().sum())


# ------------------------------------------------------------------------ sign
@pytest.mark.parametrize("case", _ids(CASES))
@pytest.mark.usefixtures("_dtype_for")
def test_sign_where_defined_is_the_sign_of_det_j(case: Case) -> None:
    t = _prepare(case)
    ct = _concrete(case, t, _context(case))
    try:
        sign = ct.sign
    except NotImplementedError:
        # torch's default for transforms that are not univariate: nothing promised
        pytest.skip("sign not defined")
    x = torch.randn(case.shape, dtype=torch.float64)
    J = jacobian(lambda v: ct(v.reshape(case.shape)).reshape(-1), x.reshape(-1))
    assert float(torch.linalg.slogdet(J)[0]) == float(sign)


def test_scaled_sigmoid_sign_drives_torch_cdf() -> None:
    # TransformedDistribution.cdf/icdf use sign: for an increasing map the cdf is the base's
    from pyro_gen.transforms import ScaledSigmoid

    t = ScaledSigmoid(alpha=0.05)
    base = dist.Normal(torch.tensor(0.3, dtype=torch.float64), 1.2)
    d = dist.TransformedDistribution(base, [t])
    u = torch.rand(7, dtype=torch.float64)
    y = t(base.icdf(u))
    torch.testing.assert_close(d.cdf(y), u)
    torch.testing.assert_close(d.icdf(u), y)


# ------------------------------------------------------------------- dtypes
def _dtype_param(case: Case):
    if case.default_float64:
        # under torch's default float32, a float64 module's inverse fails inside Pyro
        reason = (
            "pyro 1.9 AffineAutoregressive._inverse allocates with torch's default dtype, "
            "not the input's: float64 modules fail ('mat1 and mat2 must have the same dtype')"
        )
        return pytest.param(case, id=case.name, marks=pytest.mark.xfail(reason=reason, strict=True))
    return pytest.param(case, id=case.name)


@pytest.mark.parametrize("case", _ids(CASES))
def test_built_under_default_float64_everything_is_float64(case: Case) -> None:
    """Built while torch's default dtype is float64 (no ``.double()``): every floating
    parameter and buffer is float64, and so are outputs, log-dets and inverses."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        torch.manual_seed(0)
        t = case.build()
        if isinstance(t, torch.nn.Module):
            for name, v in [*t.named_parameters(), *t.named_buffers()]:
                assert not v.is_floating_point() or v.dtype == torch.float64, name
        ctx = _context(case, 8)
        ct = _concrete(case, t, ctx)
        x = torch.randn(8, *case.shape)
        y = ct(x)
        assert y.dtype == torch.float64
        assert ct.log_abs_det_jacobian(x, y).dtype == torch.float64
        if case.invertible:
            assert ct.inv(y.clone()).dtype == torch.float64
    finally:
        torch.set_default_dtype(old)


@pytest.mark.parametrize("case", [_dtype_param(c) for c in CASES])
def test_float32_and_float64_compute_the_same_map(case: Case) -> None:
    """Under torch's default float32: the float64 module keeps float64 (outputs, log-dets,
    inverses) and the same module cast to float32 computes the same map to float32
    precision and keeps float32."""
    assert torch.get_default_dtype() == torch.float32
    t64 = _prepare(case)
    if not isinstance(t64, torch.nn.Module):
        pytest.skip("no parameters to cast")
    t32 = copy.deepcopy(t64).float()
    ctx = _context(case, 4)
    x = torch.randn(4, *case.shape, dtype=torch.float64)
    outs = {}
    for dtype, t in ((torch.float32, t32), (torch.float64, t64)):
        ct = _concrete(case, t, None if ctx is None else ctx.to(dtype))
        xd = x.to(dtype)
        y = ct(xd)
        ladj = ct.log_abs_det_jacobian(xd, y)
        assert y.dtype == dtype and ladj.dtype == dtype
        outs[dtype] = (y, ladj)
        if case.invertible:
            xb = ct.inv(y.clone())
            assert xb.dtype == dtype
    for a, b in zip(outs[torch.float32], outs[torch.float64], strict=True):
        torch.testing.assert_close(a.double(), b, atol=1e-4, rtol=1e-4)
