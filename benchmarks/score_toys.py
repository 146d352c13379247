"""Score models and flow matching on the 2D toys (checkerboard, moons, eight Gaussians):
KL(p_true || p_model) through the ODE likelihood after a CPU-time training budget (issue 13).

Models (the recipes of ``flow_matching_2d.py``, which this reuses):

* ``fm``: the vector CNF (one ``ContinuousFlow``) trained by conditional flow matching.
* ``score_ve``: a ``ScoreModel`` on the VE SDE (NCSN as an SDE; sigma from 0.01 to
  ``--sigma-max``), eps-prediction, sigma^2 weighting, density by the probability-flow ODE.
* ``score_vp``: the same on the VP SDE.
* ``score_subvp``: the same on the sub-VP SDE (VP drift, smaller diffusion).
* ``nice``, ``realnvp``, ``glow``, ``maf``: the affine flows (``pyro_gen.flows.build``) with
  ``flows_2d.py``'s recipe (Adam 1e-3 decayed to 5e-5, ``build``'s defaults) but this
  script's CPU-time budget, so the issue's "below every affine flow" compares models trained
  in the same conditions.

Training budget: ``--cpu-min`` minutes of this thread's CPU time per model (the issue's "one CPU
thread, 5 minutes each"). KL = E_true[log p_true(x) - log p_model(x)] on fresh test points,
float64, with its Monte Carlo standard error. The moons density has no closed form in
``pyro_gen.data``; it is computed here by quadrature over the arc angle (``moons_log_prob``:
both half circles, noise std 0.2).

Run:  .venv/bin/python benchmarks/score_toys.py --cpu-min 5 --data checkerboard moons
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
from flow_matching_2d import add_fm_arguments
from flow_matching_2d import build as build_fm

from pyro_gen.data import load, toy_log_prob
from pyro_gen.diffusion import VESDE, ScoreModel, SubVPSDE, probability_flow_log_prob
from pyro_gen.flows import build as build_flow
from pyro_gen.infer import fit
from pyro_gen.nn.time_embedding import TimeMLP


def moons_log_prob(x: torch.Tensor, nodes: int = 8000) -> torch.Tensor:
    """log density of ``pyro_gen.data.toys.moons``: half the mass on each half circle of
    radius 2 (angle uniform on [0, pi]), shifted by (-1, -0.2), plus N(0, 0.2^2 I) noise.
    Midpoint quadrature over the angle: nodes 8e-4 apart in arc length, far below 0.2."""
    theta = (torch.arange(nodes, dtype=torch.float64) + 0.5) * (math.pi / nodes)
    outer = torch.stack([theta.cos(), theta.sin()], -1)
    inner = torch.stack([1 - theta.cos(), 0.5 - theta.sin()], -1)
    centers = 2 * torch.cat([outer, inner]) + torch.tensor([-1.0, -0.2], dtype=torch.float64)
    var = 0.2**2
    out = []
    for chunk in x.double().split(2000):
        sq = (chunk[:, None, :] - centers).pow(2).sum(-1)
        lse = torch.logsumexp(-0.5 * sq / var, -1)
        out.append(lse - math.log(2 * nodes) - math.log(2 * math.pi * var))
    return torch.cat(out).to(x.dtype)


def true_log_prob(data: str, x: torch.Tensor) -> torch.Tensor:
    return moons_log_prob(x) if data == "moons" else toy_log_prob(data, x)


#: flows_2d.py's learning rate and its final factor for the affine flows
AFFINE = {name: (1e-3, 0.05) for name in ("nice", "realnvp", "glow", "maf")}


def build(name: str, args: argparse.Namespace, x: torch.Tensor):
    """(module trained by fit, log-density function used for the KL)."""
    if name in AFFINE:
        flow = build_flow(name, (2,))
        return flow, flow.log_prob
    if name in ("score_ve", "score_subvp"):
        sde = VESDE(0.01, args.sigma_max) if name == "score_ve" else SubVPSDE()
        sm = ScoreModel(TimeMLP(2, args.hidden, num_layers=args.layers), sde, (2,))
        return sm, lambda x: probability_flow_log_prob(
            sm, x, eps=1e-3, rtol=args.eval_tol, atol=args.eval_tol
        )
    return build_fm(name, args, x)


def run(name: str, data: str, args: argparse.Namespace) -> dict:
    pyro.clear_param_store()
    pyro.set_rng_seed(args.seed)
    x, _ = load(data, "train", num_samples=args.train_samples, seed=args.seed)
    xt, _ = load(data, "test", num_samples=args.test_samples, seed=args.seed)
    # --standardize: train on x / s (s the training data's per-coordinate std) and read the
    # density back by the change of variables log p(x) = log p_s(x / s) - sum(log s)
    scale = x.std(0) if args.standardize else torch.ones(2)
    x = x / scale
    module, log_prob = build(name, args, x)
    lr, lr_final = AFFINE.get(name, (args.lr, args.lr_final))
    if name in AFFINE and args.affine_lr is not None:
        lr = args.affine_lr
    optim = pyro.optim.Adam({"lr": lr})
    counter = {"steps": 0}
    callback = budget(optim, lr, lr_final, 60 * args.cpu_min, counter, clock=time.thread_time)
    start, cpu = time.perf_counter(), time.thread_time()
    with contextlib.suppress(BudgetSpent):
        fit(module, x, epochs=10**9, batch_size=args.batch_size, optim=optim,
            step_callbacks=[callback], progress=False)  # fmt: skip
    train_s, train_cpu = time.perf_counter() - start, time.thread_time() - cpu
    start = time.perf_counter()
    module.eval().double()
    true_lp = true_log_prob(data, xt.double())
    with torch.no_grad():
        scale64 = scale.double()
        model_lp = torch.cat([log_prob(c / scale64) for c in xt.double().split(2500)])
        model_lp = model_lp - scale64.log().sum()
    gap = true_lp - model_lp
    return {
        "model": name + (" (standardized)" if args.standardize else ""),
        "fm_dynamics": args.fm_dynamics,
        "fm_precondition": args.fm_precondition,
        "fm_fourier": [args.fm_fourier, args.fm_fourier_scale],
        "fm_time": [args.fm_time, args.fm_time_params, args.fm_weighting],
        "lr": [lr, lr_final],
        "seed": args.seed,
        "data": data,
        "steps": counter["steps"],
        "train_s": round(train_s, 1),
        "train_cpu_s": round(train_cpu, 1),
        "eval_s": round(time.perf_counter() - start, 1),
        "test_ll": model_lp.mean().item(),
        "true_ll": true_lp.mean().item(),
        "kl": gap.mean().item(),
        "kl_se": gap.std().item() / len(gap) ** 0.5,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["fm", "score_ve", "score_vp", "score_subvp"])
    p.add_argument("--data", nargs="+", default=["checkerboard", "moons"])
    p.add_argument("--cpu-min", type=float, default=5.0, help="training CPU minutes per model")
    p.add_argument("--test-samples", type=int, default=5_000)
    p.add_argument("--train-samples", type=int, default=1_000_000)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--lr-final", type=float, default=0.02, help="lr factor at end of budget")
    p.add_argument("--affine-lr", type=float, default=None, help="realnvp/maf lr (None: 1e-3)")
    p.add_argument("--eval-tol", type=float, default=1e-5, help="ODE rtol = atol at test")
    add_fm_arguments(p)
    p.add_argument("--sigma-max", type=float, default=12.0, help="VE SDE's largest std")
    p.add_argument("--standardize", action="store_true", help="train on data / its std")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print("| data | model | steps | train s | eval s | test LL | true LL | KL nats |", flush=True)
    print("|---|---|---:|---:|---:|---:|---:|---:|", flush=True)
    for data in args.data:
        for name in args.models:
            r = run(name, data, args)
            print(
                f"| {data} | {r['model']} | {r['steps']} | {r['train_s']:.0f} | {r['eval_s']:.0f} "
                f"| {r['test_ll']:.4f} | {r['true_ll']:.4f} | {r['kl']:.4f} ± {r['kl_se']:.4f} |",
                flush=True,
            )
            print("#", json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
