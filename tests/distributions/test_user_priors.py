"""pyro_gen's priors dropped into a VAE written in plain Pyro, as a user writes one.

The program: ``pyro.module`` for the decoder, the encoder and the prior, an outer plate
(groups, ``dim=-2``) around the data plate, ``pyro.sample("z", prior())`` in the model
and a hand-written amortized Normal guide. Each prior (NormalPrior, MixturePrior,
VampPrior, FlowPrior, a Flow with a LearnedMixture base) is checked against:

- the ELBO written by hand from the guide's own draw, with an independent prior density
  (closed form for the Normal, a per-component sum for the mixtures, the change of
  variables with ``torch.autograd.functional.jacobian`` for flows): Trace_ELBO with one
  and with vectorized particles, TraceMeanField_ELBO (the analytic KL for the Normal,
  the same Monte Carlo estimate where no KL is registered), float32 and float64 programs
  built by hand (``.double()``, no default dtype change);
- the gradients of that hand-written loss (autograd) for the prior's parameters;
- JitTrace_ELBO against Trace_ELBO on the same seed; AutoDelta's ``init_to_mean`` against
  the mixture mean written by hand;
- Predictive draws, parallel and sequential, against the prior's own draws (two-sample
  means and variances within five standard errors);
- the param store saved and loaded into freshly built modules, and ``torch.save`` of the
  modules: the loss under the same seed is the trained program's.
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, JitTrace_ELBO, Predictive, Trace_ELBO, TraceMeanField_ELBO
from pyro.infer.autoguide import AutoDelta, init_to_mean
from pyro.optim import Adam
from torch.distributions.transforms import ComposeTransform

from pyro_gen import transforms as T
from pyro_gen.distributions import Flow, LearnedMixture
from pyro_gen.distributions.mixture import MixturePrior
from pyro_gen.distributions.vamp import VampPrior
from pyro_gen.vae.priors import FlowPrior, NormalPrior

X, D, G, N, K = 3, 2, 2, 4, 3
PRIORS = ["normal", "mog", "vamp", "flow", "flow-mixture"]


class Encoder(torch.nn.Module):
    """A user's amortized Normal encoder; its ``encode`` also feeds the VampPrior."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Linear(X, 2 * D)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc, raw = self.net(x).chunk(2, -1)
        return loc, torch.nn.functional.softplus(raw) + 0.1


