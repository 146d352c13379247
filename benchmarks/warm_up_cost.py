"""What ``fit``'s check for unregistered networks costs: one more run of guide and model on
the first batch, with gradients on (:func:`pyro_gen.infer.unregistered_params.warn_unregistered`),
once per ``fit``. Median of ``--reps`` runs after one warm-up, one torch thread, batch 128.

Run:  .venv/bin/python benchmarks/warm_up_cost.py
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import pyro
import torch

from pyro_gen.data.batching import batch_calls
from pyro_gen.diffusion import build_ddpm
from pyro_gen.flows import build
from pyro_gen.infer.program import program
from pyro_gen.infer.unregistered_params import warn_unregistered
from pyro_gen.vae import VAE


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    cases = {
        "VAE 784-400-50": (VAE((28, 28), z_dim=50), torch.rand(128, 28, 28).round()),
        "RealNVP 2-D": (build("realnvp", (2,)), torch.randn(128, 2)),
        "DDPM 2-D": (build_ddpm((2,)), torch.randn(128, 2)),
    }
    print(f"# {time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, "
          f"torch {torch.__version__}, Pyro {pyro.__version__}")  # fmt: skip
    for name, (module, x) in cases.items():
        pyro.clear_param_store()
        prog = program(module)
        call = batch_calls(x, 128, shuffle=False).peek()
        warn_unregistered(prog, call)  # warm-up: lazily built parts, allocator
        times = []
        for _ in range(args.reps):
            start = time.perf_counter()
            warn_unregistered(prog, call)
            times.append(time.perf_counter() - start)
        print(f"{name}: median {1e3 * statistics.median(times):.1f} ms over {args.reps}")


if __name__ == "__main__":
    main()
