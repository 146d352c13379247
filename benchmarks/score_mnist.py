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
    On ``--num-test`` test images drawn at random (fixed seed): the DDPM's bound (``--bound
    full``: all 1000 terms, split into L_0 and the rest; ``sampled``: the stratified estimate;
    EMA weights), and the probability-flow bits/dim of both models with each ``--endpoints``
    treatment of the pixels (``dequantize``: uniform noise in each bin, Song et al.'s;
    ``decoder``: the ODE density of x_1 ~ q(x_1 | x_0) and the DDPM's own decoder p(x_0 | x_1),
    term by term comparable with the bound, see ``probability_flow_bits_per_dim``),
    Hutchinson's trace estimator, dopri5 at ``--tol``, per image, with the network
    evaluations (NFE) and CPU seconds; standard errors of the means and of the paired
    differences. Results are checkpointed per batch (``nll_checkpoint_*.pt``): a stopped run
    resumes where it stopped.
``bound``
    The DDPM bound on the first ``--num-test`` test images (10000: the test set) by the
    stratified estimate (``sampled_variational_bound``: L_T, L_0 exact, one step in each of
    ``--strata`` geometric strata of the rest), checkpointed per batch; with ``--check N``,
    first the estimate against all 1000 terms on N random images (``--replicas`` draws each).
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
    python benchmarks/score_mnist.py bound --num-test 10000 --check 32 --dir /tmp/h13b
    python benchmarks/score_mnist.py samplers --num-samples 256 --nfe 100 --dir /tmp/h13b
