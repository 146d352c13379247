"""KL annealing written inline with ``poutine.scale``, the factor passed with each batch, as
Pyro's examples do: fit takes SVI's steps, and calls the user's batch function once per
epoch.

Issue 10, continued with Pyro's tutorials and examples: what this group shares is said
once in ``tests/user_programs/__init__.py``.
"""

from __future__ import annotations

import pyro
import pyro.optim
import pytest
from pyro.infer import SVI, Trace_ELBO

from pyro_gen.infer import fit, iwae_log_likelihood
from tests.user_programs import annealed_vae, vae
from tests.user_programs.annealed_vae import annealed_batches
from tests.user_programs.test_user_programs import _store, assert_same_store


@pytest.mark.parametrize("compile", [False, None], ids=["plain", "default"])
def test_annealing_factor_passed_with_each_batch(compile):
    """A Python float argument that changes at every step (the DMM example's annealing):
    fit takes Pyro's SVI steps on the user's generator, the compiled default included (it
    must not hold a recorded factor fixed); the importance-weighted bound refuses a scaled
    latent by name."""
    x, x_test = vae.digits(num_train=96, num_test=32)

    def run(train):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        m = annealed_vae.AnnealedVAE()
        state = {"step": 0}
        train(m, lambda: annealed_batches(x, 16, state), pyro.optim.SGD({"lr": 1e-2}))
        return m, _store()

    def by_svi(m, batches, optim):
        svi = SVI(m.model, m.guide, optim, Trace_ELBO())
        for _ in range(3):
            for batch in batches():
                svi.step(**batch)

    _, expected = run(by_svi)
    m, got = run(
        lambda m, batches, optim: fit(
            m.model, batches, guide=m.guide, epochs=3, optim=optim, compile=compile, progress=False
        )
    )
    assert_same_store(got, expected, exact=compile is False)
    with pytest.raises(ValueError, match="'z' has scale 0.5"):
        iwae_log_likelihood(
            m.model, {"x": x_test, "annealing_factor": 0.5}, guide=m.guide, num_samples=4
        )


def test_fit_calls_the_users_batch_function_once_per_epoch():
    """A function returning each epoch's batches is the user's epoch: fit calls it once per
    epoch, as the user's own loop does (looking at the first batch used to call it once
    more, which moved any counter it keeps, such as the annealing schedule above)."""
    x, _ = vae.digits(num_train=64, num_test=0)
    m = vae.VAE()
    calls = []

    def batches():
        calls.append(len(calls))
        return iter([(x[:32],), (x[32:],)])

    fit(m.model, batches, guide=m.guide, epochs=3, progress=False)
    assert len(calls) == 3
