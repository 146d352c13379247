"""Speed of pyro_gen's inverse autoregressive flow against Pyro's ``affine_autoregressive``.

Two measurements, each timed in the same run on one torch thread, the variants interleaved
(A B C, C B A, ...) after warm-up; every repetition times ``--inner`` calls. Ratios are to
Pyro (lower is faster). ``pyro_control`` is a second copy of Pyro's variant, built and timed
as the others are: its ratio to Pyro (1 in expectation) shows what the method gives two
identical programs. With ``--runs`` each process contributes its ratio of mean times, and
the mean +- standard error is over processes.

(a) ``score``: what a guide does with a flow: draw a reparameterized sample of a
    ``TransformedDistribution`` (a diagonal Normal through ``--layers`` IAF layers of
    ``--dim`` features), score that same sample with ``log_prob``, and backpropagate:
    ``pyro_gen.transforms.inverse_autoregressive(D, hidden)`` against
    ``pyro.distributions.transforms.affine_autoregressive(D, hidden_dims=hidden)``.
(b) ``vae``: one ``SVI.step`` (Trace_ELBO, Adam) of an MNIST-sized VAE: 784 Bernoulli pixels,
    ``--dim`` latents with a standard Normal prior, MLP decoder and encoder with 400 hidden
    units, and a hand-written plain-Pyro guide ``Normal(encoder(x)) -> IAF layers``; the
    same guide with pyro_gen's IAF and with Pyro's. Random binary images stand in for MNIST
    (the step's cost does not depend on the pixel values).

With ``--random-init`` both add pyro_gen's IAF whose MADE output layer is initialised as
Pyro's is (``nn.Linear``'s random init) instead of zero (the identity map at the start).
With ``--uncached`` both add a third variant, pyro_gen's IAF with ``cache_size=0`` (the
default before issue 10), whose ``log_prob`` of its own sample runs the D-pass inverse.

With ``--fixed-malloc`` (with ``--runs``) the processes run with glibc's mmap and trim
thresholds fixed (``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``): by default glibc
moves them as the process frees memory, and whether a step's 160 KB-1.3 MB buffers come from
fresh pages (minor page faults, counted in the thread's CPU time as system time) then depends
on the heap's history, which differs between processes and between the two variants by
up to about 1% of a step (minor faults read with getrusage). Fixed thresholds take that
allocator noise out of the comparison.

Run:  .venv/bin/python benchmarks/iaf_speed.py --reps 30
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import pyro
import pyro.distributions as dist
import pyro.distributions.transforms as PT
import torch
from pyro.infer import SVI, Trace_ELBO
from torch import nn

from pyro_gen import transforms as T


def iaf_layers(kind: str, dim: int, hidden: list[int], layers: int) -> list[nn.Module]:
    """``layers`` IAF layers of one implementation with the same sizes."""
    if kind.startswith("pyro"):  # "pyro", and "pyro_control": a second copy of it
        return [PT.affine_autoregressive(dim, hidden_dims=hidden) for _ in range(layers)]
    cache = 0 if kind == "ours_uncached" else 1
    flows = [T.inverse_autoregressive(dim, hidden, cache_size=cache) for _ in range(layers)]
    if kind == "ours_random_init":  # the output layer initialised as Pyro's (nn.Linear's)
        for f in flows:
            nn.Linear.reset_parameters(f.made.output)
    return flows


def score_step(kind: str, dim: int, hidden: list[int], layers: int, batch: int) -> Callable:
    """(a): rsample, log_prob of that sample, backward."""
    flows = iaf_layers(kind, dim, hidden, layers)
    loc = torch.zeros(batch, dim, requires_grad=True)
    log_scale = torch.zeros(batch, dim, requires_grad=True)
    params = [loc, log_scale] + [p for f in flows for p in f.parameters()]

    def step() -> None:
        for p in params:
            p.grad = None
        base = dist.Normal(loc, log_scale.exp()).to_event(1)
        q = dist.TransformedDistribution(base, flows)
        z = q.rsample()
        q.log_prob(z).sum().backward()

    return step


class Encoder(nn.Module):
    def __init__(self, z_dim: int, hidden: int = 400) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(784, hidden), nn.Softplus())
        self.loc = nn.Linear(hidden, z_dim)
        self.scale = nn.Linear(hidden, z_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(x)
        return self.loc(h), nn.functional.softplus(self.scale(h)) + 1e-4


def vae_step(kind: str, dim: int, hidden: list[int], layers: int, batch: int) -> Callable:
    """(b): one SVI step of a plain-Pyro VAE whose guide is Normal(encoder(x)) -> IAF."""
    decoder = nn.Sequential(nn.Linear(dim, 400), nn.Softplus(), nn.Linear(400, 784))
    encoder = Encoder(dim)
    flows = nn.ModuleList(iaf_layers(kind, dim, hidden, layers))

    def model(x: torch.Tensor) -> None:
        pyro.module(f"{kind}_decoder", decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(dim), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=decoder(z)).to_event(1), obs=x)

    def guide(x: torch.Tensor) -> None:
        pyro.module(f"{kind}_encoder", encoder)
        pyro.module(f"{kind}_iaf", flows)
        with pyro.plate("data", x.shape[0]):
            loc, scale = encoder(x)
            base = dist.Normal(loc, scale).to_event(1)
            pyro.sample("z", dist.TransformedDistribution(base, list(flows)))

    svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO())
    x = torch.bernoulli(torch.full((batch, 784), 0.13))
    return lambda: svi.step(x)


def interleaved(fns: dict[str, Callable], reps: int, inner: int, warmup: int) -> dict:
    """CPU seconds per call of each function: ``reps`` samples of ``inner`` calls, interleaved.

    The thread's CPU time, not wall time: on a shared machine the time spent waiting for a
    core is not the code's; both are on one thread, so CPU time is the work done.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    order = list(fns)
    for rep in range(reps):
        # The order rotates (A B C, B C A, C A B, ...): each variant takes each place equally
        # often and none runs twice in a row. The order used to alternate (A B C, C B A),
        # which ran the end variants twice in a row (their second block on warm caches) and
        # never the middle one: Pyro's copy in the middle measured 1.6-2.1% slower than the
        # identical control copy at an end (session 26, 0.7 ms steps).
        shift = rep % len(order)
        for k in order[shift:] + order[:shift]:
            fn = fns[k]
            t = time.thread_time()
            for _ in range(inner):
                fn()
            times[k].append((time.thread_time() - t) / inner)
    return times


