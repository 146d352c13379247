"""Same-run step time of denoising score matching through ``pyro_gen.infer.fit`` against the same
step written by hand in eager PyTorch (issue 13: target ratio <= 1.0).

One step on one batch: draw t ~ U(eps, 1) and noise per example, x_t = alpha(t) x + sigma(t) eps
on the VP SDE, the network predicts the noise, loss = sum over the batch of
0.5 ||eps_hat - eps||^2 (DSM with the sigma^2 weighting, which is this noise-prediction loss),
backward, Adam. Ours: ``ScoreModel(net, VPSDE(), ...)`` trained by ``fit`` (its default step,
Pyro's Adam); by hand: the same network copy, ``torch.optim.Adam`` with the same settings.
Variants take turns (A B A B ...), ``--inner`` steps each, one torch thread; reported: median
CPU ms/step (``time.thread_time`` from the end of each call's first step to its last, so
fit's once-per-run set-up is left out) and the mean ratio ours / hand-written with its standard
error over rounds. Every fit call builds its own compiled step (a plain first step, the
recording, compilation, two structure checks), so each call's first ``--skip`` steps are left
out of its timing, and the hand-written loop's too: what is compared is the steady-state step.

    .venv/bin/python benchmarks/score_step_time.py --rounds 10 --inner 40 --skip 8
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import time

import pyro
import torch

from pyro_gen.diffusion import VPSDE, ScoreModel
from pyro_gen.infer import fit
from pyro_gen.infer.callbacks import changes_only_tensors
from pyro_gen.nn import TimeMLP, UNet

LR = 1e-3


def network(kind: str) -> tuple[torch.nn.Module, tuple[int, ...]]:
    if kind == "mlp2d":
        return TimeMLP(2, 128, num_layers=3), (2,)
    return UNet(1, 16, (1, 2, 2)), (1, 28, 28)


class Hand:
    """The DSM step as one writes it in PyTorch (VP SDE marginal in closed form)."""

    def __init__(self, net: torch.nn.Module, beta_min=0.1, beta_max=20.0, eps=1e-3) -> None:
        self.net, self.b0, self.b1, self.eps = net, beta_min, beta_max, eps
        self.opt = torch.optim.Adam(net.parameters(), lr=LR)

    def steps(self, x: torch.Tensor, n: int, skip: int) -> float:
        view = (-1,) + (1,) * (x.dim() - 1)
        stamps = []
        for _ in range(n):
            t = self.eps + (1 - self.eps) * torch.rand(x.shape[0])
            log_alpha = -0.25 * t**2 * (self.b1 - self.b0) - 0.5 * t * self.b0
            alpha, sigma = log_alpha.exp(), (-torch.expm1(2 * log_alpha)).sqrt()
            noise = torch.randn_like(x)
            x_t = alpha.view(view) * x + sigma.view(view) * noise
            loss = 0.5 * (self.net(x_t, 1000 * t) - noise).pow(2).sum()
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            stamps.append(time.thread_time())
        return (stamps[-1] - stamps[skip - 1]) / (n - skip)


class Ours:
    """The same step through fit on a ScoreModel."""

    def __init__(self, net: torch.nn.Module, event_shape: tuple[int, ...], compile=None) -> None:
        # its own pyro.module name, so both fit variants share one param store
        self.model = ScoreModel(net, VPSDE(), event_shape, name=f"ours_{compile}")
        self.optim = pyro.optim.Adam({"lr": LR})
        self.compile = compile

    def steps(self, x: torch.Tensor, n: int, skip: int) -> float:
        # one fit call over n batches (the same batch n times), as an epoch would run them;
        # timed from the end of its step `skip`, as Hand is: fit's per-call set-up (the
        # plain first step, recording and compiling the step, its structure checks) is paid
        # once per training run, not per step
        stamps = []
        stamp = changes_only_tensors(lambda step, model: stamps.append(time.thread_time()))
        fit(self.model, [x] * n, epochs=1, optim=self.optim, progress=False, compile=self.compile,
            step_callbacks=[stamp])  # fmt: skip
        return (stamps[-1] - stamps[skip - 1]) / (n - skip)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kinds", nargs="+", default=["mlp2d", "unet28"])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[512, 32])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--inner", type=int, default=40)
    parser.add_argument("--skip", type=int, default=8, help="steps per call left untimed")
    args = parser.parse_args()
    torch.set_num_threads(1)
    pyro.set_rng_seed(0)
    print("| network | batch | ours | hand-written ms/step | ours ms/step | ratio ours / hand |")
    print("|---|---:|---|---:|---:|---:|")
    for kind, batch in zip(args.kinds, args.batch_sizes):
        pyro.clear_param_store()
        net, shape = network(kind)
        x = torch.randn(batch, *shape)
        hand = Hand(copy.deepcopy(net))
        ours = Ours(copy.deepcopy(net), shape)
        plain = Ours(copy.deepcopy(net), shape, compile=False)
        variants = {"hand": hand, "fit": ours, "fit(compile=False)": plain}
        times: dict[str, list[float]] = {name: [] for name in variants}
        for r in range(args.rounds + 1):  # round 0 is a warm-up (and fit's compilation)
            order = list(variants.items())
            for name, variant in order if r % 2 == 0 else order[::-1]:
                seconds = variant.steps(x, args.inner, args.skip)
                if r:
                    times[name].append(1e3 * seconds)
        for name in ("fit", "fit(compile=False)"):
            ratios = [o / h for o, h in zip(times[name], times["hand"])]
            se = statistics.stdev(ratios) / math.sqrt(len(ratios))
            print(f"| {kind} | {batch} | {name} | {statistics.median(times['hand']):.2f} | "
                  f"{statistics.median(times[name]):.2f} | {statistics.mean(ratios):.3f} +- "
                  f"{se:.3f} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
