"""Speed of pyro_gen's affine coupling against Pyro's, and of one multi-scale Glow step.

1. log_prob + backward of a stack of ``--layers`` affine couplings (each followed by a reverse
   permutation) under ``TransformedDistribution`` with a standard normal base:
   ``pyro_gen.transforms.affine_coupling(D, mask="half", hidden_dims=[H, H])`` against
   ``pyro.distributions.transforms.affine_coupling(D, hidden_dims=[H, H])`` (both condition
   the second half of the features on the first through an MLP with the same widths).
   The two are timed in the same run, interleaved (A B A B ...), after warm-up; the table
   gives median ms per call and the ratio ours / Pyro (lower is faster).
2. One training step (log_prob + backward + Adam step) of ``build("glow", (28, 28))``
   (multi-scale, default image sizes) on a batch of 28x28 images: examples/s from the median
   step time, and peak memory: growth of the resident set over 3 steps on CPU (see
   ``step_time.peak_memory_mb``), ``torch.cuda.max_memory_allocated`` growth on CUDA.

Run:  .venv/bin/python benchmarks/flows_coupling_speed.py --sizes 2:128 8:256 64:512 --reps 30
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import pyro.distributions as dist
import pyro.distributions.transforms as PT
import torch
from step_time import peak_memory_mb

from pyro_gen import transforms as T
from pyro_gen.flows import build


def ours_stack(dim: int, hidden: int, layers: int) -> list:
    ts = []
    for _ in range(layers):
        ts += [T.affine_coupling(dim, mask="half", hidden_dims=[hidden, hidden]), T.permute(dim)]
    return ts


def pyro_stack(dim: int, hidden: int, layers: int, device: str = "cpu") -> list:
    ts = []
    for _ in range(layers):
        reverse = torch.arange(dim - 1, -1, -1, device=device)
        ts += [PT.affine_coupling(dim, hidden_dims=[hidden, hidden]), PT.permute(dim, reverse)]
    return ts


def log_prob_backward(transforms: list, x: torch.Tensor) -> Callable[[], None]:
    modules = [t.to(x.device) for t in transforms if isinstance(t, torch.nn.Module)]
    params = [p for m in modules for p in m.parameters()]
    base = dist.Normal(x.new_zeros(x.shape[-1]), x.new_ones(x.shape[-1])).to_event(1)

    def step() -> None:
        for p in params:
            p.grad = None
        flow = dist.TransformedDistribution(base, transforms)
        # a fresh tensor each call, so no transform's one-entry cache answers from the last
        (-flow.log_prob(x.clone()).mean()).backward()
        sync(x.device)

    return step


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_ms(fns: dict[str, Callable[[], None]], reps: int, warmup: int) -> dict:
    """Median ms per call of each function, timed in turn (A B A B ...) after warm-up."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return {k: 1e3 * statistics.median(v) for k, v in times.items()}


def coupling_table(sizes: list[tuple[int, int]], args: argparse.Namespace) -> None:
    title = f"affine coupling x{args.layers}, batch {args.batch}, log_prob + backward"
    print(f"\n**{title}, {args.device}**\n")
    print("| D | hidden | ours ms | Pyro ms | ratio ours/Pyro |")
    print("|---:|---:|---:|---:|---:|")
    for dim, hidden in sizes:
        torch.manual_seed(args.seed)
        x = torch.randn(args.batch, dim, device=args.device)
        fns = {
            "ours": log_prob_backward(ours_stack(dim, hidden, args.layers), x),
            "pyro": log_prob_backward(pyro_stack(dim, hidden, args.layers, args.device), x),
        }
        ms = interleaved_ms(fns, args.reps, args.warmup)
        print(
            f"| {dim} | {hidden} | {ms['ours']:.2f} | {ms['pyro']:.2f} "
            f"| {ms['ours'] / ms['pyro']:.2f} |",
            flush=True,
        )


def glow_step(device: torch.device, batch: int, seed: int) -> Callable[[], None]:
    torch.manual_seed(seed)
    model = build("glow", (28, 28)).to(device)
    x = torch.rand(batch, 28, 28, device=device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        (-model.log_prob(x).mean()).backward()
        opt.step()
        sync(device)

    return step


def glow_row(args: argparse.Namespace) -> None:
    device = torch.device(args.device)
    step = glow_step(device, args.glow_batch, args.seed)
    ms = interleaved_ms({"glow": step}, args.glow_reps, args.warmup)["glow"]
    mb = peak_memory_mb(step, device)
    print(f"\n**multi-scale Glow (build('glow', (28, 28)) defaults), {device.type}**\n")
    print("| batch | ms/step (median) | examples/s | peak MB |")
    print("|---:|---:|---:|---:|")
    print(f"| {args.glow_batch} | {ms:.1f} | {1e3 * args.glow_batch / ms:.0f} | {mb:.1f} |")


def parse_size(text: str) -> tuple[int, int]:
    dim, hidden = text.split(":")
    return int(dim), int(hidden)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", nargs="+", type=parse_size, default=[(2, 128), (8, 256), (64, 512)])
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--reps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--glow-batch", type=int, default=64)
    p.add_argument("--glow-reps", type=int, default=10)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    coupling_table(args.sizes, args)
    glow_row(args)


if __name__ == "__main__":
    main()
