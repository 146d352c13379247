"""Bad input gets a clear error; MAF/IAF fast directions really take one pass."""

from __future__ import annotations

import copy
import pickle

import pyro
import pytest
import torch

from pyro_gen import transforms as T
from pyro_gen.distributions import Flow


def test_wrong_event_shape_is_a_clear_error() -> None:
    t = T.affine_coupling(4, hidden_dims=[8])
    with pytest.raises(ValueError, match=r"event shape \(4,\)"):
        t(torch.randn(3, 5))
    flow = Flow(4, [t])
    with pytest.raises(ValueError, match=r"event shape \(4,\)"):
        flow.log_prob(torch.randn(3, 5))
    img = T.InvertibleConv1x1((3, 4, 4))
    with pytest.raises(ValueError, match="event shape"):
        img(torch.randn(2, 3, 4, 5))


@pytest.mark.parametrize(
    "make, given",
    [
        (lambda: T.inverse_autoregressive(0), r"0"),  # was a flow over nothing
        (lambda: T.affine_coupling(4.0), r"4\.0"),  # was "'float' object is not iterable"
        (lambda: T.masked_autoregressive(-2), r"-2"),  # was torch.arange's error
        (lambda: Flow((1, 0), []), r"\(1, 0\)"),
    ],
    ids=["zero", "float", "negative", "zero-entry"],
)
def test_a_dimension_that_is_not_a_positive_whole_number_is_named(make, given) -> None:
    with pytest.raises(ValueError, match=rf"positive whole number .*got {given}"):
        make()


@pytest.mark.parametrize(
    "make",
    [
        lambda h: T.inverse_autoregressive(3, h),
        lambda h: T.masked_autoregressive(3, h),
        lambda h: T.affine_coupling(3, hidden_dims=h),
        lambda h: T.spline_coupling(3, hidden_dims=h),
        lambda h: T.spline_autoregressive(3, h),
        lambda h: T.residual_block(3, hidden_dims=h),
    ],
    ids=["iaf", "maf", "affine_coupling", "spline_coupling", "spline_autoregressive", "residual"],
)
def test_hidden_dims_takes_one_int_for_one_layer_and_refuses_zero_widths(make) -> None:
    """An int for one layer was iterated ("'int' object is not iterable"); the VAE's
    networks took it as one layer, and so do the flows now."""
    t = make(16)
    assert t(torch.randn(2, 3)).shape == (2, 3)
    assert str(make([16])) == str(t)  # the same layers as the list form
    with pytest.raises(ValueError, match="hidden_dims must hold positive whole numbers"):
        make([8, 0])
    with pytest.raises(TypeError, match="hidden_dims must be a sequence of layer widths"):
        make("16")


@pytest.mark.parametrize(
    "make",
    [
        lambda: T.conditional_inverse_autoregressive(3, 2, [8]),
        lambda: T.conditional_masked_autoregressive(3, 2, [8]),
        lambda: T.conditional_affine_coupling(3, context_dim=2),
        lambda: T.conditional_additive_coupling(3, context_dim=2),
        lambda: T.conditional_spline_coupling(3, 2),
        lambda: T.conditional_spline_autoregressive(3, 2, [8]),
    ],
    ids=["iaf", "maf", "affine_coupling", "additive_coupling", "spline_coupling", "spline_ar"],
)
def test_a_conditional_transform_applied_without_a_context_says_condition_it(make) -> None:
    """Pyro's base only said its forward was missing."""
    t = make()
    with pytest.raises(TypeError, match=r"is a conditional transform: apply t.condition"):
        t(torch.zeros(4, 3))
    assert t.condition(torch.zeros(2))(torch.zeros(4, 3)).shape == (4, 3)


@pytest.mark.parametrize("dtype", [torch.float64, torch.int64])
def test_input_of_another_dtype_than_the_parameters_is_a_clear_error(dtype) -> None:
    """torch said "mat1 and mat2 must have the same dtype", naming neither."""
    x = torch.ones(4, 3, dtype=dtype)
    for t in (T.inverse_autoregressive(3, [8]), T.affine_coupling(3), T.residual_block(3, [8])):
        for direction in (t, t.inv):
            with pytest.raises(TypeError, match=rf"holds torch.float32 parameters.*{dtype}"):
                direction(x)
    t = T.inverse_autoregressive(3, [8]).to(torch.float64)  # converted: it works
    assert t(torch.ones(4, 3, dtype=torch.float64)).dtype == torch.float64


def test_squeeze_odd_size_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="divisible"):
        T.Squeeze((1, 5, 4))
    with pytest.raises(ValueError, match="divisible"):
        T.multi_scale((1, 6, 6), lambda s, last: [T.ActNorm(s)], num_levels=2)