"""

from __future__ import annotations

import argparse
import json
import math
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
from pyro_gen.diffusion.likelihood import sampled_variational_bound
from pyro_gen.diffusion.ode_likelihood import probability_flow_decoder_bound
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


def _bpd_parts(out: dict, dims: int) -> dict[str, torch.Tensor]:
    scale = dims * math.log(2)
    return {k: out[k].detach() / scale for k in ("ode", "decoder", "entropy")}


def nll(args: argparse.Namespace) -> dict:
    xt, _ = _images("test")
    perm = torch.randperm(xt.shape[0], generator=torch.Generator().manual_seed(args.seed))
    idx = perm[: args.num_test]
    x = xt[idx]
    dims = 28 * 28
    out: dict = {"num_test": args.num_test, "test_indices_seed": args.seed, "tol": args.tol,
                 "bound": args.bound, "endpoints": args.endpoints}  # fmt: skip
    # Per-batch results go to a checkpoint as they come, so a long run can stop and resume.
    # It holds the whole permutation of the test set: a run with a smaller --num-test (a
    # multiple of --batch-size) reads the batches a longer, stopped run finished. Each batch
    # draws from its own generator, seeded by its position, so a resumed run draws what an
    # unbroken one would.
    ckpt = Path(args.dir) / f"nll_checkpoint_seed{args.seed}_batch{args.batch_size}.pt"
    done: dict[str, dict[int, torch.Tensor]] = {}
    if ckpt.exists():
        saved = torch.load(ckpt)
        if torch.equal(saved["indices"], perm):
            done = saved["done"]
    cpu: dict[str, float] = {}

    def batches(key: str, fn) -> torch.Tensor:
        parts = done.setdefault(key, {})
        results = []
        for a in range(0, args.num_test, args.batch_size):
            b = min(a + args.batch_size, args.num_test)
            if a not in parts or parts[a].shape[0] != b - a:
                g = torch.Generator().manual_seed(args.seed * 100_003 + a + 1)
                c0 = time.thread_time()
                parts[a] = fn(a, b, g)
                cpu[key] = cpu.get(key, 0.0) + time.thread_time() - c0
                torch.save({"indices": perm, "done": done}, ckpt)
                print(key, a, round(float(parts[a].reshape(b - a, -1)[:, 0].mean()), 4),
                      round(time.thread_time() - c0, 1), flush=True)  # fmt: skip
            results.append(parts[a])
        return torch.cat(results)

    per_image: dict[str, torch.Tensor] = {}
    for name in args.models.split(","):
        m = _load(args, name)
        if name == "ddpm":
            # the weights that sample, loaded once around each solve (DDPMScore's own per-call
            # swap would change them in place under the divergence's autograd graph)
            ema, sm, data = m.ema, DDPMScore(m, use_ema=False), x[:, 0]
        else:
            ema, sm, data = m.ema, m, (x * 255).round()
        with torch.no_grad(), ema.average_parameters():
            if name == "ddpm" and args.bound == "full":

                def full(a, b, g, m=m, data=data):
                    torch.manual_seed(int(torch.randint(2**31, (), generator=g)))
                    r = variational_bound(m, data[a:b], batch_size=64)
                    chain = r["prior"] + r["terms"][:, 1:].sum(-1)
                    return torch.stack([chain, r["terms"][:, 0]], -1) / (dims * math.log(2))

                parts = batches("ddpm_bound_terms", full)
                per_image["ddpm_bound_chain"], per_image["ddpm_bound_L0"] = parts.unbind(-1)
                per_image["ddpm_bound"] = parts.sum(-1)
            elif name == "ddpm" and args.bound == "sampled":

                def sampled(a, b, g, m=m, data=data):
                    r = sampled_variational_bound(m, data[a:b], strata=args.strata, generator=g)
                    return r["bits_per_dim"]

                per_image["ddpm_bound"] = batches("ddpm_bound_sampled", sampled)
        with ema.average_parameters():
            for endpoint in args.endpoints.split(","):
                counted = _Counting(sm)

                def solve(a, b, g, endpoint=endpoint, counted=counted, data=data):
                    kw = {"num_bins": 256, "rtol": args.tol, "atol": args.tol, "generator": g}
                    if endpoint == "dequantize":
                        return probability_flow_bits_per_dim(counted, data[a:b], **kw)
                    r = probability_flow_decoder_bound(counted, data[a:b], **kw)
                    return torch.stack([r["bits_per_dim"].detach(),
                                        *_bpd_parts(r, dims).values()], -1)  # fmt: skip

                key = f"{name}_pf_{endpoint}"
                res = batches(key, solve)
                if endpoint == "decoder":
                    res, ode, dec, ent = res.unbind(-1)
                    per_image[f"{key}_chain"] = ode - ent  # against the bound's L_T + sum L_t
                    per_image[f"{key}_L0"] = dec  # against the bound's L_0
                per_image[key] = res
                if key in cpu:  # of the batches computed in this run
                    out[f"{key}_cpu_seconds"] = cpu[key]
                    out[f"{key}_nfe"] = counted.calls
    for k, v in per_image.items():
        out[k] = _mean_se(v)
    for endpoint in args.endpoints.split(","):
        for name in args.models.split(","):
            a = f"{name}_pf_{endpoint}"
            if a in per_image and "ddpm_bound" in per_image:
                out[f"{a} - ddpm_bound (paired)"] = _mean_se(per_image[a] - per_image["ddpm_bound"])
    for part in ("chain", "L0"):
        a, b = f"ddpm_pf_decoder_{part}", f"ddpm_bound_{part}"
        if a in per_image and b in per_image:
            out[f"{a} - {b} (paired)"] = _mean_se(per_image[a] - per_image[b])
    if "score_pf_dequantize" in per_image and "ddpm_pf_dequantize" in per_image:
        out["score - ddpm, dequantized (paired)"] = _mean_se(
            per_image["score_pf_dequantize"] - per_image["ddpm_pf_dequantize"]
        )
    torch.save({"indices": idx, **per_image}, Path(args.dir) / f"nll_{args.num_test}.pt")
    return out


def bound(args: argparse.Namespace) -> dict:
    """The DDPM bound on the whole test set by :func:`sampled_variational_bound` (checkpointed
    per batch), and its check against the full 1000-term sum on ``--check`` images."""
    xt, _ = _images("test")
    n = min(args.num_test, xt.shape[0])
    m = _load(args, "ddpm")
    out: dict = {"num_test": n, "strata": args.strata}
    with torch.no_grad(), m.ema.average_parameters():
        if args.check:
            idx = torch.randperm(xt.shape[0], generator=torch.Generator().manual_seed(0))
            xc = xt[idx[: args.check], 0]
            torch.manual_seed(0)
            c0 = time.thread_time()
            full = variational_bound(m, xc, batch_size=64)["bits_per_dim"]
            full_cpu = (time.thread_time() - c0) / args.check
            g = torch.Generator().manual_seed(1)
            reps = torch.stack([sampled_variational_bound(m, xc, strata=args.strata,
                                                          generator=g)["bits_per_dim"]
                                for _ in range(args.replicas)])  # fmt: skip
            out["check"] = {
                "images": args.check,
                "replicas": args.replicas,
                "full_1000_terms": _mean_se(full),
                "sampled": _mean_se(reps.mean(0)),
                "sampled - full (paired)": _mean_se(reps.mean(0) - full),
                "time-sampling sd per image (bpd)": float(reps.std(0).pow(2).mean().sqrt()),
                "full cpu s per image": full_cpu,
            }
            print(out["check"], flush=True)
        ckpt = Path(args.dir) / f"bound_checkpoint_{args.strata}.pt"
        parts: dict[int, torch.Tensor] = torch.load(ckpt) if ckpt.exists() else {}
        c0, cpu_done = time.thread_time(), 0
        for start in range(0, n, args.batch_size):
            if start in parts:
                continue
            g = torch.Generator().manual_seed(start + 1)
            end = min(start + args.batch_size, n)
            r = sampled_variational_bound(m, xt[start:end, 0], strata=args.strata, generator=g,
                                          batch_size=args.batch_size)  # fmt: skip
            parts[start] = r["bits_per_dim"]
            cpu_done += end - start
            torch.save(parts, ckpt)
            print("bound", start, round(float(r["bits_per_dim"].mean()), 4), flush=True)
        b = torch.cat([parts[s] for s in sorted(parts)])[:n]
        out["bits_per_dim"] = _mean_se(b)
        out["images"] = int(b.numel())
        if cpu_done:
            out["cpu_seconds_per_image"] = (time.thread_time() - c0) / cpu_done
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
                pyro.set_rng_seed(args.sample_seed)
                stats: dict = {}
                c0 = time.thread_time()
                s = sample(sm, n, sname, stats=stats, **kw)
                score_row(f"{mname}: {sname}", post(s), stats["nfe"], time.thread_time() - c0)
            if mname == "ddpm":
                pyro.set_rng_seed(args.sample_seed)
                c0 = time.thread_time()
                s = ddpm.sample(n, "ddim", steps=nfe)
                score_row("ddpm: ddim (eta 0)", s, nfe, time.thread_time() - c0)
                if args.ancestral:
                    pyro.set_rng_seed(args.sample_seed)
                    c0 = time.thread_time()
                    s = ddpm.sample(n)
                    score_row("ddpm: ancestral (T=1000)", s, 1000, time.thread_time() - c0)
    out["rows"] = rows
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("step", choices=["train", "nll", "bound", "samplers"])
    p.add_argument("--model", choices=["ddpm", "score"], default="ddpm")
    p.add_argument("--steps", type=int, default=1800, help="training steps (the tutorial's)")
    p.add_argument("--dir", default=".", help="where models and per-image results go")
    p.add_argument("--models", default="ddpm,score", help="which trained models to evaluate")
    p.add_argument("--num-test", type=int, default=128, help="test images (nll, bound)")
    p.add_argument("--batch-size", type=int, default=32, help="images per ODE solve")
    p.add_argument("--tol", type=float, default=1e-5, help="dopri5 rtol = atol")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--endpoints",
        default="dequantize,decoder",
        help="how the ODE meets the pixels (probability_flow_bits_per_dim)",
    )
    p.add_argument(
        "--bound",
        choices=["full", "sampled", "none"],
        default="full",
        help="the DDPM bound paired with the ODE: all 1000 terms, or sampled",
    )
    p.add_argument("--strata", type=int, default=16, help="sampled bound: step strata")
    p.add_argument("--check", type=int, default=0, help="bound: images checked against all terms")
    p.add_argument("--replicas", type=int, default=8, help="bound: sampled draws per checked image")
    p.add_argument("--num-samples", type=int, default=256)
    p.add_argument("--sample-seed", type=int, default=1, help="samplers: the seed of each draw")
    p.add_argument("--nfe", type=int, default=100, help="network evaluations per sample")
    p.add_argument("--ancestral", action="store_true", help="also the DDPM's 1000 steps")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    out = {"train": train, "nll": nll, "bound": bound, "samplers": samplers}[args.step](args)
    out["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(json.dumps(out, indent=1, default=str))
    return out


if __name__ == "__main__":
    main()
