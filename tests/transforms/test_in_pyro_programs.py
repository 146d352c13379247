"""pyro_gen transforms dropped into plain Pyro programs, with no pyro_gen wrapper.

Each test is a use Pyro's own tutorials and tests make of a transform (conditional
distributions, ``torch.inference_mode``, ...) that once failed or gave a wrong value.
"""

from __future__ import annotations

import gc
import math
import weakref

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO
from pyro.infer.autoguide import AutoNormalizingFlow

from pyro_gen import transforms as T

from .registry import CASES, Case


def _perturb(module: torch.nn.Module, scale: float = 0.3) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn_like(p))


@pytest.mark.parametrize(
    "make",
    [
        lambda: T.conditional_affine_coupling(3, 2, hidden_dims=[8]),
        lambda: T.conditional_additive_coupling(3, 2, hidden_dims=[8]),
        lambda: T.conditional_affine_coupling(4, 2, mask="half", hidden_dims=[8]),
        lambda: T.conditional_spline_coupling(3, 2, hidden_dims=[8]),
        lambda: T.conditional_masked_autoregressive(3, 2, [8]),
        lambda: T.conditional_additive_coupling(
            (2, 2, 2), 2, mask="channel", hidden_channels=4, num_blocks=1
        ),
        lambda: T.conditional_affine_coupling((1, 2, 2), 2, hidden_channels=4, num_blocks=1),
    ],
    ids=["affine", "additive", "half", "spline", "maf", "channel", "checkerboard"],
)
def test_a_context_batch_broadcasts_against_the_value(make) -> None:
    # ConditionalTransformedDistribution(base, [t]).condition(ctx) with ctx of shape (N, C):
    # a draw without a sample shape, or a (M,) draw from ctx of shape (N, 1, C), broadcasts
    # x against the context as the autoregressive layers do (the couplings once failed in
    # an index assignment with "expand(...): the number of sizes provided ...")
    torch.manual_seed(0)
    t = make()
    _perturb(t)
    shape = t.event_shape
    base = dist.Normal(torch.zeros(shape), 1.0).to_event(len(shape))
    cond = dist.ConditionalTransformedDistribution(base, [t])
    ctx = torch.randn(5, 2)
    x = torch.randn(shape)
    y = t.condition(ctx)(x)
    assert y.shape == (5, *shape)
    assert t.condition(ctx).log_abs_det_jacobian(x, y).shape == (5,)
    for i in range(5):
        torch.testing.assert_close(y[i], t.condition(ctx[i])(x))
        torch.testing.assert_close(t.condition(ctx).inv(y)[i], x, atol=1e-5, rtol=1e-5)
    assert cond.condition(ctx).rsample().shape == (5, *shape)
    d = cond.condition(ctx.unsqueeze(1))
    s = d.sample((4,))
    assert s.shape == (5, 4, *shape)
    lp = d.log_prob(s)
    for i in range(5):
        torch.testing.assert_close(
            lp[i], cond.condition(ctx[i]).log_prob(s[i]), atol=1e-4, rtol=1e-5
        )


@pytest.mark.parametrize(
    "make",
    [
        lambda: T.cnf(2, (8,), trace="exact", rtol=1e-6, atol=1e-6),
        lambda: T.residual_block(2, [8]),
        lambda: T.inverse_autoregressive(2, [8]),
    ],
    ids=["cnf", "residual", "iaf"],
)
def test_log_det_by_autograd_works_under_inference_mode(make) -> None:
    # these transforms differentiate their own map for log|det J|; torch.enable_grad() alone
    # does not lift torch.inference_mode (Lightning's validation, evaluation scripts), where
    # sampling and log_prob failed with "element 0 of tensors does not require grad"
    torch.manual_seed(0)
    t = make().eval()
    _perturb(t, 0.1)
    d = dist.TransformedDistribution(dist.Normal(torch.zeros(2), 1.0).to_event(1), [t])
    x = torch.randn(4, 2)
    with torch.no_grad():
        expected = d.log_prob(x.clone())
    with torch.inference_mode():
        lp = d.log_prob(x.clone())
        s = d.sample((3,))
        lp_s = d.log_prob(s)
    torch.testing.assert_close(lp, expected)
    assert s.shape == (3, 2) and bool(torch.isfinite(lp_s).all())


