"""More of Pyro's programs through pyro_gen, each checked against Pyro's own behaviour.

- Pyro's causal effect VAE (``pyro.contrib.cevae``): :func:`~pyro_gen.infer.fit` on the same
  ``DataLoader``, ``ClippedAdam`` and ``TraceCausalEffect_ELBO`` takes ``CEVAE.fit``'s SVI
  steps bit for bit (the default step falls back to them, saying so once), so ``ite`` gives
  the same estimate; the ELBO and IWAE bound match a hand-written Monte Carlo estimate that
  leaves out the guide's observed ``t`` and ``y``; a checkpointed run resumes exactly; and
  the model/guide parameter-name collision that makes Pyro's SVI leave the model's
  ``t_nn`` untrained is refused, naming it.
- A ``PyroModule`` VAE whose decoder weights are ``PyroSample`` latents, guided by an
  ``AutoGuideList`` (``AutoNormal`` on the weights, an amortized part on ``z``): ``fit`` takes
  Pyro's ``SVI`` steps (bit for bit on the plain step, to rounding on the compiled one),
  resumes exactly, and ``evaluate_elbo`` / ``iwae_log_likelihood`` equal hand-written
  estimates of the whole data set's bounds divided by N.
- Pyro's examples/vae/vae_comparison.py: the model/guide methods of one ``nn.Module``
  trained by ``fit`` with ``TraceMeanField_ELBO`` equal the same networks trained by a
  hand-written PyTorch loop (summed BCE plus the closed-form KL, ``torch.optim.Adam``).
"""

from __future__ import annotations

import functools
import logging
import math

import pyro
import pytest
import torch
from pyro import poutine
from pyro.contrib.cevae import CEVAE, PreWhitener, TraceCausalEffect_ELBO
from pyro.infer import SVI, Trace_ELBO, TraceMeanField_ELBO
from pyro.optim import ClippedAdam
from torch.utils.data import DataLoader, TensorDataset

from pyro_gen.infer import evaluate_elbo, fit, iwae_log_likelihood
from tests.user_programs import bayesian_decoder, cevae, vae
from tests.user_programs.test_user_programs import (
    _store,
    assert_same_store,
    paired_gap,
    resumed_and_straight,
)

# ---------------------------------------------------------------------------------------
# Causal effect VAE

N = 120


def _cevae_optim(num_steps: int) -> ClippedAdam:
    """``CEVAE.fit``'s optimizer at its defaults (decay to 0.1 of the rate over the run)."""
    return ClippedAdam({"lr": 1e-3, "weight_decay": 1e-4, "lrd": 0.1 ** (1 / num_steps)})


@pytest.mark.parametrize("compile", [False, None], ids=["plain", "default"])
def test_cevae_fit_takes_cevae_fits_steps_and_estimates_the_same_effects(compile, caplog):
    """``CEVAE.fit`` (3 epochs of 3 shuffled batches) against ``fit`` on the same loader, a
    whitening ``transform`` and ``size=N`` bound to model and guide: the same parameters
    and the same ``ite`` on held-out features, bit for bit."""
    x, t, y, _ = cevae.synthetic(N)
    x_test = cevae.synthetic(30, seed=1)[0]

    def run(train):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        c = cevae.small_cevae()
        train(c)
        pyro.set_rng_seed(1)
        return _store(), c.ite(x_test)

    expected, expected_ite = run(lambda c: c.fit(x, t, y, num_epochs=3, batch_size=40, log_every=0))

    def by_fit(c):
        # CEVAE.fit's loader: shuffled by its own generator, created once for the run
        loader = DataLoader(
            TensorDataset(x, t, y), batch_size=40, shuffle=True, generator=torch.Generator()
        )
        c.whiten = PreWhitener(x)
        fit(
            functools.partial(c.model, size=N),
            lambda: iter(loader),
            guide=functools.partial(c.guide, size=N),
            epochs=3,
            optim=_cevae_optim(9),
            loss=TraceCausalEffect_ELBO(),
            transform=c.whiten,
            compile=compile,
            progress=False,
        )

    with caplog.at_level(logging.INFO, logger="pyro_gen"):
        got, got_ite = run(by_fit)
    assert_same_store(got, expected, exact=True)
    assert torch.equal(got_ite, expected_ite)
    said = [r.getMessage() for r in caplog.records if "compiled" in r.getMessage()]
    # the loss overrides Trace_ELBO's particle loss: the compiled step does not record it
    assert len(said) == (compile is None) and all("TraceCausalEffect_ELBO" in s for s in said)


