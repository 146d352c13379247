"""pyro_gen's distributions held to Pyro's distribution contract.

Ported (read, not copied) from pyro-ppl/pyro ``tests/distributions/test_distributions.py``
(``test_support_shape``, ``test_batch_log_prob_shape``, ``test_expand_*``,
``test_subsequent_expands_ok``, ``test_expand_error``, ``test_score_errors_*``,
``check_sample_shapes``) and run over every distribution pyro_gen hands to
``pyro.sample``: GaussianMixture (shared and batched parameters), MixturePrior, VampPrior,
Flow / FlowDistribution (plain, conditional, image-shaped, LearnedNormal / LearnedMixture /
ConditionalNormal bases), the VAE's NormalPrior / FlowPrior, the DDPM's DiscretizedGaussian
and the discrete VAE's ExpRelaxedCategorical. What each check compares against:

- shapes: ``torch.Size`` batch/event shapes (Pyro's code calls ``.numel()`` on them),
  ``sample_shape + batch_shape + event_shape`` samples inside the support;
- ``expand``: the expanded density equals the small one broadcast (Pyro's
  ``check_sample_shapes``), expanding an expanded one, and the shapes Pyro refuses;
- ``log_prob`` of values with extra leading dims equals the per-row ``log_prob``;
- ``to_event`` / ``mask``: a sum over the batch dim and zeros where masked;
- validation: out-of-support and wrong-event-shape values raise ``ValueError`` also after
  ``expand`` (a plate expands every site's distribution);
- pickling keeps the density; a module prior's ``.double()`` gives float64 draws;
- draws follow ``exp(log_prob)`` (Pyro's ``test_gof``, asked by quadrature: unit mass and
  the draws' first and second moments within five standard errors of the grid's);
- rsample: ``has_rsample`` says whether ``rsample`` works, and the reparameterized gradient
  of a base-only flow is the closed form; GaussianMixture's sampled mean and covariance
  against the closed form within five standard errors;
- inference: Trace_ELBO (vectorized particles, outer ``plate(dim=-2)``) and TraceEnum_ELBO
  losses against the logsumexp written by hand; Predictive draws (sequential and parallel).
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Callable

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Predictive, Trace_ELBO, TraceEnum_ELBO, config_enumerate
from pyro.infer.autoguide import AutoGaussian

from pyro_gen import transforms as T
from pyro_gen.diffusion.likelihood import DiscretizedGaussian
from pyro_gen.distributions import (
    ConditionalNormal,
    Flow,
    FlowDistribution,
    LearnedMixture,
    LearnedNormal,
)
from pyro_gen.distributions.mixture import GaussianMixture, MixturePrior
from pyro_gen.distributions.vamp import VampPrior
from pyro_gen.vae.discrete import ExpRelaxedCategorical
from pyro_gen.vae.priors import FlowPrior, NormalPrior

K, D = 3, 2


def _perturbed(module: torch.nn.Module) -> torch.nn.Module:
    # away from the zero-initialised identity, so a wrong density cannot hide as N(0, I)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return module


def _gm_shared() -> GaussianMixture:
    return GaussianMixture(torch.randn(K), torch.randn(K, D), torch.rand(K, D) + 0.5)


def _gm_batched() -> GaussianMixture:
    # batch (1, 3): a size-1 dim for Pyro's expand-an-existing-dim checks, and a size-3 one
    # that must not be expanded to 1
    return GaussianMixture(torch.randn(1, 3, K), torch.randn(3, K, D), torch.rand(K, D) + 0.5)


def _vamp() -> GaussianMixture:
    w, v = torch.randn(4, D), torch.randn(4, D)
    prior = VampPrior((4,), num_components=K, encode=lambda u: (u @ w, (u @ v).exp()))
    return prior()


def _flow_of(base: torch.nn.Module | None = None, conditional: bool = False) -> Callable:
    if conditional:
        parts = [T.conditional_affine_coupling(D, 3, hidden_dims=[8])]
    else:
        parts = [T.affine_coupling(D, hidden_dims=[8]), T.masked_autoregressive(D, [8])]
    flow = _perturbed(Flow(D, parts, base=base))
    return lambda: flow(torch.randn(4, 3) if flow.conditional else None)


CASES: dict[str, Callable[[], dist.TorchDistribution]] = {
    "GaussianMixture-shared": _gm_shared,
    "GaussianMixture-batched": _gm_batched,
    "MixturePrior": lambda: _perturbed(MixturePrior(D, K))(),
    "VampPrior": _vamp,
    "Flow": lambda: _flow_of()(),
    "Flow-conditional": lambda: _flow_of(conditional=True)(),
    "Flow-LearnedNormal": lambda: _flow_of(LearnedNormal(D))(),
    "Flow-LearnedMixture": lambda: _flow_of(LearnedMixture(D, K))(),
    "Flow-ConditionalNormal": lambda: _flow_of(ConditionalNormal(D, 3, (8,)))(),
    "Flow-image": lambda: _perturbed(
        Flow(
            (4, 2, 2),
            [T.Squeeze((1, 4, 4)), T.affine_coupling((4, 2, 2), mask="channel", hidden_channels=4)],
        )
    )(),
    "NormalPrior": lambda: NormalPrior(D)(),
    "FlowPrior": lambda: _perturbed(FlowPrior(D, 2, (8,)))(),
    "DiscretizedGaussian": lambda: DiscretizedGaussian(torch.randn(3, 1), torch.rand(3, 1) + 0.2),
    "ExpRelaxedCategorical": lambda: ExpRelaxedCategorical(
        torch.tensor(0.7), logits=torch.randn(4, K)
    ),
}


# draws on a grid (a pmf), on a simplex's log-space surface, or in R^16: no density on a
# 2-D grid to test
_NO_DENSITY = {"DiscretizedGaussian", "ExpRelaxedCategorical", "Flow-image"}


@pytest.fixture(params=sorted(CASES))
def case(request) -> dist.TorchDistribution:
    torch.manual_seed(0)
    return CASES[request.param]()


def _bad_value(d: dist.TorchDistribution, shape: torch.Size) -> torch.Tensor:
    if isinstance(d, DiscretizedGaussian):
        return torch.full(shape, 2.0)  # outside [-1, 1]
    return torch.full(shape, math.nan)  # outside every real support


def _check_sample_shapes(small: dist.TorchDistribution, large: dist.TorchDistribution) -> None:
    """Pyro's check: the large density is the small one broadcast, on draws of either."""
    with torch.no_grad():
        x = small.sample()
        expected = small.log_prob(x).expand(large.batch_shape)
        torch.testing.assert_close(large.log_prob(x), expected)
        x = large.sample()
        torch.testing.assert_close(large.log_prob(x), small.log_prob(x))


