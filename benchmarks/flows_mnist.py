"""Flows (RealNVP, Glow, MAF, NSF, residual flow) on uniformly dequantized MNIST, a fixed
CPU budget each.

Each model is a ``pyro_gen.flows.build`` flow with a density on pixels in [0, 1] (its last
transform is the logit preprocessing, inverted: ``ScaledSigmoid``, so the log-determinant of
the logit map is inside ``log_prob``). It trains by maximum likelihood with
``pyro_gen.infer.fit`` on ``x = (k + u) / 256``, ``u ~ U[0, 1)`` drawn afresh for every batch,
until its budget is spent (checked after every step, the compiled step's recording included),
with the Adam learning rate decayed exponentially over the budget. The budget is the CPU time
of the training thread (``--clock cpu``, the default; one torch thread), so other jobs on a
shared machine do not shrink it; ``--clock wall`` is the wall clock, as the first RealNVP /
Glow / MAF figures in RESULTS.md were measured. Then, on the test images dequantized once with
a fixed seed, it reports

  * bits/dim in pixel space: ``-(log p(x) - D log 256) / (D log 2)``, the discrete
    log-likelihood bound that RealNVP / Glow / FFJORD report (1.06 / 1.05 / 0.99);
  * the log-likelihood in logit space as in the MAF paper: the pixel density moved to
    ``y = logit(lam + (1 - 2 lam) x)`` with the paper's ``lam = 1e-6``, i.e.
    ``log p(y) = log p(x) - log|dy/dx|`` (MAF(5): -1300.5 nats). Any flow's pixel density
    can be read in that space, whatever ``alpha`` the flow itself uses inside.

The residual flow's density on 784 dimensions is an estimate: its log-determinant is the
unbiased Russian-roulette series in evaluation too (exact only up to 64 dimensions; at test
time with ``EVAL_N_EXACT`` terms always computed, which lowers its variance), so its
per-image log-likelihoods carry estimator noise, which their standard error includes; the
script scores the test set twice with different seeds and prints the difference of the means.

Before training, :func:`check_accounting` verifies both conversions on a flow whose density
is known in closed form (a standard normal in logit space), so a lost log-determinant or a
missing ``D log 256`` shows up as an error, not as a good-looking number.

Run:  .venv/bin/python benchmarks/flows_mnist.py --budget-min 8 --threads 1
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import time

import pyro
import torch
from budget import BudgetSpent, budget

from pyro_gen.data import bits_per_dim, load, logit_transform, uniform_dequantize
from pyro_gen.flows import FlowModel, build
from pyro_gen.flows.base import pixel_output
from pyro_gen.infer import fit
from pyro_gen.infer.callbacks import changes_only_tensors
from pyro_gen.transforms.residual import ResidualBlock

#: the MAF paper's logit margin, in which its MNIST log-likelihoods are stated
PAPER_LAMBDA = 1e-6
NUM_BINS = 256
SHAPE = (28, 28)
D = math.prod(SHAPE)

#: published figures (long GPU training): (nats in logit space, bits/dim)
PUBLISHED = {
    "maf": ("-1300.5 (MAF(5))", "-"),
    "realnvp": ("-", "1.06"),
    "glow": ("-", "1.05"),
    "nsf": ("-", "-"),
    "nsf-ar": ("-", "-"),
    "resflow": ("-", "0.97 (i-ResNet 1.05)"),
}

# Sizes for one CPU core and minutes, not the papers' (RealNVP: 8 couplings per stage and
# 64-channel ResNets with 8 blocks; Glow: K=32 steps of 512 channels). Chosen by step time
# so each model takes a few thousand steps in its budget (see RESULTS.md). NSF twice: the
# multi-scale spline couplings on conv nets (RealNVP's architecture and CPU size, splines for
# the affine maps) and the autoregressive spline flow on flattened pixels (MAF's).
CPU_SIZES: dict[str, dict] = {
    "maf": {"num_layers": 5, "hidden_dims": (1024,)},
    "realnvp": {"num_layers": 2, "hidden_channels": 16, "num_blocks": 1, "num_levels": 2},
    "glow": {"depth": 4, "hidden_channels": 32, "num_blocks": 1, "num_levels": 2},
    "nsf": {
        "layer": "coupling",
        "num_layers": 2,
        "hidden_channels": 16,
        "num_blocks": 1,
        "num_levels": 2,
        "spline_bins": 8,
    },
    "nsf-ar": {"layer": "autoregressive", "num_layers": 2, "hidden_dims": (512,), "spline_bins": 4},
    "resflow": {"num_layers": 4, "hidden_dims": (512,)},
}
#: table key -> ``build`` name, where they differ
FLOW_NAME = {"nsf-ar": "nsf"}
CLOCKS = {"cpu": time.thread_time, "wall": time.perf_counter}
#: power-series terms the residual flow's test log-determinant always computes (training: 2);
#: the roulette adds a random number more, so the estimate stays unbiased
EVAL_N_EXACT = 10


def logit_space_ll(pixel_ll: torch.Tensor, x: torch.Tensor, lam: float) -> torch.Tensor:
    """Log-density of ``y = logit(lam + (1 - 2 lam) x)`` from the log-density of ``x``."""
    return pixel_ll - logit_transform(x, lam)[1]


def check_accounting() -> None:
    """Closed form: a standard normal in logit space (margin a) pushed to pixels.

    Its pixel log-density is ``log N(logit_a(x)) + log|d logit_a / dx|``; read back in logit
    space at margin a it must be ``log N(logit_a(x))`` exactly, and its bits/dim must equal
    the code length computed by hand.
    """
    torch.manual_seed(0)
    k = torch.randint(0, NUM_BINS, (8, *SHAPE), dtype=torch.uint8)
    x = uniform_dequantize(k).double()
    for a in (0.05, PAPER_LAMBDA):
        flow = FlowModel(SHAPE, pixel_output(SHAPE, a)).double()
        ll = flow.log_prob(x)
        y = torch.logit(a + (1 - 2 * a) * x)
        normal = torch.distributions.Normal(0.0, 1.0).log_prob(y).flatten(1).sum(-1)
        q = a + (1 - 2 * a) * x
        jac = math.log(1 - 2 * a) - torch.log(q) - torch.log1p(-q)
        expected = normal + jac.flatten(1).sum(-1)
        if not torch.allclose(ll, expected, rtol=1e-9, atol=1e-6):
            raise AssertionError(f"pixel log-density of the logit-normal flow is off (a={a})")
        if not torch.allclose(logit_space_ll(ll, x, a), normal, rtol=1e-9, atol=1e-6):
            raise AssertionError(f"logit-space log-likelihood is off (a={a})")
        by_hand = (-ll / math.log(2) + D * 8) / D  # 8 bits per 8-bit pixel for a uniform one
        converted = bits_per_dim(-ll, D, num_bins=NUM_BINS)
        if not torch.allclose(converted, by_hand) or not torch.allclose(
            flow.bits_per_dim(x), by_hand.mean()
        ):
            raise AssertionError("bits/dim disagrees with the code length by hand")


@torch.no_grad()
def eval_log_prob(model: FlowModel, x: torch.Tensor, chunk: int = 500) -> torch.Tensor:
    model.eval()
    return torch.cat([model.log_prob(c).double() for c in x.split(chunk)])


def run(name: str, args: argparse.Namespace, x_train: torch.Tensor, x_test: torch.Tensor) -> dict:
    pyro.set_rng_seed(args.seed)
    sizes = {**CPU_SIZES[name], **json.loads(args.options.get(name, "{}"))}
    model = build(FLOW_NAME.get(name, name), SHAPE, **sizes)
    num_params = sum(p.numel() for p in model.parameters())
    optim = pyro.optim.Adam({"lr": args.lr})
    counter = {"steps": 0}
    clock = CLOCKS[args.clock]
    callback = budget(optim, args.lr, args.lr_final, 60 * args.budget_min, counter, clock)
    start, first_steps = clock(), []

    @changes_only_tensors  # reads the clock only
    def first(step: int, model: torch.nn.Module) -> None:
        # the budget's clock at the first steps: the compiled step's recording is in them
        if len(first_steps) < 3:
            first_steps.append(round(clock() - start, 2))

    with contextlib.suppress(BudgetSpent):
        fit(
            model,
            x_train,
            epochs=10**9,
            batch_size=args.batch_size,
            optim=optim,
            transform=uniform_dequantize,
            step_callbacks=[first, callback],
            progress=False,
        )
    train_s = clock() - start
    start = time.perf_counter()
    for block in model.modules():
        if isinstance(block, ResidualBlock):  # the same unbiased estimate, less variance
            block.n_exact = EVAL_N_EXACT
    ll = eval_log_prob(model, x_test)
    eval_s = time.perf_counter() - start
    noise = None
    if name == "resflow":  # a second, independent roulette estimate of the same densities
        diff = eval_log_prob(model, x_test) - ll
        # mean difference, and one estimate's own standard deviation per image
        noise = (diff.mean().item(), diff.std().item() / math.sqrt(2))
    # A non-finite test log-density is reported as such (it makes the means infinite).
    non_finite = int((~torch.isfinite(ll)).sum())
    return {
        "model": name,
        "sizes": sizes,
        "params": num_params,
        "steps": counter["steps"],
        "epochs": counter["steps"] * args.batch_size / x_train.shape[0],
        "clock": args.clock,
        "train_s": round(train_s, 1),
        "first_steps_s": first_steps,
        "eval_s": round(eval_s, 1),
        "test_n": ll.numel(),
        "non_finite": non_finite,
        "pixel_ll": ll.mean().item(),
        "logit_ll": logit_space_ll(ll, x_test.double(), PAPER_LAMBDA).mean().item(),
        "logit_ll_se": ll.std().item() / math.sqrt(ll.numel()),
        "rerun_minus_first_ll_and_estimator_sd": noise,
        "bpd": bits_per_dim(-ll, D, num_bins=NUM_BINS).mean().item(),
        "bpd_se": bits_per_dim(-ll, D, num_bins=NUM_BINS).std().item() / math.sqrt(ll.numel()),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["realnvp", "glow", "maf"])
    p.add_argument("--budget-min", type=float, default=8.0, help="training minutes per model")
    p.add_argument(
        "--clock", default="cpu", choices=list(CLOCKS), help="budget in thread CPU time or wall"
    )
    p.add_argument("--test-samples", type=int, default=10_000, help="first N test images")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--lr-final", type=float, default=0.1, help="lr factor at end of budget")
    p.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="MODEL=JSON",
        help="size overrides, e.g. --option 'glow={\"depth\": 8}'",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    args.options = dict(o.split("=", 1) for o in args.option)
    unknown = set(args.models) - set(CPU_SIZES)
    if unknown:
        p.error(f"unknown model(s) {sorted(unknown)}; choose from {sorted(CPU_SIZES)}")
    torch.set_num_threads(args.threads)
    check_accounting()
    x_train, _ = load("mnist", "train")
    k_test, _ = load("mnist", "test")
    k_test = k_test[: args.test_samples]
    x_test = uniform_dequantize(k_test, NUM_BINS, torch.Generator().manual_seed(args.seed))
    print(
        "| model | params | steps | epochs | train s | test n | logit-space LL (nats) "
        "| bits/dim | published nats / bits/dim |",
        flush=True,
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|", flush=True)
    for name in args.models:
        r = run(name, args, x_train, x_test)
        nats, bpd = PUBLISHED[name]
        print(
            f"| {name} | {r['params']:,} | {r['steps']} | {r['epochs']:.2f} | {r['train_s']:.0f} "
            f"| {r['test_n']} | {r['logit_ll']:.1f} +- {r['logit_ll_se']:.1f} "
            f"| {r['bpd']:.3f} +- {r['bpd_se']:.3f} "
            f"| {nats} / {bpd} |",
            flush=True,
        )
        print("#", json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
