"""Neural spline flows on 2D toys: pyro_gen's NSF against zuko's, normflows' and Pyro's.

The four flows share one architecture (``--layers`` spline layers of ``--bins`` bins on
[-B, B] with ``--bound`` B = 5 by default, conditioners with ``--hidden`` units, reversed
order between autoregressive layers or alternating coupling masks) and one recipe (Adam,
batch 512, learning rate decayed exponentially over the budget as in ``flows_2d.py``). They
train **interleaved**: pyro_gen's ``fit`` drives, and every ``--slice`` seconds of its own
time its step callback lets each peer train for the same time on its own clock. Each
model's budget counts only its own CPU time (all run in this one thread), so load on the
shared machine falls on all alike, and each round gives a same-moment ms/step for every
model (the ratios below are means over rounds, with standard errors). Then
KL(p_true || p_model) on fresh samples in float64
(``flows_2d.model_log_prob``; the true density from ``pyro_gen.data.toy_log_prob``, and for
the moons, which have no closed form, by quadrature, :func:`moons_log_prob`).

pyro_gen is timed as users run it (``pyro_gen.infer.fit``: its compiled step, recorded in
the first seconds of the budget); the peers as their documentation trains them (a plain
PyTorch loop on ``-log_prob(x).mean()``). zuko's and normflows' NSF are installed for the
benchmark only (``pip install zuko==1.6.0 normflows==1.7.3``); pyro_gen never imports them.
Pyro's spline layers (``pyro.distributions.transforms``) are the fourth (:func:`pyro_nsf`).

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
from pyro_gen.infer.callbacks import changes_only_tensors


def moons_log_prob(x: torch.Tensor, nodes: int = 4096) -> torch.Tensor:
    r"""Log-density of ``pyro_gen.data``'s two moons, by quadrature over the arc parameter.

    Half the points lie on each arc, :math:`t \sim \mathcal{U}(0, \pi)`, scaled by 2,
    shifted by :math:`c = (-1, -0.2)` and blurred by :math:`\mathcal{N}(0, 0.2^2 I)`:

    .. math::

        p(x) = \tfrac12 \sum_{a \in \{\text{outer}, \text{inner}\}} \frac1\pi
        \int_0^\pi \mathcal{N}\big(x;\, 2 a(t) + c,\, 0.2^2 I\big)\, dt,

    with :math:`a(t) = (\cos t, \sin t)` or :math:`(1 - \cos t, 0.5 - \sin t)`. The
    midpoint rule with ``nodes`` nodes per arc is exact to far below the Monte Carlo error:
    the blur spans 0.1 in :math:`t`, 130 nodes at the default.
    """
    t = (torch.arange(nodes, dtype=x.dtype) + 0.5) * (math.pi / nodes)
    outer = torch.stack([t.cos(), t.sin()], -1)
    inner = torch.stack([1 - t.cos(), 0.5 - t.sin()], -1)
    centres = 2 * torch.cat([outer, inner]) + torch.tensor([-1.0, -0.2], dtype=x.dtype)
    var = 0.2**2
    out = []
    for c in x.split(2048):
        sq = (c[:, None, :] - centres).pow(2).sum(-1)
        lse = torch.logsumexp(-sq / (2 * var), -1)
        out.append(lse - math.log(2 * nodes) - math.log(2 * math.pi * var))
    return torch.cat(out)


def true_log_prob(data: str, x: torch.Tensor) -> torch.Tensor:
    """The true density: ``toy_log_prob``'s closed forms, moons by :func:`moons_log_prob`."""
    return moons_log_prob(x) if data == "moons" else toy_log_prob(data, x)


def zuko_nsf(args: argparse.Namespace) -> tuple[torch.nn.Module, Callable]:
    import functools

    import zuko

    passes = 2 if args.layer == "coupling" else None  # zuko: 2 passes = coupling
    # zuko's NSF fixes the bound at 5; its MAF takes the spline with another bound
    spline = functools.partial(zuko.transforms.MonotonicRQSTransform, bound=args.bound)
    shapes = [(args.bins,), (args.bins,), (args.bins - 1,)]
    flow = zuko.flows.MAF(
        2,
        transforms=args.layers,
        hidden_features=args.hidden,
        passes=passes,
        univariate=spline,
        shapes=shapes,
    )
    return flow, lambda x: flow().log_prob(x)


