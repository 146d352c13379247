"""Every registered transform under ``torch.jit.trace``, as Pyro's ``NUTS(jit_compile=True)``
and ``JitTrace_ELBO`` run them: a trace recorded at one input and replayed at another gives
the eager values, log-dets and input gradients, or the transform refuses to be traced with
an error that says so. A trace freezes Python control flow and drops autograd hooks, so a
transform that iterates to a tolerance or shapes its gradient with a hook is silently wrong
there; HMC's potential gradients are what such a trace computes.
"""

from __future__ import annotations

import contextlib
import warnings

import pytest
import torch

from .registry import CASES, Case
from .test_registry import _concrete, _context, _dtype_for, _prepare  # noqa: F401


def _direction(ct, inverse: bool):
    def objective(v: torch.Tensor) -> torch.Tensor:
        out = ct.inv(v) if inverse else ct(v)
        x, y = (out, v) if inverse else (v, out)
        return (out**2).sum() + ct.log_abs_det_jacobian(x, y).sum()

    return objective


def _value_and_grad(fn, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    v = v.clone().requires_grad_(True)
    value = fn(v)
    (grad,) = torch.autograd.grad(value, v)
    return value.detach(), grad


@pytest.mark.parametrize("inverse", [False, True], ids=["forward", "inverse"])
# known_bug cases (a wrong log-det) trace consistently: the replay agrees with eager
@pytest.mark.parametrize("case", [pytest.param(c, id=c.name) for c in CASES])
@pytest.mark.usefixtures("_dtype_for")
def test_a_trace_replays_the_eager_values_and_gradients_or_is_refused(
    case: Case, inverse: bool
) -> None:
    if inverse and not case.invertible:
        pytest.skip("no inverse")
    t = _prepare(case)
    if isinstance(t, torch.nn.Module):
        t.requires_grad_(False)  # as Pyro's jit potential does: only the inputs are traced
    ct = _concrete(case, t, _context(case, 3))
    shape = tuple(ct.forward_shape((3, *case.shape))) if inverse else (3, *case.shape)
    g = torch.Generator().manual_seed(1)
    at_trace = torch.randn(shape, generator=g, dtype=torch.float64)
    elsewhere = 1.7 * torch.randn(shape, generator=g, dtype=torch.float64)
    fn = _direction(ct, inverse)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            example = (at_trace.clone().requires_grad_(True),)
            traced = torch.jit.trace(fn, example, check_trace=False)
    except RuntimeError as e:
        assert "torch.jit.trace" in str(e) and type(ct).__name__ in str(e), str(e)
        return
    value, grad = _value_and_grad(fn, elsewhere)
    traced_value, traced_grad = _value_and_grad(traced, elsewhere)
    atol = max(1e-7, 10 * case.roundtrip_atol)
    torch.testing.assert_close(traced_value, value, atol=atol, rtol=1e-6)
    torch.testing.assert_close(traced_grad, grad, atol=atol, rtol=1e-5)


def _cnf_objective(flow):
    def objective(v: torch.Tensor) -> torch.Tensor:
        y = flow(v)
        return (y**2).sum() + flow.log_abs_det_jacobian(v, y).sum()

    return objective


@pytest.mark.parametrize(
    "kwargs, refused",
    [
        ({"rtol": 1e-6, "atol": 1e-6}, True),  # dopri5: steps chosen from the input
        ({"method": "rk4", "options": {"step_size": 0.1}, "adjoint": True}, True),
        ({"method": "rk4", "options": {"step_size": 0.1}}, False),
    ],
    ids=["adaptive", "adjoint", "fixed-step"],
)
def test_a_continuous_flow_is_traced_only_where_the_trace_is_exact(kwargs, refused) -> None:
    """A trace of an adaptive solve recorded near the origin replayed at inputs 60x larger
    missed rtol=1e-6 by four orders (1e-2), silently; the adjoint failed with an internal
    error. Both are refused, naming the fix; a fixed-step solve replays exactly."""
    from pyro_gen.transforms import cnf

    torch.manual_seed(0)
    flow = cnf(2, (16,), **kwargs).double()
    for p in flow.parameters():
        p.data.normal_(0, 1.0)
    flow.requires_grad_(False)
    fn = _cnf_objective(flow)
    at_trace = 0.1 * torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    if refused:
        with pytest.raises(RuntimeError, match=r"ContinuousFlow.*torch\.jit\.trace.*rk4"):
            torch.jit.trace(fn, (at_trace,), check_trace=False)
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(fn, (at_trace,), check_trace=False)
    elsewhere = 6.0 * torch.randn(3, 2, dtype=torch.float64)
    value, grad = _value_and_grad(fn, elsewhere)
    traced_value, traced_grad = _value_and_grad(traced, elsewhere)
    torch.testing.assert_close(traced_value, value, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(traced_grad, grad, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("inverse", [False, True], ids=["forward", "inverse"])
@pytest.mark.parametrize(
    "case", [pytest.param(c, id=c.name) for c in CASES if c.context_dim is not None]
)
@pytest.mark.usefixtures("_dtype_for")
def test_conditioning_inside_a_trace_replays_the_eager_values(case: Case, inverse: bool) -> None:
    # JitTrace_ELBO traces a guide that conditions a flow on its data: ``condition`` runs
    # inside the trace, with the context a traced input (conditional couplings once failed
    # there: a traced mask's shape holds tensors, refused as an event shape)
    t = _prepare(case)
    t.requires_grad_(False)  # parameters would be trace inputs (as JitTrace_ELBO passes them)
    g = torch.Generator().manual_seed(2)

    def draw(scale: float) -> tuple[torch.Tensor, torch.Tensor]:
        ctx = scale * torch.randn(3, case.context_dim, generator=g, dtype=torch.float64)
        shape = tuple(t.condition(ctx).forward_shape((3, *case.shape))) if inverse else None
        v = torch.randn(shape or (3, *case.shape), generator=g, dtype=torch.float64)
        return scale * v, ctx

    def fn(v: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        return _direction(t.condition(ctx), inverse)(v)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(fn, draw(1.0), check_trace=False)
    v, ctx = draw(1.7)
    torch.testing.assert_close(traced(v, ctx), fn(v, ctx), atol=1e-7, rtol=1e-6)


@pytest.mark.parametrize("batch", [(), (3,)], ids=["unbatched", "batched"])
@pytest.mark.parametrize("kind", ["maf", "iaf"])
def test_autoregressive_flows_under_jit_trace_elbo_give_trace_elbos_loss_and_gradients(
    kind: str, batch: tuple[int, ...]
) -> None:
    """A MADE flow as a model's density under Pyro's ``JitTrace_ELBO``: the loss and every
    gradient equal ``Trace_ELBO``'s. Unbatched, the MADE's in-place ReLU failed inside the
    traced graph ("a view of a leaf Variable ... in-place operation")."""
    import pyro
    import pyro.distributions as dist
    from pyro.infer import JitTrace_ELBO, Trace_ELBO

    from pyro_gen import transforms as T

    torch.manual_seed(0)
    make = T.masked_autoregressive if kind == "maf" else T.inverse_autoregressive
    flow = make(2, [8])
    with torch.no_grad():
        for p in flow.parameters():
            p.normal_(0.0, 0.3)
    loc = torch.randn(*batch, 2)

    def model() -> None:
        pyro.module("flow", flow)
        with pyro.plate("rows", 3) if batch else contextlib.nullcontext():
            base = dist.Normal(torch.zeros(2), 1.0).to_event(1)
            pyro.sample("z", dist.TransformedDistribution(base, [flow]))

    def guide() -> None:
        with pyro.plate("rows", 3) if batch else contextlib.nullcontext():
            pyro.sample("z", dist.Normal(pyro.param("loc", loc.clone()), 1.0).to_event(1))

    results = []
    for elbo in (Trace_ELBO(), JitTrace_ELBO()):
        pyro.clear_param_store()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tracer's notes on shape checks
            for _ in range(2):  # JitTrace_ELBO traces on the first call, replays on the next
                pyro.set_rng_seed(1)
                for p in [*flow.parameters(), *pyro.get_param_store().values()]:
                    p.grad = None
                loss = elbo.loss_and_grads(model, guide)
        store = pyro.get_param_store()
        results.append((loss, [p.grad.clone() for p in flow.parameters()], store["loc"].grad))
    (eager, eager_grads, eager_loc), (jit, jit_grads, jit_loc) = results
    assert jit == pytest.approx(eager, rel=1e-5, abs=1e-5)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(eager_grads, jit_grads, strict=True))
    assert torch.allclose(eager_loc, jit_loc, atol=1e-5)
