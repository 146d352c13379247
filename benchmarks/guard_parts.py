"""Where a guarded step's extra time goes: the recorded program against the update.

fit's default step on the 2-D RealNVP of ``step_time.py`` is built twice over one model, with
the guard on and off; the two steps take turns (a random order each round, ``--block`` steps
a turn), and the thread's CPU time of each step's two parts is recorded: the program call
(``CompiledSVI._run``: loss, gradients and, guarded, the non-finite check) and the update
(``GuardedUpdate.program``: the flag read and fused Adam). The graphs of the two TorchScript
programs are compared node kind by node kind. ``step_time.py --guard-cost`` gives the
guard's cost as a ratio of whole steps; this says which part it lands in.

Run:  .venv/bin/python benchmarks/guard_parts.py --batch 128
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import pyro
import torch

sys.path.insert(0, str(Path(__file__).parent))
import step_models  # noqa: E402  (the benchmark's own RealNVP)

from pyro_gen.infer.compiled import CompiledSVI  # noqa: E402


def _timed(record: list[int], fn):  # noqa: ANN001, ANN202
    def call(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        start = time.thread_time_ns()
        out = fn(*args, **kwargs)
        record.append(time.thread_time_ns() - start)
        return out

    return call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=400)
    parser.add_argument("--block", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    pyro.clear_param_store()
    torch.manual_seed(0)
    x = torch.randn(args.batch, 2)
    model = step_models.realnvp("guard_parts")
    times: dict[str, list[int]] = {}
    steps = {}
    for label in ("on", "off"):
        svi = CompiledSVI(model.model, model.guide, pyro.optim.Adam({"lr": 1e-3}),
                          step_guard=label == "on")  # fmt: skip
        for _ in range(20):  # the plain first step, the recording, warm-up
            svi.step(x)
        assert svi.compiled, svi.fallback_reason
        (prog,) = svi._programs.values()
        nodes = Counter(n.kind() for n in prog.fn.traced.graph.nodes())
        print(f"guard {label}: {sum(nodes.values())} graph nodes")
        steps[label] = (svi, nodes)
        times[f"program, guard {label}"] = []
        times[f"update, guard {label}"] = []
        svi._run = _timed(times[f"program, guard {label}"], svi._run)
        svi._updates.program = _timed(times[f"update, guard {label}"], svi._updates.program)
    extra = steps["on"][1] - steps["off"][1]
    print(f"nodes of the guarded graph only: {dict(extra)}")
    order = random.Random(0)
    for _ in range(args.rounds):
        for label in order.sample(["on", "off"], 2):
            for _ in range(args.block):
                steps[label][0].step(x)
    print(f"\n2-D RealNVP, batch {args.batch}, {args.rounds} rounds of {args.block} steps")
    print("| part | median us |")
    print("|---|---:|")
    for name, ns in times.items():
        print(f"| {name} | {statistics.median(ns) / 1e3:.1f} |")


if __name__ == "__main__":
    main()
