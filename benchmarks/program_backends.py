"""The recorded SVI step through TorchScript against the plain recorded (fx) program, on the CPU.

``fit``'s default backend (``"auto"``) runs the recorded program through TorchScript on the
CPU, and falls back to the plain fx program when TorchScript's tracer cannot take it. Until
session 9 it could not take two common kinds of program: any model with an input check (the
check compared a recorded bool with ``ne(Tensor, bool)``) and any convolutional or
group-normalized network (their backward ops take a ``bool[3]``). This times both backends on
one model in one process: two ``CompiledSVI`` objects (``backend="jit"`` and ``"fx"``) share
the model's parameters, take turns in a random order (``--block`` steps a turn, thread CPU
time), and the ratio jit / fx is taken per round (mean +- standard error over rounds).

Models (all have input checks; the last two are convolutional):

* ``flow2d``: RealNVP on 2-D data, 4 coupling layers of 64 hidden units, batch 128;
* ``vae``: ``build_vae`` on 28 x 28 binary images, batch 128;
* ``realnvp_image``: the multi-scale RealNVP on 8 x 8 images with uniform dequantization,
  2 layers of 8 channels, batch 16;
* ``ddpm``: the DDPM's U-Net (8 base channels, group norm) on 5 x 5 images, T = 20, batch 16;
* ``ddpm_mnist``: the tutorial-sized default DDPM on 28 x 28 images, batch 32 (slow: use a
  few rounds), where the step is compute-bound.

The recording time (``CompiledSVI.compile_time_s``: recording plus the trace for TorchScript)
is reported for each backend.

Run:  .venv/bin/python benchmarks/program_backends.py --rounds 30
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import time
from collections.abc import Callable
from typing import Any

import pyro
import torch
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO
from step_models import hardware

from pyro_gen.diffusion import build_ddpm
from pyro_gen.flows import build as build_flow
from pyro_gen.infer.compiled import CompiledSVI
from pyro_gen.vae import build_vae


def _models() -> dict[str, Callable[[], tuple[Any, Any, torch.Tensor]]]:
    return {
        "flow2d": lambda: (
            build_flow("realnvp", (2,), num_layers=4, hidden_dims=(64, 64)),
            Trace_ELBO(),
            torch.randn(128, 2),
        ),
        "vae": lambda: (build_vae((28, 28)), Trace_ELBO(), torch.rand(128, 28, 28).round()),
        "realnvp_image": lambda: (
            build_flow(
                "realnvp",
                (8, 8),
                dequantization="uniform",
                num_bins=17,
                num_layers=2,
                num_levels=1,
                hidden_channels=8,
                num_blocks=1,
            ),  # fmt: skip
            Trace_ELBO(),
            torch.randint(0, 17, (16, 8, 8)).float(),
        ),
        "ddpm": lambda: (
            build_ddpm((5, 5), timesteps=20, base_channels=8, num_bins=17),
            TraceMeanField_ELBO(),
            torch.rand(16, 5, 5),
        ),
        "ddpm_mnist": lambda: (build_ddpm((28, 28)), TraceMeanField_ELBO(), torch.rand(32, 28, 28)),
    }


def compare(name: str, rounds: int, block: int) -> dict[str, Any]:
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    module, loss, x = _models()[name]()
    steps: dict[str, CompiledSVI] = {}
    for backend in ("fx", "jit"):  # fx first: the first recording pays one-time set-up
        svi = CompiledSVI(
            module.model, module.guide, pyro.optim.Adam({"lr": 1e-4}), loss, backend=backend
        )
        for _ in range(5):  # plain step, recording, warm-up
            svi.step(x)
        (prog,) = svi._programs.values()
        if hasattr(prog.fn, "traced") != (backend == "jit"):
            raise RuntimeError(f"{name}: the {backend} step did not run as asked")
        steps[backend] = svi
    times: dict[str, list[float]] = {b: [] for b in steps}
    order = random.Random(0)
    for _ in range(rounds):
        for backend in order.sample(list(steps), len(steps)):
            start = time.thread_time()
            for _ in range(block):
                steps[backend].step(x)
            times[backend].append((time.thread_time() - start) / block)
    ratios = [a / b for a, b in zip(times["jit"], times["fx"])]
    return {
        "model": name,
        "jit_ms": 1e3 * statistics.median(times["jit"]),
        "fx_ms": 1e3 * statistics.median(times["fx"]),
        "jit_record_s": steps["jit"].compile_time_s,
        "fx_record_s": steps["fx"].compile_time_s,
        "ratio": statistics.mean(ratios),
        "se": statistics.stdev(ratios) / math.sqrt(len(ratios)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--block", type=int, default=5, help="steps per turn")
    parser.add_argument("--models", nargs="+", default=list(_models()), choices=list(_models()))
    args = parser.parse_args()
    torch.set_num_threads(1)
    pyro.enable_validation(False)
    cpu = hardware(torch.device("cpu"))
    print(f"torch {torch.__version__}, pyro {pyro.__version__}, {cpu}, {time.strftime('%F %T')}")
    print(
        "| model | TorchScript ms/step | fx ms/step | TorchScript / fx, mean +- s.e. "
        "| recording s, TorchScript | recording s, fx |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for name in args.models:
        r = compare(name, args.rounds, args.block)
        print(
            f"| {r['model']} | {r['jit_ms']:.2f} | {r['fx_ms']:.2f} "
            f"| {r['ratio']:.3f} +- {r['se']:.3f} "
            f"| {r['jit_record_s']:.2f} | {r['fx_record_s']:.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
