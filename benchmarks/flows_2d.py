"""RealNVP, MAF and CNF on 2D toys with a known density: KL(p_true || p_model) per time budget.

Each model trains by maximum likelihood (``pyro_gen.infer.fit``) until its wall-clock budget
is spent (checked after every step; one torch thread, so wall time bounds CPU time), with
the Adam learning rate decayed exponentially over the budget. Then, on fresh test samples
from the true density, in float64 (the CNF solved by dopri5 at ``--eval-tol``, whatever
solver tolerance it trained with),

  * KL(p_true || p_model) = E_true[log p_true(x) - log p_model(x)]  (Monte Carlo),
  * the test log-likelihood E_true[log p_model(x)] and the true one E_true[log p_true(x)].

True densities come from ``pyro_gen.data.toy_log_prob`` (the toys with a closed form):
  * eight_gaussians: equal-weight mixture of N(c_k, (0.5 / sqrt 2)^2 I),
    c_k = 4 (cos(k pi / 4), sin(k pi / 4)) / sqrt 2;
  * checkerboard: uniform on the 8 black 2x2 squares of [-4, 4]^2 (density 1/32).

Run:  .venv/bin/python benchmarks/flows_2d.py --budget-min 5 --test-samples 100000
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time

import pyro
import torch
from budget import BudgetSpent, budget

from pyro_gen.data import load, toy_log_prob
from pyro_gen.flows import build
from pyro_gen.infer import fit
from pyro_gen.transforms.continuous import ContinuousFlow


def exact_solver(model: torch.nn.Module, rtol: float, atol: float) -> None:
    """Evaluate every ODE block with dopri5 at tight tolerances, whatever it trained with.

    The CNF's density is that of its ODE; a loose (or fixed-step) training solver only
    approximates it, so the reported KL must come from an accurate solve of the same ODE.
    """
    for m in model.modules():
        if isinstance(m, ContinuousFlow):
            m.method, m.rtol, m.atol, m.options = "dopri5", rtol, atol, None


@torch.no_grad()
def model_log_prob(model, x: torch.Tensor, chunk: int = 10_000) -> torch.Tensor:
    """Test log-densities in float64, so the KL (a small difference of two means of about
    -3) carries no float32 rounding from the flow's own arithmetic."""
    model.eval().double()
    return torch.cat([model.log_prob(c) for c in x.double().split(chunk)])


#: The benchmark's recipe per model on top of ``build``'s defaults, the same for every dataset.
#: The CNF trains with a loose solver tolerance (about twice the steps per minute of 1e-5) and
#: is evaluated by :func:`exact_solver`, so the reported density is that of its ODE.
RECIPES: dict[str, dict] = {"cnf": {"rtol": 1e-3, "atol": 1e-3}}


def run(name: str, data: str, args: argparse.Namespace) -> dict:
    pyro.set_rng_seed(args.seed)
    x, _ = load(data, "train", num_samples=args.train_samples, seed=args.seed)
    xt, _ = load(data, "test", num_samples=args.test_samples, seed=args.seed)
    options = {**RECIPES.get(name, {}), **json.loads(args.options.get(name, "{}"))}
    model = build(name, (2,), **options)
    optim = pyro.optim.Adam({"lr": args.lr})
    counter = {"steps": 0}
    callback = budget(optim, args.lr, args.lr_final, 60 * args.budget_min, counter)
    start = time.perf_counter()
    with contextlib.suppress(BudgetSpent):
        fit(
            model,
            x,
            epochs=10**9,
            batch_size=args.batch_size,
            optim=optim,
            step_callbacks=[callback],
            progress=False,
        )
    train_s = time.perf_counter() - start
    start = time.perf_counter()
    true_lp = toy_log_prob(data, xt.double())
    exact_solver(model, args.eval_tol, args.eval_tol)
    model_lp = model_log_prob(model, xt)
    gap = true_lp - model_lp
    eval_s = time.perf_counter() - start
    return {
        "model": name,
        "data": data,
        "options": options,
        "steps": counter["steps"],
        "train_s": round(train_s, 1),
        "eval_s": round(eval_s, 1),
        "test_ll": model_lp.mean().item(),
        "true_ll": true_lp.mean().item(),
        "kl": gap.mean().item(),
        # Monte Carlo standard error of the KL estimate
        "kl_se": gap.std().item() / len(gap) ** 0.5,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["realnvp", "maf", "cnf"])
    p.add_argument("--data", nargs="+", default=["eight_gaussians", "checkerboard"])
    p.add_argument("--budget-min", type=float, default=5.0, help="training minutes per model")
    p.add_argument("--test-samples", type=int, default=100_000)
    # Toys can be drawn at will: 1M points keep even the fastest model under ~20 passes in
    # 5 minutes, so what limits the KL is the model and its training, not overfitting.
    p.add_argument("--train-samples", type=int, default=1_000_000)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--lr-final", type=float, default=0.05, help="lr factor at end of budget")
    p.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="MODEL=JSON",
        help="constructor overrides, e.g. --option 'maf={\"num_layers\": 8}'",
    )
    p.add_argument("--eval-tol", type=float, default=1e-5, help="CNF rtol = atol at test")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    args.options = dict(o.split("=", 1) for o in args.option)
    torch.set_num_threads(args.threads)
    for data in args.data:  # fail before training, not after, on a toy with no exact density
        toy_log_prob(data, torch.zeros(1, 2))
    print("| data | model | steps | train s | test LL | true LL | KL nats |", flush=True)
    print("|---|---|---:|---:|---:|---:|---:|", flush=True)
    for data in args.data:
        for name in args.models:
            r = run(name, data, args)
            print(
                f"| {data} | {name} | {r['steps']} | {r['train_s']:.0f} | {r['test_ll']:.4f} "
                f"| {r['true_ll']:.4f} | {r['kl']:.4f} ± {r['kl_se']:.4f} |",
                flush=True,
            )
            print("#", json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
