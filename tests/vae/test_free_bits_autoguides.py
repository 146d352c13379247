"""FreeBitsELBO with Pyro's own autoguides in a user's program.

``AutoNormal`` (and the global part of ``AutoAmortizedNormal``) draws each latent as an
auxiliary ``<name>_unconstrained`` Normal and records the latent as a ``Delta`` carrying
only the log-Jacobian. The floor was applied to that Delta's term minus ``log p(z)`` while
the Normal's ``-log q`` went in unfloored, so free bits had no effect at all: a guide at
the prior (KL zero) paid no floor. The floor now weighs the KL of the unconstrained draw.
``AutoDiagonalNormal`` draws every latent in one auxiliary site, so no latent's KL can be
floored; it got the same wrong floor and is now refused with a ValueError naming the site.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO
from pyro.infer.autoguide import (
    AutoDelta,
    AutoDiagonalNormal,
    AutoGuideList,
    AutoNormal,
    init_to_value,
)

from pyro_gen.vae import FreeBitsELBO

X = torch.linspace(-1.0, 1.0, 12).reshape(4, 3)


def model(x):
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        s = pyro.sample("s", dist.LogNormal(0.0, 1.0))
        mean = z.sum(-1, keepdim=True).expand(x.shape)
        pyro.sample("x", dist.Normal(mean, s[:, None]).to_event(1), obs=x)


def prior_guide(x):
    """The prior itself, written by hand: every KL is zero."""
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        pyro.sample("s", dist.LogNormal(0.0, 1.0))


def autonormal_at_prior():
    """AutoNormal whose q is the prior (loc 0, scale 1 in the unconstrained space)."""
    pyro.clear_param_store()
    values = {"z": torch.zeros(4, 2), "s": torch.ones(4)}
    guide = AutoNormal(model, init_loc_fn=init_to_value(values=values), init_scale=1.0)
    guide(X)
    return guide


@pytest.mark.parametrize("free_bits", [0.0, 0.5, 2.0])
def test_autonormal_at_the_prior_pays_the_floor_as_the_hand_written_guide(free_bits):
    guide = autonormal_at_prior()
    pyro.set_rng_seed(0)
    expected = FreeBitsELBO(free_bits).loss(model, prior_guide, X)
    pyro.set_rng_seed(0)
    got = FreeBitsELBO(free_bits).loss(model, guide, X)
    assert got == pytest.approx(expected, rel=1e-5)
    # the reconstruction term plus the floor of 3 latent dims for 4 examples: the z floor
    # is per dimension (2 x 4 x lambda), the LogNormal site's Monte Carlo KL (zero in
    # expectation, a draw here) is floored as a whole at 1 x 4 x lambda
    pyro.set_rng_seed(0)
    plain = Trace_ELBO().loss(model, prior_guide, X)
    assert got >= plain + 8 * free_bits - 1e-4


@pytest.mark.parametrize("free_bits", [0.0, 0.5, 3.0])
def test_away_from_the_prior_the_floor_is_on_the_monte_carlo_kl_of_the_draw(free_bits):
    """q moved off the prior: the loss is the reconstruction plus each latent's Monte Carlo
    KL log q - log p (the unconstrained Normal's density and the Delta's log-Jacobian),
    each floored at lambda x its size x 4 examples, as computed here from the traces."""
    guide = autonormal_at_prior()
    with torch.no_grad():
        for name, value in pyro.get_param_store().items():
            value.add_(0.3 if "loc" in name else 0.0)
    pyro.set_rng_seed(1)
    got = FreeBitsELBO(free_bits).loss(model, guide, X)
    pyro.set_rng_seed(1)
    guide_trace = poutine.trace(guide).get_trace(X)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(X)
    guide_trace.compute_log_prob()
    model_trace.compute_log_prob()
    q = {n: s["log_prob"].sum().item() for n, s in guide_trace.nodes.items() if "log_prob" in s}
    p = {n: s["log_prob"].sum().item() for n, s in model_trace.nodes.items() if "log_prob" in s}
    kl_z = q["z_unconstrained"] + q["z"] - p["z"]
    kl_s = q["s_unconstrained"] + q["s"] - p["s"]
    expected = -p["x"] + max(kl_z, free_bits * 2 * 4) + max(kl_s, free_bits * 1 * 4)
    assert got == pytest.approx(expected, rel=1e-5)
    # the free bits bind at the largest floor: the loss grew by more than the KLs
    if free_bits == 3.0:
        assert got > -p["x"] + kl_z + kl_s + 1.0


def test_a_joint_autoguide_is_refused_naming_its_auxiliary_site():
    """At the prior a floor of 2 nats on 12 latent dims costs 24 nats; the joint guide
    paid only part of it, silently. Now refused."""
    pyro.clear_param_store()
    values = {"z": torch.zeros(4, 2), "s": torch.ones(4)}
    guide = AutoDiagonalNormal(model, init_loc_fn=init_to_value(values=values), init_scale=1.0)
    guide(X)
    with pytest.raises(ValueError, match=r"'_AutoDiagonalNormal_latent' is an auxiliary draw"):
        FreeBitsELBO(2.0).loss(model, guide, X)


def test_a_point_estimate_is_refused_naming_its_site():
    """AutoDelta gives each latent a Delta: the Monte Carlo "KL" was -log p(z) alone and
    was floored (a floor of 5 nats turned a MAP loss into another number, silently)."""
    pyro.clear_param_store()
    with pytest.raises(ValueError, match=r"guide site 'z' is a point estimate.*AutoNormal"):
        FreeBitsELBO(5.0).loss(model, AutoDelta(model), X)


def test_a_point_estimate_in_a_guide_list_or_by_hand_is_refused():
    """A density for z and a point for s (AutoGuideList), or a hand-written masked Delta."""
    pyro.clear_param_store()
    guide = AutoGuideList(model)
    guide.append(AutoNormal(poutine.block(model, expose=["z"])))
    guide.append(AutoDelta(poutine.block(model, expose=["s"])))
    with pytest.raises(ValueError, match=r"guide site 's' is a point estimate"):
        FreeBitsELBO(1.0).loss(model, guide, X)

    def point_guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            pyro.sample("s", dist.Delta(torch.ones(x.shape[0])).mask(True))

    with pytest.raises(ValueError, match=r"guide site 's' is a point estimate"):
        FreeBitsELBO(1.0).loss(model, point_guide, X)


def test_a_delta_carrying_the_guides_density_is_floored_as_any_latent():
    """A guide that draws z itself and records it as Delta(z, log_density=log q(z)) is no
    point estimate: its Monte Carlo KL is floored as a whole, as computed here."""
    loc, scale = torch.tensor([0.3, -0.2]), torch.tensor([0.5, 2.0])

    def density_guide(x):
        with pyro.plate("data", x.shape[0]):
            q = dist.Normal(loc, scale).to_event(1).expand([x.shape[0]])
            z = q.rsample()
            pyro.sample("z", dist.Delta(z, log_density=q.log_prob(z), event_dim=1))
            pyro.sample("s", dist.LogNormal(0.0, 1.0))

    for free_bits in (0.0, 5.0):
        pyro.set_rng_seed(4)
        got = FreeBitsELBO(free_bits).loss(model, density_guide, X)
        pyro.set_rng_seed(4)
        guide_trace = poutine.trace(density_guide).get_trace(X)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(X)
        z, s = guide_trace.nodes["z"]["value"], guide_trace.nodes["s"]["value"]
        q_s = dist.LogNormal(0.0, 1.0)
        kl_z = (dist.Normal(loc, scale).log_prob(z) - dist.Normal(0.0, 1.0).log_prob(z)).sum()
        kl_s = (q_s.log_prob(s) - q_s.log_prob(s)).sum()  # the guide is the prior: zero
        log_lik = model_trace.nodes["x"]["fn"].log_prob(X).sum()
        expected = -log_lik + max(kl_z, free_bits * 2 * 4) + max(kl_s, free_bits * 1 * 4)
        assert got == pytest.approx(expected.item(), rel=1e-5)
