"""Quality of the standard VAE on dynamically binarized MNIST, against hand-written PyTorch.

Both models are the same 784-400-50 softplus MLP VAE with a Bernoulli likelihood, trained
with Adam (lr 1e-3), batch 128, fresh binarization of every batch; ours is
``pyro_gen.vae.VAE`` trained by ``pyro_gen.infer.fit`` (Pyro SVI + Trace_ELBO), the
reference a plain PyTorch loop with the same architecture and the analytic-free
single-sample ELBO. Reports test ELBO (one binarization of the test set, averaged over
``--eval-draws`` draws) and, optionally, the importance-weighted log-likelihood.

    python benchmarks/vae_mnist.py --epochs 10            # the issue's target: >= -104 nats
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time

import pyro
import torch
from torch import nn
from torch.nn import functional as F

from pyro_gen.data import dynamic_binarize, load
from pyro_gen.infer import evaluate_elbo, fit, iwae_log_likelihood
from pyro_gen.vae import VAE


class TorchVAE(nn.Module):
    """The reference: the same network written directly in PyTorch."""

    def __init__(self, x_dim: int = 784, hidden: int = 400, z_dim: int = 50) -> None:
        super().__init__()
        self.enc = nn.Sequential(
            nn.Linear(x_dim, hidden), nn.Softplus(), nn.Linear(hidden, 2 * z_dim)
        )
        self.dec = nn.Sequential(nn.Linear(z_dim, hidden), nn.Softplus(), nn.Linear(hidden, x_dim))

    def elbo(self, x: torch.Tensor) -> torch.Tensor:
        loc, pre_scale = self.enc(x).chunk(2, -1)
        scale = F.softplus(pre_scale)
        z = loc + scale * torch.randn_like(loc)
        log_lik = -F.binary_cross_entropy_with_logits(self.dec(z), x, reduction="none").sum(-1)
        log_prior = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
        log_q = torch.distributions.Normal(loc, scale).log_prob(z).sum(-1)
        return log_lik + log_prior - log_q


def train_torch(x_train: torch.Tensor, x_test: torch.Tensor, epochs: int, draws: int) -> float:
    model = TorchVAE()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    flat = x_train.reshape(len(x_train), -1)
    for _ in range(epochs):
        for idx in torch.randperm(len(flat)).split(128):
            loss = -model.elbo(dynamic_binarize(flat[idx])).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
    test = x_test.reshape(len(x_test), -1)
    with torch.no_grad():
        return sum(model.elbo(dynamic_binarize(test)).mean().item() for _ in range(draws)) / draws


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--eval-draws", type=int, default=5)
    parser.add_argument(
        "--iwae-k", type=int, default=0, help="also estimate log p(x) with K samples"
    )
    parser.add_argument("--iwae-examples", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    x_train, _ = load("mnist", "train")
    x_test, _ = load("mnist", "test")

    pyro.set_rng_seed(0)
    start = time.perf_counter()
    ours = VAE(event_shape=(28, 28), z_dim=50, hidden_dim=400)
    fit(
        ours,
        x_train,
        epochs=args.epochs,
        batch_size=128,
        transform=dynamic_binarize,
        progress=False,
    )
    ours_time = time.perf_counter() - start
    ours_elbo = (
        sum(evaluate_elbo(ours, x_test, transform=dynamic_binarize) for _ in range(args.eval_draws))
        / args.eval_draws
    )

    pyro.set_rng_seed(0)
    start = time.perf_counter()
    ref_elbo = train_torch(x_train, x_test, args.epochs, args.eval_draws)
    ref_time = time.perf_counter() - start

    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
        "torch": torch.__version__,
        "pyro": pyro.__version__,
        "epochs": args.epochs,
        "pyro_gen_test_elbo": round(ours_elbo, 2),
        "pytorch_test_elbo": round(ref_elbo, 2),
        "pyro_gen_train_s": round(ours_time, 1),
        "pytorch_train_s": round(ref_time, 1),
    }
    if args.iwae_k:
        result["pyro_gen_iwae_ll"] = round(
            iwae_log_likelihood(
                ours,
                x_test[: args.iwae_examples],
                num_samples=args.iwae_k,
                transform=dynamic_binarize,
            ),
            2,
        )
    print(json.dumps(result, indent=2))
    if not math.isfinite(ours_elbo):
        raise SystemExit("non-finite ELBO")


if __name__ == "__main__":
    main()