def pyro_nsf(args: argparse.Namespace) -> tuple[torch.nn.Module, Callable]:
    """Pyro's own spline layers, rational-quadratic (``order="quadratic"``; Pyro's default
    is the linear-rational spline), on a standard normal base in a TransformedDistribution.

    Autoregressive: ``spline_autoregressive`` used through ``.inv``, so that scoring data is
    one network pass per layer (the MAF direction of the other three). Coupling: Pyro's
    ``SplineCoupling``, which also passes the kept half through an unconditional spline,
    with the coordinates swapped between layers. Both are built from their classes, since
    the helpers cannot make the quadratic order (pyro 1.9.2: ``spline_coupling`` has no
    ``order`` argument, and ``spline_autoregressive(order="quadratic")`` sizes its network
    for the linear spline's four parameter sets and fails on the first call).
    """
    import pyro.distributions as pdist
    from pyro.distributions import transforms as pt
    from pyro.nn import AutoRegressiveNN, DenseNN

    k, modules, transforms = args.bins, [], []  # transforms from the base to the data
    for i in range(args.layers):
        if i > 0:
            transforms.append(pt.Permute(torch.tensor([1, 0])))
        if args.layer == "coupling":
            net = DenseNN(1, args.hidden, param_dims=[k, k, k - 1])
            t = pt.SplineCoupling(2, 1, net, k, args.bound, order="quadratic")
            transforms.append(t)
        else:
            net = AutoRegressiveNN(2, args.hidden, param_dims=[k, k, k - 1])
            t = pt.SplineAutoregressive(2, net, k, args.bound, order="quadratic")
            transforms.append(t.inv)
        modules.append(t)
    base = pdist.Normal(torch.zeros(2), torch.ones(2)).to_event(1)
    flow = torch.nn.ModuleList(modules)

    def log_prob(x: torch.Tensor) -> torch.Tensor:
        b = (
            base
            if x.dtype == base.mean.dtype
            else pdist.Normal(torch.zeros(2, dtype=x.dtype), torch.ones(2, dtype=x.dtype)).to_event(
                1
            )
        )
        return pdist.TransformedDistribution(b, transforms).log_prob(x)

    return flow, log_prob


def normflows_nsf(args: argparse.Namespace) -> tuple[torch.nn.Module, Callable]:
    import normflows as nf

    layers = []
    for i in range(args.layers):
        if args.layer == "coupling":
            layers.append(
                nf.flows.CoupledRationalQuadraticSpline(
                    2,
                    1,
                    args.hidden[0],
                    num_bins=args.bins,
                    tail_bound=args.bound,
                    reverse_mask=i % 2,
                )
            )
        else:
            # one residual block: its MADE has as many hidden layers as ours (input layer,
            # then two in the block)
            layers.append(
                nf.flows.AutoregressiveRationalQuadraticSpline(
                    2, 1, args.hidden[0], num_bins=args.bins, tail_bound=args.bound
                )
            )
            layers.append(nf.flows.Permute(2, mode="swap"))
    flow = nf.NormalizingFlow(nf.distributions.DiagGaussian(2, trainable=False), layers)
    return flow, flow.log_prob


PEERS = {"zuko": zuko_nsf, "normflows": normflows_nsf, "pyro": pyro_nsf}


class Clock:
    """A model's own training time: runs only between ``start`` and ``stop``.

    CPU time of this thread (``time.thread_time``): every model trains in this one thread
    (one torch thread), so other jobs on a shared machine do not eat into a budget.
    """

    def __init__(self) -> None:
        self.elapsed, self._t = 0.0, None

    def start(self) -> None:
        self._t = time.thread_time()

    def stop(self) -> float:
        self.elapsed += time.thread_time() - self._t
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
        bound=args.bound,
    )
    optim = pyro.optim.Adam({"lr": args.lr})
    clock, rounds, state = Clock(), [], {"steps": 0, "mark": (0.0, 0)}

    @changes_only_tensors  # a learning rate and a clock: no check of the recorded step
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

    true_lp = true_log_prob(data, xt.double())
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
    p.add_argument("--data", nargs="+", default=["eight_gaussians", "checkerboard", "moons"])
    p.add_argument("--peers", nargs="*", default=list(PEERS), choices=list(PEERS))
    p.add_argument("--layer", default="autoregressive", choices=["autoregressive", "coupling"])
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--bins", type=int, default=8)
    p.add_argument("--hidden", type=int, nargs="+", default=[64, 64])
    p.add_argument("--bound", type=float, default=5.0, help="spline bound B (zuko's is 5)")
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
