"""Neural spline flows on 2D toys: pyro_gen's NSF against zuko's and normflows' in one run.

The three flows share one architecture (``--layers`` spline layers of ``--bins`` bins on
[-5, 5], conditioners with ``--hidden`` units, reversed order between autoregressive layers
or alternating coupling masks) and one recipe (Adam, batch 512, learning rate decayed
exponentially over the budget as in ``flows_2d.py``). They train **interleaved**: pyro_gen's
``fit`` drives, and every ``--slice`` seconds of its own time its step callback lets each
peer train for the same time on its own clock. Each model's budget counts only its own
time, so load on the shared machine falls on all three alike, and each round gives a
same-moment ms/step for every model (the ratios below are means over rounds, with
standard errors). Then KL(p_true || p_model) on fresh samples in float64
(``flows_2d.model_log_prob`` and ``pyro_gen.data.toy_log_prob``).

pyro_gen is timed as users run it (``pyro_gen.infer.fit``: its compiled step, recorded in
the first seconds of the budget); the peers as their documentation trains them (a plain
PyTorch loop on ``-log_prob(x).mean()``). zuko's and normflows' NSF are installed for the
benchmark only (``pip install zuko==1.6.0 normflows==1.7.3``); pyro_gen never imports them.

Run:  .venv/bin/python benchmarks/flows_spline_2d.py --budget-s 60
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import time
from collections.abc import Callable

import pyro
import torch
from budget import BudgetSpent
from flows_2d import model_log_prob

from pyro_gen.data import load, toy_log_prob
from pyro_gen.flows import build
from pyro_gen.infer import fit

BOUND = 5.0  # zuko's fixed spline bound; the others are set to it


def zuko_nsf(args: argparse.Namespace) -> tuple[torch.nn.Module, Callable]:
    import zuko

    passes = 2 if args.layer == "coupling" else None  # zuko: 2 passes = coupling
    flow = zuko.flows.NSF(
        2, bins=args.bins, transforms=args.layers, hidden_features=args.hidden, passes=passes
    )
    return flow, lambda x: flow().log_prob(x)


def normflows_nsf(args: argparse.Namespace) -> tuple[torch.nn.Module, Callable]:
    import normflows as nf

    layers = []
    for i in range(args.layers):
        if args.layer == "coupling":
            layers.append(
                nf.flows.CoupledRationalQuadraticSpline(
                    2, 1, args.hidden[0], num_bins=args.bins, tail_bound=BOUND, reverse_mask=i % 2
                )
            )
        else:
            # one residual block: its MADE has as many hidden layers as ours (input layer,
            # then two in the block)
            layers.append(
                nf.flows.AutoregressiveRationalQuadraticSpline(
                    2, 1, args.hidden[0], num_bins=args.bins, tail_bound=BOUND
                )
            )
            layers.append(nf.flows.Permute(2, mode="swap"))
    flow = nf.NormalizingFlow(nf.distributions.DiagGaussian(2, trainable=False), layers)
    return flow, flow.log_prob


PEERS = {"zuko": zuko_nsf, "normflows": normflows_nsf}


class Clock:
    """A model's own training time: runs only between ``start`` and ``stop``."""

    def __init__(self) -> None:
        self.elapsed, self._t = 0.0, None

    def start(self) -> None:
        self._t = time.perf_counter()

    def stop(self) -> float:
        self.elapsed += time.perf_counter() - self._t
        return self.elapsed


class Peer:
    """A peer library's flow in a plain PyTorch loop, trained a slice at a time."""

    def __init__(self, name: str, x: torch.Tensor, args: argparse.Namespace) -> None:
        torch.manual_seed(args.seed)
        self.name, self.x, self.args = name, x, args
        self.module, self.log_prob = PEERS[name](args)
        self.optim = torch.optim.Adam(self.module.parameters(), lr=args.lr)
        self.clock, self.steps, self.rounds = Clock(), 0, []

    def train_slice(self, seconds: float) -> None:
        a = self.args
        if self.clock.elapsed >= a.budget_s:
            return
        start, steps0 = self.clock.elapsed, self.steps
        end = min(start + seconds, a.budget_s)
        self.clock.start()
        while True:
            idx = torch.randint(len(self.x), (a.batch_size,))
            loss = -self.log_prob(self.x[idx]).mean()
            self.optim.zero_grad(set_to_none=True)
            loss.backward()
            self.optim.step()
            self.steps += 1
            elapsed = self.clock.stop()
            if elapsed >= end:
                break
            for group in self.optim.param_groups:
                group["lr"] = a.lr * a.lr_final ** (elapsed / a.budget_s)
            self.clock.start()
        self.rounds.append((self.steps - steps0, self.clock.elapsed - start))

    @torch.no_grad()
    def test_log_prob(self, x: torch.Tensor) -> torch.Tensor:
        self.module.eval().double()
        return torch.cat([self.log_prob(c) for c in x.double().split(10_000)])


