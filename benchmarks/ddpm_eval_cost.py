"""CPU cost of scoring held-out images with a DDPM's time plate: the training draw (one step
per image) against eval mode's strata (1 + ``eval_strata`` network passes per image).

What ``fit(eval_data=...)`` (and so ``pyro-gen train ddpm``'s per-epoch held-out score)
spends per evaluation: :func:`~pyro_gen.infer.evaluate_elbo` with ``TraceMeanField_ELBO``
on a default 28 x 28 DDPM (``build_ddpm``, T = 1000), untrained (the cost does not depend
on the weights), one thread, the settings alternated.

Run:  .venv/bin/python benchmarks/ddpm_eval_cost.py
"""

from __future__ import annotations

import argparse
import time

import torch
from pyro.infer import TraceMeanField_ELBO

from pyro_gen.diffusion import build_ddpm
from pyro_gen.infer import evaluate_elbo


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--strata", type=int, nargs="+", default=[0, 4])
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    model = build_ddpm((28, 28), timesteps=1000)
    x = torch.rand(args.images, 28, 28)
    loss = TraceMeanField_ELBO()
    print("| eval_strata | passes per image | CPU s per image |")
    print("|---:|---:|---:|")
    for _ in range(args.repeats):
        for strata in args.strata:
            model.eval_strata = strata
            start = time.thread_time()
            evaluate_elbo(model, x, loss=loss, batch_size=args.batch_size)
            per_image = (time.thread_time() - start) / args.images
            print(f"| {strata} | {1 + strata} | {per_image:.4f} |")


if __name__ == "__main__":
    main()
