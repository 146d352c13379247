"""Pyro's conditional VAE tutorial through pyro_gen: SVI's steps on (input, output) pairs
from a DataLoader, every guide against the baseline network, hidden pixels predicted from the
prior network, and an exact resume of an autoguide run.

Issue 10, continued with Pyro's tutorials and examples: what this group shares is said
once in ``tests/user_programs/__init__.py``.
"""

from __future__ import annotations

import pyro
import pyro.optim
import pytest
import torch
from pyro.infer import SVI, Predictive, Trace_ELBO
from torch.utils.data import DataLoader, TensorDataset

from pyro_gen.infer import evaluate_elbo, fit
from pyro_gen.vae import AutoAmortizedNormal
from tests.user_programs import cvae
from tests.user_programs.test_user_programs import (
    GUIDES,
    _store,
    assert_same_store,
    check_iwae_not_below_elbo,
    iafs,
    resumed_and_straight,
    svi_epochs,
)


def _cvae_guide(kind: str, m: cvae.CVAE):
    if kind == "hand-written":
        return m.guide
    if kind == "AutoAmortizedNormal":
        # the encoder reads both arguments, as the tutorial's recognition network does
        return AutoAmortizedNormal(m.model, hidden_dims=(32,))
    return cvae.FlowGuide(m.z_dim, iafs(m.z_dim, 2))


def baseline_log_likelihood(baseline: cvae.BaselineNet, xs, ys) -> float:
    """The deterministic baseline as a model of the hidden pixels: its Bernoulli
    log-likelihood per image (the tutorial's yardstick for the CVAE)."""
    with torch.no_grad():
        probs = baseline(xs).clamp(1e-6, 1 - 1e-6)
    hidden = ys != -1
    log_p = torch.distributions.Bernoulli(probs).log_prob(ys.clamp(min=0.0))
    return float(log_p[hidden].sum() / xs.shape[0])


@pytest.mark.parametrize("compile", [False, None], ids=["plain", "default"])
def test_cvae_fit_takes_pyro_svi_steps_on_pairs_from_a_dataloader(compile):
    """``(xs, ys)`` pairs from a shuffled ``DataLoader`` passed positionally, a sizeless data
    plate, a masked likelihood: fit's plain step is Pyro's, its default agrees."""
    (xs, ys), _ = cvae.masked_digits(num_train=96, num_test=0)
    loader = DataLoader(TensorDataset(xs, ys), batch_size=32, shuffle=True)

    def run(train):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        m = cvae.CVAE(cvae.BaselineNet())
        train(m, pyro.optim.SGD({"lr": 1e-2}))
        return _store()

    def by_svi(m, optim):
        svi = SVI(m.model, m.guide, optim, Trace_ELBO())
        for _ in range(2):
            for xs_batch, ys_batch in loader:
                svi.step(xs_batch, ys_batch)

    expected = run(by_svi)
    got = run(
        lambda m, optim: fit(
            m.model, loader, guide=m.guide, epochs=2, optim=optim, compile=compile, progress=False
        )
    )
    assert_same_store(got, expected, exact=compile is False)


@pytest.mark.parametrize("kind", GUIDES)
def test_cvae(kind):
    """Each guide trains (Pyro's loop, then fit on pairs of tensors with held-out pairs), the
    IWAE bound is at least the ELBO, and the CVAE's bound on log p(y | x) beats the
    pretrained baseline it builds on (measured with the hand-written guide: -19.5 against
    -20.8 nats per image after 40 epochs)."""
    (xs, ys), (xs_test, ys_test) = cvae.masked_digits()
    baseline = cvae.train_baseline(xs, ys)
    baseline_score = baseline_log_likelihood(baseline, xs_test, ys_test)
    m = cvae.CVAE(baseline)
    guide = _cvae_guide(kind, m)
    optim = pyro.optim.Adam({"lr": 1e-2})
    batches = lambda: [(xs[i : i + 64], ys[i : i + 64]) for i in range(0, 256, 64)]  # noqa: E731
    before = evaluate_elbo(m.model, (xs_test, ys_test), guide=guide, num_particles=4)
    losses = svi_epochs(m.model, guide, batches, optim, Trace_ELBO(), epochs=2)
    result = fit(
        m.model,
        (xs, ys),
        guide=guide,
        epochs=60,
        batch_size=64,
        optim=optim,
        eval_data=(xs_test, ys_test),
        eval_every=30,
        progress=False,
    )
    after = evaluate_elbo(m.model, (xs_test, ys_test), guide=guide, num_particles=4)
    assert losses[-1] < losses[0]
    assert after > before + 1.0, (before, after)
    assert result.history[-1]["test_elbo"] > result.history[29]["test_elbo"] - 0.5
    _, iwae = check_iwae_not_below_elbo(m.model, guide, (xs_test, ys_test))
    assert iwae > baseline_score, (iwae, baseline_score)


def test_cvae_predicts_the_hidden_pixels_from_the_prior_network():
    """Without ``ys`` the model takes its prior network's ``z`` (the guide's ``ys is None``
    branch) and records the prediction with ``pyro.deterministic``; Pyro's ``Predictive``
    over the fitted model predicts the hidden pixels better than a coin."""
    (xs, ys), (xs_test, ys_test) = cvae.masked_digits()
    m = cvae.CVAE(cvae.train_baseline(xs, ys))
    fit(
        m.model,
        (xs, ys),
        guide=m.guide,
        epochs=20,
        batch_size=64,
        progress=False,
        optim=pyro.optim.Adam({"lr": 1e-2}),
    )
    with torch.no_grad():
        samples = Predictive(m.model, guide=m.guide, num_samples=20, return_sites=["y"])(xs_test)
    probs = samples["y"].reshape(20, *xs_test.shape).mean(0).clamp(1e-6, 1 - 1e-6)
    hidden = ys_test != -1
    log_p = torch.distributions.Bernoulli(probs).log_prob(ys_test.clamp(min=0.0))[hidden]
    assert log_p.mean() > torch.tensor(0.5).log() + 0.2


def test_cvae_autoguide_run_resumes_exactly(tmp_path):
    """AutoAmortizedNormal on the sizeless plate, trained on (xs, ys) pairs with eval_data
    and a checkpoint every 3 steps: a fresh program resumed from the checkpoint ends where
    the uninterrupted run does."""
    (xs, ys), (xs_test, ys_test) = cvae.masked_digits(num_train=96, num_test=32)

    def run(directory, steps):
        pyro.clear_param_store()
        torch.manual_seed(1)  # the same networks in every "process"
        m = cvae.CVAE(cvae.BaselineNet())
        guide = AutoAmortizedNormal(m.model, hidden_dims=(16,))
        fit(
            m.model,
            (xs, ys),
            guide=guide,
            steps=steps,
            batch_size=32,
            optim=pyro.optim.Adam({"lr": 1e-2}),
            eval_data=(xs_test, ys_test),
            checkpoint_dir=directory,
            checkpoint_every=3,
            progress=False,
        )
        return _store()

    resumed, straight = resumed_and_straight(run, tmp_path, 8, 5)
    assert_same_store(resumed, straight, exact=True)
