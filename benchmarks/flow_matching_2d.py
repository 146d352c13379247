"""Flow matching and a VP-SDE score model on 2D toys: KL(p_true || p_model) through the ODE
likelihood, per wall-clock budget (issue 13).

* ``fm``: pyro_gen's vector CNF (one ``ContinuousFlow``; its velocity network a ``TimeMLP``
  with a sinusoidal time embedding, ``--fm-dynamics``) trained by conditional flow matching
  (``pyro_gen.diffusion.FlowMatching``, sigma_min = 1e-4; by default logit-uniform times and
  the noise weight, ``--fm-time`` / ``--fm-weighting``) through ``pyro_gen.infer.fit``, no
  ODE solve in training; evaluated by the CNF's own ``log_prob`` (dopri5 at ``--eval-tol``,
  exact trace), the same density FFJORD training maximises (``benchmarks/flows_2d.py``).
* ``rectified``: the same with sigma_min = 0 (1-rectified flow, independent coupling).
* ``score_vp``: a ``ScoreModel`` on the VP SDE (eps-prediction, sigma^2 weighting) trained by
  denoising score matching through ``fit``, evaluated by the probability-flow ODE density at
  eps = 1e-3 (``probability_flow_log_prob``).

KL = E_true[log p_true(x) - log p_model(x)] on fresh test points, in float64, with its Monte
Carlo standard error. One torch thread; the Adam learning rate decays over the budget.

Run:  .venv/bin/python benchmarks/flow_matching_2d.py --budget-min 3 --test-samples 20000
      (``--steps N`` trains a fixed number of steps instead of a wall-clock budget)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time

import pyro
import torch
from budget import BudgetSpent, budget
from torch import nn

from pyro_gen.data import load, toy_log_prob
from pyro_gen.diffusion import VPSDE, FlowMatching, ScoreModel, probability_flow_log_prob
from pyro_gen.diffusion.flow_matching import TIME_SAMPLINGS, WEIGHTINGS
from pyro_gen.flows import CNF
from pyro_gen.infer import fit
from pyro_gen.nn.time_embedding import TimeMLP


def step_budget(optim, lr0: float, final: float, steps: int, counter: dict):
    """Like ``budget.budget`` but over a number of steps (a busy shared machine makes a
    wall-clock budget buy a varying amount of training)."""

    def callback(step: int, model) -> None:
        counter["steps"] = step
        if step >= steps:
            raise BudgetSpent
        for opt in optim.optim_objs.values():
            for group in getattr(opt, "optimizer_", opt).param_groups:
                group["lr"] = lr0 * final ** (step / steps)

    return callback


def add_fm_arguments(p: argparse.ArgumentParser) -> None:
    """The flow-matching CNF's options (shared with ``score_toys.py``)."""
    # time_mlp: a sinusoidal time embedding; on the checkerboard (60 CPU s) it reached KL 0.18
    # where FFJORD's ConcatSquash net (SiLU) reached 0.32 (RESULTS.md, session 5)
    p.add_argument("--fm-dynamics", default="time_mlp", choices=("time_mlp", "concat_squash"))
    # FlowMatching(data_std=...): the velocity as c_skip x + c_out F (PreconditionedVelocity);
    # checkerboard: KL 0.14 against 0.18 without after 60 CPU s, but 0.058 against 0.056 after
    # the 5 minutes (RESULTS.md, session 5), so it is off by default
    p.add_argument("--fm-precondition", action=argparse.BooleanOptionalAction, default=False)
    # random Fourier features of the state for the time_mlp net (CNF(fourier_features=...));
    # checkerboard, 64 at scale 0.5: KL 0.18 against 0.24 after 60 CPU s, 0.063 after 5 minutes
    # (0.056 without in session 5), so off by default (RESULTS.md, session 6)
    p.add_argument("--fm-fourier", type=int, default=0, help="random Fourier features (0: none)")
    p.add_argument("--fm-fourier-scale", type=float, default=1.0, help="their frequencies' std")
    # FlowMatching(time_sampling=, time_params=, weighting=): the law of the path fraction s
    # and the loss weight. Checkerboard, 2 CPU min: uniform/velocity (the library's default)
    # 0.100, logit-uniform/velocity 0.108, uniform/noise 0.074, logit-uniform/noise 0.069;
    # 5 CPU min, logit-uniform/noise: 0.035 where uniform/velocity had 0.056-0.063 in earlier
    # sessions (RESULTS.md, session 7)
    p.add_argument("--fm-time", default="logit_uniform", choices=tuple(TIME_SAMPLINGS))
    p.add_argument("--fm-time-params", type=float, nargs=2, default=None, help="of logit s")
    p.add_argument("--fm-weighting", default="noise", choices=WEIGHTINGS)


