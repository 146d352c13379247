"""The VAE family's parts under Pyro's inference tools, as a Pyro user runs them, each
checked against a reference rather than only run (ideas from pyro-ppl/pyro's
tests/infer/test_inference.py, test_inspect.py and test_valid_models.py, read, not copied):

- ``pyro.infer.Importance`` with a VAE's guide (Normal, IAF posterior family, the
  ``"auto"`` guide) as the proposal, and ``EmpiricalMarginal``: the log normalizer and the
  posterior mean of a linear-Gaussian VAE against their closed forms;
- ``poutine.condition`` / ``poutine.do`` / ``poutine.mask`` around ``vae.model`` with
  each pyro_gen prior: the joint density from the parts, the intervention reaching the
  decoder, the masked ELBO as the unmasked examples' terms;
- ``RenyiELBO`` (vectorized) against the Renyi bound written by hand from the traces;
- ``pyro.infer.inspect.get_dependencies`` on the families' models: the graph they are.
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, EmpiricalMarginal, Importance, RenyiELBO, Trace_ELBO
from pyro.infer.inspect import get_dependencies
from pyro.poutine.util import site_is_subsample

from pyro_gen.vae import (
    SSVAE,
    VAE,
    Decoder,
    FlowPrior,
    GaussianLikelihood,
    HierarchicalVAE,
    MixturePrior,
    VampPrior,
    make_posterior,
)

DZ, DX, SIG = 2, 3, 0.5


class LinearDecoder(Decoder):
    """x | z ~ N(W z + b, SIG^2 I): p(x) and p(z | x) are Gaussian in closed form."""

    def __init__(self, W: torch.Tensor, b: torch.Tensor) -> None:
        super().__init__()
        self.event_shape = (DX,)
        self.likelihood = GaussianLikelihood(SIG)
        self.register_buffer("W", W)
        self.register_buffer("b", b)

    def params(self, z, context=None):
        return (z @ self.W.T + self.b)[..., None]


def linear_gaussian_vae(guide: str) -> tuple[VAE, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A VAE whose guide is ``guide`` and one example x drawn from it, with log p(x) and
    E[z | x]."""
    pyro.clear_param_store()
    torch.manual_seed(0)
    W, b = torch.randn(DX, DZ), torch.randn(DX)
    decoder = LinearDecoder(W, b)
    if guide == "auto":
        vae = VAE((DX,), DZ, 8, decoder=decoder, guide="auto")
    else:
        vae = VAE((DX,), DZ, 8, decoder=decoder, posterior=make_posterior(guide, (DX,), DZ, 8))
    x = torch.randn(1, DZ) @ W.T + b + SIG * torch.randn(1, DX)
    # a few steps towards the posterior: an untrained encoder proposes too narrow a Normal
    # off its mode, which leaves the weights too few draws to estimate their own error from
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 0.05}), Trace_ELBO())
    for _ in range(60):
        svi.step(x)
    log_px = dist.MultivariateNormal(b, W @ W.T + SIG**2 * torch.eye(DX)).log_prob(x[0])
    cov = torch.linalg.inv(torch.eye(DZ) + W.T @ W / SIG**2)
    return vae, x, log_px, cov @ W.T @ (x[0] - b) / SIG**2


@pytest.mark.parametrize("guide", ["normal", "iaf", "auto"])
def test_importance_with_the_guide_gives_the_marginal_and_posterior_mean(guide):
    vae, x, log_px, post_mean = linear_gaussian_vae(guide)
    pyro.set_rng_seed(1)
    with torch.no_grad():
        posterior = Importance(vae.model, vae.guide, num_samples=200).run(x)
    log_w = torch.stack(posterior.log_weights)
    w = (log_w - log_w.max()).exp()
    # the standard errors of the estimates, from the weights themselves (delta method)
    rel_err = (w.std() / w.mean() / math.sqrt(len(w))).item()
    assert abs(posterior.get_log_normalizer().item() - log_px.item()) < 4 * rel_err
    z = torch.stack([t.nodes["z"]["value"][0] for t in posterior.exec_traces])
    p = w / w.sum()
    estimate = EmpiricalMarginal(posterior, "z").mean[0]
    torch.testing.assert_close(estimate, (p[:, None] * z).sum(0))  # the weighted mean
    stderr = ((p[:, None] ** 2) * (z - estimate) ** 2).sum(0).sqrt()
    assert bool(((estimate - post_mean).abs() < 4 * stderr).all())


PRIORS = {
    "mixture": lambda: MixturePrior(DZ, 3),
    "vamp": lambda: VampPrior((4, 4), 3),
    "flow": lambda: FlowPrior(DZ, 1, (4,)),
}


def small_vae(prior: str, posterior: str = "iaf") -> VAE:
    pyro.clear_param_store()
    torch.manual_seed(0)
    family = make_posterior(posterior, (4, 4), DZ, 8)
    return VAE((4, 4), DZ, 8, prior=PRIORS[prior](), posterior=family)


