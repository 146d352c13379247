"""Priors given what a user's program hands them: sharp components, mixed dtypes, bad
sizes, ``init`` and encoders, non-positive temperatures, rsample without a pathwise sampler,
out-of-support latents under ``pyro.enable_validation``.

What each check compares against:

- a mixture's log density in float32 against a float64 per-component sum (sharp
  components far from the origin, as a VampPrior's late-training posteriors are);
- float32 parameters scoring float64 or integer values (and the reverse) against the
  same float64 sum, as Pyro's Normal promotes;
- reparameterized flow draws: autograd gradients against central finite differences of
  the same draws (fixed noise), in float64;
- an infinite latent: -inf as Pyro's Normal gives it; ``infer_shapes`` against the shapes
  of the distribution built from arguments of those shapes;
- each bad input (sizes, ``init``, encoders, temperatures): one error naming what was wrong.
"""

from __future__ import annotations

import copy

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_gen import transforms as T
from pyro_gen.distributions import Flow, LearnedMixture, LearnedNormal
from pyro_gen.distributions.mixture import GaussianMixture, MixturePrior
from pyro_gen.distributions.vamp import VampPrior
from pyro_gen.vae.priors import FlowPrior

D = 2


def direct(logits: torch.Tensor, locs: torch.Tensor, scales: torch.Tensor, z: torch.Tensor):
    """log sum_k pi_k N(z; mu_k, s_k^2) in float64, one difference per component."""
    logits, locs, scales, z = (t.double() for t in (logits, locs, scales, z))
    per = dist.Normal(locs, scales).log_prob(z[..., None, :]).sum(-1)
    return (logits.log_softmax(-1) + per).logsumexp(-1)


@pytest.mark.parametrize("scale", [0.05, 0.01, 1e-3])
def test_sharp_float32_mixture_is_scored_as_in_float64(scale) -> None:
    # a draw from its own component, |mu| ~ 5: float32 cancellation in the expanded square
    # put this ~1 nat off at scale 0.01 and ~150 nats at 1e-3
    torch.manual_seed(0)
    k, d = 50, 16
    locs, scales = 5 * torch.randn(k, d), scale * (torch.rand(k, d) + 0.5)
    logits = torch.randn(k)
    z = locs[:8] + scales[:8] * torch.randn(8, d)
    p = GaussianMixture(logits, locs, scales)
    expected = direct(logits, locs, scales, z)
    for q in (p, p.expand((8,))):
        got = q.log_prob(z)
        assert got.dtype == torch.float32
        torch.testing.assert_close(got.double(), expected, rtol=1e-6, atol=1e-4)


def test_a_sharp_vamp_prior_is_scored_as_in_float64() -> None:
    torch.manual_seed(0)
    w = 5 * torch.randn(4, D)
    prior = VampPrior((4,), 6, encode=lambda u: (u @ w, torch.full((len(u), D), 2e-3)))
    loc, scale = prior._encode[0](prior.pseudo_inputs())
    z = loc.detach() + scale * torch.randn(6, D)
    expected = direct(torch.zeros(6), loc, scale, z)
    torch.testing.assert_close(prior().log_prob(z).double(), expected, rtol=1e-6, atol=1e-4)


@pytest.mark.parametrize("value_dtype", [torch.float64, torch.int64])
def test_float32_mixture_scores_float64_and_integer_values(value_dtype) -> None:
    torch.manual_seed(0)
    prior = MixturePrior(D, 3)
    p = prior()
    z = (3 * torch.randn(5, D)).round().to(value_dtype)
    expected = direct(p.logits, p.locs, p.scales, z)
    for q in (p, p.expand((5,))):
        got = q.log_prob(z)
        assert got.dtype == torch.promote_types(value_dtype, torch.float32)
        torch.testing.assert_close(got.double(), expected, rtol=1e-6, atol=1e-5)
    # Pyro's own Normal does the same
    normal = dist.Normal(torch.zeros(D), 1.0).to_event(1)
    assert normal.log_prob(z).dtype == got.dtype


def test_float64_mixture_built_by_hand_scores_float32_values() -> None:
    torch.manual_seed(0)
    logits, locs = torch.randn(3, dtype=torch.float64), torch.randn(3, D, dtype=torch.float64)
    scales = torch.rand(3, D, dtype=torch.float64) + 0.3
    p = GaussianMixture(logits, locs, scales)
    z = torch.randn(4, D)
    got = p.log_prob(z)
    assert got.dtype == torch.float64 and p.sample((2,)).dtype == torch.float64
    torch.testing.assert_close(got, direct(logits, locs, scales, z))


