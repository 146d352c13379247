"""MNIST through the score-based view of diffusion (issue 13): probability-flow bits/dim of the
tutorial's DDPM and of a VP-SDE score model beside the DDPM's discrete bound, and every sampler
at equal network evaluations scored by the classifier Frechet distance.

Three steps, each a subcommand, so the long ones can run one at a time in the background:

``train --model ddpm|score``
    The tutorial's recipe (``tutorials/diffusion_as_hierarchical_vae.ipynb``): 16-channel
    U-Net (28/14/7, attention at 7x7), batch 64, Adam 2e-3, gradient norm clipped to 1, EMA
    0.995 after each step, 1800 steps through :func:`~pyro_gen.infer.fit`. ``ddpm``: T=1000
    linear schedule, eps prediction with learned variances, the analytic-KL time-plate bound.
    ``score``: the same U-Net (one output channel) as a :class:`~pyro_gen.diffusion.ScoreModel`
    of the VP SDE (beta 0.1..20, the DDPM's continuous limit), eps prediction, DSM with the
    sigma^2 weighting (the DDPM's "simple" loss in continuous time), on images mapped to [-1, 1].
    The trained module is saved with ``torch.save``; the thread CPU time is recorded.
``nll``
    On ``--num-test`` test images drawn at random (fixed seed): the DDPM's bound (all 1000
    terms, EMA weights), and the probability-flow bits/dim of both models (uniform
    dequantization, Hutchinson's trace estimator, dopri5 at ``--tol``), per image, with the
    network evaluations (NFE) and CPU seconds per batch; standard errors of the means and of
    the paired differences.
``samplers``
    ``--num-samples`` samples per sampler at about ``--nfe`` network evaluations each
    (annealed Langevin, Euler-Maruyama, predictor-corrector, probability-flow ODE with a
    fixed-step RK4; DDIM and optionally ancestral for the DDPM), scored by
    :func:`pyro_gen.metrics.sample_quality` against 2000 real test images, with the floor:
    real test images at the same count. Samples per second on one thread.

Run (logs and files in the working directory ``--dir``)::

    python benchmarks/score_mnist.py train --model ddpm --dir /tmp/h13b
    python benchmarks/score_mnist.py train --model score --dir /tmp/h13b
    python benchmarks/score_mnist.py nll --num-test 128 --dir /tmp/h13b
    python benchmarks/score_mnist.py samplers --num-samples 256 --nfe 100 --dir /tmp/h13b
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pyro
import torch
from pyro.infer import TraceMeanField_ELBO

from pyro_gen.data import load
from pyro_gen.diffusion import (
    EMA,
    DDPMScore,
    ScoreModel,
    build_ddpm,
    ema_callback,
    probability_flow_bits_per_dim,
    sample,
    variational_bound,
)
from pyro_gen.diffusion.sde import VPSDE
from pyro_gen.infer import fit
from pyro_gen.nn import UNet


def _images(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = load("mnist", split)
    return x.float()[:, None] / 255, y  # (N, 1, 28, 28) on the levels i / 255


def build_score_model() -> ScoreModel:
    """The DDPM's U-Net as a VP-SDE score model (eps prediction, sigma^2 weighting)."""
    m = ScoreModel(UNet(1, 16, (1, 2, 2)), VPSDE(0.1, 20.0), (1, 28, 28), param="eps")
    m.ema = EMA(m.net, decay=0.995)  # found by ema_callback, like the DDPM's
    return m


def train(args: argparse.Namespace) -> dict:
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    x, _ = _images("train")
    if args.model == "ddpm":
        m = build_ddpm((28, 28), schedule="linear", timesteps=1000, num_bins=256,
                       base_channels=16, ema_decay=0.995)  # fmt: skip
        loss, data = TraceMeanField_ELBO(), x[:, 0]
    else:
        m = build_score_model()
        loss, data = pyro.infer.Trace_ELBO(), 2 * x - 1
    c0, w0 = time.thread_time(), time.time()
    res = fit(m, data, steps=args.steps, batch_size=64, loss=loss,
              optim=pyro.optim.Adam({"lr": 2e-3}), grad_clip=1.0,
              step_callbacks=[ema_callback], progress=False)  # fmt: skip
    out = {
        "model": args.model,
        "steps": args.steps,
        "cpu_seconds": round(time.thread_time() - c0, 1),
        "wall_seconds": round(time.time() - w0, 1),
        "final_train_loss": res.history[-1]["train_loss"],
        "num_params": sum(p.numel() for p in m.net.parameters()),
    }
    m.eval()
    torch.save(m, Path(args.dir) / f"{args.model}.pt")
    return out


