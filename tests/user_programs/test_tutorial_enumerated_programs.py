"""Pyro programs with discrete sites enumerated through pyro_gen's fit and evaluation
helpers: each word's topic enumerated in a plate nested in the documents plate (Pyro's LDA
layout), a discrete HMM whose states are enumerated along a ``pyro.markov`` chain (the
forward algorithm, Pyro's TraceEnum_ELBO) and a guided latent whose prior sums over an
enumerated label.

Issue 10, continued with Pyro's tutorials and examples: what this group shares is said
once in ``tests/user_programs/__init__.py``.
"""

from __future__ import annotations

import functools
import warnings

import pyro
import pyro.distributions as dist
import pyro.optim
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO, TraceEnum_ELBO

from pyro_gen.infer import evaluate_elbo, fit, iwae_log_likelihood
from pyro_gen.vae import AutoAmortizedNormal
from tests.user_programs import discrete_hmm, topic_mixture
from tests.user_programs.test_user_programs import _store, assert_same_store, paired_gap

# ---------------------------------------------------------------------------------------
# each word's topic enumerated in a plate nested in the documents plate (Pyro's LDA layout)


def test_word_topics_enumerated_inside_each_document_are_summed_out_exactly():
    """With the topic mixes given, a document's evidence is a product over its words of a
    sum over topics: both estimators give it exactly, with no warning (they drew the word
    topics from the prior before, as an enumerated site in a plate besides the data plate
    could not be summed out)."""
    data = topic_mixture.corpus()
    theta = torch.tensor([[0.1, 0.9], [0.5, 0.5], [0.9, 0.1]] * 2, dtype=torch.float64)
    exact = topic_mixture.log_likelihood_given_mix(data, theta)
    kw = dict(guide=lambda data, theta: None, plate_name="documents", per_example=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        elbo = evaluate_elbo(topic_mixture.model_given_mix, [(data, theta)], **kw)
        iwae = iwae_log_likelihood(topic_mixture.model_given_mix, [(data, theta)], **kw)
    assert torch.allclose(elbo, exact, atol=1e-10)
    assert torch.allclose(iwae, exact, atol=1e-10)


def test_lda_layout_bounds_close_in_on_each_documents_evidence():
    """Each document's topic mix latent (a uniform Dirichlet proposal), its words' topics
    summed out: the IWAE bound meets the evidence integrated by quadrature (measured over
    three seeds at K = 2000: within 0.042 nats), the ELBO lies below it."""
    data = topic_mixture.corpus()
    exact = topic_mixture.exact_log_likelihood(data)
    guide = functools.partial(topic_mixture.guide, concentration=1.0)
    iwae = iwae_log_likelihood(
        topic_mixture.model, [data], guide=guide, num_samples=2000, per_example=True
    )
    elbo = evaluate_elbo(
        topic_mixture.model, [data], guide=guide, num_particles=500, per_example=True
    )
    assert (iwae - exact).abs().max() < 0.1, iwae - exact
    gap, se = paired_gap(elbo, exact)
    assert gap < 3 * se, (gap, se)


def test_autoguide_finds_the_documents_plate_of_data_laid_out_words_by_documents():
    """Pyro's LDA example lays its data out (words, documents), with the documents plate at
    dim -1 after a plate of global topics; the encoder is given the documents as rows."""
    data = topic_mixture.corpus()

    def model(data):
        with pyro.plate("topics", 2):
            weights = pyro.sample(
                "topic_weights", dist.Gamma(torch.ones((), dtype=data.dtype), 1.0)
            )
        with pyro.plate("documents", data.shape[1], dim=-1):
            scale = pyro.sample("scale", dist.LogNormal(torch.zeros((), dtype=data.dtype), 1.0))
            with pyro.plate("words", data.shape[0], dim=-2):
                pyro.sample("x", dist.Normal(weights.sum(-1), scale), obs=data)

    x = data.double()
    guide = AutoAmortizedNormal(model, hidden_dims=(8,), input_fn=lambda data: data.T)
    assert Trace_ELBO().loss(model, guide, x) > 0
    assert guide.plate_name == "documents"


# ---------------------------------------------------------------------------------------
# a discrete HMM: hidden states enumerated along a pyro.markov chain in each sequence


def test_hmm_states_enumerated_along_a_markov_chain_give_the_forward_algorithm():
    """Both estimators sum the chain out exactly per sequence (they drew it from the prior
    with a warning before: the chain reuses enumeration dims, 30 nats off here)."""
    seqs = discrete_hmm.sequences()
    exact = discrete_hmm.forward_log_likelihood(seqs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        elbo = evaluate_elbo(discrete_hmm.model, seqs, guide=lambda s: None, per_example=True)
        iwae = iwae_log_likelihood(
            discrete_hmm.model, seqs, guide=lambda s: None, num_samples=5, per_example=True
        )
    assert torch.allclose(elbo, exact, atol=1e-10)
    assert torch.allclose(iwae, exact, atol=1e-10)


def test_hmm_with_a_guided_scale_matches_pyros_traceenum_elbo():
    """With each sequence's emission scale guided, evaluate_elbo estimates what Pyro's
    TraceEnum_ELBO does (measured: 0.02 apart at 4000 particles each), and the IWAE bound
    lies above it."""
    seqs = discrete_hmm.sequences()
    model, guide = discrete_hmm.scaled_model, discrete_hmm.scale_guide
    ours = evaluate_elbo(model, seqs, guide=guide, num_particles=4000)
    loss = TraceEnum_ELBO(max_plate_nesting=1, num_particles=4000, vectorize_particles=True)
    with torch.no_grad():
        pyros = -loss.loss(model, guide, seqs) / seqs.shape[0]
    iwae = iwae_log_likelihood(model, seqs, guide=guide, num_samples=4000)
    assert abs(ours - pyros) < 0.1, (ours, pyros)
    assert iwae > ours + 0.1, (iwae, ours)


@pytest.mark.parametrize("compile", [False, None], ids=["plain", "default"])
def test_hmm_emission_means_trained_by_fit_as_by_pyro_svi(compile):
    """Maximum likelihood of the emission means with TraceEnum_ELBO (the chain summed out,
    no guide): fit takes Pyro's SVI steps, and the exact evidence rises."""
    seqs = discrete_hmm.sequences(num=32)
    loss = TraceEnum_ELBO(max_plate_nesting=1)
    batches = [(seqs[i : i + 8],) for i in range(0, 32, 8)]

    def run(train):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        discrete_hmm.learned_model(seqs[:1])  # the param, made before either loop
        before = discrete_hmm.forward_log_likelihood(seqs, pyro.param("locs").detach()).mean()
        train(pyro.optim.Adam({"lr": 0.05}))
        return before, _store()

    def by_svi(optim):
        svi = SVI(discrete_hmm.learned_model, lambda s: None, optim, loss)
        for _ in range(10):
            for (batch,) in batches:
                svi.step(batch)

    _, expected = run(by_svi)
    before, got = run(
        lambda optim: fit(
            discrete_hmm.learned_model,
            batches,
            guide=lambda s: None,
            epochs=10,
            optim=optim,
            loss=loss,
            compile=compile,
            progress=False,
        )
    )
    assert_same_store(got, expected, exact=compile is False)
    after = discrete_hmm.forward_log_likelihood(seqs, got["locs"]).mean()
    assert after > before + 1.0, (before, after)
    elbo = evaluate_elbo(discrete_hmm.learned_model, seqs, guide=lambda s: None)
    assert abs(elbo - after.item()) < 1e-6


def test_a_guided_latent_whose_prior_sums_over_an_enumerated_label():
    """z ~ sum_c p(c) N(z | mu_c, 1) with z guided and c enumerated in the model: the
    enumeration must see z's replayed draw to record the dims of its density (it raised
    'Error while packing tensors at site z' once sums were contracted); the estimate is
    Pyro's TraceEnum_ELBO's (measured 0.002 apart at 4000 particles each)."""
    locs = torch.tensor([-2.0, 2.0])

    def model(x):
        with pyro.plate("data", len(x)):
            c = pyro.sample(
                "c", dist.Categorical(logits=torch.zeros(2)), infer={"enumerate": "parallel"}
            )
            z = pyro.sample("z", dist.Normal(locs[c], 1.0))
            pyro.sample("x", dist.Normal(z, 0.5), obs=x)

    def guide(x):
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal(x, 0.5))

    x = torch.tensor([-2.1, 0.3, 1.9])
    loss = TraceEnum_ELBO(max_plate_nesting=1, num_particles=4000, vectorize_particles=True)
    expected = -loss.loss(model, guide, x) / len(x)
    for num_particles in (1, 4000):  # one at a time, and under the particle plate
        got = evaluate_elbo(model, x, guide=guide, num_particles=num_particles)
        assert abs(got - expected) < (1.0 if num_particles == 1 else 0.05), (got, expected)