X = torch.rand(3, 4, 4, generator=torch.Generator().manual_seed(0)).round()


@pytest.mark.parametrize("prior", sorted(PRIORS))
def test_condition_and_do_on_the_latent(prior):
    vae, z0 = small_vae(prior), torch.randn(3, DZ)
    conditioned = poutine.trace(poutine.condition(vae.model, data={"z": z0})).get_trace(X)
    joint = vae.prior().log_prob(z0).sum()
    joint = joint + vae.decoder(z0).log_prob(X).sum()
    assert conditioned.log_prob_sum().item() == pytest.approx(joint.item(), rel=1e-5)
    # do: z is drawn from the prior (and scored there), the decoder sees the intervention
    intervened = poutine.trace(poutine.do(vae.model, data={"z": z0})).get_trace(X)
    drawn = intervened.nodes["z"]["value"]
    assert not intervened.nodes["z"]["is_observed"] and not torch.equal(drawn, z0)
    torch.testing.assert_close(intervened.nodes["x"]["fn"].mean, vae.decoder(z0).mean)


@pytest.mark.parametrize("prior", sorted(PRIORS))
def test_a_masked_elbo_is_the_unmasked_examples_terms(prior):
    vae, keep = small_vae(prior), torch.tensor([True, False, True])
    pyro.set_rng_seed(3)
    masked = Trace_ELBO().loss(
        poutine.mask(vae.model, mask=keep), poutine.mask(vae.guide, mask=keep), X
    )
    pyro.set_rng_seed(3)
    guide_trace = poutine.trace(vae.guide).get_trace(X)
    model_trace = poutine.trace(poutine.replay(vae.model, trace=guide_trace)).get_trace(X)
    per_example = (
        model_trace.nodes["x"]["fn"].log_prob(X)
        + model_trace.nodes["z"]["fn"].log_prob(guide_trace.nodes["z"]["value"])
        - guide_trace.nodes["z"]["fn"].log_prob(guide_trace.nodes["z"]["value"])
    )
    assert masked == pytest.approx(-per_example[keep].sum().item(), rel=1e-5)


def renyi_bound_by_hand(model, guide, x, alpha: float, particles: int) -> float:
    """Per example n, -1/(1-alpha) log mean_k exp((1-alpha) log w_kn), summed over the
    examples: every site lies in the data plate, so Pyro's bound factors over it (one
    importance-weighted bound per example, as IWAE is)."""
    with pyro.plate("particles", particles, dim=-2):
        guide_trace = poutine.trace(guide).get_trace(x)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x)
    log_w = torch.zeros(particles, x.shape[0])
    for trace, sign in ((model_trace, 1.0), (guide_trace, -1.0)):
        for site in trace.nodes.values():
            if site["type"] == "sample" and not site_is_subsample(site):
                log_w = log_w + sign * site["fn"].log_prob(site["value"])
    log_mean = torch.logsumexp((1 - alpha) * log_w, 0) - math.log(particles)
    return -(log_mean / (1 - alpha)).sum().item()


@pytest.mark.parametrize("posterior", ["normal", "iaf"])
@pytest.mark.parametrize("prior", sorted(PRIORS))
def test_renyi_elbo_is_the_renyi_bound_of_the_guides_draws(prior, posterior):
    vae = small_vae(prior, posterior)
    elbo = RenyiELBO(alpha=0.5, num_particles=6, vectorize_particles=True, max_plate_nesting=1)
    pyro.set_rng_seed(2)
    loss = elbo.loss(vae.model, vae.guide, X)
    pyro.set_rng_seed(2)
    expected = renyi_bound_by_hand(vae.model, vae.guide, X, 0.5, 6)
    assert loss == pytest.approx(expected, rel=1e-5)


def test_get_dependencies_reads_each_familys_graph():
    def graph(model, *args):
        deps = get_dependencies(model, args)
        prior = {k: sorted(v) for k, v in deps["prior_dependencies"].items()}
        posterior = {k: sorted(v) for k, v in deps["posterior_dependencies"].items()}
        return prior, posterior

    assert graph(small_vae("vamp").model, X) == (
        {"z": ["z"], "x": ["x", "z"]},
        {"z": ["x", "z"]},
    )
    hvae = HierarchicalVAE((4, 4), (3, 2), 8)
    assert graph(hvae.model, X) == (
        {"z2": ["z2"], "z1": ["z1", "z2"], "x": ["x", "z1"]},
        {"z2": ["z1", "z2"], "z1": ["x", "z1"]},
    )
    m2 = SSVAE((4, 4), num_classes=3, z_dim=2, hidden_dims=(8,))
    # x depends on the label and the style, so observing x couples them a posteriori
    assert graph(m2.model, X) == (
        {"y": ["y"], "z": ["z"], "x": ["x", "y", "z"]},
        {"y": ["x", "y", "z"], "z": ["x", "z"]},
    )
