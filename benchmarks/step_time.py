"""Same-run step-time benchmark: hand-written PyTorch vs Pyro SVI vs pyro_gen's compiled step.

For the standard MNIST VAE (784-400-50, Bernoulli likelihood, Monte Carlo ELBO), a
RealNVP on 2D data and a time-plate DDPM on 2D data (T=1000, L_simple, fixed variances,
its default time-MLP), every variant trains on the same batch in one process; after warm-up
the variants take turns (A B C ... A B C ..., a few steps each) and the median ms/step of
each is reported with its ratio to hand-written eager PyTorch. Compile time (the first
step, recording and compilation included) is reported separately, and peak memory as the
growth of the resident set (CPU) or of allocated memory (CUDA) over a few steps.

Usage::

    .venv/bin/python benchmarks/step_time.py --steps 50            # CPU (+ CUDA if present)
    .venv/bin/python benchmarks/step_time.py --batch-sizes 128 1024 8192 --device cuda
    .venv/bin/python benchmarks/step_time.py --epoch-overhead 3 --threads 1 --device cpu
    .venv/bin/python benchmarks/step_time.py --guard-cost 30 --threads 1 --device cpu

Results are printed and written to a section of benchmarks/RESULTS.md (``--no-write``
to skip). Timings on a shared machine are noisy: compare ratios within one run only.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime
import functools
import math
import os
import platform
import random
import statistics
import subprocess
import sys
import time
import unittest.mock
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from torch import nn
from torch.nn import functional as F

from pyro_gen.infer import compiled_check_placement as check_placement
from pyro_gen.infer.compiled import CompiledSVI
from pyro_gen.infer.fit import fit

RESULTS = Path(__file__).with_name("RESULTS.md")
MARK = "<!-- step_time:{device}:{end} -->"
HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


# --- models -------------------------------------------------------------------------------


class TorchVAE(nn.Module):
    """The VAE as one would write it by hand: the same networks and Monte Carlo ELBO."""

    def __init__(self, x_dim: int = 784, hidden: int = 400, z_dim: int = 50) -> None:
        super().__init__()
        self.enc = nn.Sequential(nn.Linear(x_dim, hidden), nn.Softplus())
        self.loc, self.log_scale = nn.Linear(hidden, z_dim), nn.Linear(hidden, z_dim)
        self.dec = nn.Sequential(nn.Linear(z_dim, hidden), nn.Softplus(), nn.Linear(hidden, x_dim))

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        h = self.enc(x)
        loc, log_scale = self.loc(h), self.log_scale(h)
        eps = torch.randn_like(loc)
        z = loc + log_scale.exp() * eps
        log_px = -F.binary_cross_entropy_with_logits(self.dec(z), x, reduction="none").sum(-1)
        log_pz = (-0.5 * z**2 - HALF_LOG_2PI).sum(-1)
        log_qz = (-0.5 * eps**2 - log_scale - HALF_LOG_2PI).sum(-1)
        return -(log_px + log_pz - log_qz).sum()


class PyroVAE(TorchVAE):
    """The same networks as a Pyro model/guide pair."""

    def __init__(self, name: str, **kw: Any) -> None:
        super().__init__(**kw)
        self.name = name

    def model(self, x: torch.Tensor) -> None:
        pyro.module(self.name + ".dec", self.dec)
        with pyro.plate("data", x.shape[0]):
            z_dim = self.loc.out_features
            prior = dist.Normal(x.new_zeros(z_dim), x.new_ones(z_dim)).to_event(1)
            z = pyro.sample("z", prior)
            lik = dist.Bernoulli(logits=self.dec(z), validate_args=False).to_event(1)
            pyro.sample("x", lik, obs=x)

    def guide(self, x: torch.Tensor) -> None:
        for part in ("enc", "loc", "log_scale"):
            pyro.module(f"{self.name}.{part}", getattr(self, part))
        with pyro.plate("data", x.shape[0]):
            h = self.enc(x)
            pyro.sample("z", dist.Normal(self.loc(h), self.log_scale(h).exp()).to_event(1))


def realnvp(name: str, dim: int = 2, layers: int = 4, hidden: int = 64) -> nn.Module:
    """RealNVP from pyro_gen.flows when it exists, else from pyro_gen.transforms couplings."""
    try:
        from pyro_gen.flows import RealNVP  # type: ignore[attr-defined]

        return RealNVP((dim,), num_layers=layers, hidden_dims=(hidden, hidden), name=name)
    except (ImportError, TypeError):
        from pyro_gen.flows.base import FlowModel
        from pyro_gen.transforms import affine_coupling

        ts = [
            affine_coupling(dim, parity=i % 2, hidden_dims=(hidden, hidden)) for i in range(layers)
        ]
        return FlowModel((dim,), ts, name=name)


def ddpm(name: str, dim: int = 2, timesteps: int = 1000) -> nn.Module:
    """The time-plate DDPM with L_simple and fixed variances: the form hand-written code uses."""
    from pyro_gen.diffusion import build_ddpm

    gen = build_ddpm((dim,), objective="simple", variance="fixed_small", timesteps=timesteps)
    gen.name = name
    return gen


def ddpm_loss(gen: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """The same DDPM's loss written by hand: T x L_simple at one uniform step per example
    (the time plate's estimate) plus the closed-form KL(q(x_T | x_0) || N(0, I))."""
    s, T = gen.schedule, gen.schedule.num_timesteps

    def loss(x: torch.Tensor) -> torch.Tensor:
        t = torch.randint(1, T + 1, (x.shape[0],), device=x.device)
        eps = torch.randn_like(x)
        ab = s.alphas_cumprod[t - 1].unsqueeze(-1)
        x_t = ab.sqrt() * x + (1 - ab).sqrt() * eps
        simple = 0.5 * (gen.net(x_t, t) - eps).pow(2).sum(-1) * T
        ab_T = s.alphas_cumprod[-1]
        kl_T = 0.5 * (ab_T * x.pow(2) - ab_T - (1 - ab_T).log()).sum(-1)
        return (simple + kl_T).sum()

    return loss


# --- variants -----------------------------------------------------------------------------


def torch_variant(module: nn.Module, loss_fn: Callable, compiled: bool, device: torch.device):
    module.to(device)
    opt = torch.optim.Adam(module.parameters(), lr=1e-3)
    if compiled:
        mode = "reduce-overhead" if device.type == "cuda" else None
        loss_fn = torch.compile(loss_fn, mode=mode)

    def step(x: torch.Tensor) -> torch.Tensor:
        if compiled and device.type == "cuda":
            torch.compiler.cudagraph_mark_step_begin()
        loss = loss_fn(x)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    return step


def pyro_variant(gen: nn.Module, loss: pyro.infer.ELBO, device: torch.device):
    gen.to(device)
    svi = pyro.infer.SVI(gen.model, gen.guide, pyro.optim.Adam({"lr": 1e-3}), loss)
    return svi.step


def ours_variant(gen: nn.Module, backend: str, device: torch.device):
    gen.to(device)
    svi = CompiledSVI(gen.model, gen.guide, pyro.optim.Adam({"lr": 1e-3}), backend=backend)

    def step(x: torch.Tensor) -> torch.Tensor:
        return svi.step(x)

    step.svi = svi  # type: ignore[attr-defined]
    return step


def build_variants(kind: str, device: torch.device, backends: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if kind == "vae":
        out["torch eager"] = lambda: torch_variant(m := TorchVAE(), m.loss, False, device)
        out["torch.compile"] = lambda: torch_variant(m := TorchVAE(), m.loss, True, device)
        make = PyroVAE
    elif kind == "ddpm":
        out["torch eager"] = lambda: torch_variant(m := ddpm("t0"), ddpm_loss(m), False, device)
        out["torch.compile"] = lambda: torch_variant(m := ddpm("t1"), ddpm_loss(m), True, device)
        make = ddpm
    else:

        def flow_loss(m: nn.Module) -> Callable:
            return lambda x: -m.log_prob(x).sum()

        out["torch eager"] = lambda: torch_variant(m := realnvp("t0"), flow_loss(m), False, device)
        out["torch.compile"] = lambda: torch_variant(m := realnvp("t1"), flow_loss(m), True, device)

        def make(name: str) -> nn.Module:
            return realnvp(name)

    out["pyro Trace_ELBO"] = lambda: pyro_variant(make("p0"), pyro.infer.Trace_ELBO(), device)
    jit = pyro.infer.JitTrace_ELBO()
    out["pyro JitTrace_ELBO"] = lambda: pyro_variant(make("p1"), jit, device)
    for i, b in enumerate(backends):
        label = f"pyro_gen CompiledSVI [{b}]"
        out[label] = partial(lambda b, i: ours_variant(make(f"o{i}"), b, device), b, i)
    return out


# --- measurement --------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _proc_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def peak_memory_mb(step: Callable[[], Any], device: torch.device, n: int = 3) -> float:
    """Growth of memory in use over ``n`` steps, above what is resident before them."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        for _ in range(n):
            step()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    with contextlib.suppress(OSError, AttributeError):
        # Hand freed heap back first, or the allocator's cache would hide the growth.
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets the RSS high-water mark
    except OSError:
        return float("nan")
    before = _proc_kb("VmRSS")
    for _ in range(n):
        step()
    return (_proc_kb("VmHWM") - before) / 1024


def measure(
    kind: str,
    batch: int,
    device: torch.device,
    steps: int,
    warmup: int,
    block: int,
    backends: list[str],
) -> list[dict[str, Any]]:
    pyro.clear_param_store()
    torch.manual_seed(0)
    if kind == "vae":
        x = torch.bernoulli(torch.rand(batch, 784, device=device))
    else:
        x = torch.randn(batch, 2, device=device)
    rows = []
    steppers = {}
    for label, make in build_variants(kind, device, backends).items():
        _sync(device)
        held = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
        stepper = make()
        t0 = time.perf_counter()
        stepper(x)
        _sync(device)
        first = time.perf_counter() - t0
        for _ in range(warmup):
            stepper(x)
        svi = getattr(stepper, "svi", None)
        compile_s = first
        if svi is not None:
            compile_s = svi.compile_time_s
        _sync(device)
        if device.type == "cuda":  # what the variant keeps: weights, optimizer, graph pools
            held = (torch.cuda.memory_allocated(device) - held) / 2**20
        note = "" if svi is None or svi.compiled else f"fell back: {svi.fallback_reason}"
        steppers[label] = stepper
        rows.append(
            {"variant": label, "compile_s": compile_s, "note": note, "held_mb": float(held)}
        )
    times: dict[str, list[float]] = {r["variant"]: [] for r in rows}
    for _ in range(max(1, steps // block)):
        for label, stepper in steppers.items():
            for _ in range(block):
                t0 = time.perf_counter()
                stepper(x)
                _sync(device)
                times[label].append(time.perf_counter() - t0)
    for r in rows:
        r["ms"] = 1e3 * statistics.median(times[r["variant"]])
        r["peak_mb"] = r["held_mb"] + peak_memory_mb(lambda s=steppers[r["variant"]]: s(x), device)
    base = rows[0]["ms"]
    for r in rows:
        r["ratio"] = r["ms"] / base
    return rows


def first_epoch(batch: int, device: torch.device, n: int, cold: bool) -> list[dict[str, Any]]:
    """Time of the first ``n`` steps from a fresh model, recording and compilation included.

    The variants take turns step by step, so that a change in the machine's load hits all
    of them alike; each variant's total is the sum of its own steps.
    """
    x = torch.bernoulli(torch.rand(batch, 784, device=device))
    variants = {
        "pyro Trace_ELBO": lambda: pyro_variant(PyroVAE("e0"), pyro.infer.Trace_ELBO(), device),
        "pyro_gen CompiledSVI [auto]": lambda: ours_variant(PyroVAE("e1"), "auto", device),
        "pyro_gen CompiledSVI [inductor]": lambda: ours_variant(PyroVAE("e2"), "inductor", device),
    }
    pyro.clear_param_store()
    ctx = contextlib.nullcontext()
    if cold:  # no help from compilations cached on disk by earlier runs
        import torch._inductor.config as inductor_config

        ctx = inductor_config.patch(force_disable_caches=True)
    totals = dict.fromkeys(variants, 0.0)
    with ctx:
        steppers = {label: make() for label, make in variants.items()}
        for _ in range(n):
            for label, stepper in steppers.items():
                t0 = time.perf_counter()
                stepper(x)
                _sync(device)
                totals[label] += time.perf_counter() - t0
    return [{"variant": label, "s": s} for label, s in totals.items()]


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
                    _sync(device)
                    t0, c0 = time.perf_counter(), time.process_time()
                    for _ in range(block):
                        steppers[label]()
                    _sync(device)
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


# --- report -------------------------------------------------------------------------------


def hardware(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or "unknown CPU"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                name = line.split(":", 1)[1].strip()
    return f"{name}, {os.cpu_count()} cores visible, torch threads {torch.get_num_threads()}"


def table(title: str, rows: list[dict[str, Any]]) -> str:
    lines = [
        f"**{title}**",
        "",
        "| variant | ms/step (median) | ratio to torch eager | peak MB | first step s | note |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['ms']:.2f} | {r['ratio']:.2f} | {r['peak_mb']:.1f} "
            f"| {r['compile_s']:.1f} | {r['note']} |"
        )
    return "\n".join(lines)


def write_results(path: Path, device: str, body: str) -> None:
    """Replaces this device's section of the results file (other sections are kept)."""
    begin, end = MARK.format(device=device, end="begin"), MARK.format(device=device, end="end")
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    section = f"{begin}\n{body}\n{end}"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + section + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps after the first")
    parser.add_argument("--block", type=int, default=5, help="consecutive steps per turn")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=None)
    parser.add_argument("--device", choices=["cpu", "cuda", "all"], default="all")
    parser.add_argument(
        "--models",
        nargs="+",
        choices=["vae", "realnvp", "ddpm"],
        default=["vae", "realnvp", "ddpm"],
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument(
        "--backends",
        nargs="+",
        default=["inductor"],
        choices=["auto", "inductor", "jit", "fx"],
        help="CompiledSVI backends to include (steady state); auto is fit's default: "
        "TorchScript on CPU, Inductor with CUDA graphs after 500 steps on CUDA",
    )
    parser.add_argument(
        "--epoch-steps",
        type=int,
        default=0,
        help="also time the first N steps from cold, compile included (469 = MNIST epoch)",
    )
    parser.add_argument(
        "--epoch-overhead",
        type=int,
        default=0,
        metavar="ROUNDS",
        help="only compare a fit epoch on MNIST with the sum of its isolated steps (ROUNDS)",
    )
    parser.add_argument(
        "--guard-cost",
        type=int,
        default=0,
        metavar="ROUNDS",
        help="only compare steps with the non-finite guard on and off (ROUNDS of A B)",
    )
    parser.add_argument(
        "--guard-builds",
        type=int,
        default=1,
        metavar="N",
        help="with --guard-cost: build the model and its steps afresh N times and pool",
    )
    parser.add_argument(
        "--guard-backend",
        default="auto",
        choices=["auto", "inductor", "jit", "fx"],
        help="the CompiledSVI backend --guard-cost times (auto: fit's default)",
    )
    parser.add_argument("--results", type=Path, default=RESULTS, help="results file to update")
    parser.add_argument("--no-write", action="store_true", help="do not update RESULTS.md")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = [torch.device("cpu")] if args.device in ("cpu", "all") else []
    if args.device in ("cuda", "all") and torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    pyro.enable_validation(False)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    header = [
        f"- date: {stamp}",
        f"- torch {torch.__version__}, pyro {pyro.__version__}, python {platform.python_version()}",
        f"- command: `{' '.join([Path(sys.executable).name, *sys.argv])}`",
        "- ratio: median ms/step over hand-written eager PyTorch in the same run (lower is "
        "faster); first step s: first step including recording and compilation; peak MB: CPU: "
        "growth of the resident set over 3 steps (transients only); CUDA: memory the variant "
        "holds (weights, optimizer state, CUDA-graph pools) plus the growth over 3 steps",
    ]
    if args.epoch_overhead:
        header[-1] = (
            "- A: wall time of `fit(VAE(), load('mnist')[0], epochs=1, batch_size=128, "
            "transform=dynamic_binarize, progress=False)`, no evaluation or checkpoint; B: "
            "the same step object's 469 steps timed one by one (loss read back) on "
            "pre-sliced, pre-binarized batches; both from a fresh step object, so both "
            "include recording the 128 and the final 96-example signature"
        )
    for device in devices:
        if args.guard_cost:
            before = os.getloadavg()[0]
            kinds = tuple(k for k in args.models if k in ("vae", "realnvp"))
            rows = guard_cost(
                device, args.guard_cost, args.block, args.guard_backend, kinds, args.guard_builds
            )
            load = (
                f"load average (other jobs on the machine) {before:.1f} before, "
                f"{os.getloadavg()[0]:.1f} after; on {os.cpu_count()} cores"
            )
            text = guard_table(
                device, rows, args.guard_cost, args.block, args.guard_backend, args.guard_builds
            )
            print(text + "\n", flush=True)
            if not args.no_write:
                title = f"## Reliability: step guard, {device.type}: {hardware(device)}"
                write_results(
                    args.results,
                    f"guard:{device.type}",
                    f"{title}\n\n" + "\n".join(header[:3]) + f"\n- {load}\n\n{text}",
                )
            continue
        if args.epoch_overhead:
            title = f"## Epoch overhead, {device.type}: {hardware(device)}"
            rows = epoch_overhead(device, args.epoch_overhead)
            text = epoch_table(device, rows, args.epoch_overhead)
            print(text + "\n", flush=True)
            if not args.no_write:
                write_results(
                    args.results,
                    f"epoch:{device.type}",
                    f"{title}\n\n" + "\n".join(header) + f"\n\n{text}",
                )
            continue
        body = [f"## Step time, {device.type}: {hardware(device)}", "", *header]
        if args.epoch_steps and "vae" in args.models:
            rows = first_epoch(128, device, args.epoch_steps, cold=True)
            lines = [
                f"**first {args.epoch_steps} steps from cold (VAE, batch 128, {device.type}, "
                "recording and compilation included, no on-disk compile cache)**",
                "",
                "| variant | total s |",
                "|---|---:|",
            ]
            lines += [f"| {r['variant']} | {r['s']:.1f} |" for r in rows]
            print("\n".join(lines) + "\n", flush=True)
            body += ["", *lines]
        for kind in args.models:
            sizes = args.batch_sizes or (
                [128, 1024, 8192] if device.type == "cuda" else [128, 1024]
            )
            for batch in sizes:
                rows = measure(
                    kind, batch, device, args.steps, args.warmup, args.block, args.backends
                )
                text = table(f"{kind}, batch {batch}, {device.type}", rows)
                print(text + "\n", flush=True)
                body += ["", text]
        if not args.no_write:
            write_results(args.results, device.type, "\n".join(body))
            print(f"wrote the {device.type} section of {args.results}")


if __name__ == "__main__":
    main()
