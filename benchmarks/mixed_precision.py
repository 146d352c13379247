"""Same-run benchmark: the compiled step with bfloat16 networks against float32.

For the MNIST-sized VAE (784-400-50, Bernoulli likelihood) and an image DDPM (U-Net on 8 x 8
pixels, T=1000), two CompiledSVI objects step the same model on the same batch, one with
``mixed_precision=torch.bfloat16`` and one without, in turns (A B A B ..., a few steps each),
after a warm-up that records and compiles both. Reported: CPU time per step of each (this
thread's ``time.thread_time``), the ratio B/A per round as mean +- standard error and
median, and the relative difference of the two losses at the same parameters and noise.

Usage::

    .venv/bin/python benchmarks/mixed_precision.py --rounds 30
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import pyro
import torch
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

from pyro_gen.diffusion import build_ddpm
from pyro_gen.infer.compiled import CompiledSVI
from pyro_gen.vae import build_vae


def _models(batch: int) -> dict[str, tuple[torch.nn.Module, Any, torch.Tensor]]:
    return {
        f"vae 784-400-50, batch {batch}": (
            build_vae((28, 28)),
            Trace_ELBO(),
            torch.rand(batch, 28, 28).round(),
        ),
        f"ddpm U-Net 8x8, batch {batch}": (
            build_ddpm((8, 8), num_bins=17),
            TraceMeanField_ELBO(),
            torch.rand(batch, 8, 8),
        ),
    }


def _loss_at_same_point(svis: list[CompiledSVI], x: torch.Tensor) -> float:
    losses = []
    for svi in svis:
        pyro.set_rng_seed(1)
        losses.append(float(svi.loss_and_grads(x)))
        for p in svi.parameters():
            p.grad = None
    return (losses[1] - losses[0]) / abs(losses[0])


def run(name: str, module: torch.nn.Module, loss: Any, x: torch.Tensor, rounds: int, k: int):
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    svis = [
        CompiledSVI(module.model, module.guide, pyro.optim.Adam({"lr": 1e-4}), loss),
        CompiledSVI(
            module.model,
            module.guide,
            pyro.optim.Adam({"lr": 1e-4}),
            loss,
            mixed_precision=torch.bfloat16,
        ),
    ]
    for svi in svis:
        for _ in range(6):  # plain step, recording, structural checks, warm steps
            svi.step(x)
        assert svi.compiled, svi.fallback_reason
    times: list[list[float]] = [[], []]
    for _ in range(rounds):
        for i, svi in enumerate(svis):
            start = time.thread_time()
            for _ in range(k):
                svi.step(x)
            times[i].append((time.thread_time() - start) / k)
    ratios = [b / a for a, b in zip(*times)]
    mean = statistics.fmean(ratios)
    se = statistics.stdev(ratios) / len(ratios) ** 0.5
    diff = _loss_at_same_point(svis, x)
    print(
        f"| {name} | {1e3 * statistics.median(times[0]):.2f} | "
        f"{1e3 * statistics.median(times[1]):.2f} | {mean:.3f} +- {se:.3f} | "
        f"{statistics.median(ratios):.3f} | {diff:.1e} |",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--steps-per-round", type=int, default=3)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[128, 1024])
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("| model | float32 ms/step | bfloat16 ms/step | B/A mean +- s.e. | B/A median |", end="")
    print(" loss rel. diff |")
    print("|---|---:|---:|---:|---:|---:|")
    for batch in args.batch_sizes:
        for name, (module, loss, x) in _models(batch).items():
            run(name, module, loss, x, args.rounds, args.steps_per_round)


if __name__ == "__main__":
    main()