def test_vamp_prior_names_a_dtype_clash_with_its_encoder() -> None:
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 2 * D).double()  # a float64 program built by hand

    def encode(u):
        loc, raw = net(u).chunk(2, -1)
        return loc, raw.exp()

    prior = VampPrior((4,), 3, encode=encode)
    with pytest.raises(TypeError, match="float32.*prior.to"):
        prior()
    z = torch.randn(5, D, dtype=torch.float64)
    lp = prior.double()().log_prob(z)
    loc, scale = encode(prior.pseudo_inputs())
    torch.testing.assert_close(lp, direct(torch.zeros(3), loc, scale, z))


@pytest.mark.parametrize(
    "make, match",
    [
        # 0..255 pixels were clamped to 0.99 without a word
        (lambda: VampPrior((4,), 3, init=torch.randint(0, 256, (3, 4))), r"\[0, 1\].*255"),
        (lambda: VampPrior((4,), 3, init=torch.full((3, 4), float("nan"))), r"\[0, 1\]"),
        (lambda: VampPrior((2, 2), 3, init=torch.rand(3, 4)), r"shape \(K, \*event_shape\)"),
        (lambda: VampPrior((4,), 5, init=torch.rand(3, 4)), "num_components=5"),
        (lambda: VampPrior((4,), 0), "at least 1"),
        (lambda: VampPrior(0, 3), "positive whole number"),
        (lambda: VampPrior(4.0, 3), "positive whole number"),
    ],
)
def test_vamp_prior_refuses_bad_init(make, match) -> None:
    with pytest.raises(ValueError, match=match):
        make()


def test_vamp_prior_takes_its_size_from_init_and_checks_its_encoder() -> None:
    x = torch.rand(7, 4) * 0.9 + 0.05
    prior = VampPrior(4, init=x)  # an int event shape, as Flow takes one
    assert prior.event_shape == (4,)
    assert prior.num_components == 7
    torch.testing.assert_close(prior.pseudo_inputs(), x)
    # the encoder is tried when it is bound (it used to fail only at the first prior() call)
    guide = type("Guide", (), {"encode": staticmethod(lambda u: u[:, :D])})()
    with pytest.raises(TypeError, match=r"\(loc, scale\).*a tensor of shape \(2, 2\)"):
        prior.bind(guide)


# ----------------------------------------------------------------------------- rsample


def _flows() -> dict[str, Flow]:
    return {
        "LearnedNormal": Flow(
            D,
            [T.affine_coupling(D, hidden_dims=[8]), T.masked_autoregressive(D, [8])],
            base=LearnedNormal(D),
        ),
        "FlowPrior": FlowPrior(D, 2, (8,)).flow,
    }


@pytest.mark.parametrize("name", ["LearnedNormal", "FlowPrior"])
def test_flow_rsample_gradients_equal_finite_differences(name) -> None:
    torch.manual_seed(0)
    flow = _flows()[name].double()
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.3 * torch.randn_like(p))
    params = list(flow.parameters())

    def objective() -> torch.Tensor:
        torch.manual_seed(5)  # the same noise for every evaluation
        x = flow.rsample(7)
        return x.sin().sum() + flow.log_prob(x).sum()

    grads = torch.autograd.grad(objective(), params)
    eps = 1e-6
    for p, g in zip(params, grads):
        for i in range(min(p.numel(), 3)):
            with torch.no_grad():
                p.view(-1)[i] += eps
            up = objective().item()
            with torch.no_grad():
                p.view(-1)[i] -= 2 * eps
            down = objective().item()
            with torch.no_grad():
                p.view(-1)[i] += eps
            assert g.view(-1)[i].item() == pytest.approx((up - down) / (2 * eps), abs=1e-6)


def test_rsample_without_a_pathwise_sampler_says_so() -> None:
    flow = Flow(D, [T.affine_coupling(D, hidden_dims=[8])], base=LearnedMixture(D, 3))
    assert not flow().has_rsample
    with pytest.raises(NotImplementedError, match="reparameterized.*sample()"):
        flow.rsample(3)
    prior = MixturePrior(D, 3)()
    with pytest.raises(NotImplementedError, match="reparameterized.*sample()"):
        prior.rsample((3,))
    assert flow.sample(3).shape == (3, D) and prior.sample((3,)).shape == (3, D)


