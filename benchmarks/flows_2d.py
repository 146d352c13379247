"""RealNVP, MAF and CNF on 2D toys with a known density: KL(p_true || p_model) per time budget.

Each model trains by maximum likelihood (``pyro_gen.infer.fit``) until its wall-clock budget
is spent (checked after every epoch; one torch thread, so wall time bounds CPU time), with
the Adam learning rate decayed exponentially over the budget. Then, on fresh test samples
from the true density,

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
import json
import time

import pyro
import torch

from pyro_gen.data import load, toy_log_prob
from pyro_gen.flows import build
from pyro_gen.infer import fit


def lr_schedule(optim: pyro.optim.PyroOptim, lr0: float, final: float, start: float, budget: float):
    """Epoch callback: set lr = lr0 * final**(elapsed / budget); stop once the budget is spent."""

    def callback(record: dict, model: torch.nn.Module) -> bool:
        frac = min((time.perf_counter() - start) / budget, 1.0)
        for opt in optim.optim_objs.values():
            # CompiledSVI's fused Adam stands behind a per-parameter view (.optimizer_)
            for group in getattr(opt, "optimizer_", opt).param_groups:
                group["lr"] = lr0 * final**frac
        return frac >= 1.0

    return callback


@torch.no_grad()
def mean_log_prob(model, x: torch.Tensor, chunk: int = 10_000) -> float:
    model.eval()
    return torch.cat([model.log_prob(c) for c in x.split(chunk)]).double().mean().item()


def run(name: str, data: str, args: argparse.Namespace) -> dict:
    pyro.set_rng_seed(args.seed)
    x, _ = load(data, "train", num_samples=args.train_samples, seed=args.seed)
    xt, _ = load(data, "test", num_samples=args.test_samples, seed=args.seed)
    model = build(name, (2,))
    optim = pyro.optim.Adam({"lr": args.lr})
    start = time.perf_counter()
    stop = lr_schedule(optim, args.lr, args.lr_final, start, 60 * args.budget_min)
    result = fit(
        model,
        x,
        epochs=10**9,
        batch_size=args.batch_size,
        optim=optim,
        callbacks=[stop],
        progress=False,
    )
    train_s = time.perf_counter() - start
    true_ll = toy_log_prob(data, xt).double().mean().item()
    test_ll = mean_log_prob(model, xt)
    return {
        "model": name,
        "data": data,
        "steps": result.step,
        "train_s": round(train_s, 1),
        "test_ll": test_ll,
        "true_ll": true_ll,
        "kl": true_ll - test_ll,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["realnvp", "maf", "cnf"])
    p.add_argument("--data", nargs="+", default=["eight_gaussians", "checkerboard"])
    p.add_argument("--budget-min", type=float, default=5.0, help="training minutes per model")
    p.add_argument("--test-samples", type=int, default=100_000)
    p.add_argument("--train-samples", type=int, default=50_000)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--lr-final", type=float, default=0.05, help="lr factor at end of budget")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
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
                f"| {r['true_ll']:.4f} | {r['kl']:.4f} |",
                flush=True,
            )
            print("#", json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
