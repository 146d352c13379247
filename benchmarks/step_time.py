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
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pyro
import torch
from epoch_overhead import epoch_overhead, epoch_table
from guard_cost import guard_cost, guard_table
from step_models import PyroVAE, TorchVAE, ddpm, ddpm_loss, hardware, realnvp, sync
from torch import nn

from pyro_gen.infer.compiled import CompiledSVI

RESULTS = Path(__file__).with_name("RESULTS.md")
MARK = "<!-- step_time:{device}:{end} -->"


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
        sync(device)
        held = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
        stepper = make()
        t0 = time.perf_counter()
        stepper(x)
        sync(device)
        first = time.perf_counter() - t0
        for _ in range(warmup):
            stepper(x)
        svi = getattr(stepper, "svi", None)
        compile_s = first
        if svi is not None:
            compile_s = svi.compile_time_s
        sync(device)
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
                sync(device)
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
                sync(device)
                totals[label] += time.perf_counter() - t0
    return [{"variant": label, "s": s} for label, s in totals.items()]


# --- report -------------------------------------------------------------------------------


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