def build(name: str, args: argparse.Namespace, x: torch.Tensor):
    """(module trained by fit, log-density function used for the KL); ``x`` the training data."""
    hidden = tuple([args.hidden] * args.layers)
    if name in ("fm", "rectified"):
        cnf = CNF((2,), hidden_dims=hidden, activation=nn.SiLU, dynamics=args.fm_dynamics,
                  rtol=args.eval_tol, atol=args.eval_tol, fourier_features=args.fm_fourier,
                  fourier_scale=args.fm_fourier_scale)  # fmt: skip
        objective = "cfm" if name == "fm" else "rectified"
        data_std = x.var(0).mean().sqrt().item() if args.fm_precondition else None
        fm = FlowMatching(cnf, objective=objective, time_samples=1, data_std=data_std,
                          time_sampling=args.fm_time, time_params=args.fm_time_params,
                          weighting=args.fm_weighting)  # fmt: skip
        return fm, cnf.log_prob
    if name == "score_vp":
        sm = ScoreModel(TimeMLP(2, args.hidden, num_layers=args.layers), VPSDE(), (2,))
        return sm, lambda x: probability_flow_log_prob(
            sm, x, eps=1e-3, rtol=args.eval_tol, atol=args.eval_tol
        )
    raise ValueError(f"unknown model {name!r}")


def run(name: str, data: str, args: argparse.Namespace) -> dict:
    pyro.clear_param_store()
    pyro.set_rng_seed(args.seed)
    x, _ = load(data, "train", num_samples=args.train_samples, seed=args.seed)
    xt, _ = load(data, "test", num_samples=args.test_samples, seed=args.seed)
    module, log_prob = build(name, args, x)
    optim = pyro.optim.Adam({"lr": args.lr})
    counter = {"steps": 0}
    if args.steps:
        callback = step_budget(optim, args.lr, args.lr_final, args.steps, counter)
    else:
        callback = budget(optim, args.lr, args.lr_final, 60 * args.budget_min, counter)
    start = time.perf_counter()
    with contextlib.suppress(BudgetSpent):
        fit(module, x, epochs=10**9, batch_size=args.batch_size, optim=optim,
            step_callbacks=[callback], progress=False)  # fmt: skip
    train_s = time.perf_counter() - start
    start = time.perf_counter()
    module.eval().double()
    true_lp = toy_log_prob(data, xt.double())
    with torch.no_grad():
        model_lp = torch.cat([log_prob(c) for c in xt.double().split(5000)])
    gap = true_lp - model_lp
    return {
        "model": name,
        "data": data,
        "steps": counter["steps"],
        "train_s": round(train_s, 1),
        "eval_s": round(time.perf_counter() - start, 1),
        "test_ll": model_lp.mean().item(),
        "true_ll": true_lp.mean().item(),
        "kl": gap.mean().item(),
        "kl_se": gap.std().item() / len(gap) ** 0.5,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["fm", "rectified", "score_vp"])
    p.add_argument("--data", nargs="+", default=["eight_gaussians"])
    p.add_argument("--budget-min", type=float, default=3.0, help="training minutes per model")
    p.add_argument("--steps", type=int, default=0, help="train this many steps instead")
    p.add_argument("--test-samples", type=int, default=20_000)
    p.add_argument("--train-samples", type=int, default=1_000_000)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--lr-final", type=float, default=0.02, help="lr factor at end of budget")
    p.add_argument("--eval-tol", type=float, default=1e-5, help="ODE rtol = atol at test")
    add_fm_arguments(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    for data in args.data:
        toy_log_prob(data, torch.zeros(1, 2))
    print("| data | model | steps | train s | eval s | test LL | true LL | KL nats |", flush=True)
    print("|---|---|---:|---:|---:|---:|---:|---:|", flush=True)
    for data in args.data:
        for name in args.models:
            r = run(name, data, args)
            print(
                f"| {data} | {name} | {r['steps']} | {r['train_s']:.0f} | {r['eval_s']:.0f} "
                f"| {r['test_ll']:.4f} | {r['true_ll']:.4f} | {r['kl']:.4f} ± {r['kl_se']:.4f} |",
                flush=True,
            )
            print("#", json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