def _load(args: argparse.Namespace, name: str):
    m = torch.load(Path(args.dir) / f"{name}.pt", weights_only=False)
    m.eval()
    return m


class _Counting:
    """A score model whose ``score`` calls are counted (one network evaluation each)."""

    def __init__(self, sm) -> None:
        self.sm, self.calls = sm, 0
        self.sde, self.event_shape = sm.sde, sm.event_shape
        self.eps = sm.eps
        if hasattr(sm, "ddpm"):
            self.ddpm = sm.ddpm  # marks an image DDPM for probability_flow_bits_per_dim

    def score(self, x, t):
        self.calls += 1
        return self.sm.score(x, t)


def _mean_se(v: torch.Tensor) -> tuple[float, float]:
    return float(v.mean()), float(v.std() / v.numel() ** 0.5)


def nll(args: argparse.Namespace) -> dict:
    xt, _ = _images("test")
    gen = torch.Generator().manual_seed(args.seed)
    idx = torch.randperm(xt.shape[0], generator=gen)[: args.num_test]
    x = xt[idx]
    out: dict = {"num_test": args.num_test, "test_indices_seed": args.seed, "tol": args.tol}
    per_image: dict[str, torch.Tensor] = {}
    # The DDPM's ScheduleSDE had a jump in beta(t) at each of its T steps, and the solver
    # options restarted dopri5 at every one (over 1000 NFE per solve), which --no-restarts
    # turned off at a loss of accuracy; since beta(t) is continuous (monotone cubic
    # log alpha_bar) there are no restarts and the flag changes nothing.
    solver = {"options": {"step_t": torch.tensor([1.0], dtype=torch.float64)}}
    solver = solver if args.no_restarts else {}
    out["solver_restarts_at_schedule_steps"] = not args.no_restarts
    for name in args.models.split(","):
        m = _load(args, name)
        if name == "ddpm":
            # the weights that sample, loaded once around each solve (DDPMScore's own per-call
            # swap would change them in place under the divergence's autograd graph)
            with torch.no_grad(), m.ema.average_parameters():
                c0 = time.thread_time()
                b = variational_bound(m, x[:, 0], batch_size=64)["bits_per_dim"]
                per_image["ddpm_bound"] = b
                out["ddpm_bound_cpu_seconds_per_image"] = (time.thread_time() - c0) / len(x)
                print("bound", _mean_se(b), flush=True)
            ema, sm, data = m.ema, DDPMScore(m, use_ema=False), x[:, 0]
        else:
            ema, sm, data = m.ema, m, (x * 255).round()
        with ema.average_parameters():
            vals, nfes, secs = [], [], []
            for start in range(0, args.num_test, args.batch_size):
                counted = _Counting(sm)
                c0 = time.thread_time()
                bpd = probability_flow_bits_per_dim(
                    counted, data[start : start + args.batch_size], num_bins=256,
                    rtol=args.tol, atol=args.tol, generator=gen, **solver,
                )  # fmt: skip
                secs.append(time.thread_time() - c0)
                vals.append(bpd)
                nfes.append(counted.calls)
                print(name, start, round(float(bpd.mean()), 4), counted.calls,
                      round(secs[-1], 1), flush=True)  # fmt: skip
            per_image[f"{name}_pf_ode"] = torch.cat(vals)
            out[f"{name}_pf_ode_nfe_per_batch"] = nfes
            out[f"{name}_pf_ode_cpu_seconds_per_image"] = sum(secs) / args.num_test
    path = Path(args.dir) / "nll_per_image.pt"
    if path.exists():  # results of the other model on the same images, from an earlier call
        old = torch.load(path)
        if torch.equal(old.pop("indices"), idx):
            per_image = {**old, **per_image}
    for k, v in per_image.items():
        out[k] = _mean_se(v)
    for a, b in (("ddpm_pf_ode", "ddpm_bound"), ("score_pf_ode", "ddpm_bound"),
                 ("score_pf_ode", "ddpm_pf_ode")):  # fmt: skip
        if a in per_image and b in per_image:
            out[f"{a} - {b} (paired)"] = _mean_se(per_image[a] - per_image[b])
    torch.save({"indices": idx, **per_image}, path)
    return out


