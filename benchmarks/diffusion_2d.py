"""DDPM on eight Gaussians: the bound in nats and how close samples come to the true density.

Measures, on held-out points from the true mixture p:
  * the DDPM bound E_p[-ELBO(x)] in nats (all T terms, analytic KLs),
  * H(p) = E_p[-log p(x)] (Monte Carlo, exact density),
  * KL(p || p_model) <= E_p[-ELBO(x)] - H(p)   (an upper bound, since -log p_model <= -ELBO),
  * E_q[log p(x)] for model samples q (ancestral T steps and DDIM-50) against E_p[log p(x)]:
    samples falling between the modes lower it.

Run:  .venv/bin/python benchmarks/diffusion_2d.py --steps 4000
"""

from __future__ import annotations

import argparse
import json
import time

import pyro
import torch
from pyro.infer import SVI, TraceMeanField_ELBO

from pyro_gen.data import load, toy_log_prob
from pyro_gen.diffusion import build_ddpm, variational_bound


def true_log_prob(x: torch.Tensor) -> torch.Tensor:
    return toy_log_prob("eight_gaussians", x)


def load_data(n: int, split: str) -> torch.Tensor:
    return load("eight_gaussians", split, num_samples=n, seed=0)[0]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--timesteps", type=int, default=200)
    p.add_argument("--schedule", default="cosine")
    p.add_argument("--param", default="eps")
    p.add_argument("--objective", default="elbo")
    p.add_argument("--variance", default="learned_range")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--num-test", type=int, default=4000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    pyro.set_rng_seed(0)
    dev = torch.device(args.device)
    train = load_data(50_000, "train").to(dev)
    test = load_data(args.num_test, "test").to(dev)
    m = build_ddpm(
        (2,), schedule=args.schedule, param=args.param, objective=args.objective,
        timesteps=args.timesteps, variance=args.variance, hidden_dim=args.hidden,
        ema_decay=0.995, time_samples=4,
    ).to(dev)  # fmt: skip
    pyro.clear_param_store()
    lrd = 0.1 ** (1 / max(args.steps, 1))
    optim = pyro.optim.ClippedAdam({"lr": args.lr, "lrd": lrd, "clip_norm": 5.0})
    svi = SVI(m.model, m.guide, optim, TraceMeanField_ELBO())
    t0 = time.time()
    for _ in range(args.steps):
        svi.step(train[torch.randint(0, train.shape[0], (args.batch_size,), device=dev)])
        m.update_ema()  # after the optimizer step, as fit(step_callbacks=[ema_callback]) does
    train_s = time.time() - t0
    m.eval()
    with m.ema.average_parameters():
        bound = float(variational_bound(m, test)["total"].mean())
    entropy = float(-true_log_prob(test.cpu()).mean())
    out = {
        "args": vars(args),
        "train_seconds": round(train_s, 1),
        "bound_nats": round(bound, 4),
        "true_entropy_nats": round(entropy, 4),
        "kl_upper_bound_nats": round(bound - entropy, 4),
        "E_p[log p]": round(-entropy, 4),
    }
    for name, kw in [("ancestral", {}), ("ddim50", {"steps": min(50, args.timesteps)})]:
        sampler = "ancestral" if name == "ancestral" else "ddim"
        t0 = time.time()
        x = m.sample(args.num_test, sampler, **kw).cpu()
        out[f"{name}_samples_per_s"] = round(args.num_test / (time.time() - t0), 1)
        out[f"{name}_E_q[log p]"] = round(float(true_log_prob(x).mean()), 4)
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
