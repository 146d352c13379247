"""An MNIST epoch of ``fit`` against the sum of its steps timed alone: what the training
loop and the data path add (``step_time.py --epoch-overhead``)."""

from __future__ import annotations

import statistics
import time
from typing import Any

import pyro
import torch

from pyro_gen.infer.compiled import CompiledSVI
from pyro_gen.infer.fit import fit


def epoch_overhead(device: torch.device, rounds: int) -> list[dict[str, Any]]:
    """An MNIST epoch of ``fit`` (A) against the sum of its steps timed one by one (B).

    A: the wall time of ``fit(VAE(), mnist, epochs=1, transform=dynamic_binarize)``, no
    evaluation or checkpoint. B: 469 steps of a step object built as ``fit`` builds it
    (same model, optim and loss), each timed alone on pre-sliced, pre-binarized batches
    and returning the loss as a float (the loss is read back, so the step is complete).
    Both start from a fresh step object, so both pay the recording of the 128 and the
    final 96-example signature; A - B is what the loop and the data path add. After one
    short warm-up of each, the variants take turns A B A B for ``compile=None`` and
    ``compile=False``. Process CPU time is kept beside wall time: on a shared machine
    other jobs move it less than the wall time (caches and shared cores still do).
    """
    from pyro_gen.data import dynamic_binarize, load
    from pyro_gen.vae import VAE

    x = load("mnist")[0].to(device)
    order = torch.randperm(x.shape[0], device=device)
    batches = [dynamic_binarize(x.index_select(0, idx)) for idx in order.split(128)]
    gen = VAE().to(device)

    def run_fit(compile: bool | None, **kw: Any) -> tuple[float, float]:
        t0, c0 = time.perf_counter(), time.process_time()
        fit(gen, x, batch_size=128, transform=dynamic_binarize, progress=False, compile=compile,
            **kw)  # fmt: skip
        return time.perf_counter() - t0, time.process_time() - c0

    def run_steps(compile: bool | None, n: int) -> list[tuple[float, float]]:
        pyro.clear_param_store()  # as fit does
        optim, loss = pyro.optim.Adam({"lr": 1e-3}), pyro.infer.Trace_ELBO()
        backend = "pyro" if compile is False else "auto"  # fit's plain and default steps
        step = CompiledSVI(gen.model, gen.guide, optim, loss, backend=backend)
        times = []
        for i, b in enumerate(batches[:n]):
            t0, c0 = time.perf_counter(), time.process_time()
            float(step(i, x=b))  # read back: on CUDA the step is then complete
            times.append((time.perf_counter() - t0, time.process_time() - c0))
        return times

    modes: dict[str, bool | None] = {"compile=None (CompiledSVI, auto)": None,
                                     "compile=False (plain Pyro step)": False}  # fmt: skip
    for compile in modes.values():  # warm-up: imports, first TorchScript, allocator
        run_fit(compile, steps=20)
        run_steps(compile, 20)
    keys = ("a", "b", "a_cpu", "b_cpu", "rec")
    got = {m: {k: [] for k in keys} for m in modes}
    for _ in range(rounds):
        for label, compile in modes.items():
            a, a_cpu = run_fit(compile, epochs=1)
            times = run_steps(compile, len(batches))
            g = got[label]
            g["a"].append(a)
            g["a_cpu"].append(a_cpu)
            g["b"].append(sum(t for t, _ in times))
            g["b_cpu"].append(sum(c for _, c in times))
            g["rec"].append(times[0][0] + times[-1][0])
    rows = []
    for label, g in got.items():
        ratios = [a / b for a, b in zip(g["a"], g["b"])]
        cpu_ratios = [a / b for a, b in zip(g["a_cpu"], g["b_cpu"])]
        rows.append(
            {
                "variant": label,
                **{k: statistics.median(v) for k, v in g.items()},
                "ratio": statistics.median(ratios),
                "ratios": ratios,
                "cpu_ratio": statistics.median(cpu_ratios),
            }
        )
    return rows


def epoch_table(device: torch.device, rows: list[dict[str, Any]], rounds: int) -> str:
    lines = [
        f"**MNIST epoch (469 steps, VAE 784-400-50, batch 128, dynamic binarization, "
        f"{device.type}): fit's epoch (A) vs the sum of its isolated steps (B), "
        f"{rounds} rounds A B interleaved; target A/B <= 1.05**",
        "",
        "| variant | A: fit epoch s (median) | B: sum of 469 steps s (median) "
        "| first + last step in B s | A/B wall (median) | A/B wall per round "
        "| A/B process CPU time (median) |",
        "|---|---:|---:|---:|---:|---|---:|",
    ]
    for r in rows:
        per = ", ".join(f"{q:.3f}" for q in r["ratios"])
        lines.append(
            f"| {r['variant']} | {r['a']:.2f} | {r['b']:.2f} | {r['rec']:.2f} "
            f"| {r['ratio']:.3f} | {per} | {r['cpu_ratio']:.3f} |"
        )
    return "\n".join(lines)
