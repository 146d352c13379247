"""The compiled step's update through torch's fused kernel directly (``fused_adam_step``)
against the same update through ``torch.optim.Adam(fused=True).step()``.

Both variants are fit's default compiled step on one model (the same parameters), each
with its own Pyro ``Adam``; the torch variant's update calls ``optimizer.step()`` as
pyro_gen did before. They take turns (``--block`` steps a turn, random order each round)
on one torch thread; the ratio direct / torch is taken per round (process CPU time) and
reported as mean +- standard error over rounds.

Run:  .venv/bin/python benchmarks/update_path.py --rounds 60
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import time

import pyro
import torch
from step_models import PyroVAE, hardware, realnvp

from pyro_gen.infer.compiled import CompiledSVI


def steppers(kind: str, batch: int) -> dict[str, object]:
    pyro.clear_param_store()
    torch.manual_seed(0)
    if kind == "vae":
        x = torch.bernoulli(torch.rand(batch, 784))
        model = PyroVAE("update_vae")
    else:
        x = torch.randn(batch, 2)
        model = realnvp("update_realnvp")
    out = {}
    for label in ("direct", "torch"):
        svi = CompiledSVI(model.model, model.guide, pyro.optim.Adam({"lr": 1e-3}))
        for _ in range(20):  # the plain first step, the recording, warm-up
            svi.step(x)
        assert svi.compiled, svi.fallback_reason
        if label == "torch":
            updates = svi._updates
            updates.apply = lambda params, u=updates: u.optimizer.step()
        out[label] = lambda svi=svi: svi.step(x)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--block", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    pyro.enable_validation(False)
    print(f"{hardware(torch.device('cpu'))}, torch {torch.__version__}")
    print("| model | ms/step direct | ms/step torch step() | direct / torch, mean +- s.e. |")
    print("|---|---:|---:|---:|")
    order = random.Random(0)
    for kind, batch in (("realnvp", 128), ("realnvp", 1024), ("vae", 128)):
        fns = steppers(kind, batch)
        times: dict[str, list[float]] = {k: [] for k in fns}
        for _ in range(args.rounds):
            for label in order.sample(list(fns), len(fns)):
                t = time.process_time()
                for _ in range(args.block):
                    fns[label]()
                times[label].append((time.process_time() - t) / args.block)
        ratios = [a / b for a, b in zip(times["direct"], times["torch"])]
        se = statistics.stdev(ratios) / math.sqrt(len(ratios))
        ms = {k: 1e3 * statistics.mean(v) for k, v in times.items()}
        print(
            f"| {kind}, batch {batch} | {ms['direct']:.3f} | {ms['torch']:.3f} | "
            f"{statistics.mean(ratios):.3f} +- {se:.3f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
