"""What users pass to pyro_gen flows inside their Pyro programs: a stack whose event shapes
disagree (refused when built), a base with its event dims as batch dims, one-hot labels and
float64 contexts to a class-conditional flow (taken, or one clear error), and
``JitTrace_ELBO`` with a residual flow prior (one clear error naming the block and the fix).

Each program is one a Pyro user writes, unchanged (flow_user_programs.py holds those shared
by several files). Every loss is checked against the same bound computed by hand from the
values the guide drew, with each flow density taken by the change of variables through an
autograd Jacobian (float64)."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pyro.distributions.transforms as PT
import pytest
import torch
from pyro.infer import Trace_ELBO

from pyro_gen import transforms as T
from tests.transforms.flow_user_programs import F64, _autograd_log_density, _normal, _perturb

# ------------------------------------------------------------------ event shapes of a stack


@pytest.mark.parametrize(
    "base_shape, make",
    [
        ((5,), lambda: [T.affine_coupling(3, hidden_dims=[8])]),
        ((1, 4, 4), lambda: [T.ActNorm((1, 4, 4)), T.masked_autoregressive(16, [8])]),
        ((2, 4, 4), lambda: [T.Squeeze((1, 4, 4))]),
        ((15,), lambda: [T.multi_scale((1, 4, 4), lambda s, last: [T.ActNorm(s)], 1)]),
    ],
    ids=["vector", "image_then_vector", "squeeze", "multiscale"],
)
def test_a_stack_whose_event_shapes_disagree_is_refused_when_built(base_shape, make) -> None:
    """``TransformedDistribution`` takes its shapes from ``forward_shape``; as torch's
    ``ReshapeTransform`` (fixed event shapes, as ours) does, a base of other sizes is an
    error there. Before, the distribution reported an event shape no draw had
    (``(1, 4, 16)`` for the image/vector stack) and failed only when sampled."""
    base = _normal(torch.zeros(base_shape), 1.0).to_event(len(base_shape) - 1)
    wrong = torch.Size([base.event_shape.numel() + 1])
    with pytest.raises(ValueError, match="Shape mismatch"):
        dist.TransformedDistribution(base, [PT.ReshapeTransform(wrong, wrong)])
    with pytest.raises(ValueError, match=r"takes events of shape .*ReshapeTransform"):
        dist.TransformedDistribution(base, make())
    # the same stacks over the base they expect, and a base with more batch dims, build
    for t in make():
        good = _normal(torch.zeros(3, *t.event_shape), 1.0).to_event(len(t.event_shape) - 1)
        assert dist.TransformedDistribution(good, [t]).batch_shape == (3,)


@pytest.mark.parametrize(
    "make",
    [
        lambda: T.affine_coupling(3, hidden_dims=[8]),
        lambda: T.InvertibleConv1x1((2, 2, 2)),
        lambda: T.spline_coupling((2, 2, 2), hidden_channels=4, num_blocks=1, num_bins=4),
    ],
    ids=["vector", "conv1x1", "image_spline"],
)
def test_a_base_with_its_event_dims_as_batch_dims_gets_the_flows_event(make) -> None:
    """A base without ``.to_event`` (``Normal(zeros(D), 1)``, as Pyro's tutorial writes
    it): the transform's ``domain.event_dim`` makes those dims the event, as torch does for
    its own transforms, and the density is the ``.to_event`` base's; extra base dims stay
    batch dims."""
    torch.manual_seed(8)
    t = _perturb(make())
    shape, k = t.event_shape, len(t.event_shape)
    assert t.domain.event_dim == t.codomain.event_dim == k
    plain = dist.TransformedDistribution(dist.Normal(torch.zeros(shape), 1.0), [t])
    evented = dist.TransformedDistribution(dist.Normal(torch.zeros(shape), 1.0).to_event(k), [t])
    assert plain.event_shape == shape and plain.batch_shape == ()
    assert plain.support.event_dim == k
    x = evented.sample((4,))
    torch.testing.assert_close(plain.log_prob(x), evented.log_prob(x))
    batched = dist.TransformedDistribution(dist.Normal(torch.zeros(5, *shape), 1.0), [t])
    assert batched.batch_shape == (5,) and batched.log_prob(x[:, None]).shape == (4, 5)


# ------------------------------------------------------------------ contexts users pass

CONDITIONAL = {
    "coupling": lambda: T.conditional_affine_coupling(2, 3, hidden_dims=[8]),
    "image_coupling": lambda: T.conditional_affine_coupling(
        (2, 2, 2), 3, hidden_channels=4, num_blocks=1
    ),
    "spline_coupling": lambda: T.conditional_spline_coupling(2, 3, hidden_dims=[8]),
    "maf": lambda: T.conditional_masked_autoregressive(2, 3, [8]),
    "iaf": lambda: T.conditional_inverse_autoregressive(2, 3, [8]),
}


@pytest.mark.parametrize("name", list(CONDITIONAL))
def test_a_class_conditional_flow_takes_one_hot_labels_as_they_come(name: str) -> None:
    """``F.one_hot(y, 3)`` is int64: as a context it gives the float one-hot's density in a
    plate with ``obs=data`` (the image coupling failed with "mat1 and mat2 must have the
    same dtype"); a float32 context for a float64 flow works as well."""
    torch.manual_seed(9)
    t = _perturb(CONDITIONAL[name]())
    shape = t.event_shape
    x, y = torch.randn(5, *shape), torch.tensor([0, 2, 1, 1, 0])
    base = dist.Normal(torch.zeros(shape), 1.0).to_event(len(shape))
    flow = dist.ConditionalTransformedDistribution(base, [t])

    def model(x, context):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", flow.condition(context), obs=x)

    labels = torch.nn.functional.one_hot(y, 3)
    assert labels.dtype == torch.int64
    expected = -flow.condition(labels.float()).log_prob(x).sum().detach()
    assert math.isclose(Trace_ELBO().loss(model, lambda *_: None, x, labels), float(expected))
    t64 = t.double()
    base64 = dist.Normal(torch.zeros(shape, dtype=F64), 1.0).to_event(len(shape))
    flow64 = dist.ConditionalTransformedDistribution(base64, [t64])
    lp = flow64.condition(labels.float()).log_prob(x.double())  # a float32 context
    assert lp.dtype == F64
    assert math.isclose(-float(lp.sum()), float(expected), rel_tol=1e-5)


@pytest.mark.parametrize("name", list(CONDITIONAL))
def test_a_dtype_mismatch_in_a_conditional_flow_is_one_clear_error(name: str) -> None:
    """A float64 context for a float32 flow (refused when conditioning), and float64 data
    for a conditioned float32 transform, name both dtypes and the conversion; torch said
    "mat1 and mat2 must have the same dtype" from inside the network."""
    t = CONDITIONAL[name]()
    x = torch.randn(4, *t.event_shape)
    with pytest.raises(TypeError, match=r"float32 parameters and got a torch.float64 context"):
        t.condition(torch.randn(4, 3, dtype=F64))
    conditioned = t.condition(torch.randn(4, 3))
    for apply in (conditioned, conditioned.inv):
        with pytest.raises(TypeError, match=r"float32 parameters and got torch.float64 input"):
            apply(x.double())


# ------------------------------------------------------------------ the jit


def test_jit_elbo_with_a_residual_flow_prior_is_one_clear_error() -> None:
    """``JitTrace_ELBO`` traces the model with the flow's parameters requiring grad; a
    residual block's density direction takes its log-det from ``torch.autograd.grad``,
    which the trace cannot record: torch said "Cannot insert a Tensor that requires grad
    as a constant". Now the error names the block and the fix, and the program it points
    to (``Trace_ELBO``) gives the by-hand bound."""
    torch.manual_seed(10)
    block = _perturb(T.residual_block(2, [8], tol=1e-12).double(), 0.5)
    x = torch.randn(4, 2, dtype=F64)
    base = _normal(torch.zeros(2, dtype=F64), 1.0)

    def model(x):
        pyro.module("block", block)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.TransformedDistribution(base, [block]))
            pyro.sample("x", _normal(z, 0.5), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            return pyro.sample("z", _normal(x / 2, 0.6))

    with pytest.raises(RuntimeError, match="ResidualBlock.*torch.jit.trace.*Trace_ELBO"):
        pyro.infer.JitTrace_ELBO().loss_and_grads(model, guide, x)
    seen: list = []

    def recorded(x):
        z = guide(x)
        seen.append(z.detach())
        return z

    block.eval()  # the exact log-det in 2 dims: the roulette estimate is random
    loss = Trace_ELBO().loss(model, recorded, x)
    z = seen[0]
    log_prior = _autograd_log_density([block], base.log_prob, z)
    log_w = log_prior + _normal(z, 0.5).log_prob(x) - _normal(x / 2, 0.6).log_prob(z)
    assert math.isclose(loss, -float(log_w.sum()), rel_tol=1e-10)