def test_conv1x1_output_feeds_torch_transforms() -> None:
    # Glow's 1x1 convolution followed by torch's AffineTransform (a rescaling to data units):
    # the conv's output was channel-strided, and the affine's log-det .view() of it failed
    torch.manual_seed(0)
    conv = T.InvertibleConv1x1((2, 3, 3))
    d = dist.TransformedDistribution(
        dist.Normal(torch.zeros(2, 3, 3), 1.0).to_event(3),
        [conv, dist.transforms.AffineTransform(0.5, 2.0, event_dim=3)],
    )
    y = d.sample((4,))
    assert conv(torch.randn(4, 2, 3, 3)).is_contiguous()
    # closed form: y = 2 W x + 0.5 per pixel, so u = W^-1 (y - 0.5) / 2 and
    # log p(y) = log N(u) - H W sum log|s| - D log 2
    u = torch.einsum("ij,njhw->nihw", torch.linalg.inv(conv.weight()), (y - 0.5) / 2)
    expected = (
        dist.Normal(0.0, 1.0).log_prob(u).sum((1, 2, 3))
        - 9 * conv.log_s.sum()
        - 18 * torch.log(torch.tensor(2.0))
    )
    torch.testing.assert_close(d.log_prob(y), expected, atol=1e-4, rtol=1e-5)


_OURS = [
    c
    for c in CASES
    if c.context_dim is None
    and c.invertible
    and all(cls.__module__.startswith("pyro_gen.") for cls in c.covers)
]


@pytest.mark.parametrize("case", _OURS, ids=[c.name for c in _OURS])
def test_outputs_feed_torch_transforms_that_view_them(case: Case) -> None:
    # torch's AffineTransform.log_abs_det_jacobian .view()s its input: a strided output
    # (Glow's 1x1 convolution, a squeeze with W == 2) made log_prob of such a stack fail
    torch.manual_seed(0)
    t = case.build()
    if isinstance(t, torch.nn.Module):
        _perturb(t, 0.1)
        t.inv(torch.randn(16, *t.forward_shape(case.shape)))  # data-dependent init
        t.eval()
    k, out = len(case.shape), tuple(t.forward_shape(case.shape))
    x, y = torch.randn(3, *case.shape), torch.randn(3, *out)
    assert t(x).is_contiguous() and t.inv(y).is_contiguous()
    affine = dist.transforms.AffineTransform
    base = dist.Normal(torch.zeros(case.shape), 1.0).to_event(k)
    d = dist.TransformedDistribution(
        base, [affine(0.1, 1.5, event_dim=k), t, affine(0.5, 2.0, event_dim=len(out))]
    )
    u = (t.inv((y - 0.5) / 2) - 0.1) / 1.5
    expected = (
        base.log_prob(u)
        - math.prod(case.shape) * math.log(1.5)
        - t.log_abs_det_jacobian(1.5 * u + 0.1, (y - 0.5) / 2)
        - math.prod(out) * math.log(2.0)
    )
    torch.testing.assert_close(d.log_prob(y), expected, atol=1e-4, rtol=1e-5)