# ----------------------------------------------------------------------------- shapes


def test_shapes_support_and_log_prob_shape(case) -> None:
    assert type(case.batch_shape) is torch.Size and type(case.event_shape) is torch.Size
    assert case.support.event_dim == case.event_dim
    with torch.no_grad():
        for sample_shape in [(), (5,), (2, 3)]:
            x = case.sample(sample_shape)
            assert x.shape == torch.Size(sample_shape) + case.batch_shape + case.event_shape
            ok = case.support.check(x)
            assert ok.shape == torch.Size(sample_shape) + case.batch_shape and bool(ok.all())
            assert case.log_prob(x).shape == torch.Size(sample_shape) + case.batch_shape
            assert bool(torch.isfinite(case.log_prob(x)).all())


def test_log_prob_of_extra_leading_dims_is_per_row(case) -> None:
    with torch.no_grad():
        x = case.sample((3, 2))
        whole = case.log_prob(x)
        rows = torch.stack(
            [torch.stack([case.log_prob(x[i, j]) for j in range(2)]) for i in range(3)]
        )
        torch.testing.assert_close(whole, rows)
        # a singleton leading dim broadcasts against the batch shape (vectorized particles)
        one = case.log_prob(x[:1, :1])
        assert one.shape == (1, 1) + case.batch_shape


# ----------------------------------------------------------------------------- expand


@pytest.mark.parametrize("sample_shape", [(2,), (2, 3)])
def test_expand_new_dims_and_expand_by(case, sample_shape) -> None:
    large = case.expand(torch.Size(sample_shape) + case.batch_shape)
    assert large.batch_shape == torch.Size(sample_shape) + case.batch_shape
    assert type(large) is type(case) and type(large.batch_shape) is torch.Size
    _check_sample_shapes(case, large)
    by = case.expand_by(list(sample_shape))
    assert by.batch_shape == large.batch_shape
    _check_sample_shapes(case, by)
    # Pyro's default expand (an ExpandedDistribution around the small one) agrees
    wrapped = dist.TorchDistribution.expand(case, large.batch_shape)
    _check_sample_shapes(case, wrapped)