class Program:
    """Model, guide and the modules they register; the guide keeps its last draw of z."""

    def __init__(self, kind: str, seed: int = 0, dtype: torch.dtype = torch.float32) -> None:
        torch.manual_seed(seed)
        self.kind = kind
        self.encoder = Encoder()
        self.decoder = torch.nn.Linear(D, X)
        self.prior = {
            "normal": lambda: NormalPrior(D),
            "mog": lambda: MixturePrior(D, K),
            "vamp": lambda: VampPrior((X,), K, encode=self.encoder.encode),
            "flow": lambda: FlowPrior(D, 2, (8,)),
            "flow-mixture": lambda: Flow(
                D,
                [T.affine_coupling(D, hidden_dims=[8]), T.masked_autoregressive(D, [8])],
                base=LearnedMixture(D, K),
            ),
        }[kind]()
        with torch.no_grad():  # away from the initial identity / standard Normal
            for p in self.prior.parameters():
                p.add_(0.3 * torch.randn_like(p))
        for m in (self.encoder, self.decoder, self.prior):
            m.to(dtype)
        self.z: torch.Tensor | None = None

    def model(self, x: torch.Tensor) -> None:
        pyro.module("decoder", self.decoder)
        pyro.module("prior", self.prior)
        with pyro.plate("groups", x.shape[-3], dim=-2), pyro.plate("data", x.shape[-2], dim=-1):
            z = pyro.sample("z", self.prior())
            pyro.sample("x", dist.Normal(self.decoder(z), 0.5).to_event(1), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        pyro.module("encoder", self.encoder)
        loc, scale = self.encoder.encode(x)
        with pyro.plate("groups", x.shape[-3], dim=-2), pyro.plate("data", x.shape[-2], dim=-1):
            self.z = pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    def modules(self) -> list[torch.nn.Module]:
        return [self.encoder, self.decoder, self.prior]


def reference_log_prior(prog: Program, z: torch.Tensor) -> torch.Tensor:
    """log p(z) computed without the prior's own log_prob."""
    prior = prog.prior
    if prog.kind == "normal":
        return dist.Normal(torch.zeros_like(z), 1.0).log_prob(z).sum(-1)
    if prog.kind in ("mog", "vamp"):
        if prog.kind == "mog":
            log_w = prior.logits.log_softmax(-1)
            locs = prior.locs
            scales = torch.nn.functional.softplus(prior.raw_scales) + prior.min_scale
        else:
            locs, scales = prog.encoder.encode(prior.pseudo_inputs())
            log_w = torch.full((K,), -math.log(K), dtype=z.dtype)
        per = dist.Normal(locs, scales).log_prob(z[..., None, :]).sum(-1)  # (..., K)
        return (log_w + per).logsumexp(-1)
    # a flow: log p(z) = log p_u(u) - log|det df/du| at u = f^{-1}(z), the Jacobian of the
    # forward map by autograd, one row at a time
    d = prior()
    f = ComposeTransform(list(d.transforms))
    rows = z.detach().reshape(-1, D)
    out = []
    with torch.no_grad():
        for row in rows:
            u = f.inv(row[None])[0]
            jac = torch.autograd.functional.jacobian(lambda v: f(v[None])[0], u)
            out.append(d.base_dist.log_prob(u[None])[0] - torch.linalg.slogdet(jac).logabsdet)
    return torch.stack(out).reshape(z.shape[:-1])


def hand_loss(prog: Program, x: torch.Tensor, z: torch.Tensor, kl: bool = False) -> torch.Tensor:
    """-ELBO at the guide's draw z (leading particle dims averaged), summed over plates."""
    loc, scale = prog.encoder.encode(x)
    q = dist.Normal(loc, scale)
    log_lik = dist.Normal(prog.decoder(z), 0.5).log_prob(x).sum(-1)
    if kl:  # TraceMeanField's analytic KL(q || N(0, I)), the closed form
        kl_term = (-scale.log() + 0.5 * (scale**2 + loc**2) - 0.5).sum(-1)
        elbo = log_lik - kl_term
    else:
        elbo = log_lik + reference_log_prior(prog, z) - q.log_prob(z).sum(-1)
    elbo = elbo.sum((-2, -1))
    return -(elbo.mean() if elbo.dim() else elbo)


def data(dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(G, N, X, generator=torch.Generator().manual_seed(1), dtype=dtype)


# ----------------------------------------------------------------------------- ELBOs


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind", PRIORS)
def test_elbos_equal_the_hand_written_elbo(kind, dtype) -> None:
    prog, x = Program(kind, dtype=dtype), data(dtype)
    tol = dict(rtol=1e-5, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-9)
    vec = dict(num_particles=4, vectorize_particles=True, max_plate_nesting=2)
    elbos = [Trace_ELBO(), Trace_ELBO(**vec), TraceMeanField_ELBO(), TraceMeanField_ELBO(**vec)]
    for elbo in elbos:
        loss = elbo.differentiable_loss(prog.model, prog.guide, x)
        assert loss.dtype == dtype
        analytic = isinstance(elbo, TraceMeanField_ELBO) and kind == "normal"
        if elbo.vectorize_particles:
            assert prog.z.shape == (4, G, N, D)
        expected = hand_loss(prog, x, prog.z, kl=analytic)
        torch.testing.assert_close(loss, expected, **tol)


@pytest.mark.parametrize("kind", ["normal", "mog", "vamp"])
def test_gradients_reach_the_prior_as_in_the_hand_written_loss(kind) -> None:
    prog, x = Program(kind, dtype=torch.float64), data(torch.float64)
    params = [p for m in prog.modules() for p in m.parameters()]
    loss = Trace_ELBO(num_particles=3, vectorize_particles=True, max_plate_nesting=2)
    value = loss.differentiable_loss(prog.model, prog.guide, x)
    got = torch.autograd.grad(value, params, retain_graph=True)  # z is in both graphs
    expected = torch.autograd.grad(hand_loss(prog, x, prog.z), params)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-8, atol=1e-10)
    prior_grads = [g for g, p in zip(got, params) if any(p is q for q in prog.prior.parameters())]
    assert kind == "normal" or any(bool(g.abs().sum() > 0) for g in prior_grads)


@pytest.mark.parametrize("kind", PRIORS)
def test_jit_trace_elbo_equals_trace_elbo(kind) -> None:
    prog, x = Program(kind), data()
    pyro.set_rng_seed(3)
    expected = Trace_ELBO().loss(prog.model, prog.guide, x)
    elbo = JitTrace_ELBO()
    for _ in range(2):  # the traced call and a replay of the trace
        pyro.set_rng_seed(3)
        assert elbo.loss(prog.model, prog.guide, x) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("kind", ["mog", "vamp"])
def test_autoguide_init_to_mean_starts_at_the_mixture_mean(kind) -> None:
    # init_to_mean reads the expanded site distribution's .mean: sum_k pi_k mu_k
    prog, x = Program(kind), data()
    guide = AutoDelta(prog.model, init_loc_fn=init_to_mean)
    z = guide(x)["z"]
    with torch.no_grad():
        if kind == "mog":
            w, locs = prog.prior.logits.softmax(-1), prog.prior.locs
        else:
            w, locs = torch.full((K,), 1 / K), prog.encoder.encode(prog.prior.pseudo_inputs())[0]
        torch.testing.assert_close(z, (w[:, None] * locs).sum(0).expand(G, N, D))


# ----------------------------------------------------------------------------- Predictive


@pytest.mark.parametrize("kind", PRIORS)
def test_prior_predictive_draws_follow_the_prior(kind) -> None:
    prog, x = Program(kind), data()
    with torch.no_grad():
        direct = prog.prior().sample((4000,)).reshape(-1, D)
        for parallel in (True, False):
            pyro.set_rng_seed(2)
            draws = Predictive(prog.model, num_samples=100 if parallel else 20, parallel=parallel)(
                x
            )
            z = draws["z"]
            assert z.shape == (len(z), G, N, D) and draws["x"].shape == (len(z), G, N, X)
            z = z.reshape(-1, D)
            for f in (lambda v: v, lambda v: v**2):
                a, b = f(z), f(direct)
                se = (a.var(0) / len(a) + b.var(0) / len(b)).sqrt()
                assert ((a.mean(0) - b.mean(0)).abs() < 5 * se).all(), (parallel, a.mean(0), b)


@pytest.mark.parametrize("parallel", [True, False])
def test_posterior_predictive_keeps_the_guides_draw(parallel) -> None:
    prog, x = Program("vamp"), data()
    pyro.set_rng_seed(3)
    draws = Predictive(prog.model, guide=prog.guide, num_samples=3, parallel=parallel)(x)
    assert draws["z"].shape == (3, G, N, D)
    # the last guide call's draw is the last sample's z
    torch.testing.assert_close(draws["z"][-1], prog.z.reshape(-1, G, N, D)[-1])


# ----------------------------------------------------------------------------- save / load


@pytest.mark.parametrize("kind", PRIORS)
def test_param_store_and_torch_save_round_trips(kind, tmp_path) -> None:
    prog, x = Program(kind), data()
    svi = SVI(prog.model, prog.guide, Adam({"lr": 0.05}), Trace_ELBO())
    for _ in range(3):
        svi.step(x)

    def loss_of(p: Program) -> float:
        pyro.set_rng_seed(7)
        return Trace_ELBO().loss(p.model, p.guide, x)

    trained = loss_of(prog)
    pyro.get_param_store().save(tmp_path / "params.pt")
    torch.save(prog.modules(), tmp_path / "modules.pt")

    pyro.clear_param_store()
    fresh = Program(kind, seed=1)
    assert loss_of(fresh) != pytest.approx(trained)  # built differently: the check can fail
    pyro.clear_param_store()
    pyro.get_param_store().load(tmp_path / "params.pt")
    for name, m in zip(("encoder", "decoder", "prior"), fresh.modules()):
        pyro.module(name, m, update_module_params=True)
    assert loss_of(fresh) == pytest.approx(trained, rel=1e-6)
    # training goes on from the loaded values: the store's parameters are the modules'
    stored = dict(pyro.get_param_store().named_parameters())
    assert all(any(p is q for q in stored.values()) for p in fresh.prior.parameters())

    pyro.clear_param_store()
    loaded = Program(kind, seed=2)
    loaded.encoder, loaded.decoder, loaded.prior = torch.load(
        tmp_path / "modules.pt", weights_only=False
    )
    if kind == "vamp":  # the prior was saved with the saved encoder's method
        assert loaded.prior._encode[0].__self__ is loaded.encoder
    assert loss_of(loaded) == pytest.approx(trained, rel=1e-6)
