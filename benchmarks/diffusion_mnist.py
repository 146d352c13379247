"""DDPM on MNIST with a small U-Net under a fixed training budget: the bound in bits/dim, a
classifier-based sample score (not comparable to Inception FID), and sampling speed.

Run:  .venv/bin/python benchmarks/diffusion_mnist.py --minutes 10 --threads 2
"""

from __future__ import annotations

import argparse
import json
import time

import pyro
import torch
from pyro.infer import SVI, TraceMeanField_ELBO

from pyro_gen.data import load
from pyro_gen.diffusion import build_ddpm, variational_bound
from pyro_gen.diffusion.quality import sample_quality, train_classifier


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="mnist", choices=["mnist", "fashion_mnist"])
    p.add_argument("--minutes", type=float, default=10.0, help="training wall-clock budget")
    p.add_argument("--timesteps", type=int, default=1000)
    p.add_argument("--schedule", default="linear")
    p.add_argument("--param", default="eps")
    p.add_argument("--objective", default="elbo")
    p.add_argument("--base-channels", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--num-test", type=int, default=64, help="test images for the bound")
    p.add_argument("--bound-steps", type=int, default=None,
                   help="only this many evenly spaced terms, rescaled (approximate)")  # fmt: skip
    p.add_argument("--num-samples", type=int, default=128)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    pyro.set_rng_seed(0)
    dev = torch.device(args.device)
    x, y = load(args.data, "train")
    xt, yt = load(args.data, "test")
    train = (x.float() / 255)[:, None].to(dev)
    test = (xt.float() / 255)[:, None]
    m = build_ddpm(
        (1, 28, 28), schedule=args.schedule, param=args.param, objective=args.objective,
        timesteps=args.timesteps, base_channels=args.base_channels, ema_decay=0.999,
    ).to(dev)  # fmt: skip
    pyro.clear_param_store()
    svi = SVI(m.model, m.guide, pyro.optim.Adam({"lr": args.lr}), TraceMeanField_ELBO())
    t0, steps = time.time(), 0
    while time.time() - t0 < 60 * args.minutes:
        svi.step(train[torch.randint(0, train.shape[0], (args.batch_size,), device=dev)])
        steps += 1
    out: dict = {"args": vars(args), "train_steps": steps, "train_minutes": args.minutes}
    m.eval()
    with m.ema.average_parameters():
        ts = None
        if args.bound_steps:
            ts = torch.linspace(1, args.timesteps, args.bound_steps).round().long()
        b = variational_bound(m, test[: args.num_test].to(dev), timesteps=ts, batch_size=64)
    out["test_bound_bits_per_dim"] = round(float(b["bits_per_dim"].mean()), 4)
    clf = train_classifier(x.float()[:, None] / 255, y, epochs=1)
    real = test[:2000]
    for name, kw in [("ddim50", {"sampler": "ddim", "steps": 50}), ("ancestral", {})]:
        t1 = time.time()
        s = m.sample(args.num_samples, batch_size=64, **kw).cpu()
        out[f"{name}_samples_per_s"] = round(args.num_samples / (time.time() - t1), 2)
        q = sample_quality(clf, s, real, yt[:2000])
        out[f"{name}_quality"] = {k: round(v, 4) for k, v in vars(q).items()}
    ref = sample_quality(clf, test[2000 : 2000 + args.num_samples], real, yt[:2000])
    out["real_vs_real_quality"] = {k: round(v, 4) for k, v in vars(ref).items()}
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