def test_expand_existing_dim(case) -> None:
    for i, size in enumerate(case.batch_shape):
        if size == 1:
            shape = list(case.batch_shape)
            shape[i] = 5
            large = case.expand(tuple(shape))
            assert large.batch_shape == torch.Size(shape)
            _check_sample_shapes(case, large)


@pytest.mark.parametrize("shapes", [[(2, 1), (2, 3)], [(2, 1, 1), (2, 1, 3), (2, 5, 3)]])
def test_subsequent_expands(case, shapes) -> None:
    d = case
    for shape in shapes:
        n = d.expand(torch.Size(shape) + case.batch_shape)
        assert n.batch_shape == torch.Size(shape) + case.batch_shape
        _check_sample_shapes(d, n)
        d = n


@pytest.mark.parametrize(
    "initial, proposed", [[(2, 1), (4, 3)], [(2, 4), (2, 2, 1)], [(1, 2, 1), (2, 1)]]
)
def test_expand_refuses_what_pyro_refuses(case, initial, proposed) -> None:
    large = case.expand(torch.Size(initial) + case.batch_shape)
    with pytest.raises((RuntimeError, ValueError)):
        large.expand(torch.Size(proposed) + case.batch_shape)


def test_expand_to_a_shape_the_batch_does_not_broadcast_to_is_refused(case) -> None:
    if not case.batch_shape or case.batch_shape[-1] == 1:
        pytest.skip("needs a batch dim larger than one")
    # (3,) cannot become (2, 1): Pyro's expand raises; it must not return (2, 3)
    with pytest.raises((RuntimeError, ValueError)):
        case.expand(case.batch_shape[:-1] + (2, 1))


# ----------------------------------------------------------------------------- scoring


def test_score_errors_event_shape_and_non_broadcastable(case) -> None:
    with pyro.validation_enabled(True):
        for d in (case, case.expand((2,) + case.batch_shape)):
            # an Independent (to_event) leaves the event shape to its base, as in Pyro
            if d.event_shape and not isinstance(d, dist.Independent):
                with pytest.raises((ValueError, RuntimeError)):
                    d.log_prob(torch.ones(d.shape() + (1,)))
            # one more along the first dim that is not 1 (a 1 would broadcast)
            shape = list(d.shape())
            i = next(i for i, s in enumerate(shape) if s != 1)
            shape[i] += 1
            with pytest.raises((ValueError, RuntimeError)):
                d.log_prob(torch.ones(shape))


def test_validation_refuses_out_of_support_values_also_under_a_plate(case) -> None:
    with pyro.validation_enabled(True):
        with pytest.raises(ValueError):
            case.log_prob(_bad_value(case, case.shape()))
        # pyro.plate scores the expanded distribution: validation must survive expand
        large = case.expand((2,) + case.batch_shape)
        with pytest.raises(ValueError):
            large.log_prob(_bad_value(case, large.shape()))

        def model():
            with pyro.plate("data", 2, dim=-1 - len(case.batch_shape)):
                pyro.sample("x", case, obs=_bad_value(case, large.shape()))

        with pytest.raises(ValueError):
            pyro.poutine.trace(model).get_trace().compute_log_prob()


@pytest.mark.parametrize("validate", [True, False])
@pytest.mark.parametrize(
    "name", ["GaussianMixture", "DiscretizedGaussian", "ExpRelaxedCategorical", "FlowDistribution"]
)
def test_expand_keeps_an_explicit_validate_args(name, validate) -> None:
    # Pyro's expand copies _validate_args: validate_args=True refuses bad values under a
    # plate with global validation off, validate_args=False scores them with it on
    build = {
        "GaussianMixture": lambda v: GaussianMixture(
            torch.zeros(K), torch.randn(K, D), torch.ones(K, D), validate_args=v
        ),
        "DiscretizedGaussian": lambda v: DiscretizedGaussian(
            torch.zeros(3), torch.ones(3), validate_args=v
        ),
        "ExpRelaxedCategorical": lambda v: ExpRelaxedCategorical(
            torch.tensor(0.5), logits=torch.zeros(3, K), validate_args=v
        ),
        "FlowDistribution": lambda v: FlowDistribution(
            # Pyro leaves the base's flag to the base
            dist.Independent(dist.Normal(torch.zeros(D), 1.0, validate_args=v), 1, validate_args=v),
            [T.affine_coupling(D, hidden_dims=[8])],
            validate_args=v,
        ),
    }
    d = build[name](validate)
    large = d.expand((2,) + d.batch_shape)
    assert large._validate_args is validate
    bad = _bad_value(d, large.shape())
    with pyro.validation_enabled(not validate):
        if validate:
            with pytest.raises(ValueError):
                large.log_prob(bad)
        else:
            large.log_prob(bad)


