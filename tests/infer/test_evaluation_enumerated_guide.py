"""Discrete guide sites marked for parallel enumeration (``config_enumerate`` on the guide, as in
Pyro's semi-supervised VAE with TraceEnum_ELBO) are summed out of each example's weight by
evaluate_elbo and iwae_log_likelihood, not drawn: against the closed-form evidence of a
two-component mixture with a Gaussian latent, and against TraceEnum_ELBO on a small M2 model."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import TraceEnum_ELBO, config_enumerate
from pyro.infer.autoguide import AutoDiscreteParallel
from torch import nn

from pyro_gen.infer import evaluate_elbo, iwae_log_likelihood
from pyro_gen.infer.evaluation_guide_enumeration import GuideEnumerationError
from pyro_gen.vae import DiscreteVAE

MEANS = torch.tensor([-1.5, 2.0], dtype=torch.float64)
WEIGHTS = torch.tensor([0.3, 0.7], dtype=torch.float64)
NOISE = 0.6


def mixture(x: torch.Tensor) -> None:
    """y ~ Categorical(WEIGHTS), z ~ N(0, 1), x ~ N(MEANS[y] + z, NOISE)."""
    with pyro.plate("data", x.shape[0]):
        y = pyro.sample("y", dist.Categorical(WEIGHTS))
        z = pyro.sample("z", dist.Normal(torch.zeros((), dtype=x.dtype), 1.0))
        pyro.sample("x", dist.Normal(MEANS[y] + z, NOISE), obs=x)


def evidence(x: torch.Tensor) -> torch.Tensor:
    """log p(x) in closed form: x | y ~ N(MEANS[y], 1 + NOISE^2)."""
    scale = (1 + NOISE**2) ** 0.5
    return torch.logsumexp(WEIGHTS.log() + dist.Normal(MEANS, scale).log_prob(x[:, None]), -1)


def label_posterior(x: torch.Tensor) -> torch.Tensor:
    """log p(y | x), shape ``x.shape + (2,)``."""
    scale = (1 + NOISE**2) ** 0.5
    joint = WEIGHTS.log() + dist.Normal(MEANS, scale).log_prob(x[..., None])
    return joint - joint.logsumexp(-1, keepdim=True)


def mixture_guide(widen: float = 1.0, shift: float = 0.0, exact_label: bool = False, **infer):
    """q(y | x) some classifier (or, ``exact_label``, the posterior of y), q(z | x, y) the
    exact posterior of z given y (``widen``, ``shift``: a proposal wider than it and
    off-centre); ``infer`` for y's site."""

    def guide(x: torch.Tensor) -> None:
        with pyro.plate("data", x.shape[0]):
            logits = torch.stack([0.8 * x, -0.8 * x], -1)
            if exact_label:
                logits = label_posterior(x)
            y = pyro.sample("y", dist.Categorical(logits=logits), infer=infer)
            loc = (x - MEANS[y]) / (1 + NOISE**2) + shift
            pyro.sample("z", dist.Normal(loc, widen * (NOISE**2 / (1 + NOISE**2)) ** 0.5))

    return guide


X = torch.tensor([-2.0, -0.3, 0.8, 2.5], dtype=torch.float64)


def test_elbo_sums_the_guide_label_out_exactly_as_trace_enum_elbo():
    """With q(z | x, y) the exact posterior, log p(x, y, z) - log q(z | x, y) = log p(x, y),
    so the enumerated ELBO sum_y q(y|x) [log p(x, y) - log q(y|x)] has no noise left: ours
    equals TraceEnum_ELBO's loss and that closed form (drawing y made it vary per draw)."""
    guide = config_enumerate(mixture_guide())
    values = evaluate_elbo(mixture, X, guide=guide, per_example=True)
    q = torch.stack([0.8 * X, -0.8 * X], -1).log_softmax(-1)
    joint = WEIGHTS.log() + dist.Normal(MEANS, (1 + NOISE**2) ** 0.5).log_prob(X[:, None])
    assert torch.allclose(values, (q.exp() * (joint - q)).sum(-1), atol=1e-10)
    pyro_elbo = -TraceEnum_ELBO(max_plate_nesting=1).loss(mixture, guide, X)
    assert float(values.sum()) == pytest.approx(pyro_elbo, abs=1e-8)

    # a value the guide rules out adds nothing (its -log q(y) is infinite): log p(x, y=1)
    def certain(x: torch.Tensor) -> None:
        with pyro.plate("data", x.shape[0]):
            logits = torch.tensor([-math.inf, 0.0], dtype=x.dtype)  # q(y=0) = 0 exactly
            y = pyro.sample("y", dist.Categorical(logits=logits), infer={"enumerate": "parallel"})
            loc = (x - MEANS[y]) / (1 + NOISE**2)
            pyro.sample("z", dist.Normal(loc, (NOISE**2 / (1 + NOISE**2)) ** 0.5))

    for fn in (evaluate_elbo, iwae_log_likelihood):
        assert torch.allclose(fn(mixture, X, guide=certain, per_example=True), joint[:, 1])
    # the guide's own mark, without config_enumerate, is read the same way
    marked = mixture_guide(enumerate="parallel")
    assert torch.allclose(evaluate_elbo(mixture, X, guide=marked, per_example=True), values)


