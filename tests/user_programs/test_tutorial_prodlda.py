"""Pyro's ProdLDA tutorial (amortized LDA, batch norm and dropout in its networks) through
pyro_gen: SVI's steps from a DataLoader, every guide, a corpus subsampled inside the model,
and an exact resume with its batch-norm statistics.

Issue 10, continued with Pyro's tutorials and examples: what this group shares is said
once in ``tests/user_programs/__init__.py``.
"""

from __future__ import annotations

import pyro
import pyro.optim
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from torch.utils.data import DataLoader, TensorDataset

from pyro_gen.infer import evaluate_elbo, fit
from pyro_gen.vae import AutoAmortizedNormal
from tests.user_programs import prodlda
from tests.user_programs.test_user_programs import (
    GUIDES,
    _store,
    assert_same_store,
    check_iwae_not_below_elbo,
    iafs,
    resumed_and_straight,
    svi_epochs,
)


def buffers(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: b.detach().clone() for n, b in module.named_buffers()}


def _lda_guide(kind: str, m: prodlda.ProdLDA):
    if kind == "hand-written":
        return m.guide
    if kind == "AutoAmortizedNormal":
        return AutoAmortizedNormal(m.model, hidden_dims=(32,))
    return prodlda.FlowGuide(prodlda.Encoder(), iafs(prodlda.TOPICS, 2))


@pytest.mark.parametrize("compile", [False, None], ids=["plain", "default"])
def test_prodlda_fit_takes_pyro_svi_steps_from_a_dataloader(compile):
    """SGD from the same seed over a ``DataLoader``'s batches (dropout draws included): fit's
    plain step is Pyro's bit for bit, its default step agrees up to rounding (it falls back
    to plain SVI, as the model reads each batch's longest document into a Python int)."""
    docs = prodlda.corpus(48)
    loader = DataLoader(TensorDataset(docs), batch_size=16, shuffle=True)

    def run(train):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        m = prodlda.ProdLDA()
        train(m, pyro.optim.SGD({"lr": 1e-2}))
        return _store(), buffers(m)

    def by_svi(m, optim):
        svi = SVI(m.model, m.guide, optim, Trace_ELBO())
        for _ in range(2):
            for (batch,) in loader:  # a DataLoader yields lists
                svi.step(batch)

    expected = run(by_svi)
    got = run(
        lambda m, optim: fit(
            m.model, loader, guide=m.guide, epochs=2, optim=optim, compile=compile, progress=False
        )
    )
    assert_same_store(got[0], expected[0], exact=compile is False)
    # the batch norms' running statistics followed the same batches
    assert_same_store(got[1], expected[1], exact=compile is False)


@pytest.mark.parametrize("kind", GUIDES)
def test_prodlda(kind):
    docs, test_docs = prodlda.corpus(64), prodlda.corpus(32, seed=1)
    m = prodlda.ProdLDA()
    guide = _lda_guide(kind, m)
    optim = pyro.optim.Adam({"lr": 1e-2})
    batches = lambda: [(docs[i : i + 16],) for i in range(0, 64, 16)]  # noqa: E731
    before = evaluate_elbo(m.model, test_docs, guide=guide, num_particles=4)
    svi_epochs(m.model, guide, batches, optim, Trace_ELBO(), epochs=3)
    result = fit(
        m.model,
        docs,
        guide=guide,
        epochs=30,
        batch_size=16,
        optim=optim,
        eval_data=test_docs,
        eval_every=10,
        progress=False,
    )
    after = evaluate_elbo(m.model, test_docs, guide=guide, num_particles=4)
    svi_epochs(m.model, guide, batches, optim, Trace_ELBO(), epochs=1)  # and back to Pyro's
    train = [r["train_loss"] for r in result.history]
    assert sum(train[-5:]) < sum(train[:5]), train
    assert [r["epoch"] for r in result.history if "test_elbo" in r] == [10, 20, 30]
    assert after > before + 1.0, (before, after)
    # fit's held-out record is evaluate_elbo's estimate (one particle: within its noise)
    assert abs(result.history[-1]["test_elbo"] - after) < 1.0
    check_iwae_not_below_elbo(m.model, guide, test_docs)


def test_prodlda_subsampling_the_corpus_inside_the_model():
    """The whole corpus is the one argument and the model draws its minibatch with
    ``subsample_size=``: fit (given ``[docs]``, one batch per epoch) takes Pyro's SVI steps,
    random indices included, and the ELBO rises."""
    docs, test_docs = prodlda.corpus(64), prodlda.corpus(32, seed=1)

    def run(train):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        m = prodlda.ProdLDA()
        train(m)
        return m, _store()

    def by_svi(m):
        optim = pyro.optim.Adam({"lr": 1e-2})
        svi = SVI(m.subsampled_model, m.subsampled_guide, optim, Trace_ELBO())
        for _ in range(100):
            svi.step(docs)

    def by_fit(m):
        fit(
            m.subsampled_model,
            [docs],
            guide=m.subsampled_guide,
            epochs=100,
            optim=pyro.optim.Adam({"lr": 1e-2}),
            compile=False,
            progress=False,
        )

    untrained, _ = run(lambda m: None)
    before = evaluate_elbo(untrained.model, test_docs, guide=untrained.guide, num_particles=4)
    _, expected = run(by_svi)
    m, got = run(by_fit)
    assert_same_store(got, expected, exact=True)
    # the networks trained on subsamples score every held-out document
    after = evaluate_elbo(m.model, test_docs, guide=m.guide, num_particles=4)
    assert after > before + 1.0, (before, after)


def test_prodlda_autoguide_scores_a_held_out_corpus_the_model_subsamples():
    """The amortized guide of the model that subsamples the corpus itself, trained on 64
    documents, scores 32 held-out ones: the model's plate says N = 32 there (the guide drew
    indices up to 64 from its first call, an IndexError in the model)."""
    docs, test_docs = prodlda.corpus(64), prodlda.corpus(32, seed=1)
    m = prodlda.ProdLDA()
    guide = AutoAmortizedNormal(m.subsampled_model, hidden_dims=(16,))
    fit(m.subsampled_model, [docs], guide=guide, epochs=5, progress=False)
    for _ in range(5):  # each draws 16 of the 32 documents
        assert evaluate_elbo(m.subsampled_model, [test_docs], guide=guide) < 0


def test_prodlda_resumes_exactly_with_its_batch_norm_statistics(tmp_path):
    """A fresh ProdLDA (as in a new process) resumes from fit's checkpoint: the parameters
    and the batch norms' running statistics equal those of the uninterrupted run."""
    docs = prodlda.corpus(48)

    def run(directory, steps):
        pyro.clear_param_store()
        m = prodlda.ProdLDA()
        fit(
            m.model,
            docs,
            guide=m.guide,
            steps=steps,
            batch_size=16,
            optim=pyro.optim.Adam({"lr": 1e-2}),
            checkpoint_dir=directory,
            progress=False,
        )
        return _store(), buffers(m)

    resumed, straight = resumed_and_straight(run, tmp_path, 7, 4)  # stops inside the second epoch
    assert_same_store(resumed[0], straight[0], exact=True)
    assert_same_store(resumed[1], straight[1], exact=True)