def samplers(args: argparse.Namespace) -> dict:
    from pyro_gen.metrics import sample_quality, train_classifier

    n, nfe = args.num_samples, args.nfe
    x, y = _images("train")
    xt, yt = _images("test")
    real, real_y = xt[:2000], yt[:2000]
    clf_path = Path(args.dir) / "classifier.pt"
    c0 = time.thread_time()
    if clf_path.exists():
        clf = torch.load(clf_path, weights_only=False)
    else:
        clf = train_classifier(x, y, epochs=1)
        torch.save(clf, clf_path)
    out: dict = {"num_samples": n, "nfe_target": nfe,
                 "classifier_cpu_seconds": round(time.thread_time() - c0, 1)}  # fmt: skip
    rows: dict[str, dict] = {}

    def score_row(name: str, imgs: torch.Tensor, nfe_used: float, cpu: float) -> None:
        q = sample_quality(clf, imgs.reshape(-1, 1, 28, 28).clamp(0, 1), real, real_y)
        rows[name] = {"nfe_per_sample": nfe_used, "samples_per_cpu_second": n / cpu,
                      **{k: round(v, 4) for k, v in vars(q).items()}}  # fmt: skip
        print(name, rows[name], flush=True)

    score_row("real test images (floor)", xt[2000 : 2000 + n], 0, float("inf"))
    eps_ode = 1e-3
    configs = {
        "langevin": {"steps": 10, "steps_per_level": max(nfe // 10, 1)},
        "euler_maruyama": {"steps": nfe},
        "pc": {"steps": nfe // 2},
        "ode": {"method": "rk4", "options": {"step_size": (1 - eps_ode) / (nfe // 4)},
                "eps": eps_ode},
    }  # fmt: skip
    for mname in args.models.split(","):
        m = _load(args, mname)
        if mname == "ddpm":
            ddpm, ema, sm, post = m, m.ema, DDPMScore(m, use_ema=False), lambda s: s
        else:
            ema, sm, post = m.ema, m, lambda s: (s + 1) / 2
        with torch.no_grad(), ema.average_parameters():
            for sname, kw in configs.items():
                pyro.set_rng_seed(1)
                stats: dict = {}
                c0 = time.thread_time()
                s = sample(sm, n, sname, stats=stats, **kw)
                score_row(f"{mname}: {sname}", post(s), stats["nfe"], time.thread_time() - c0)
            if mname == "ddpm":
                pyro.set_rng_seed(1)
                c0 = time.thread_time()
                s = ddpm.sample(n, "ddim", steps=nfe)
                score_row("ddpm: ddim (eta 0)", s, nfe, time.thread_time() - c0)
                if args.ancestral:
                    pyro.set_rng_seed(1)
                    c0 = time.thread_time()
                    s = ddpm.sample(n)
                    score_row("ddpm: ancestral (T=1000)", s, 1000, time.thread_time() - c0)
    out["rows"] = rows
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("step", choices=["train", "nll", "samplers"])
    p.add_argument("--model", choices=["ddpm", "score"], default="ddpm")
    p.add_argument("--steps", type=int, default=1800, help="training steps (the tutorial's)")
    p.add_argument("--dir", default=".", help="where models and per-image results go")
    p.add_argument("--models", default="ddpm,score", help="which trained models to evaluate")
    p.add_argument("--num-test", type=int, default=128, help="random test images for nll")
    p.add_argument("--batch-size", type=int, default=32, help="images per ODE solve")
    p.add_argument("--tol", type=float, default=1e-5, help="dopri5 rtol = atol")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-restarts", action="store_true", help="(no effect now: no jumps)")
    p.add_argument("--num-samples", type=int, default=256)
    p.add_argument("--nfe", type=int, default=100, help="network evaluations per sample")
    p.add_argument("--ancestral", action="store_true", help="also the DDPM's 1000 steps")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    out = {"train": train, "nll": nll, "samplers": samplers}[args.step](args)
    out["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(json.dumps(out, indent=1, default=str))
    return out


if __name__ == "__main__":
    main()