def test_iwae_sums_the_guide_label_inside_each_weight():
    """sum_y p(x, y, z_y) / q(z_y | x, y) is unbiased for p(x); with the exact posterior for
    z it is p(x) itself, so even K = 1 gives the closed-form evidence."""
    guide = config_enumerate(mixture_guide())
    for k in (1, 7):
        values = iwae_log_likelihood(mixture, X, guide=guide, num_samples=k, per_example=True)
        assert torch.allclose(values, evidence(X), atol=1e-10)


def test_iwae_with_an_inexact_proposal_stays_below_the_evidence_and_converges():
    """With q(z | x, y) wider than the posterior and off-centre (bounded weights), the
    bound's mean gap over many examples is clearly negative at K = 1 and closes as K grows,
    staying at or below zero (up to three standard errors of the mean gap)."""
    pyro.set_rng_seed(0)
    y = dist.Categorical(WEIGHTS).sample((300,))
    x = MEANS[y] + torch.randn(300, dtype=torch.float64) * (1 + NOISE**2) ** 0.5
    guide = config_enumerate(mixture_guide(widen=1.5, shift=0.3))
    gaps = {}
    for k in (1, 20, 2000):
        values = iwae_log_likelihood(mixture, x, guide=guide, num_samples=k, per_example=True)
        gaps[k] = values - evidence(x)
    assert float(gaps[1].mean()) < -0.1
    assert abs(float(gaps[20].mean())) < 0.03
    se = float(gaps[2000].std()) / 300**0.5
    assert -0.003 < float(gaps[2000].mean()) <= 3 * se
    assert float(gaps[2000].abs().max()) < 0.05  # each example's estimate, not just the mean


def test_guide_and_model_enumeration_combine():
    """A label enumerated in the guide (y) and one only the model has (m, enumerated there):
    with no continuous latent both estimates are exact, the IWAE one the evidence
    sum_{y,m} p(x, y, m), the ELBO the value TraceEnum_ELBO computes."""
    offsets = torch.tensor([0.0, 1.0], dtype=torch.float64)

    def model(x: torch.Tensor) -> None:
        with pyro.plate("data", x.shape[0]):
            y = pyro.sample("y", dist.Categorical(WEIGHTS))
            p = torch.tensor(0.4, dtype=x.dtype)
            m = pyro.sample("m", dist.Bernoulli(p), infer={"enumerate": "parallel"}).long()
            pyro.sample("x", dist.Normal(MEANS[y] + offsets[m], 1.0), obs=x)

    @config_enumerate
    def guide(x: torch.Tensor) -> None:
        with pyro.plate("data", x.shape[0]):
            pyro.sample("y", dist.Categorical(logits=torch.stack([x, -x], -1)))

    means = MEANS[:, None] + offsets  # (y, m)
    prior = WEIGHTS[:, None].log() + torch.tensor([0.6, 0.4], dtype=torch.float64).log()
    joint = (prior + dist.Normal(means, 1.0).log_prob(X[:, None, None])).logsumexp(-1)
    iwae = iwae_log_likelihood(model, X, guide=guide, num_samples=3, per_example=True)
    assert torch.allclose(iwae, joint.logsumexp(-1), atol=1e-10)
    elbo = evaluate_elbo(model, X, guide=guide, per_example=True)
    q = torch.stack([X, -X], -1).log_softmax(-1)
    assert torch.allclose(elbo, (q.exp() * (joint - q)).sum(-1), atol=1e-10)
    assert float(elbo.sum()) == pytest.approx(
        -TraceEnum_ELBO(max_plate_nesting=1).loss(model, guide, X), abs=1e-8
    )