def test_actnorm_first_called_on_one_vector_starts_at_the_identity() -> None:
    # Pyro's AutoNormalizingFlow first pushes one (D,) base draw through its flow: the
    # statistics of an unbatched vector were taken across its features (mean([]) reduces
    # every dim), and those of a single value per feature gave a scale of 1e6 (NaN ELBO)
    for x in (torch.randn(3), torch.randn(1, 3), torch.randn(1)):
        t = T.ActNorm(x.shape[-1])
        torch.testing.assert_close(t(x), x)
        assert t.initialized and float(t.log_scale.detach().abs().max()) == 0.0
    t = T.ActNorm(2)
    t(5.0 + 3.0 * torch.randn(64, 2))  # a batch still standardizes per feature
    assert float(t.log_scale.detach().abs().min()) > 0.5

    def model():
        pyro.sample("a", dist.Gamma(2.0, 1.0))

    pyro.clear_param_store()
    guide = AutoNormalizingFlow(model, T.ActNorm)
    assert math.isfinite(Trace_ELBO().loss(model, guide))


def test_batchnorm_training_mode_on_a_batch_of_one_is_a_clear_error() -> None:
    # batch statistics of one value per feature gave x = 0 and log|det| = D/2 log(eps):
    # a single point's density ~17 nats too high for D = 3, silently
    bn = T.BatchNorm(3)
    for y in (torch.randn(1, 3), torch.randn(3)):
        with pytest.raises(ValueError, match="more than one value per feature.*eval"):
            bn.inv(y)
    bn.eval()
    assert bn.inv(torch.randn(3)).shape == (3,)
    assert T.BatchNorm((2, 3, 3)).inv(torch.randn(1, 2, 3, 3)).shape == (1, 2, 3, 3)


def test_clear_cache_releases_the_last_call() -> None:
    # Pyro's tutorials call flow_dist.clear_cache() after each step; the log-det cache kept
    # the last call's tensors, and with them their autograd graph (after a log_prob that was
    # never backpropagated, every layer's saved activations), until the next call
    t = T.affine_coupling(4, hidden_dims=[8])
    d = dist.TransformedDistribution(dist.Normal(torch.zeros(4), 1.0).to_event(1), [t])
    x = weakref.ref(t.inv(torch.randn(10, 4)))  # the last output, held by the caches only
    d.clear_cache()
    gc.collect()
    assert x() is None
    # a container passes it on to its parts
    part = T.affine_coupling((4, 2, 2), mask="channel", hidden_channels=4, num_blocks=1)
    ms = T.MultiScale((1, 4, 4), [[part, T.Unsqueeze((4, 2, 2))]])
    ms.inv(torch.randn(3, 1, 4, 4))
    x = weakref.ref(part._ladj_cache.x)
    dist.TransformedDistribution(dist.Normal(torch.zeros(16), 1.0).to_event(1), [ms]).clear_cache()
    gc.collect()
    assert x() is None


@pytest.mark.parametrize(
    "make",
    [
        lambda: T.conditional_affine_coupling(4, 3, hidden_dims=[8]),
        lambda: T.conditional_affine_coupling((2, 2, 2), 3, hidden_channels=4, num_blocks=1),
        lambda: T.conditional_inverse_autoregressive(4, 3, [8]),
        lambda: T.conditional_spline_autoregressive(4, 3, hidden_dims=[8]),
    ],
    ids=["coupling", "image_coupling", "iaf", "spline_ar"],
)
def test_a_context_of_the_wrong_size_is_a_clear_error(make) -> None:
    # the network's own error was "mat1 and mat2 shapes cannot be multiplied" or a view error
    t = make()
    for ctx in (torch.randn(5, 7), torch.tensor(1.0)):
        with pytest.raises(ValueError, match=r"context_dim=3.*got shape"):
            t.condition(ctx)
    assert t.condition(torch.randn(5, 3))(torch.randn(5, *t.event_shape)).shape[0] == 5


