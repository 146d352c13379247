"""Same-run step time of a GAN through ``pyro_gen.infer.fit`` against the same step written
by hand in eager PyTorch.

One step = one discriminator update (non-saturating GAN, Adam) on a freshly generated
batch, then one generator update scoring the same generated batch with the updated
discriminator (the structure of PyTorch's DCGAN example: one generator forward per step),
on the same networks, batch and optimizer settings. Variants take turns (A B C, then
C B A, ...), one torch thread, thread CPU time. Each turn times ``--inner`` steady-state
steps: the first ``--skip`` steps of a turn are left untimed on every side, so the timing
leaves out what a ``fit`` call does once (checking the program, building its step), which
a training run pays once and not per step.

Reported: median CPU ms/step of each variant and its ratio to the hand-written step (mean
and standard error over rounds). The hand-written step uses ``torch.optim.Adam`` as PyTorch's
DCGAN example does (on the CPU that is the per-parameter implementation); a second
hand-written variant with ``fused=True`` (what ``fit`` and the discriminator's default
optimizer use) shows how much of the comparison is the optimizer's implementation.
``fit`` runs its default: the loss replays the generator's recorded run
(:class:`pyro_gen.gan.recorded.RecordedRuns`), and the script stops if it fell back to Pyro;
``--pyro-run`` adds fit with the generator model run through Pyro each step.

    .venv/bin/python benchmarks/gan_step_time.py --rounds 20 --inner 20
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
from pyro_gen.infer.callbacks import changes_only_tensors
from pyro_gen.nn import DCGANDiscriminator, DCGANGenerator, MLPDiscriminator, MLPGenerator

ADAM = {"lr": 2e-4, "betas": (0.5, 0.999)}


def networks(kind: str) -> tuple[torch.nn.Module, torch.nn.Module, torch.Size]:
    if kind == "mlp2d":
        return MLPGenerator(2, (2,), (128, 128, 128)), MLPDiscriminator((2,), (128,) * 3), (2,)
    return DCGANGenerator(32, width=32), DCGANDiscriminator(width=32), (28, 28)


class Hand:
    """The GAN step as PyTorch's DCGAN example writes it."""

    def __init__(
        self, g: torch.nn.Module, d: torch.nn.Module, latent: int, fused: bool = False
    ) -> None:
        self.g, self.d, self.latent = g, d, latent
        kwargs = {**ADAM, "fused": True} if fused else ADAM
        self.g_opt = torch.optim.Adam(g.parameters(), **kwargs)
        self.d_opt = torch.optim.Adam(d.parameters(), **kwargs)

    def step(self, x: torch.Tensor) -> None:
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

    def timed(self, x: torch.Tensor, skip: int, n: int) -> float:
        """CPU seconds of ``n`` steps after ``skip`` untimed ones."""
        for _ in range(skip):
            self.step(x)
        start = time.thread_time()
        for _ in range(n):
            self.step(x)
        return time.thread_time() - start


class Ours:
    """The same step through fit: Generator model, NonSaturatingGAN loss (fused Adam for the
    discriminator), Pyro Adam for the generator (fit's choice). By default the loss replays
    the generator's run from its recording (``record=True``); ``record=False`` runs the
    generator model through Pyro every step."""

    def __init__(
        self, g: torch.nn.Module, d: torch.nn.Module, name: str = "ours", record: bool = True
    ) -> None:
        self.gen = Generator(g, name=name)
        # the loss's default discriminator optimizer: Adam with its fused kernel
        self.loss = NonSaturatingGAN(d, optim=functools.partial(fused_adam, **ADAM), record=record)
        self.optim = pyro.optim.Adam(dict(ADAM))

    def timed(self, x: torch.Tensor, skip: int, n: int) -> float:
        """CPU seconds from the end of step ``skip`` of one fit call over ``skip + n``
        batches (the same batch each time) to the call's return."""
        start: list[float] = []

        @changes_only_tensors  # reads the clock only
        def clock(step: int, _model: object) -> None:
            if step == skip:
                start.append(time.thread_time())

        fit(
            self.gen,
            [x] * (skip + n),
            epochs=1,
            loss=self.loss,
            optim=self.optim,
            progress=False,
            step_callbacks=[clock],
        )
        return time.thread_time() - start[0]


def ratio(ours: list[float], hand: list[float]) -> str:
    """Mean and standard error over rounds of the per-round ratio."""
    r = [a / b for a, b in zip(ours, hand)]
    return f"{statistics.mean(r):.3f} +- {statistics.stdev(r) / math.sqrt(len(r)):.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kinds", nargs="+", default=["mlp2d", "dcgan"])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--inner", type=int, default=20)
    parser.add_argument("--skip", type=int, default=3, help="untimed steps at each turn's start")
    parser.add_argument(
        "--pyro-run",
        action="store_true",
        help="also time fit with the generator run through Pyro each step (record=False)",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    pyro.set_rng_seed(0)
    extra = " fit, Pyro run: ms/step | its ratio to hand |" if args.pyro_run else ""
    print(
        "| networks | batch | hand-written ms/step | fit ms/step | ratio fit / hand | "
        "hand-written, fused Adam: ms/step | its ratio to hand |" + extra
    )
    print("|---|---:|---:|---:|---:|---:|---:|" + "---:|---:|" * args.pyro_run)
    for kind in args.kinds:
        g, d, shape = networks(kind)
        x = torch.rand(args.batch_size, *shape)
        variants = {
            "hand": Hand(copy.deepcopy(g), copy.deepcopy(d), g.latent_dim),
            "ours": Ours(copy.deepcopy(g), copy.deepcopy(d)),
            "fused": Hand(copy.deepcopy(g), copy.deepcopy(d), g.latent_dim, fused=True),
        }
        if args.pyro_run:
            variants["pyro"] = Ours(copy.deepcopy(g), copy.deepcopy(d), "pyro", record=False)
        times: dict[str, list[float]] = {name: [] for name in variants}
        order = list(variants)
        for r in range(args.rounds):
            for name in order if r % 2 == 0 else order[::-1]:
                seconds = variants[name].timed(x, args.skip, args.inner)
                times[name].append(1e3 * seconds / args.inner)

        # the timed fit steps must have replayed the recording, not fallen back to Pyro
        runs = variants["ours"].loss.runs
        if not runs.recorded:
            raise RuntimeError(f"fit's generator run was not replayed: {runs.fallback_reason}")
        ms = {name: statistics.median(t) for name, t in times.items()}
        pyro_run = (
            f" {ms['pyro']:.2f} | {ratio(times['pyro'], times['hand'])} |" if args.pyro_run else ""
        )
        print(f"| {kind} | {args.batch_size} | {ms['hand']:.2f} | {ms['ours']:.2f} | "
              f"{ratio(times['ours'], times['hand'])} | {ms['fused']:.2f} | "
              f"{ratio(times['fused'], times['hand'])} |{pyro_run}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
