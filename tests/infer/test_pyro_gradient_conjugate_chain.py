"""CompiledSVI's gradients on Pyro's test_conjugate_gradients.py: a Gaussian chain whose
guide is the exact posterior, so the ELBO's gradient is zero, including ``TraceGraph_ELBO``
with decaying-average baselines (which falls back to Pyro's step).

The pairs are written again here (read from Pyro, not copied) and run through
:class:`~pyro_gen.infer.compiled.CompiledSVI` (``fit``'s default step) and through Pyro's
``loss.loss_and_grads``, each call on the same seed from the same param store
(pyro_gradient_checks.same_as_pyro): the loss and every parameter's gradient must be Pyro's,
to float rounding, and the step must take the path the pair states (its recorded program, or
Pyro's step after one log line saying why)."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.distributions.testing import fakes
from pyro.infer import Trace_ELBO, TraceGraph_ELBO

from tests.infer.pyro_gradient_checks import (
    COMPILED,
    PARTICLES,
    TRACEGRAPH,
    _assert_near,
    _vectorized,
    same_as_pyro,
)

# float64 throughout (tests/conftest.py, whose autouse fixture also clears the param store)
pytestmark = pytest.mark.usefixtures("float64_default")


# --- test_conjugate_gradients.py: a Gaussian chain whose guide is the exact posterior -----


class GaussianChain:
    """Pyro's conjugate chain z_1 -> ... -> z_N -> x (4 points), with the guide the exact
    posterior q(z_k | z_{k+1}) = N(kappa_k z_{k+1} + loc_k, sigma_k), ``node_reparam`` the
    nodes drawn by a reparameterized sampler whatever ``reparameterized`` says. At the exact
    posterior, log p(x, z) - log q(z) is log p(x) for every z, so the ELBO's gradient is 0."""

    def __init__(self, n: int, node_reparam: tuple[bool, ...]) -> None:
        self.n, self.node_reparam = n, node_reparam
        self.loc0, self.data = torch.tensor([0.2]), torch.tensor([-0.1, 0.03, 0.20, 0.10])
        self.lambdas = [torch.tensor([1.5 * (k + 1) / n]) for k in range(n + 1)]
        tilde = [self.lambdas[0]]  # precision of z_k given the chain above it, x ignored
        for k in range(1, n):
            tilde.append(self.lambdas[k] * tilde[-1] / (self.lambdas[k] + tilde[-1]))
        post = [None] + [self.lambdas[k] + tilde[k - 1] for k in range(1, n)]
        post.append(len(self.data) * self.lambdas[n] + tilde[n - 1])
        self.post = post
        self.kappas = [None] + [self.lambdas[k] / post[k] for k in range(1, n)]
        self.locs = [None] + [self.loc0 * tilde[k - 1] / post[k] for k in range(1, n)]
        self.locs.append(
            self.data.sum() * self.lambdas[n] / post[n] + self.loc0 * tilde[n - 1] / post[n]
        )

    def model(self, reparameterized: bool) -> None:
        z = self.loc0
        for k in range(1, self.n + 1):
            z = pyro.sample(f"z_{k}", dist.Normal(z, self.lambdas[k - 1] ** -0.5))
        with pyro.plate("data", len(self.data)):
            pyro.sample("obs", dist.Normal(z, self.lambdas[self.n] ** -0.5), obs=self.data)

    def guide(self, reparameterized: bool) -> None:
        below = None
        for k in reversed(range(1, self.n + 1)):
            loc = pyro.param(f"loc_q_{k}", self.locs[k].clone())
            log_sig = pyro.param(f"log_sig_q_{k}", -0.5 * torch.log(self.post[k]))
            mean = loc
            if k != self.n:
                mean = pyro.param(f"kappa_q_{k}", self.kappas[k].clone()) * below + loc
            normal = dist.Normal if reparameterized or self.node_reparam[k - 1] else None
            normal = normal or fakes.NonreparameterizedNormal
            below = pyro.sample(
                f"z_{k}",
                normal(mean, log_sig.exp()),
                infer={"baseline": {"use_decaying_avg_baseline": True}},
            )


@pytest.mark.parametrize(
    "elbo, reparameterized, path",
    [
        (Trace_ELBO, True, COMPILED),
        (TraceGraph_ELBO, False, TRACEGRAPH),  # baselines on the score-function nodes
    ],
    ids=["Trace-reparameterized", "TraceGraph-baselines"],
)
def test_conjugate_chain_gradient_is_zero(elbo, reparameterized, path, caplog):
    """Pyro's test_conjugate_gradients (TraceGraph_ELBO, 100000 vectorized particles, zero
    within 0.10); the decaying-average baselines keep their state in the param store, which
    both runs move alike. Where the program runs, its mean gradient is zero too."""
    chain = GaussianChain(3, node_reparam=(False, True, False))
    particles = PARTICLES if path == COMPILED else 64
    kwargs = {"reparameterized": reparameterized}
    results, _ = same_as_pyro(
        chain.model, chain.guide, _vectorized(elbo, particles), [((), kwargs)] * 3, path, caplog
    )
    if path == COMPILED:
        grads = results[-1][1]
        assert len(grads) == 3 * 3 - 1  # loc, log_sig and kappa, no kappa at the chain's end
        _assert_near(grads, {name: torch.zeros_like(g) for name, g in grads.items()}, 0.10)