@pytest.mark.parametrize("temperature", [0.0, -1.0])
@pytest.mark.parametrize("base", ["standard", "LearnedNormal", "LearnedMixture"])
def test_a_non_positive_temperature_is_one_clear_error(base, temperature) -> None:
    bases = {"standard": lambda: None, "LearnedNormal": lambda: LearnedNormal(D)}
    module = bases.get(base, lambda: LearnedMixture(D, 3))()
    flow = Flow(D, [T.affine_coupling(D, hidden_dims=[8])], base=module)
    with pytest.raises(ValueError, match="temperature.*positive"):
        flow.sample(3, temperature=temperature)
    if base != "LearnedMixture":  # one Normal base: a positive temperature scales its spread
        spread = [Flow(D, [], base=module).sample(4000, temperature=t).std(0) for t in (0.5, 1)]
        torch.testing.assert_close(spread[0] / spread[1], torch.full((D,), 0.5), atol=0.05, rtol=0)


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize("kind", ["mog", "flow"])
def test_out_of_support_latent_in_a_users_model(kind) -> None:
    torch.manual_seed(0)
    prior = MixturePrior(D, 3) if kind == "mog" else FlowPrior(D, 2, (8,))
    z = torch.randn(4, D)
    z[1, 0] = float("nan")

    def model(z):
        pyro.module("prior", prior)
        with pyro.plate("data", len(z)):
            pyro.sample("z", prior(), obs=z)

    def log_prob(z) -> torch.Tensor:
        tr = pyro.poutine.trace(model).get_trace(z)
        tr.compute_log_prob()
        return tr.nodes["z"]["log_prob"]

    with pyro.validation_enabled(True), pytest.raises(ValueError, match="z"):
        log_prob(z)  # Pyro names the site
    with pyro.validation_enabled(False):
        torch.testing.assert_close(log_prob(z)[[0, 2, 3]], prior().log_prob(z[[0, 2, 3]]))


def test_an_infinite_latent_has_zero_mixture_density_as_under_pyros_normal() -> None:
    # inside torch's real support (inf == inf); the matmul form gave inf - inf = nan
    torch.manual_seed(0)
    prior = MixturePrior(D, 3)
    z = torch.tensor([[float("inf"), 0.0], [0.0, -float("inf")], [0.5, 0.5]])
    normal = dist.Normal(torch.zeros(D), 1.0).to_event(1)
    with pyro.validation_enabled(True):
        for p in (prior(), prior().expand((3,))):
            got = p.log_prob(z)
            assert torch.equal(got[:2], normal.log_prob(z[:2]))  # -inf, not nan
            torch.testing.assert_close(got[2:].double(), direct(p.logits, p.locs, p.scales, z)[2:])


@pytest.mark.parametrize(
    "shapes",
    [
        dict(logits=(3,), locs=(3, D), scales=(3, D)),
        dict(logits=(4, 3), locs=(3, D), scales=(3, 1)),
        dict(logits=(5, 1, 3), locs=(2, 3, D), scales=(1, D)),
    ],
)
def test_infer_shapes_agrees_with_the_built_distribution(shapes) -> None:
    # Pyro's test_infer_shapes: the shapes inferred from the arguments' shapes are the
    # distribution's own
    args = {k: torch.rand(v) + 0.5 for k, v in shapes.items()}
    d = GaussianMixture(**args)
    assert GaussianMixture.infer_shapes(**shapes) == (d.batch_shape, d.event_shape)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: MixturePrior(2.0, 3), "z_dim"),
        (lambda: MixturePrior(2, 3.0), "num_components"),
        (lambda: MixturePrior(2, 0), "num_components"),
        (lambda: MixturePrior(2, 3, min_scale=-1.0), "min_scale"),
        (lambda: LearnedMixture(2.5, 3), "dim"),
        (lambda: LearnedMixture(2, 0), "num_components"),
    ],
)
def test_module_priors_name_a_bad_size(make, match) -> None:
    # float sizes failed inside torch.randn ("type must be tuple of ints"); a negative
    # min_scale let the scales reach zero
    with pytest.raises(ValueError, match=match):
        make()


def test_a_flow_of_float64_transforms_built_by_hand_draws_float64() -> None:
    # the base's buffers were float32 whatever the transforms: sampling failed with the
    # transforms asking to convert an internal tensor
    torch.manual_seed(0)
    parts = [T.affine_coupling(D, hidden_dims=[8]).double(), T.masked_autoregressive(D, [8])]
    parts[1].double()
    flow = Flow(D, parts)
    x = flow.rsample(5)
    assert x.dtype == torch.float64 and flow.sample(2).dtype == torch.float64
    doubled = copy.deepcopy(flow).double()  # what the user would otherwise have to call
    torch.testing.assert_close(flow.log_prob(x), doubled.log_prob(x), rtol=1e-12, atol=1e-12)
    assert flow.log_prob(x).dtype == torch.float64
