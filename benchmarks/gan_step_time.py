"""Same-run step time of a GAN through ``pyro_gen.infer.fit`` against the same step written
by hand in eager PyTorch.

One step = one discriminator update (non-saturating GAN, Adam) on a freshly generated
batch, then one generator update scoring the same generated batch with the updated
discriminator (the structure of PyTorch's DCGAN example: one generator forward per step),
on the same networks, batch and optimizer settings. Variants take turns (A B A B ...),
``--inner`` steps each, one torch thread;
reported: median CPU ms/step of each and the ratio ours / hand-written with its standard
error over rounds.

    .venv/bin/python benchmarks/gan_step_time.py --rounds 10 --inner 20
"""

from __future__ import annotations

import argparse
import copy
import functools
import math
import statistics
import time

import pyro
import torch
from torch.nn import functional as F

from pyro_gen.gan import Generator, NonSaturatingGAN
from pyro_gen.gan.adversarial import fused_adam
from pyro_gen.infer import fit
from pyro_gen.nn import DCGANDiscriminator, DCGANGenerator, MLPDiscriminator, MLPGenerator

ADAM = {"lr": 2e-4, "betas": (0.5, 0.999)}


def networks(kind: str) -> tuple[torch.nn.Module, torch.nn.Module, torch.Size]:
    if kind == "mlp2d":
        return MLPGenerator(2, (2,), (128, 128, 128)), MLPDiscriminator((2,), (128,) * 3), (2,)
    return DCGANGenerator(32, width=32), DCGANDiscriminator(width=32), (28, 28)


class Hand:
    """The GAN step as PyTorch's DCGAN example writes it."""

    def __init__(self, g: torch.nn.Module, d: torch.nn.Module, latent: int) -> None:
        self.g, self.d, self.latent = g, d, latent
        self.g_opt = torch.optim.Adam(g.parameters(), **ADAM)
        self.d_opt = torch.optim.Adam(d.parameters(), **ADAM)

    def steps(self, x: torch.Tensor, n: int) -> None:
        for _ in range(n):
            fake = self.g(torch.randn(x.shape[0], self.latent))
            d_loss = F.softplus(-self.d(x)).mean() + F.softplus(self.d(fake.detach())).mean()
            self.d_opt.zero_grad(set_to_none=True)
            d_loss.backward()
            self.d_opt.step()
            self.d.requires_grad_(False)
            g_loss = F.softplus(-self.d(fake)).sum()
            self.d.requires_grad_(True)
            self.g_opt.zero_grad(set_to_none=True)
            g_loss.backward()
            self.g_opt.step()


class Ours:
    """The same step through fit: Generator model, NonSaturatingGAN loss (fused Adam for the
    discriminator), Pyro Adam for the generator (fit's choice)."""

    def __init__(self, g: torch.nn.Module, d: torch.nn.Module) -> None:
        self.gen = Generator(g, name="ours")
        # the loss's default discriminator optimizer: Adam with its fused kernel
        self.loss = NonSaturatingGAN(d, optim=functools.partial(fused_adam, **ADAM))
        self.optim = pyro.optim.Adam(dict(ADAM))

    def steps(self, x: torch.Tensor, n: int) -> None:
        # one fit call over n batches (the same batch n times), as an epoch would run them
        fit(self.gen, [x] * n, epochs=1, loss=self.loss, optim=self.optim, progress=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kinds", nargs="+", default=["mlp2d", "dcgan"])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--inner", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)
    pyro.set_rng_seed(0)
    print("| networks | batch | hand-written ms/step | fit ms/step | ratio fit / hand |")
    print("|---|---:|---:|---:|---:|")
    for kind in args.kinds:
        g, d, shape = networks(kind)
        x = torch.rand(args.batch_size, *shape)
        hand = Hand(copy.deepcopy(g), copy.deepcopy(d), g.latent_dim)
        ours = Ours(copy.deepcopy(g), copy.deepcopy(d))
        hand.steps(x, 3)  # warm-up
        ours.steps(x, 3)
        times: dict[str, list[float]] = {"hand": [], "ours": []}
        for r in range(args.rounds):
            order = [("hand", hand), ("ours", ours)]
            for name, variant in order if r % 2 == 0 else order[::-1]:
                start = time.process_time()
                variant.steps(x, args.inner)
                times[name].append(1e3 * (time.process_time() - start) / args.inner)
        ratios = [o / h for o, h in zip(times["ours"], times["hand"])]
        se = statistics.stdev(ratios) / math.sqrt(len(ratios))
        print(f"| {kind} | {args.batch_size} | {statistics.median(times['hand']):.2f} | "
              f"{statistics.median(times['ours']):.2f} | {statistics.mean(ratios):.3f} +- "
              f"{se:.3f} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