def test_non_finite_input_is_a_clear_error() -> None:
    flow = Flow(2, [T.affine_coupling(2, hidden_dims=[4])])
    x = torch.tensor([[0.0, float("nan")]])
    with pytest.raises(ValueError, match="non-finite"):
        flow.log_prob(x)
    with pytest.raises(ValueError, match="non-finite"):
        flow.log_prob(torch.tensor([[float("inf"), 0.0]]))


def test_singular_conv1x1_is_a_clear_error() -> None:
    t = T.InvertibleConv1x1((2, 2, 2))
    with torch.no_grad():
        t.log_s[0] = -float("inf")
    with pytest.raises(ValueError, match="singular"):
        t.inv(torch.randn(2, 2, 2))
    with torch.no_grad():
        t.log_s[0] = -40.0
    with pytest.raises(ValueError, match="singular"):
        t.inv(torch.randn(2, 2, 2))


def test_conditioner_output_size_mismatch_is_a_clear_error() -> None:
    from pyro_gen.nn import MLP

    t = T.AffineCoupling(T.alternating_mask(4), MLP(2, [4], 3))
    with pytest.raises(ValueError, match="num_params"):
        t(torch.randn(4))


def test_bad_masks_and_permutations() -> None:
    with pytest.raises(ValueError, match="both"):
        T.Coupling(torch.ones(3, dtype=torch.bool), torch.nn.Identity(), T.Affine())
    with pytest.raises(ValueError, match="permutation"):
        T.Permute(torch.tensor([0, 0, 1]))
    with pytest.raises(ValueError, match="not valid"):
        T.affine_coupling(4, mask="checkerboard")


def test_permute_takes_pyros_dim_where_it_names_the_first_event_dim() -> None:
    """Pyro's ``Permute(perm, dim=d)`` permutes dim ``d`` of a ``-d``-dim event: the same map
    as ours with that event shape; a dim that is not the event's first is refused, saying
    which event shape to pass."""
    import pyro.distributions.transforms as PT

    perm = torch.tensor([1, 2, 0])
    x, images = torch.randn(4, 3), torch.randn(2, 3, 4, 5)
    assert torch.equal(T.Permute(perm, dim=-1)(x), PT.Permute(perm, dim=-1)(x))
    ours = T.Permute(perm, (3, 4, 5), dim=-3)
    assert torch.equal(ours(images), PT.Permute(perm, dim=-3)(images))
    with pytest.raises(ValueError, match=r"event_shape=\(C, H, W\)"):
        T.Permute(perm, dim=-3)  # a vector event: dim -3 is not its first event dim


class _Counting(torch.nn.Module):
    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net, self.calls = net, 0

    def forward(self, x):
        self.calls += 1
        return self.net(x)


@pytest.mark.parametrize("maf", [True, False])
def test_fast_direction_takes_one_made_pass(maf: bool) -> None:
    d = 5
    t = (T.masked_autoregressive if maf else T.inverse_autoregressive)(d, [16])
    t.made = counter = _Counting(t.made)
    x = torch.randn(7, d)
    fast, slow = (t.inv, t) if maf else (t, t.inv)
    y = fast(x)
    t.log_abs_det_jacobian(*((y, x) if maf else (x, y)))  # cached: no extra pass
    assert counter.calls == 1
    counter.calls = 0
    slow(x)
    assert counter.calls == d


def test_transforms_survive_deepcopy_and_pickle_after_use() -> None:
    # the log-det cache holds tensors with autograd history; copies must not choke on it
    flow = Flow(
        (1, 4, 4),
        [
            T.multi_scale(
                (1, 4, 4),
                lambda s, last: [
                    T.ActNorm(s),
                    T.affine_coupling(s, mask="channel", hidden_channels=4, num_blocks=1),
                ],
                num_levels=2,
            )
        ],
    )
    x = torch.rand(3, 1, 4, 4)
    flow.log_prob(x).sum().backward()
    clone = copy.deepcopy(flow)
    torch.testing.assert_close(clone.log_prob(x), flow.log_prob(x))
    again = pickle.loads(pickle.dumps(flow))
    torch.testing.assert_close(again.log_prob(x), flow.log_prob(x))


def test_pyro_module_registers_all_parameters() -> None:
    flow = Flow(3, [T.masked_autoregressive(3, [8]), T.BatchNorm(3), T.affine_coupling(3)])
    pyro.module("flow", flow)
    names = set(pyro.get_param_store().keys())
    assert len(names) == len(list(flow.parameters())) > 0