class M2(nn.Module):
    """Kingma et al.'s M2 as in Pyro's examples/vae/ss_vae_M2.py, small: the guide's
    one-hot label is enumerated on unlabelled data."""

    def __init__(self, dims: int = 6, classes: int = 3, latent: int = 2) -> None:
        super().__init__()
        self.classes, self.latent = classes, latent
        self.encoder_y = nn.Sequential(nn.Linear(dims, 8), nn.Tanh(), nn.Linear(8, classes))
        self.encoder_z = nn.Linear(dims + classes, 2 * latent)
        self.decoder = nn.Linear(latent + classes, dims)

    @staticmethod
    def _join(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        batch = torch.broadcast_shapes(a.shape[:-1], b.shape[:-1])
        return torch.cat([a.expand(batch + a.shape[-1:]), b.expand(batch + b.shape[-1:])], -1)

    def model(self, xs: torch.Tensor, ys: torch.Tensor | None = None) -> None:
        pyro.module("ss_vae", self)
        with pyro.plate("data", xs.shape[0]):
            zs = pyro.sample("z", dist.Normal(xs.new_zeros(self.latent), 1.0).to_event(1))
            prior = xs.new_ones(self.classes) / self.classes
            ys = pyro.sample("y", dist.OneHotCategorical(prior), obs=ys)
            loc = torch.sigmoid(self.decoder(self._join(zs, ys)))
            pyro.sample("x", dist.Bernoulli(loc).to_event(1), obs=xs)

    def guide(self, xs: torch.Tensor, ys: torch.Tensor | None = None) -> None:
        with pyro.plate("data", xs.shape[0]):
            if ys is None:
                alpha = torch.softmax(self.encoder_y(xs), -1)
                ys = pyro.sample("y", dist.OneHotCategorical(alpha))
            loc, scale = self.encoder_z(self._join(xs, ys)).chunk(2, -1)
            pyro.sample("z", dist.Normal(loc, nn.functional.softplus(scale)).to_event(1))


def test_m2_elbo_agrees_with_trace_enum_elbo_in_mean_and_spread():
    """On Pyro's SS-VAE pattern (guide enumerated with config_enumerate(expand=True)), the
    estimate per draw has TraceEnum_ELBO's mean and spread; drawing the label instead
    spread it wider. Each copy of the batch is an independent draw of our estimate."""
    pyro.clear_param_store()
    torch.manual_seed(0)
    m2 = M2()
    guide = config_enumerate(m2.guide, "parallel", expand=True)
    xs = torch.bernoulli(torch.full((5, 6), 0.4))
    copies = 300
    ours = evaluate_elbo(m2.model, xs.repeat(copies, 1), guide=guide, per_example=True)
    ours = ours.reshape(copies, 5).sum(-1)  # the batch's ELBO, one draw per copy
    elbo = TraceEnum_ELBO(max_plate_nesting=1)
    theirs = torch.tensor([-elbo.loss(m2.model, guide, xs) for _ in range(copies)])
    se = (ours.var() / copies + theirs.var() / copies) ** 0.5
    assert abs(float(ours.mean() - theirs.mean())) < 4 * float(se)
    assert 0.8 < float(ours.std() / theirs.std()) < 1.25
    # labelled data: nothing to enumerate, y observed
    ys = nn.functional.one_hot(torch.tensor([0, 1, 2, 0, 1]), 3).float()
    labelled = evaluate_elbo(m2.model, {"xs": xs, "ys": ys}, guide=guide, num_particles=2000)
    elbo = TraceEnum_ELBO(
        max_plate_nesting=1,
        num_particles=2000,
        vectorize_particles=True,
        strict_enumeration_warning=False,  # labelled: nothing to enumerate
    )
    expected = -elbo.loss(m2.model, guide, xs, ys) / 5
    assert labelled == pytest.approx(expected, abs=0.05)


def test_a_labelled_batch_first_still_enumerates_the_unlabelled_ones():
    """Semi-supervised data alternate batches with and without labels; the first batch's
    guide has no site to enumerate, the later ones' label is still summed out."""

    def model(x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        with pyro.plate("data", x.shape[0]):
            y = pyro.sample("y", dist.Categorical(WEIGHTS), obs=y)
            pyro.sample("x", dist.Normal(MEANS[y], 1.0), obs=x)

    @config_enumerate
    def guide(x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        if y is None:
            with pyro.plate("data", x.shape[0]):
                pyro.sample("y", dist.Categorical(logits=torch.stack([x, -x], -1)))

    labels = torch.tensor([0, 1])
    batches = [{"x": X[:2], "y": labels}, {"x": X[2:]}]
    values = iwae_log_likelihood(model, batches, guide=guide, num_samples=4, per_example=True)
    labelled = WEIGHTS[labels].log() + dist.Normal(MEANS[labels], 1.0).log_prob(X[:2])
    unlabelled = (WEIGHTS.log() + dist.Normal(MEANS, 1.0).log_prob(X[2:, None])).logsumexp(-1)
    assert torch.allclose(values, torch.cat([labelled, unlabelled]), atol=1e-10)


def test_enumerating_guides_of_pyro_and_pyro_gen_are_exact_without_a_continuous_latent():
    """Pyro's AutoDiscreteParallel (a guide for TraceEnum_ELBO) and pyro_gen's DiscreteVAE
    with inference="enumerate" mark their discrete latent for enumeration: the ELBO equals
    TraceEnum_ELBO's and IWAE the exact log-likelihood, at any K."""

    @config_enumerate
    def model(x: torch.Tensor) -> None:
        with pyro.plate("data", x.shape[0]):
            y = pyro.sample("y", dist.Categorical(WEIGHTS))
            pyro.sample("x", dist.Normal(MEANS[y], 1.0), obs=x)

    pyro.clear_param_store()
    guide = AutoDiscreteParallel(model)
    elbo = evaluate_elbo(model, X, guide=guide, per_example=True)
    expected = -TraceEnum_ELBO(max_plate_nesting=1).loss(model, guide, X)
    assert float(elbo.sum()) == pytest.approx(expected, abs=1e-8)
    iwae = iwae_log_likelihood(model, X, guide=guide, num_samples=2, per_example=True)
    exact = (WEIGHTS.log() + dist.Normal(MEANS, 1.0).log_prob(X[:, None])).logsumexp(-1)
    assert torch.allclose(iwae, exact, atol=1e-10)

    torch.manual_seed(0)
    vae = DiscreteVAE((4, 4), num_categories=3, hidden_dims=(8,), inference="enumerate")
    x = torch.rand(5, 4, 4).round()
    iwae = iwae_log_likelihood(vae, x, num_samples=2, per_example=True)
    assert torch.allclose(iwae, vae.log_prob(x).double(), atol=1e-5)


def test_sites_drawn_num_samples_times_are_averaged():
    """``num_samples`` draws of y from q weigh 1/S each: the ELBO's mean over independent
    draws (copies of the data) is the enumerated one, and both estimates are exact when
    the guide is the exact posterior."""
    pyro.set_rng_seed(1)
    drawn = mixture_guide(enumerate="parallel", num_samples=4)
    copies = 4000
    draws = evaluate_elbo(mixture, X.repeat(copies), guide=drawn, per_example=True)
    draws = draws.reshape(copies, len(X))
    exact = evaluate_elbo(mixture, X, guide=config_enumerate(mixture_guide()), per_example=True)
    se = draws.std(0) / copies**0.5
    assert bool(((draws.mean(0) - exact).abs() < 4 * se).all())
    # with the exact posterior for y and z each draw's weight is p(x): 1/S each sums to it
    drawn = mixture_guide(exact_label=True, enumerate="parallel", num_samples=3)
    for fn in (evaluate_elbo, iwae_log_likelihood):
        assert torch.allclose(fn(mixture, X, guide=drawn, per_example=True), evidence(X))


@pytest.mark.parametrize(
    "where, expected",
    [
        ("nested", r"guide site 'y' is enumerated in plates \['data', 'pixels'\]"),
        ("global", r"guide site 'y' is enumerated in plates \[\]"),
        ("sequential", r"guide site 'y' is marked for sequential enumeration"),
    ],
)
def test_guide_enumeration_that_cannot_be_summed_per_example_is_refused(where, expected):
    """A guide site enumerated in a plate inside the data plate, outside it, or sequentially
    is refused, naming the site and what to do, instead of being drawn silently."""

    def model(x: torch.Tensor) -> None:
        if where == "global":
            y = pyro.sample("y", dist.Categorical(WEIGHTS))
            with pyro.plate("data", x.shape[0]):
                pyro.sample("x", dist.Normal(MEANS[y], 1.0), obs=x)
            return
        with pyro.plate("data", x.shape[0], dim=-2), pyro.plate("pixels", 1, dim=-1):
            y = pyro.sample("y", dist.Categorical(WEIGHTS))
            pyro.sample("x", dist.Normal(MEANS[y], 1.0), obs=x[:, None])

    def guide(x: torch.Tensor) -> None:
        how = {"enumerate": "sequential" if where == "sequential" else "parallel"}
        if where == "global":
            pyro.sample("y", dist.Categorical(WEIGHTS), infer=how)
            return
        with pyro.plate("data", x.shape[0], dim=-2), pyro.plate("pixels", 1, dim=-1):
            pyro.sample("y", dist.Categorical(WEIGHTS), infer=how)

    for fn in (evaluate_elbo, iwae_log_likelihood):
        with pytest.raises(GuideEnumerationError, match=expected) as info:
            fn(model, X, guide=guide)
        what_to_do = "'parallel'" if where == "sequential" else "Enumerate it in the model"
        assert what_to_do in str(info.value)