def test_cevae_model_and_guide_sharing_a_module_name_is_refused():
    """As shipped, CEVAE's ``Model`` and ``Guide`` both register a child ``t_nn`` (and
    ``y0_nn``, ``y1_nn``) under the same name: Pyro's own ``CEVAE.fit`` then leaves the
    model's copies at their initial values. ``fit`` refuses the pair, naming the module and
    both sides, instead of blaming an earlier model's param store."""
    x, t, y, _ = cevae.synthetic(N)
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    c = CEVAE(cevae.FEATURE_DIM, latent_dim=3, hidden_dim=16, num_layers=2)
    before = c.model.t_nn.fc[0].weight.detach().clone()
    c.fit(x, t, y, num_epochs=1, batch_size=40, log_every=0)
    assert torch.equal(c.model.t_nn.fc[0].weight, before)  # Pyro's silent half-training
    pyro.clear_param_store()
    with pytest.raises(ValueError, match=r"two different modules .* name 't_nn' \(in the guide"):
        fit(
            functools.partial(c.model, size=N),
            {"x": c.whiten(x), "t": t, "y": y},
            guide=functools.partial(c.guide, size=N),
            epochs=1,
            batch_size=40,
            loss=TraceCausalEffect_ELBO(),
            progress=False,
        )
    assert not list(pyro.get_param_store().keys())  # the refused run registered nothing


