"""The step guard's cost (issue 11): fit's default compiled step with the non-finite guard on
and off, and a control, timed in turns on one model (``step_time.py --guard-cost``)."""

from __future__ import annotations

import functools
import math
import random
import statistics
import time
import unittest.mock
from collections.abc import Callable
from typing import Any

import pyro
import torch
from step_models import PyroVAE, realnvp, sync

from pyro_gen.infer import compiled_check_placement as check_placement
from pyro_gen.infer.compiled import CompiledSVI


def guard_cost(
    device: torch.device,
    rounds: int,
    block: int,
    backend: str = "auto",
    kinds: tuple[str, ...] = ("vae", "realnvp"),
    builds: int = 1,
) -> list[dict[str, Any]]:
    """The step guard's cost: fit's default step (``backend="auto"``, fused Adam) with the
    guard on (A) and off (B), a second step with it off (C, the control) and one with the
    guard as session 8 recorded it (S: large weight gradients summed after the multiply, not
    bounded through their factors), all four on one model (its parameters in one place in
    memory), taking turns (``block`` steps a turn,
    in a random order each round) over ``rounds`` rounds on one batch. Everything is built
    afresh ``builds`` times: where a process's tensors lie moves a step's time by a few
    percent between copies of one model (measured: up to 3% between two unguarded copies),
    which the control shows. Ratios are per round; the mean and standard error are over
    builds (over rounds with one build)."""
    out = []
    cases = [(kind, batch) for kind in kinds for batch in (128, 1024)]
    labels = ("on", "off", "control", "summed")
    order = random.Random(0)
    for kind, batch in cases:
        make = PyroVAE if kind == "vae" else realnvp
        keys = [label + clock for label in labels for clock in ("", "_cpu")]
        means: dict[str, list[list[float]]] = {key: [] for key in keys}
        for build in range(builds):
            pyro.clear_param_store()
            torch.manual_seed(build)
            if kind == "vae":
                x = torch.bernoulli(torch.rand(batch, 784, device=device))
            else:
                x = torch.randn(batch, 2, device=device)
            model = make(f"guard_{kind}").to(device)
            steppers: dict[str, Callable[[], Any]] = {}
            # Built in a random order each build: a step built first ran up to 2% slower
            # than an identical one built later (session 15: A and S are one program on the
            # 2-D RealNVP, yet A/B was 1.031 and S/B 1.014 with A always built first).
            for label in order.sample(labels, len(labels)):
                guard = label in ("on", "summed")
                svi = CompiledSVI(model.model, model.guide, pyro.optim.Adam({"lr": 1e-3}),
                                  step_guard=guard, backend=backend)  # fmt: skip
                products = () if label == "summed" else check_placement._PRODUCTS
                with unittest.mock.patch.object(check_placement, "_PRODUCTS", products):
                    for _ in range(20):  # the plain first step, the recording, warm-up
                        svi.step(x)
                assert svi.compiled, svi.fallback_reason
                steppers[label] = functools.partial(svi.step, x)
            for key in means:
                means[key].append([])
            # Wall time, and the process's CPU time, which other jobs on a shared machine
            # move less (they still share caches and memory bandwidth).
            for _ in range(rounds):
                for label in order.sample(labels, len(labels)):
                    sync(device)
                    t0, c0 = time.perf_counter(), time.process_time()
                    for _ in range(block):
                        steppers[label]()
                    sync(device)
                    means[label][-1].append((time.perf_counter() - t0) / block)
                    means[label + "_cpu"][-1].append((time.process_time() - c0) / block)
        row: dict[str, Any] = {"case": f"{kind}, batch {batch}", "builds": builds}
        for clock in ("", "_cpu"):
            for label in ("on", "control", "summed"):
                per_build = [
                    [a / b for a, b in zip(num, den)]
                    for num, den in zip(means[label + clock], means["off" + clock])
                ]
                # A build's ratio is its ratio of mean step times, not the mean of its rounds'
                # ratios: a mean of ratios is biased up by about the squared coefficient of
                # variation of the denominator (rounds on this host vary by ~10%, so ~1%),
                # which showed as a control (C, the same program as B) at 1.01.
                num, den = means[label + clock], means["off" + clock]
                ratio_of_means = [statistics.mean(n) / statistics.mean(d) for n, d in zip(num, den)]
                xs = ratio_of_means if builds > 1 else per_build[0]
                row[f"{label}_round_ratio{clock}"] = statistics.mean(
                    map(statistics.mean, per_build)
                )
                row[f"{label}_ratio{clock}"] = statistics.mean(xs)
                row[f"{label}_se{clock}"] = statistics.stdev(xs) / math.sqrt(len(xs))
                row[f"{label}_median{clock}"] = statistics.median(sum(per_build, []))
            for label in labels:
                row[f"{label}_ms{clock}"] = 1e3 * statistics.mean(sum(means[label + clock], []))
        out.append(row)
    return out


def guard_table(
    device: torch.device,
    rows: list[dict[str, Any]],
    rounds: int,
    block: int,
    backend: str,
    builds: int = 1,
) -> str:
    step = "fit's default compiled step" if backend == "auto" else f"backend={backend!r}"
    over = f"s.e. over {builds} builds" if builds > 1 else f"s.e. over {rounds} rounds"
    lines = [
        f"**step guard on (A) vs off (B), with a second unguarded step (C) as the control and "
        f"the guard as recorded in session 8 (S, large gradients summed), one model, {step} "
        f"({device.type}, fused Adam, {builds} build(s) x {rounds} rounds of "
        f"{block} steps each, random order); target A/B <= 1.02**",
        "",
        f"| model | clock | A ms/step | B ms/step | C ms/step | A/B mean +- {over} "
        "| A/B median | S/B mean +- s.e. | C/B mean +- s.e. |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        for clock, name in (("", "wall"), ("_cpu", "process CPU")):
            lines.append(
                f"| {r['case']} | {name} | {r['on_ms' + clock]:.3f} | {r['off_ms' + clock]:.3f} "
                f"| {r['control_ms' + clock]:.3f} "
                f"| {r['on_ratio' + clock]:.3f} +- {r['on_se' + clock]:.3f} "
                f"| {r['on_median' + clock]:.3f} "
                f"| {r['summed_ratio' + clock]:.3f} +- {r['summed_se' + clock]:.3f} "
                f"| {r['control_ratio' + clock]:.3f} +- {r['control_se' + clock]:.3f} |"
            )
    return "\n".join(lines)
