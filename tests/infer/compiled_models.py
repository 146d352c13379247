"""Models and checks shared by the CompiledSVI tests: a tiny VAE, a flow, a subsampled
model, and the comparison of a compiled step with Pyro's own."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pyro_gen.infer.annealing import kl_scale
from pyro_gen.infer.compiled import CompiledSVI

RTOL = 1e-5


def assert_same_as_svi(run) -> None:
    """``run(compiled)`` trains from a fixed seed and returns its losses and the param
    store's values: the compiled step's equal Pyro SVI's, up to float rounding."""
    ref_losses, ref_params = run(False)
    losses, params = run(True)
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(ref_losses), rtol=RTOL, atol=0)
    for name in ref_params:
        torch.testing.assert_close(params[name], ref_params[name], rtol=RTOL, atol=1e-8)


# --- models -----------------------------------------------------------------------------


class TinyVAE(nn.Module):
    def __init__(self, x_dim: int = 12, z_dim: int = 3, hidden: int = 8) -> None:
        super().__init__()
        self.enc = nn.Sequential(nn.Linear(x_dim, hidden), nn.Softplus())
        self.loc, self.log_scale = nn.Linear(hidden, z_dim), nn.Linear(hidden, z_dim)
        self.dec = nn.Sequential(nn.Linear(z_dim, hidden), nn.Softplus(), nn.Linear(hidden, x_dim))
        self.z_dim = z_dim

    def model(self, x):
        pyro.module("dec", self.dec)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(self.z_dim), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.dec(z)).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("enc", self.enc)
        pyro.module("loc", self.loc)
        pyro.module("log_scale", self.log_scale)
        with pyro.plate("data", x.shape[0]):
            h = self.enc(x)
            pyro.sample("z", dist.Normal(self.loc(h), self.log_scale(h).exp()).to_event(1))


class Subsampled(nn.Module):
    """A global latent plus amortized local latents under a subsampled data plate."""

    def __init__(self, size: int = 20, dim: int = 3) -> None:
        super().__init__()
        self.size, self.dim = size, dim
        self.dec = nn.Linear(2, dim)
        self.enc = nn.Linear(dim, 4)

    def model(self, x):
        pyro.module("sub_dec", self.dec)
        w = pyro.sample("w", dist.Normal(x.new_zeros(self.dim), 1.0).to_event(1))
        with pyro.plate("data", self.size, subsample_size=6) as idx:
            z = pyro.sample("z", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
            pyro.sample("obs", dist.Normal(w + self.dec(z), 0.5).to_event(1), obs=x[idx])

    def guide(self, x):
        pyro.module("sub_enc", self.enc)
        q_loc = pyro.param("q_loc", x.new_zeros(self.dim))
        q_scale = pyro.param("q_scale", x.new_ones(self.dim), constraint=dist.constraints.positive)
        pyro.sample("w", dist.Normal(q_loc, q_scale).to_event(1))
        with pyro.plate("data", self.size, subsample_size=6) as idx:
            h = self.enc(x[idx])
            pyro.sample("z", dist.Normal(h[:, :2], nn.functional.softplus(h[:, 2:])).to_event(1))


def make(kind: str):
    """(model/guide object, data, param perturbation done) for each model family."""
    torch.manual_seed(1)
    if kind == "vae":
        return TinyVAE(), torch.bernoulli(torch.full((10, 12), 0.4))
    if kind == "pyro_gen_vae":
        from pyro_gen.vae import VAE

        return VAE(event_shape=(3, 4), z_dim=2, hidden_dim=8), torch.bernoulli(
            torch.full((10, 3, 4), 0.4)
        )
    if kind == "flow":
        from pyro_gen.flows.base import FlowModel
        from pyro_gen.transforms import affine_coupling

        flow = FlowModel(
            (2,), [affine_coupling(2, parity=i % 2, hidden_dims=[8]) for i in range(2)]
        )
        with torch.no_grad():  # leave the identity start so every weight gets a gradient
            for p in flow.parameters():
                p.normal_(0.0, 0.3)
        return flow, torch.randn(16, 2)
    if kind == "subsampled":
        return Subsampled(), torch.randn(20, 3)
    raise ValueError(kind)


def grads_of_store() -> dict[str, torch.Tensor]:
    out = {}
    for name, p in pyro.get_param_store().named_parameters():
        if p.grad is not None:
            out[name] = p.grad.clone()
            p.grad = None
    return out


def wrap(gen, beta):
    if beta is None:
        return gen.model, gen.guide
    return kl_scale(gen.model, lambda: beta[0]), kl_scale(gen.guide, lambda: beta[0])


def assert_same_loss_and_grads(compiled: CompiledSVI, loss, seed: int, *args) -> None:
    """With the same seed, the compiled step gives Pyro's loss and gradients (on fresh
    copies of ``args``) and ran its program."""
    pyro.set_rng_seed(seed)
    expected = loss.loss_and_grads(compiled.model, compiled.guide, *(a.clone() for a in args))
    expected_grads = grads_of_store()
    pyro.set_rng_seed(seed)
    actual = compiled.loss_and_grads(*(a.clone() for a in args))
    actual_grads = grads_of_store()
    assert compiled.compiled, compiled.fallback_reason
    torch.testing.assert_close(actual, torch.tensor(expected), rtol=RTOL, atol=0)
    assert actual_grads.keys() == expected_grads.keys()
    for name in expected_grads:
        torch.testing.assert_close(
            actual_grads[name], expected_grads[name], rtol=RTOL, atol=1e-10, msg=name
        )