def _monte_carlo_elbo(c: CEVAE, x, t, y, draws: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per example, by hand: ``log p(x, t, y, z) - log q(z | x, t, y)`` over ``draws`` guide
    draws, averaged (the ELBO) and log-mean-exp'd (the IWAE bound). The guide's ``t`` and
    ``y`` are observed, so they are no latent and not part of ``q``."""
    weights = []
    with torch.no_grad():
        for _ in range(draws):
            guide_trace = poutine.trace(c.guide).get_trace(x, t, y)
            model_trace = poutine.trace(poutine.replay(c.model, guide_trace)).get_trace(x, t, y)
            log_p = sum(
                model_trace.nodes[n]["fn"].log_prob(model_trace.nodes[n]["value"])
                for n in ("z", "x", "t", "y")
            )
            z = guide_trace.nodes["z"]
            weights.append(log_p - z["fn"].log_prob(z["value"]))
    w = torch.stack(weights).double()
    return w.mean(0), w.logsumexp(0) - math.log(draws)


def test_cevae_is_scored_as_a_hand_written_monte_carlo_estimate():
    """After a short run the ELBO rose, ``evaluate_elbo`` and ``iwae_log_likelihood`` (K=50)
    agree with the hand-written estimates within four standard errors, and the IWAE bound
    is not below the ELBO."""
    x, t, y, _ = cevae.synthetic(N)
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    c = cevae.small_cevae()
    c.whiten = PreWhitener(x)
    data = {"x": c.whiten(x), "t": t, "y": y}
    before = evaluate_elbo(c.model, data, guide=c.guide, num_particles=20)
    fit(
        functools.partial(c.model, size=N),
        data,
        guide=functools.partial(c.guide, size=N),
        epochs=20,
        batch_size=40,
        optim=ClippedAdam({"lr": 1e-2}),
        loss=TraceCausalEffect_ELBO(),
        progress=False,
    )
    elbo = evaluate_elbo(c.model, data, guide=c.guide, num_particles=50, per_example=True)
    iwae = iwae_log_likelihood(c.model, data, guide=c.guide, num_samples=50, per_example=True)
    assert elbo.mean() > before + 1.0, (before, elbo.mean())
    hand_elbo, _ = _monte_carlo_elbo(c, **data, draws=150)
    gap, se = paired_gap(elbo, hand_elbo)
    assert abs(gap) < 4 * se + 1e-3, (gap, se)
    # IWAE with K=50 has a bias of its own: compare with the mean of independent K=50 bounds
    hand_iwae = torch.stack([_monte_carlo_elbo(c, **data, draws=50)[1] for _ in range(4)])
    se = (hand_iwae.mean(1).std() / math.sqrt(4)).item()
    assert abs(iwae.mean() - hand_iwae.mean()) < 4 * se + 0.02, (iwae.mean(), hand_iwae.mean())
    gap, se = paired_gap(iwae, elbo)
    assert gap > -3 * se, (gap, se)


def test_cevae_resumes_exactly(tmp_path):
    """4 steps, a new process (other RNG state), then on to 8 mid-epoch: the same parameters
    as 8 straight."""
    x, t, y, _ = cevae.synthetic(N)
    whiten = PreWhitener(x)
    data = {"x": whiten(x), "t": t, "y": y}

    def run(directory, steps):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        c = cevae.small_cevae()
        fit(
            functools.partial(c.model, size=N),
            data,
            guide=functools.partial(c.guide, size=N),
            steps=steps,
            batch_size=40,
            optim=_cevae_optim(8),
            loss=TraceCausalEffect_ELBO(),
            checkpoint_dir=directory,
            checkpoint_every=2,
            progress=False,
        )
        return _store()

    resumed, straight = resumed_and_straight(run, tmp_path, steps=8, stop=4)
    assert_same_store(resumed, straight, exact=True)


# ---------------------------------------------------------------------------------------
# PyroModule + PyroSample: a Bayesian decoder, guided by AutoNormal plus an amortized part


def _bayesian_decoder_run(train) -> tuple:
    """A fresh model and guide from one seed; the guide is called once first, creating its
    parameters as a user inspecting an autoguide does (so both loops draw alike)."""
    x, _ = vae.digits(num_train=96, num_test=0)
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    model = bayesian_decoder.BayesianDecoderVAE()
    guide = bayesian_decoder.guide_for(model)
    guide(x[:32])
    train(model, guide, x)
    return model, guide, _store()


@pytest.mark.parametrize("compile", [False, None], ids=["plain", "default"])
def test_bayesian_decoder_fit_takes_pyro_svi_steps(compile):
    """Two epochs of three batches with Pyro's ``SVI`` and with ``fit``: the same AutoNormal
    locations and scales and encoder weights, bit for bit on the plain step and to float
    rounding on the compiled one."""

    def by_svi(model, guide, x):
        svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
        for _ in range(2):
            for i in range(0, 96, 32):
                svi.step(x[i : i + 32])

    *_, expected = _bayesian_decoder_run(by_svi)
    assert any(name.startswith("AutoGuideList.0.scales.decoder") for name in expected)
    *_, got = _bayesian_decoder_run(
        lambda model, guide, x: fit(
            model,
            [(x[i : i + 32],) for i in range(0, 96, 32)],
            guide=guide,
            epochs=2,
            optim=pyro.optim.Adam({"lr": 1e-2}),
            compile=compile,
            progress=False,
        )
    )
    assert_same_store(got, expected, exact=compile is False)


def _hand_log_weights(model, guide, x: torch.Tensor, draws: int) -> torch.Tensor:
    """Each draw's whole-data-set log weight, log p(W, Z, X) - log q(W, Z | X), by hand."""
    weights = []
    with torch.no_grad():
        for _ in range(draws):
            guide_trace = poutine.trace(guide).get_trace(x)
            model_trace = poutine.trace(poutine.replay(model, guide_trace)).get_trace(x)
            guide_trace.compute_log_prob()
            model_trace.compute_log_prob()
            log_p = sum(
                s["log_prob_sum"] for s in model_trace.nodes.values() if s["type"] == "sample"
            )
            log_q = sum(
                s["log_prob_sum"]
                for s in guide_trace.nodes.values()
                if s["type"] == "sample" and not s["is_observed"]
            )
            weights.append(log_p - log_q)
    return torch.stack(weights).double()


@pytest.mark.filterwarnings("ignore:the model or guide does not run under a vectorized")
def test_bayesian_decoder_trains_resumes_and_is_scored_with_its_global_weights(tmp_path):
    """A run resumed from its checkpoint (6 steps, then on to 12 under another seed) equals
    12 straight. After training the test ELBO rose, and ``evaluate_elbo`` and
    ``iwae_log_likelihood`` equal, within four standard errors, the hand-written
    estimates of the whole data set's bounds divided by N, the weights drawn once per
    particle for all examples (the decoder does not broadcast over a particle plate, so
    particles run one by one, with a warning)."""
    _, x_test = vae.digits(num_train=0, num_test=64)

    def run(directory, steps):
        def train(model, guide, x):
            fit(
                model,
                x,
                guide=guide,
                steps=steps,
                batch_size=32,
                optim=pyro.optim.Adam({"lr": 1e-2}),
                checkpoint_dir=directory,
                checkpoint_every=2,
                compile=False,  # the compiled step's recordings would double the test's time
                progress=False,
            )

        return _bayesian_decoder_run(train)

    (model, guide, resumed), (*_, straight) = resumed_and_straight(run, tmp_path, steps=12, stop=6)
    assert_same_store(resumed, straight, exact=True)
    before = evaluate_elbo(model, x_test, guide=guide, num_particles=20)
    run(tmp_path / "resumed", 36)
    n = x_test.shape[0]
    elbo = evaluate_elbo(model, x_test, guide=guide, num_particles=40)
    hand = _hand_log_weights(model, guide, x_test, 40) / n
    assert elbo > before + 2.0, (before, elbo)
    se = math.sqrt(2 / 40) * hand.std().item()
    assert abs(elbo - hand.mean().item()) < 4 * se, (elbo, hand.mean(), se)
    k, reps = 10, 4
    iwae = [iwae_log_likelihood(model, x_test, guide=guide, num_samples=k) for _ in range(reps)]
    hand = _hand_log_weights(model, guide, x_test, k * reps).reshape(reps, k)
    hand = (hand.logsumexp(1) - math.log(k)) / n
    iwae = torch.tensor(iwae, dtype=torch.float64)
    se = math.sqrt((iwae.var() + hand.var()).item() / reps)
    assert abs(iwae.mean() - hand.mean()).item() < 4 * se + 1e-3, (iwae, hand)
    assert iwae.mean() > elbo - 4 * se


# ---------------------------------------------------------------------------------------
# Pyro's examples/vae/vae_comparison.py: the same networks trained by a PyTorch loop


def _pytorch_vae_loss(v: vae.VAE, x: torch.Tensor) -> torch.Tensor:
    """vae_comparison's PyTorch objective: summed Bernoulli cross-entropy of one
    reparameterized draw plus the Normal KL in closed form."""
    loc, scale = v.encoder(x)
    z = loc + scale * torch.randn_like(loc)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(v.decoder(z), x, reduction="sum")
    kl = 0.5 * (loc**2 + scale**2 - 1).sum() - scale.log().sum()
    return bce + kl


@pytest.mark.parametrize("compile", [False, None], ids=["plain", "default"])
def test_vae_fit_with_a_mean_field_elbo_equals_a_hand_written_pytorch_loop(compile):
    """The ``model``/``guide`` methods of one ``nn.Module`` trained by ``fit`` with
    ``TraceMeanField_ELBO`` (the KL in closed form) and the same networks trained by
    vae_comparison's hand-written PyTorch loop (``torch.optim.Adam`` on a summed BCE + KL)
    from one seed: the draws are the same, so the weights agree to float rounding after
    two epochs."""
    x, _ = vae.digits(num_train=96, num_test=0)
    batches = [x[i : i + 32] for i in range(0, 96, 32)]

    def run(train):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        v = vae.VAE()
        train(v)
        return {name: p.detach().clone() for name, p in v.named_parameters()}

    def by_hand(v):
        optim = torch.optim.Adam(v.parameters(), lr=1e-2)
        for _ in range(2):
            for batch in batches:
                optim.zero_grad()
                _pytorch_vae_loss(v, batch).backward()
                optim.step()

    expected = run(by_hand)
    got = run(
        lambda v: fit(
            v,
            [(b,) for b in batches],
            epochs=2,
            optim=pyro.optim.Adam({"lr": 1e-2}),
            loss=TraceMeanField_ELBO(),
            compile=compile,
            progress=False,
        )
    )
    pyro.set_rng_seed(0)
    initial = vae.VAE().decoder[0].weight
    assert not torch.allclose(got["decoder.0.weight"], initial, atol=1e-3)  # it trained
    assert_same_store(got, expected, exact=False)