def mean_se(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), statistics.stdev(xs) / math.sqrt(len(xs))


TITLES = {
    "score": "(a) rsample + log_prob of the same sample + backward",
    "vae": "(b) one SVI step of the MNIST-sized VAE with an IAF guide",
}


def report(title: str, times: dict[str, list[float]]) -> None:
    print(f"\n{title}")
    print("| variant | CPU ms per call (mean +- SE) | ratio to Pyro (mean +- SE) |")
    print("|---|---:|---:|")
    for k, ts in times.items():
        m, s = mean_se([1e3 * t for t in ts])
        r, rs = mean_se([a / b for a, b in zip(ts, times["pyro"], strict=True)])
        print(f"| {k} | {m:.2f} +- {s:.2f} | {r:.3f} +- {rs:.3f} |")
    print("(ratios per repetition; across processes, --runs, reports ratios of mean times)")


def one_run(args: argparse.Namespace) -> dict[str, dict[str, list[float]]]:
    """CPU seconds per call of every variant of every measurement, in this process."""
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    pyro.set_rng_seed(args.seed)
    kinds = ["ours", "pyro", "pyro_control"] + (["ours_uncached"] if args.uncached else [])
    kinds += ["ours_random_init"] if args.random_init else []
    sizes = (args.dim, args.hidden, args.layers, args.batch)
    builders = {"score": score_step, "vae": vae_step}
    out = {}
    for name in [args.only] if args.only else list(builders):
        # Odd seeds build the variants in reverse order: where a variant's tensors land in
        # memory (which moves its speed by a few percent) then favours neither across runs.
        order = kinds if args.seed % 2 == 0 else kinds[::-1]
        built = {k: builders[name](k, *sizes) for k in order}
        fns = {k: built[k] for k in kinds}
        out[name] = interleaved(fns, args.reps, args.inner, args.warmup)
    return out