def run(data: str, args: argparse.Namespace) -> list[dict]:
    pyro.set_rng_seed(args.seed)
    x, _ = load(data, "train", num_samples=args.train_samples, seed=args.seed)
    xt, _ = load(data, "test", num_samples=args.test_samples, seed=args.seed + 1)
    peers = [Peer(name, x, args) for name in args.peers]
    pyro.set_rng_seed(args.seed)
    ours = build(
        "nsf",
        (2,),
        layer=args.layer,
        num_layers=args.layers,
        hidden_dims=tuple(args.hidden),
        spline_bins=args.bins,
        bound=BOUND,
    )
    optim = pyro.optim.Adam({"lr": args.lr})
    clock, rounds, state = Clock(), [], {"steps": 0, "mark": (0.0, 0)}

    def step_callback(step: int, model: torch.nn.Module) -> None:
        elapsed = clock.stop()
        state["steps"] = step
        if elapsed >= args.budget_s:
            raise BudgetSpent
        for opt in optim.optim_objs.values():
            # the compiled step's fused Adam stands behind a per-parameter view (.optimizer_)
            for group in getattr(opt, "optimizer_", opt).param_groups:
                group["lr"] = args.lr * args.lr_final ** (elapsed / args.budget_s)
        t0, s0 = state["mark"]
        if elapsed - t0 >= args.slice:
            rounds.append((step - s0, elapsed - t0))
            for peer in peers:
                peer.train_slice(elapsed - t0)
            state["mark"] = (elapsed, step)
        clock.start()

    clock.start()
    with contextlib.suppress(BudgetSpent):
        fit(
            ours,
            x,
            epochs=10**9,
            batch_size=args.batch_size,
            optim=optim,
            step_callbacks=[step_callback],
            progress=False,
            clear_params=True,
        )
    while any(p.clock.elapsed < args.budget_s for p in peers):  # ours stopped first
        for peer in peers:
            peer.train_slice(args.slice)

    true_lp = toy_log_prob(data, xt.double())
    results = [("pyro_gen", state["steps"], clock.elapsed, model_log_prob(ours, xt), rounds)]
    for p in peers:
        results.append((p.name, p.steps, p.clock.elapsed, p.test_log_prob(xt), p.rounds))
    # ms/step per round, the first rounds (pyro_gen's recording, warm-up) left out
    skip = args.skip_rounds
    ms = {name: [1e3 * t / max(n, 1) for n, t in r[skip:]] for name, _, _, _, r in results}
    out = []
    for name, steps, secs, model_lp, _ in results:
        gap = true_lp - model_lp
        row = {
            "data": data,
            "model": name,
            "layer": args.layer,
            "steps": steps,
            "train_s": round(secs, 1),
            "ms_step": _mean_se(ms[name]),
            "kl": gap.mean().item(),
            "kl_se": gap.std().item() / len(gap) ** 0.5,
        }
        if name != "pyro_gen":
            n = min(len(ms[name]), len(ms["pyro_gen"]))
            row["ours_over_peer"] = _mean_se([a / b for a, b in zip(ms["pyro_gen"][:n], ms[name])])
        out.append(row)
    return out


def _mean_se(values: list[float]) -> tuple[float, float]:
    n = len(values)
    if n == 0:
        return (math.nan, math.nan)
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / max(n - 1, 1)
    return (mean, math.sqrt(var / n))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", nargs="+", default=["eight_gaussians", "checkerboard"])
    p.add_argument("--peers", nargs="*", default=list(PEERS), choices=list(PEERS))
    p.add_argument("--layer", default="autoregressive", choices=["autoregressive", "coupling"])
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--bins", type=int, default=8)
    p.add_argument("--hidden", type=int, nargs="+", default=[64, 64])
    p.add_argument("--budget-s", type=float, default=60.0, help="training seconds per model")
    p.add_argument("--slice", type=float, default=1.0, help="seconds per turn")
    p.add_argument("--skip-rounds", type=int, default=5, help="rounds left out of ms/step")
    p.add_argument("--test-samples", type=int, default=100_000)
    p.add_argument("--train-samples", type=int, default=1_000_000)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--lr-final", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(1)
    print("| data | model | steps | train s | ms/step | ours / peer | KL nats |", flush=True)
    print("|---|---|---:|---:|---:|---:|---:|", flush=True)
    for data in args.data:
        for r in run(data, args):
            ms, ratio = r["ms_step"], r.get("ours_over_peer")
            ratio_s = f"{ratio[0]:.2f} ± {ratio[1]:.2f}" if ratio else ""
            print(
                f"| {data} | {r['model']} | {r['steps']} | {r['train_s']:.0f} "
                f"| {ms[0]:.1f} ± {ms[1]:.1f} | {ratio_s} | {r['kl']:.4f} ± {r['kl_se']:.4f} |",
                flush=True,
            )
            print("#", json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