def test_to_event_and_mask(case) -> None:
    large = case.expand((4,) + case.batch_shape)
    with torch.no_grad():
        x = large.sample()
        lp = large.log_prob(x)
        summed = large.to_event(1 + len(case.batch_shape)).log_prob(x)
        torch.testing.assert_close(summed, lp.sum())
        keep = torch.tensor([True, False, True, False]).reshape((4,) + (1,) * len(case.batch_shape))
        masked = large.mask(keep).log_prob(x)
        torch.testing.assert_close(masked, torch.where(keep, lp, torch.zeros_like(lp)))


def test_pickle_keeps_the_density(case) -> None:
    large = case.expand((2,) + case.batch_shape)
    with torch.no_grad():
        x = large.sample()
        back = pickle.loads(pickle.dumps(large))
        assert type(back) is type(large) and back.batch_shape == large.batch_shape
        torch.testing.assert_close(back.log_prob(x), large.log_prob(x))


def test_rsample_agrees_with_has_rsample(case) -> None:
    if case.has_rsample:
        x = case.rsample((5,))
        assert x.shape == (5,) + case.shape()
    else:
        with pytest.raises(NotImplementedError):
            case.rsample((5,))
        assert not case.sample((5,)).requires_grad


@pytest.mark.parametrize("name", [n for n in sorted(CASES) if n not in _NO_DENSITY])
def test_samples_follow_the_density(name) -> None:
    # Pyro's test_gof asks the same (draws follow exp(log_prob)); its nearest-neighbour
    # test gives p < 1e-6 on exact heteroscedastic 2-D densities, so here: exp(log_prob)
    # integrates to one on a grid, and the draws' first and second moments agree with the
    # grid's within five standard errors, for each batch member
    torch.manual_seed(0)
    d = CASES[name]()
    n = 20000
    with torch.no_grad():
        x = d.sample((n,)).reshape(n, -1, D)
        half = 1.5 * x.abs().max().item()
        g = torch.linspace(-half, half, 301)
        pts = torch.stack(torch.meshgrid(g, g, indexing="ij"), -1).reshape(-1, D)
        ones = (1,) * len(d.batch_shape)
        w = d.log_prob(pts.reshape((-1, *ones, D))).exp().reshape(len(pts), -1)
        w = w * (g[1] - g[0]) ** 2
    feats = lambda v: torch.cat([v, v**2, v.prod(-1, keepdim=True)], -1)  # noqa: E731
    for b in range(x.shape[1]):
        assert abs(w[:, b].sum().item() - 1) < 1e-2, b
        exact = (w[:, b, None] * feats(pts)).sum(0)
        f = feats(x[:, b])
        se = f.std(0) / math.sqrt(n)
        assert ((f.mean(0) - exact).abs() < 5 * se + 1e-3).all(), (b, f.mean(0), exact)


# ------------------------------------------------------------------- closed forms


def test_flow_rsample_gradient_is_the_closed_form() -> None:
    # no transforms: x = loc + exp(log_scale) * eps, so d sum(x) / d loc = n and
    # d sum(x) / d log_scale = sum over draws of (x - loc)
    base = _perturbed(LearnedNormal(D))
    x = Flow(D, [], base=base)().rsample((50,))
    x.sum().backward()
    torch.testing.assert_close(base.loc.grad, torch.full((D,), 50.0))
    torch.testing.assert_close(base.log_scale.grad, (x - base.loc).sum(0).detach())