def across_runs(args: argparse.Namespace) -> None:
    """``--runs`` fresh processes, one after the other; each run's mean ratio is one sample.

    Within one process the interleaved repetitions share one memory layout and one set of
    weights, and the ratio differs between processes by more than its within-run standard
    error (about 2% on this machine): the honest comparison is across processes.
    """
    child = [f"--{k}={v}" for k in ("dim", "layers", "batch", "reps", "inner", "warmup")
             for v in [getattr(args, k)]]  # fmt: skip
    child += ["--hidden", *map(str, args.hidden)] + ["--uncached"] * args.uncached
    child += ["--random-init"] * args.random_init
    child += [f"--only={args.only}"] if args.only else []
    env = dict(os.environ)
    if args.fixed_malloc:  # no mmap below 32 MB and no heap trimming: freed pages are reused
        env.update(MALLOC_MMAP_THRESHOLD_=str(32 << 20), MALLOC_TRIM_THRESHOLD_=str(256 << 20))
    per_run: dict[str, dict[str, list[float]]] = {}
    mean_of_ratios: dict[str, dict[str, list[float]]] = {}
    for run in range(args.runs):
        cmd = [sys.executable, __file__, *child, "--runs", "1", "--seed", str(run), "--json"]
        out = subprocess.run(cmd, check=True, capture_output=True, env=env).stdout
        result = json.loads(out)
        for name, times in result.items():
            for k, ts in times.items():
                # A process's ratio is its ratio of mean times: the mean of its repetitions'
                # ratios is biased up by about the squared coefficient of variation of Pyro's
                # times (repetitions vary by ~10% here, so ~1%); both are printed.
                ratio = statistics.fmean(ts) / statistics.fmean(times["pyro"])
                per_run.setdefault(name, {}).setdefault(k, []).append(ratio)
                biased = statistics.fmean(a / b for a, b in zip(ts, times["pyro"], strict=True))
                mean_of_ratios.setdefault(name, {}).setdefault(k, []).append(biased)
    for name, ratios in per_run.items():
        print(f"\n{TITLES[name]}: ratio to Pyro, one value per process")
        runs = " | ".join(f"run {i + 1}" for i in range(args.runs))
        print(f"| variant | {runs} | mean +- SE |")
        print("|---|" + "---:|" * (args.runs + 1))
        for k, rs in ratios.items():
            m, s = mean_se(rs)
            print(f"| {k} | " + " | ".join(f"{r:.3f}" for r in rs) + f" | {m:.3f} +- {s:.3f} |")
        print("\nthe same as means of each process's per-repetition ratios (biased up):")
        for k, rs in mean_of_ratios[name].items():
            m, s = mean_se(rs)
            print(f"- {k}: {m:.3f} +- {s:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dim", type=int, default=50, help="latent / flow dimension")
    parser.add_argument("--hidden", type=int, nargs="+", default=[320, 320])
    parser.add_argument("--layers", type=int, default=2, help="IAF layers")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--inner", type=int, default=5, help="calls per timed repetition")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--uncached", action="store_true", help="add ours with cache_size=0")
    parser.add_argument(
        "--random-init",
        action="store_true",
        help="add ours with the MADE output layer randomly initialised, as Pyro's is",
    )
    parser.add_argument("--only", choices=["score", "vae"], default=None)
    parser.add_argument(
        "--fixed-malloc",
        action="store_true",
        help="with --runs: fix glibc's mmap/trim thresholds in the processes (allocator noise)",
    )
    parser.add_argument("--runs", type=int, default=1, help="independent processes (>= 2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print the raw times as JSON")
    args = parser.parse_args()
    print_header = not args.json
    if print_header:
        print(
            f"torch {torch.__version__}, pyro {pyro.__version__}, "
            f"{platform.processor() or '?'}, 1 thread; D={args.dim}, hidden={args.hidden}, "
            f"layers={args.layers}, batch={args.batch}, reps={args.reps} x {args.inner} calls"
        )
    if args.runs > 1:
        across_runs(args)
        return
    times = one_run(args)
    if args.json:
        print(json.dumps(times))
        return
    for name, t in times.items():
        report(TITLES[name], t)


if __name__ == "__main__":
    main()
