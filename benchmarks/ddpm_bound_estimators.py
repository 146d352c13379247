"""Three estimates of a DDPM's bound on held-out data, each against its cost in network passes.

A DDPM trained on moons (T steps) is scored on held-out points three ways; the numbers are
per-example negative ELBOs in nats, their mean +- standard error over the points, their
spread (standard deviation over the points: the estimator's noise plus the points' own
variation) and the network passes per point:

* ``whole``: :func:`~pyro_gen.diffusion.variational_bound`, every one of the T terms with
  one draw of x_t each (T passes);
* ``stratified``: :func:`~pyro_gen.diffusion.sampled_variational_bound` (L_0 exact, one step
  per point in each of 16 geometric strata of the rest: 17 passes), what
  ``pyro-gen evaluate`` reports for T > 17;
* ``time plate, eval mode``: :func:`~pyro_gen.infer.evaluate_elbo` on the model itself, which
  scores in eval mode, where the time plate takes the stratified design (``eval_strata=4``,
  the default: 5 passes; and with 16 strata, 17 passes) and, as ``fit`` passes its
  ``TraceMeanField_ELBO``, closed-form KLs; what ``fit(eval_data=...)`` reports;
* ``time plate, training draw``: the same with ``eval_strata=0``, the training objective's own
  estimate, one step drawn uniformly per point and weighted by T (1 pass), what
  ``fit(eval_data=...)`` reported before the stratified eval mode.

All three are unbiased for the same bound, so their means agree within their errors; their
efficiency is 1 / (variance x passes).

Run:  .venv/bin/python benchmarks/ddpm_bound_estimators.py
"""

from __future__ import annotations

import argparse
import math
import time

import pyro
import torch
from pyro.infer import TraceMeanField_ELBO

from pyro_gen.data import load
from pyro_gen.diffusion import build_ddpm, sampled_variational_bound, variational_bound
from pyro_gen.infer import evaluate_elbo, fit


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--timesteps", type=int, default=500)
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--points", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    pyro.set_rng_seed(args.seed)
    x, _ = load("moons", num_samples=20000, seed=args.seed)
    model = build_ddpm((2,), timesteps=args.timesteps, hidden_dim=128)
    start = time.perf_counter()
    fit(model, x, loss=TraceMeanField_ELBO(), epochs=args.epochs, batch_size=256,
        optim=pyro.optim.Adam({"lr": 2e-3}), progress=False)  # fmt: skip
    print(f"trained {args.epochs} epochs in {time.perf_counter() - start:.0f} s")
    test, _ = load("moons", "test", num_samples=args.points, seed=args.seed + 1)
    model.eval()
    # as fit scores held-out data with the training objective: its KLs in closed form
    scored = {"loss": TraceMeanField_ELBO(), "per_example": True}
    with torch.no_grad():
        rows = {
            "whole": (-variational_bound(model, test)["total"], args.timesteps),
            "stratified": (-sampled_variational_bound(model, test, strata=16)["total"], 17),
            "time plate, eval mode (default, 4 strata)": (evaluate_elbo(model, test, **scored), 5),
        }
        model.eval_strata = 16
        rows["time plate, eval mode, 16 strata"] = (evaluate_elbo(model, test, **scored), 17)
        model.eval_strata = 0
        rows["time plate, training draw"] = (evaluate_elbo(model, test, **scored), 1)
    whole_var = float(rows["whole"][0].double().var())
    print("| estimate | ELBO, nats (mean +- s.e.) | spread | passes | efficiency vs whole |")
    print("|---|---:|---:|---:|---:|")
    for name, (values, passes) in rows.items():
        v = values.double()
        sd = float(v.std())
        efficiency = whole_var * args.timesteps / (sd**2 * passes)
        print(
            f"| {name} | {float(v.mean()):.2f} +- {sd / math.sqrt(len(v)):.2f} | {sd:.2f} "
            f"| {passes} | {efficiency:.1f} |"
        )


if __name__ == "__main__":
    main()