def test_gaussian_mixture_sampled_mean_and_covariance_match_the_closed_form() -> None:
    torch.manual_seed(3)
    logits = torch.tensor([0.3, -0.5, 1.0], dtype=torch.float64)
    locs = torch.tensor([[-2.0, 1.0], [0.5, -1.5], [2.0, 2.0]], dtype=torch.float64)
    scales = torch.tensor([[0.5, 1.0], [1.5, 0.3], [0.7, 0.7]], dtype=torch.float64)
    p = GaussianMixture(logits, locs, scales).expand((2,))  # also the expanded sampler
    pi = logits.softmax(-1)
    mean = (pi[:, None] * locs).sum(0)
    second = (
        pi[:, None, None] * (torch.diag_embed(scales**2) + locs[:, :, None] * locs[:, None])
    ).sum(0)
    cov = second - mean[:, None] * mean[None]
    n = 40000
    x = p.sample((n,)).reshape(-1, D)
    torch.testing.assert_close(p.mean[0], mean)
    torch.testing.assert_close(p.variance, cov.diagonal().expand(2, D))
    m = x.mean(0)
    assert ((m - mean).abs() < 5 * x.std(0) / math.sqrt(len(x))).all()
    c = x - m
    prods = c[:, :, None] * c[:, None]
    se = prods.std(0) / math.sqrt(len(x))
    assert ((prods.mean(0) - cov).abs() < 5 * se).all(), (prods.mean(0), cov)


def test_gaussian_mixture_scales_broadcast_or_a_clear_error() -> None:
    locs, x = torch.randn(K, D), torch.randn(5, D)
    # scales shared across dims, (K, 1): the density is that of the full (K, D) scales
    one = GaussianMixture(torch.zeros(K), locs, torch.full((K, 1), 0.7))
    full = GaussianMixture(torch.zeros(K), locs, torch.full((K, D), 0.7))
    torch.testing.assert_close(one.log_prob(x), full.log_prob(x))
    with pytest.raises(ValueError, match="logits"):
        GaussianMixture(torch.zeros(K + 1), locs, torch.ones(K, D))
    with pytest.raises(ValueError, match="scales"):
        GaussianMixture(torch.zeros(K), locs, torch.ones(K + 1, D))


@pytest.mark.parametrize("name", ["MixturePrior", "VampPrior", "Flow", "NormalPrior", "FlowPrior"])
def test_module_priors_follow_double(name) -> None:
    torch.manual_seed(0)
    w = torch.randn(4, D, dtype=torch.float64)
    modules = {
        "MixturePrior": lambda: MixturePrior(D, K),
        "VampPrior": lambda: VampPrior((4,), K, encode=lambda u: (u @ w, (u @ w).exp())),
        "Flow": lambda: Flow(D, [T.affine_coupling(D, hidden_dims=[8])], base=LearnedMixture(D)),
        "NormalPrior": lambda: NormalPrior(D),
        "FlowPrior": lambda: FlowPrior(D, 2, (8,)),
    }
    d = modules[name]().double()()
    x = d.sample((3,))
    assert x.dtype == torch.float64 and d.log_prob(x).dtype == torch.float64


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_module_priors_follow_to_cuda() -> None:
    for module in [MixturePrior(D, K), Flow(D, [T.affine_coupling(D)]), NormalPrior(D)]:
        d = module.to("cuda")()
        x = d.expand((4,)).sample((2,))
        assert x.device.type == "cuda" and d.log_prob(x).device.type == "cuda"


# ------------------------------------------------------------------- inference


def _mixture_model(p: GaussianMixture) -> Callable:
    def model(x=None, n: int = 6):
        with pyro.plate("data", n if x is None else x.shape[0]):
            return pyro.sample("x", p, obs=x)

    return model


def test_trace_elbo_with_vectorized_particles_is_the_exact_log_likelihood() -> None:
    torch.manual_seed(0)
    p, x = _gm_shared(), torch.randn(6, D)
    model = _mixture_model(p)
    expected = -p.log_prob(x).sum().item()
    for elbo in [
        Trace_ELBO(),
        Trace_ELBO(num_particles=3, vectorize_particles=True, max_plate_nesting=1),
    ]:
        assert elbo.loss(model, lambda x=None: None, x) == pytest.approx(expected, rel=1e-5)


def test_mixture_prior_latent_under_an_outer_plate() -> None:
    torch.manual_seed(0)
    prior = _perturbed(MixturePrior(D, K))
    with pyro.plate("outer", 3, dim=-2), pyro.plate("data", 5, dim=-1):
        z = pyro.sample("z", prior())
    assert z.shape == (3, 5, D)
    tr = pyro.poutine.trace(lambda: pyro.sample("z", prior().expand((3, 5)))).get_trace()
    torch.testing.assert_close(tr.log_prob_sum(), prior().log_prob(tr.nodes["z"]["value"]).sum())


