"""MNIST quality of VAE-family configurations: test ELBO and importance-weighted log-likelihood.

Each configuration is a comma-separated list of ``build_vae`` options plus ``objective``
and ``k``; configurations are separated by semicolons. The test set is binarized once
(dynamic binarization with the run's seed) and shared by every configuration.

    python benchmarks/vae_variants.py --epochs 10 --k 5000 \\
        "prior=normal;prior=normal,objective=iwae,k=50;prior=vamp;guide=iaf;prior=mog;prior=flow;layers=2"
"""

from __future__ import annotations

import argparse
import json
import time

import pyro
import torch

from pyro_gen.data import dynamic_binarize, load
from pyro_gen.infer import evaluate_elbo, fit, iwae_log_likelihood
from pyro_gen.vae import active_units, build_vae, make_loss

INT_OPTIONS = ("layers", "z_dim", "hidden_dim", "num_components", "num_flows")


def parse_config(text: str) -> tuple[dict[str, object], str, int]:
    opts: dict[str, object] = dict(kv.split("=") for kv in text.split(",") if kv)
    objective = str(opts.pop("objective", "elbo"))
    k = int(opts.pop("k", 50))
    for key in INT_OPTIONS:
        if key in opts:
            opts[key] = int(opts[key])  # type: ignore[arg-type]
    return opts, objective, k


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configs", help="semicolon-separated configurations")
    parser.add_argument("--data", default="mnist", choices=("mnist", "fashion_mnist"))
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--k", type=int, default=5000, help="importance samples for log p(x)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    x_train, _ = load(args.data, "train")
    x_test, _ = load(args.data, "test")
    pyro.set_rng_seed(0)
    test = dynamic_binarize(x_test.to(args.device))
    for text in args.configs.split(";"):
        opts, objective, k = parse_config(text)
        pyro.set_rng_seed(0)
        vae = build_vae(tuple(x_train.shape[1:]), **opts)
        start = time.perf_counter()
        fit(
            vae,
            x_train,
            epochs=args.epochs,
            batch_size=128,
            loss=make_loss(objective, k),
            device=args.device,
            transform=dynamic_binarize,
            progress=False,
        )
        train_s = time.perf_counter() - start
        vae.eval()
        start = time.perf_counter()
        record = {
            "config": text,
            "epochs": args.epochs,
            "test_elbo": round(evaluate_elbo(vae, test, batch_size=1000), 2),
            "iwae_log_likelihood": round(iwae_log_likelihood(vae, test, num_samples=args.k), 2),
            "k": args.k,
            "active_units": active_units(vae, test)[0] if opts.get("layers", 1) == 1 else None,
            "train_s": round(train_s, 1),
            "eval_s": round(time.perf_counter() - start, 1),
            "device": args.device,
        }
        print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