def test_parameters_restored_through_the_param_store_invalidate_the_cache(tmp_path) -> None:
    # Pyro's way to restore a module in place: param store load, then
    # pyro.module(name, m, update_module_params=True), which swaps new Parameter objects
    # into the module. The cache checked the versions of the old objects only, so scoring
    # the same data tensor again returned the density of the parameters before the restore
    torch.manual_seed(0)
    pyro.clear_param_store()
    t = T.masked_autoregressive(3, [8])
    pyro.module("t", t)
    pyro.get_param_store().save(tmp_path / "params.pt")
    _perturb(t)
    d = dist.TransformedDistribution(dist.Normal(torch.zeros(3), 1.0).to_event(1), [t])
    x = torch.randn(5, 3)
    perturbed = d.log_prob(x)
    pyro.clear_param_store()
    pyro.get_param_store().load(tmp_path / "params.pt")
    pyro.module("t", t, update_module_params=True)
    restored = d.log_prob(x)
    torch.testing.assert_close(restored, d.log_prob(x.clone()))
    assert not torch.allclose(restored, perturbed)


@pytest.mark.parametrize(
    "make",
    [lambda: T.masked_autoregressive(2, [8]), lambda: T.affine_coupling(2, hidden_dims=[8])],
    ids=["maf", "coupling"],
)
def test_an_input_written_in_place_is_not_a_cache_hit(make) -> None:
    # a tensor reused for every batch (buf.copy_(batch)), or Langevin steps updating x in
    # place, is the same object with new values: the cache answered with the first
    # batch's density (silently), or with a graph already backpropagated through
    torch.manual_seed(0)
    t = make()
    _perturb(t)
    base = dist.Normal(torch.zeros(2), 1.0).to_event(1)
    d = dist.TransformedDistribution(base, [t])
    uncached = dist.TransformedDistribution(base, [t.with_cache(0)])
    buf = torch.empty(4, 2)
    for scale in (1.0, 2.0):
        batch = scale * torch.randn(4, 2)
        with torch.no_grad():
            buf.copy_(batch)
            torch.testing.assert_close(d.log_prob(buf), uncached.log_prob(batch))
    x = torch.randn(4, 2, requires_grad=True)
    for _ in range(2):
        (g,) = torch.autograd.grad(d.log_prob(x).sum(), x)
        with torch.no_grad():
            x += 0.1 * g
    u = torch.randn(3, 2)
    t(u)
    u.add_(1.0)
    torch.testing.assert_close(t(u), t.with_cache(0)(u))
    assert t.inv(t(u)) is u  # an unmodified input still hits


def test_to_dtype_drops_the_cache() -> None:
    # .double() converts parameters in place (same objects, same versions): scoring the
    # tensor cached before gave back the float32 value of the float32 map, silently
    t = T.inverse_autoregressive(3, [8])
    d = dist.TransformedDistribution(dist.Normal(torch.zeros(3), 1.0).to_event(1), [t])
    x = d.rsample((4,))
    t.double()
    with pytest.raises(TypeError, match="holds torch.float64 parameters and got torch.float32"):
        d.log_prob(x)
    base64 = dist.Normal(torch.zeros(3, dtype=torch.float64), 1.0).to_event(1)
    assert dist.TransformedDistribution(base64, [t]).log_prob(x.double()).dtype == torch.float64


def test_autogaussian_takes_a_flow_observed_given_a_latent() -> None:
    """Pyro's AutoGaussian reads ``event_shape.numel()`` of every site: a
    TransformedDistribution over pyro_gen transforms has torch.Size shapes, as over torch's
    (they were tuples, and the guide raised AttributeError before any loss)."""
    from pyro.infer.autoguide import AutoGaussian

    torch.manual_seed(0)
    t = T.conditional_affine_coupling(2, 1, hidden_dims=[8])
    x = torch.randn(5, 2)

    def model(x: torch.Tensor) -> None:
        pyro.module("t", t)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            base = dist.Normal(torch.zeros(2), 1.0).to_event(1)
            flow = dist.TransformedDistribution(base, [t.condition(z[:, None])])
            assert type(flow.event_shape) is torch.Size
            pyro.sample("x", flow, obs=x)

    pyro.clear_param_store()
    guide = AutoGaussian(model, backend="dense")
    pyro.set_rng_seed(1)
    loss = Trace_ELBO().loss(model, guide, x)
    assert math.isfinite(loss)
