"""Where the CPU step guard's time goes: its one check, where the step runs it and alone.

The guard is one ``_amp_foreach_non_finite_check_and_unscale_`` over the loss and every
gradient at the end of the recorded program (``benchmarks/step_time.py --guard-cost`` gives
its cost as a ratio of whole steps). Here fit's default step on the 2-D RealNVP of
``step_time.py`` runs unguarded, and the check is timed on the thread's CPU clock:

* ``after the program``: on the step's own loss and gradients, right after the program made
  them (where the guarded program runs it), every other step;
* ``flat buffer``: on the loss and one contiguous buffer of as many elements as all the
  gradients together, written one step earlier, on the steps between (what a flat gradient
  layout would check);
* ``alone``: on copies of the gradients (same shapes, same strides), 2,000 times in a row,
  with the op's code and data hot.

Run:  .venv/bin/python benchmarks/guard_in_situ.py --batch 128
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import pyro
import torch

sys.path.insert(0, str(Path(__file__).parent))
import step_models  # noqa: E402  (the benchmark's own RealNVP)

from pyro_gen.infer.compiled import CompiledSVI  # noqa: E402

CHECK = torch._amp_foreach_non_finite_check_and_unscale_


def _timed(tensors: list[torch.Tensor], found: torch.Tensor, one: torch.Tensor) -> float:
    start = time.thread_time_ns()
    CHECK(tensors, found, one)
    return (time.thread_time_ns() - start) / 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=3000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    x = torch.randn(args.batch, 2)
    model = step_models.realnvp("guard_in_situ")
    svi = CompiledSVI(model.model, model.guide, pyro.optim.Adam({"lr": 1e-4}), step_guard=False)
    for _ in range(30):
        svi.step(x)
    assert svi.compiled, svi.fallback_reason
    (prog,) = svi._programs.values()
    flat = torch.randn(sum(p.numel() for p in prog.grad_params))
    found, one = torch.zeros(()), torch.ones(())
    times: dict[str, list[float]] = {"after the program": [], "flat buffer": []}
    kept: list[torch.Tensor] = []
    update = svi._updates.program

    def checked_update(grad_params, loss, grads, *rest, **kw):  # type: ignore[no-untyped-def]
        if len(times["after the program"]) <= len(times["flat buffer"]):
            times["after the program"].append(_timed([loss, *grads], found, one))
            kept[:] = [torch.empty_strided(g.shape, g.stride()).copy_(g) for g in grads]
        else:
            times["flat buffer"].append(_timed([loss, flat], found, one))
        return update(grad_params, loss, grads, *rest, **kw)

    svi._updates.program = checked_update
    for _ in range(args.steps):
        svi.step(x)
    times["alone"] = [_timed(kept, found, one) for _ in range(2000)]
    print(f"2-D RealNVP, batch {args.batch}, {len(kept)} gradients, {flat.numel()} elements")
    print("| the check | median us | quartiles |")
    print("|---|---:|---:|")
    for name, ts in times.items():
        q = statistics.quantiles(ts, n=4)
        print(f"| {name} | {statistics.median(ts):.1f} | {q[0]:.1f}-{q[2]:.1f} |")


if __name__ == "__main__":
    main()