def test_trace_enum_elbo_sums_out_a_discrete_choice_of_mixture() -> None:
    # c_n ~ Categorical(w) picks one of two GaussianMixtures (batched parameters indexed by
    # the enumerated value); the loss is -sum_n logsumexp_c(log w_c + log p_c(x_n))
    torch.manual_seed(0)
    w = torch.tensor([0.3, 0.7])
    logits, locs, scales = torch.randn(2, K), torch.randn(2, K, D), torch.rand(2, K, D) + 0.5
    x = torch.randn(6, D)

    @config_enumerate
    def model(x):
        with pyro.plate("data", x.shape[0]):
            c = pyro.sample("c", dist.Categorical(w))
            pyro.sample("x", GaussianMixture(logits[c], locs[c], scales[c]), obs=x)

    per = torch.stack([GaussianMixture(logits[c], locs[c], scales[c]).log_prob(x) for c in (0, 1)])
    expected = -(w.log()[:, None] + per).logsumexp(0).sum().item()
    loss = TraceEnum_ELBO(max_plate_nesting=1).loss(model, lambda x: None, x)
    assert loss == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("parallel", [False, True])
@pytest.mark.parametrize("name", ["GaussianMixture-shared", "Flow", "FlowPrior"])
def test_predictive_draws(name, parallel) -> None:
    torch.manual_seed(0)
    d = CASES[name]()
    model = _mixture_model(d)
    draws = Predictive(model, num_samples=4, parallel=parallel)()["x"]
    assert draws.shape == (4, 6, D)
    assert bool(torch.isfinite(d.log_prob(draws)).all())


def test_auto_gaussian_guide_on_a_flow_observed_given_a_latent() -> None:
    # AutoGaussian calls site["fn"].event_shape.numel() on observed sites with upstream
    # latents: a tuple event shape raised AttributeError. The loss is then Trace_ELBO's
    # single-draw estimate, log q(z) - log p(x, z), recomputed from the traces.
    torch.manual_seed(0)
    flow = _perturbed(Flow(D, [T.conditional_affine_coupling(D, 1, hidden_dims=[8])]))

    def model(x):
        pyro.module("flow", flow)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", flow(z[:, None]), obs=x)

    x = torch.randn(5, D)
    guide = AutoGaussian(model, backend="dense")
    guide(x)  # builds the guide's parameters
    torch.manual_seed(1)
    loss = Trace_ELBO().loss(model, guide, x)
    torch.manual_seed(1)  # the same draw of z
    guide_trace = pyro.poutine.trace(guide).get_trace(x)
    model_trace = pyro.poutine.trace(pyro.poutine.replay(model, guide_trace)).get_trace(x)
    expected = guide_trace.log_prob_sum() - model_trace.log_prob_sum()
    assert math.isfinite(loss) and loss == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("kind", ["transform", "base"])
def test_trace_enum_elbo_sums_out_a_class_conditioning_a_flow(kind) -> None:
    # a class-conditional flow p(x | c), c enumerated: the context arrives with the enum
    # dim, (2, 1, 2), against data (N, D); the loss is -sum_n logsumexp_c(log w_c + log p(x_n | c))
    torch.manual_seed(0)
    if kind == "transform":
        flow = Flow(D, [T.conditional_affine_coupling(D, 2, hidden_dims=[8])])
    else:
        flow = Flow(D, [T.affine_coupling(D, hidden_dims=[8])], base=ConditionalNormal(D, 2, (8,)))
    _perturbed(flow)
    w, x = torch.tensor([0.4, 0.6]), torch.randn(5, D)
    one_hot = torch.eye(2)

    @config_enumerate
    def model(x):
        with pyro.plate("data", x.shape[0]):
            c = pyro.sample("c", dist.Categorical(w))
            pyro.sample("x", flow(one_hot[c]), obs=x)

    with torch.no_grad():
        per = torch.stack([flow.log_prob(x, one_hot[c].expand(5, 2)) for c in (0, 1)])
        expected = -(w.log()[:, None] + per).logsumexp(0).sum().item()
        loss = TraceEnum_ELBO(max_plate_nesting=1).loss(model, lambda x: None, x)
    assert loss == pytest.approx(expected, rel=1e-5)
