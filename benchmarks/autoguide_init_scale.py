"""AutoAmortizedNormal's initial scale on Pyro's MNIST VAE: test ELBO after a short run.

The model is Pyro's own VAE example written as a plain Pyro function (784-400-50 softplus
decoder, standard Normal prior, Bernoulli likelihood); the guide is
``AutoAmortizedNormal(model, hidden_dims=(400,), init_scale=s)``. Every scale is trained
with the same seed, the same minibatches and the same binarizations (Adam lr 1e-3, batch
128), interleaved within each repeat, and scored by the test ELBO (10 particles) on a fixed
binarization of the first test images. Differences are paired within a repeat. The
reference ``example`` is the hand-written guide of Pyro's VAE example.

    python benchmarks/autoguide_init_scale.py --variants 0.1 0.3 1 2 example --repeats 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI, Trace_ELBO
from torch import nn
from torch.nn import functional as F

from pyro_gen.data import load
from pyro_gen.vae import AutoAmortizedNormal


def make_model() -> tuple[nn.Module, callable]:
    decoder = nn.Sequential(nn.Linear(50, 400), nn.Softplus(), nn.Linear(400, 784))

    def model(x: torch.Tensor) -> None:
        pyro.module("decoder", decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([50]).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=decoder(z)).to_event(1), obs=x)

    return decoder, model


class ExampleEncoder(nn.Module):
    """The hand-written guide network of Pyro's VAE example (784-400 softplus, loc and
    exp-scale heads, PyTorch's default initialization)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc21, self.fc22 = nn.Linear(784, 400), nn.Linear(400, 50), nn.Linear(400, 50)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = F.softplus(self.fc1(x))
        return self.fc21(h), torch.exp(self.fc22(h))


def example_guide() -> callable:
    encoder = ExampleEncoder()

    def guide(x: torch.Tensor) -> None:
        pyro.module("encoder", encoder)
        with pyro.plate("data", x.shape[0]):
            loc, scale = encoder(x)
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    return guide


def run(variant: str, seed: int, x_train: torch.Tensor, x_test: torch.Tensor, epochs: int):
    """Train one guide: ``"example"`` (Pyro's hand-written one) or an init scale."""
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    _, model = make_model()
    if variant == "example":
        guide = example_guide()
    else:
        guide = AutoAmortizedNormal(model, hidden_dims=(400,), init_scale=float(variant))
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO())
    g = torch.Generator().manual_seed(seed)
    first = None
    for _ in range(epochs):
        for idx in torch.randperm(len(x_train), generator=g).split(128):
            batch = torch.bernoulli(x_train[idx], generator=g)
            loss = svi.step(batch) / len(idx)
            first = loss if first is None else first
    elbo = Trace_ELBO(num_particles=10, vectorize_particles=True, max_plate_nesting=1)
    with torch.no_grad():
        test = -elbo.loss(model, guide, x_test) / len(x_test)
    return test, first


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--variants",
        nargs="+",
        default=["0.1", "0.3", "1", "2", "example"],
        help="init scales of AutoAmortizedNormal, and 'example' for Pyro's hand-written guide",
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--train", type=int, default=20000, help="training images used")
    parser.add_argument("--test", type=int, default=2000, help="test images scored")
    args = parser.parse_args()
    torch.set_num_threads(1)
    x_train = load("mnist")[0][: args.train].reshape(-1, 784).float() / 255
    x_test = load("mnist", "test")[0][: args.test].reshape(-1, 784).float() / 255
    x_test = torch.bernoulli(x_test, generator=torch.Generator().manual_seed(123))
    results: dict[str, list[float]] = {s: [] for s in args.variants}
    start = time.perf_counter()
    for r in range(args.repeats):
        for s in args.variants:  # interleaved: every guide sees the same machine load
            test, first = run(s, 1000 + r, x_train, x_test, args.epochs)
            results[s].append(test)
            print(
                json.dumps(
                    {
                        "repeat": r,
                        "guide": s,
                        "test_elbo": round(test, 3),
                        "first_loss": round(first, 1),
                    }
                ),
                flush=True,
            )
    ref = max(args.variants, key=lambda s: statistics.mean(results[s]))
    print(
        f"# {args.repeats} repeats, {args.epochs} epochs on {args.train} images, "
        f"{time.perf_counter() - start:.0f} s"
    )
    print("| guide (init_scale) | test ELBO (mean ± s.e.) | vs best (paired, ± s.e.) |")
    print("|---|---|---|")
    for s in args.variants:
        v = results[s]
        diff = [a - b for a, b in zip(v, results[ref])]
        se = statistics.stdev(v) / len(v) ** 0.5 if len(v) > 1 else float("nan")
        dse = statistics.stdev(diff) / len(v) ** 0.5 if len(v) > 1 else float("nan")
        print(
            f"| {s} | {statistics.mean(v):.2f} ± {se:.2f} | "
            f"{statistics.mean(diff):+.2f} ± {dse:.2f} |"
        )


if __name__ == "__main__":
    main()
