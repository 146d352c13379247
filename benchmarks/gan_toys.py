"""Mode coverage of every adversarial loss (and Pyro's EnergyDistance) on the 2D toys.

The 25-Gaussian grid (std 0.05) and the 8-Gaussian ring (std 0.02) of VEEGAN and PacGAN:
modes captured and share of high-quality samples (within 3 standard deviations) among
2,500 generated points, for each loss on the same generator, trained through
``pyro_gen.infer.fit`` for a fixed budget of this process's CPU time, one torch thread.
Each row scores the generator's own weights and their exponential moving average
(``Generator(..., average=0.999)``, updated after every step), both from the same run;
``--report-at`` adds rows at earlier points of the same runs.

    .venv/bin/python benchmarks/gan_toys.py --cpu-seconds 300 --report-at 60 120
    .venv/bin/python benchmarks/gan_toys.py --toys ring --losses nonsaturating --cpu-seconds 20
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
import warnings

import pyro
import torch

from pyro_gen.gan import (
    Generator,
    HingeGAN,
    LeastSquaresGAN,
    MinimaxGAN,
    NonSaturatingGAN,
    SurrogateLoss,
    WassersteinGAN,
    WassersteinGP,
)
from pyro_gen.infer import fit
from pyro_gen.metrics import ModeCoverage, grid_modes, mode_coverage, ring_modes, sample_modes
from pyro_gen.nn import MLPDiscriminator, MLPGenerator

TOYS = {"grid": (grid_modes, 0.05), "ring": (ring_modes, 0.02)}
HIDDEN = (128, 128, 128)
LOSSES = ["minimax", "nonsaturating", "lsgan", "hinge", "wgan-clip", "wgan-gp", "energy"]


def make_loss(name: str, lr: float, energy_lr: float):
    """The loss object and the generator's Pyro optimizer for one loss name: the same
    optimizer on both sides, with each paper's settings at ``lr=2e-4`` (WGAN: RMSprop at
    lr / 4 = 5e-5; WGAN-GP: Adam at lr / 2 = 1e-4, betas (0, 0.9); the others Adam, beta1
    0.5, as in DCGAN)."""
    d = MLPDiscriminator((2,), HIDDEN)
    if name == "energy":
        loss = SurrogateLoss(pyro.infer.EnergyDistance(num_particles=8))
        return loss, pyro.optim.Adam({"lr": energy_lr})
    if name == "wgan-clip":
        d_optim = functools.partial(torch.optim.RMSprop, lr=lr / 4)
        return WassersteinGAN(d, optim=d_optim), pyro.optim.RMSprop({"lr": lr / 4})
    if name == "wgan-gp":
        adam = {"lr": lr / 2, "betas": (0.0, 0.9)}
        d_optim = functools.partial(torch.optim.Adam, **adam)
        return WassersteinGP(d, optim=d_optim), pyro.optim.Adam(adam)
    classes = {"minimax": MinimaxGAN, "nonsaturating": NonSaturatingGAN,
               "lsgan": LeastSquaresGAN, "hinge": HingeGAN}  # fmt: skip
    adam = {"lr": lr, "betas": (0.5, 0.999)}
    d_optim = functools.partial(torch.optim.Adam, **adam)
    return classes[name](d, optim=d_optim), pyro.optim.Adam(adam)


def _sd(values: list[float]) -> str:
    return f" +- {statistics.stdev(values):.1f}" if len(values) > 1 else ""


def score(gen: Generator, centers: torch.Tensor, std: float, averaged: bool) -> ModeCoverage:
    """Coverage of 2,500 samples of the network's own weights or of their average, drawn
    with a fixed seed that leaves the training RNG where it was."""
    with torch.random.fork_rng():
        torch.manual_seed(12345)
        z = torch.randn(2500, gen.latent_dim)
    with torch.no_grad():
        return mode_coverage(gen.generate(z, averaged=averaged), centers, std)


def run(toy: str, loss_name: str, budgets: list[float], seed: int, args) -> list[dict]:
    """One training run, scored when its CPU time passes each of ``budgets``."""
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    centers_fn, std = TOYS[toy]
    centers = centers_fn()
    data = sample_modes(centers, std, 50_000, torch.Generator().manual_seed(seed))
    gen = Generator(MLPGenerator(args.latent_dim, (2,), HIDDEN), average=args.average)
    loss, optim = make_loss(loss_name, args.lr, args.energy_lr)
    batch = args.energy_batch if loss_name == "energy" else args.batch_size
    start, steps, rows, used = time.process_time(), 0, [], 0.0
    for budget in sorted(budgets):
        while time.process_time() - start < budget:
            steps += args.chunk
            fit(gen, data, steps=args.chunk, batch_size=batch, loss=loss, optim=optim,
                progress=False, step_callbacks=[gen.update_average])  # fmt: skip
        used = time.process_time() - start
        raw, avg = (score(gen, centers, std, averaged) for averaged in (False, True))
        rows.append({"k": raw.num_modes, "steps": steps, "cpu_s": used,
                     "modes": raw.modes, "hq": raw.high_quality,
                     "avg_modes": avg.modes, "avg_hq": avg.high_quality})  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--toys", nargs="+", default=list(TOYS))
    parser.add_argument("--losses", nargs="+", default=LOSSES)
    parser.add_argument("--cpu-seconds", type=float, default=300.0)
    parser.add_argument(
        "--report-at",
        type=float,
        nargs="*",
        default=[],
        help="earlier CPU times (s) at which the same runs are also scored",
    )
    parser.add_argument("--average", type=float, default=0.999,
                        help="decay of the generator's weight average")  # fmt: skip
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--energy-lr", type=float, default=1e-3)
    parser.add_argument("--latent-dim", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--energy-batch", type=int, default=16)
    parser.add_argument("--chunk", type=int, default=200)
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message="Found vars in model but not guide")
    print(f"torch {torch.__version__}, pyro {pyro.__version__}, {args.cpu_seconds:.0f} CPU s each")
    print(
        "| toy | loss | CPU s | steps | modes | high quality | modes (avg) | high quality (avg) |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    budgets = sorted({*args.report_at, args.cpu_seconds})
    for toy in args.toys:
        for name in args.losses:
            runs = [
                run(toy, name, budgets, seed, args)
                for seed in range(args.first_seed, args.first_seed + args.seeds)
            ]
            for rs in zip(*runs):  # one row per budget, over seeds
                cells = []
                for key in ("modes", "hq", "avg_modes", "avg_hq"):
                    scale = 100 if key.endswith("hq") else 1
                    values = [scale * r[key] for r in rs]
                    unit = "%" if scale == 100 else f"/{rs[0]['k']}"
                    cells.append(f"{statistics.mean(values):.1f}{_sd(values)}{unit}")
                cpu = statistics.mean(r["cpu_s"] for r in rs)
                print(f"| {toy} | {name} | {cpu:.0f} | {rs[0]['steps']} | {' | '.join(cells)} |",
                      flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