def test_cached_transform_scoring_one_data_tensor_per_step_is_not_stale() -> None:
    # torch's cache_size=1 matches inputs by identity only: scoring the same data tensor
    # after an optimizer step would return the previous step's latent (and its freed graph)
    torch.manual_seed(0)
    flow = Flow(3, [T.affine_coupling(3, hidden_dims=[8]), T.masked_autoregressive(3, [8])])
    ref = copy.deepcopy(flow)
    for part in ref._transforms:
        part._cache_size = 0  # the uncached reference, same parameters at every step
    x = torch.randn(16, 3) * 2.0 + 1.0
    opt = torch.optim.SGD(flow.parameters(), lr=0.05)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.05)
    for _ in range(3):
        for f, o in ((flow, opt), (ref, ref_opt)):
            o.zero_grad()
            loss = -f.log_prob(x).mean()
            loss.backward()  # raises on a freed graph if the cache were stale
            o.step()
        for p, q in zip(flow.parameters(), ref.parameters(), strict=True):
            torch.testing.assert_close(p, q)
    # a value cached without grad is not handed to a caller that needs gradients
    t = T.inverse_autoregressive(3, [8])
    u = torch.randn(4, 3)
    with torch.no_grad():
        y = t(u)
    assert t(u).requires_grad and not y.requires_grad


@pytest.mark.filterwarnings("ignore:`torch.jit.trace` is deprecated:DeprecationWarning")
def test_pyros_jit_elbo_trains_a_density_flow_on_one_data_tensor() -> None:
    """Pyro's JitTrace_ELBO runs the model once eagerly, then traces it with the same data
    tensor and parameters: a value cached by the eager run was handed to the trace, which
    refused it ("Cannot insert a Tensor that requires grad as a constant"). The same steps
    without the jit give the same losses."""
    from pyro.infer import SVI, JitTrace_ELBO, Trace_ELBO

    from pyro_gen.flows import build as build_flow

    x = torch.randn(64, 2)
    losses = {}
    for loss in (JitTrace_ELBO(ignore_jit_warnings=True), Trace_ELBO()):
        pyro.clear_param_store()
        torch.manual_seed(0)
        flow = build_flow("realnvp", (2,), num_layers=2)
        svi = SVI(flow.model, flow.guide, pyro.optim.Adam({"lr": 1e-2}), loss)
        losses[type(loss).__name__] = [svi.step(x) for _ in range(3)]
    assert losses["JitTrace_ELBO"][0] > losses["JitTrace_ELBO"][-1]
    torch.testing.assert_close(losses["JitTrace_ELBO"], losses["Trace_ELBO"], rtol=1e-5, atol=0)


def test_iaf_scores_its_own_samples_in_one_pass() -> None:
    # what a guide does: sample, then log_prob of that sample
    import pyro.distributions as dist

    d = 6
    t = T.inverse_autoregressive(d, [16])
    t.made = counter = _Counting(t.made)
    q = dist.TransformedDistribution(dist.Normal(torch.zeros(d), 1.0).to_event(1), [t])
    z = q.rsample((5,))
    q.log_prob(z)
    assert counter.calls == 1
    q.log_prob(z.clone())  # any other point: the D-pass inverse
    assert counter.calls == 1 + d


def test_conditioned_transform_kept_across_a_step_is_not_stale() -> None:
    # condition(context) holds the network in a functools.partial, not as a submodule; its
    # parameters still guard the cache
    for t in (
        T.conditional_inverse_autoregressive(3, 2, [8]),
        T.conditional_affine_coupling(3, 2, hidden_dims=[8]),
    ):
        ct = t.condition(torch.randn(2))
        y = torch.randn(4, 3)
        x = ct.inv(y)
        with torch.no_grad():
            for p in t.parameters():
                p.add_(0.1)
        x_new = ct.inv(y)
        assert x_new is not x
        torch.testing.assert_close(ct(x_new), y, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(x_new, x)


def test_elementwise_unpack_is_parameter_major_and_checks_its_size() -> None:
    # the layout MADE and the coupling conditioners produce: all shifts, then all log-scales,
    # on any dim (channel dim of images included)
    from pyro_gen.transforms.elementwise import Affine

    h = Affine()
    theta = torch.randn(2, 6, 5, requires_grad=True)
    for dim in (1, -2):
        shift, raw = h.unpack(theta, dim, 3)
        torch.testing.assert_close(shift, theta[:, :3])
        torch.testing.assert_close(raw, theta[:, 3:])
    (shift * 2.0 + raw).sum().backward()
    torch.testing.assert_close(theta.grad[:, :3], torch.full((2, 3, 5), 2.0))
    torch.testing.assert_close(theta.grad[:, 3:], torch.full((2, 3, 5), 1.0))
    with pytest.raises(ValueError, match=r"Affine takes num_params \* n = 2 \* 4"):
        h.unpack(theta, 1, 4)
