"""DDPM on MNIST with a small U-Net under a fixed training budget: the bound in bits/dim, a
classifier-based sample score (not comparable to Inception FID), and sampling speed.

The recipe is the tutorial's (``tutorials/diffusion_as_hierarchical_vae.ipynb``): a 16-channel
U-Net (28, 14, 7; attention at 7x7), T=1000 linear schedule, eps prediction with learned
interpolated variances, the analytic-KL time-plate bound (``TraceMeanField_ELBO``), Adam
2e-3 with gradient norm clipped to 1, batch 64, and an EMA (decay 0.995) updated after each
optimizer step. Training runs for a wall-clock budget, through the compiled SVI step.

Reported: the bound on the first ``--num-test`` test images (all 1000 terms, one draw of
x_t per term); for ancestral (1000-step) and DDIM (50-step, eta=0) samples, the Frechet
distance of our small classifier's features to 2000 real test images, its mean confidence
and the class spread, plus the same score for real test images at the same sample count
(the floor that sample size allows); and samples per second of each sampler.

Run:  .venv/bin/python benchmarks/diffusion_mnist.py --minutes 10 --threads 1
"""

from __future__ import annotations

import argparse
import json
import math
import time

import pyro
import torch
from pyro.infer import TraceMeanField_ELBO

from pyro_gen.data import load
from pyro_gen.diffusion import build_ddpm, variational_bound
from pyro_gen.diffusion.quality import sample_quality, train_classifier
from pyro_gen.infer.compiled import CompiledSVI


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="mnist", choices=["mnist", "fashion_mnist"])
    p.add_argument("--minutes", type=float, default=10.0, help="training wall-clock budget")
    p.add_argument("--timesteps", type=int, default=1000)
    p.add_argument("--schedule", default="linear")
    p.add_argument("--param", default="eps")
    p.add_argument("--objective", default="elbo")
    p.add_argument("--base-channels", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--clip", type=float, default=1.0, help="global gradient norm clip")
    p.add_argument("--ema-decay", type=float, default=0.995)
    p.add_argument("--num-test", type=int, default=64, help="first N test images for the bound")
    p.add_argument("--num-samples", type=int, default=64, help="samples per sampler")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--save-samples", default=None, help="write the samples to this .pt file")
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
        timesteps=args.timesteps, base_channels=args.base_channels, ema_decay=args.ema_decay,
    ).to(dev)  # fmt: skip
    pyro.clear_param_store()
    optim = pyro.optim.Adam({"lr": args.lr})
    svi = CompiledSVI(m.model, m.guide, optim, TraceMeanField_ELBO(), grad_clip=args.clip)
    t0, steps = time.time(), 0
    losses: list[torch.Tensor] = []  # read back only at the end, as fit reads in groups
    while time.time() - t0 < 60 * args.minutes:
        batch = train[torch.randint(0, train.shape[0], (args.batch_size,), device=dev)]
        losses.append(svi.step(batch))
        m.update_ema()  # after the optimizer step (fit: step_callbacks=[ema_callback])
        steps += 1
    train_s = time.time() - t0
    last = float(torch.stack(losses[-100:]).mean()) if losses else float("nan")
    last_bpd = last / args.batch_size / (784 * math.log(2))  # time-plate estimate, not the bound
    out: dict = {
        "args": vars(args),
        "train_steps": steps,
        "train_epochs": round(steps * args.batch_size / train.shape[0], 2),
        "train_seconds": round(train_s, 1),
        "compiled_step": svi.fallback_reason is None,
        "train_loss_last_100_steps_bits_per_dim": round(last_bpd, 3),
        "num_params": sum(q.numel() for q in m.net.parameters()),
    }
    m.eval()
    with m.ema.average_parameters():
        t1 = time.time()
        b = variational_bound(m, test[: args.num_test].to(dev), batch_size=64)
        out["bound_seconds"] = round(time.time() - t1, 1)
        out["test_bound_bits_per_dim"] = round(float(b["bits_per_dim"].mean()), 4)
        out["test_bound_bits_per_dim_stderr"] = round(
            float(b["bits_per_dim"].std() / args.num_test**0.5), 4
        )
        samples = {}
        ddim_steps = min(50, args.timesteps)
        runs = [(f"ddim{ddim_steps}", {"sampler": "ddim", "steps": ddim_steps})]
        for name, kw in [*runs, (f"ancestral{args.timesteps}", {})]:
            t1 = time.time()
            samples[name] = m.sample(args.num_samples, **kw).cpu()
            out[f"{name}_samples_per_s"] = round(args.num_samples / (time.time() - t1), 3)
    t1 = time.time()
    clf = train_classifier(x.float()[:, None] / 255, y, epochs=1)
    out["classifier_seconds"] = round(time.time() - t1, 1)
    real, real_y = test[:2000], yt[:2000]
    samples["real_test_images"] = test[2000 : 2000 + args.num_samples]
    for name, s in samples.items():
        q = sample_quality(clf, s, real, real_y)
        out[f"{name}_quality"] = {k: round(v, 4) for k, v in vars(q).items()}
    if args.save_samples:
        torch.save(samples, args.save_samples)
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
