"""Train pyro_gen's VAE with Lightning, on one process or with DDP, and compare with ``fit``.

The same :class:`~pyro_gen.vae.VAE` trains through :class:`pyro_gen.lightning.LightningSVI`
with a Lightning ``Trainer`` (so its strategies, precision plugins, loggers and callbacks
apply) and, with ``--compare-fit``, through :func:`pyro_gen.infer.fit` for the same number
of steps from the same seed; the test ELBO of each is printed (nats per image). Needs the
``lightning`` extra (``pip install pyro-gen[lightning]``)::

    python examples/lightning_vae.py --data digits --steps 400 --compare-fit
    python examples/lightning_vae.py --data mnist --steps 2000 --devices 2 --strategy ddp
    python examples/lightning_vae.py --data mnist --accelerator gpu --devices 8 \\
        --strategy ddp --precision bf16-mixed --num-nodes 2     # under a cluster launcher

With ``--strategy ddp`` Lightning starts the other processes by running this script again;
each trains on its share of every epoch and the gradients are averaged, so ``--batch-size``
is per process. Process 0 evaluates and writes ``--out``.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import lightning
import pyro
import torch
from torch.utils.data import DataLoader, TensorDataset

from pyro_gen.data import dynamic_binarize, load
from pyro_gen.infer import evaluate_elbo, fit
from pyro_gen.lightning import LightningSVI
from pyro_gen.vae import VAE


def data(name: str, num_train: int | None) -> tuple[torch.Tensor, torch.Tensor, tuple[int, ...]]:
    """Training and test images as intensities in [0, 1] (binarized afresh at each step)."""
    x_train, x_test = load(name, "train")[0], load(name, "test")[0]
    peak = 16.0 if name == "digits" else 255.0
    x_train, x_test = x_train[:num_train].float() / peak, x_test.float() / peak
    return x_train, x_test, tuple(x_train.shape[1:])


def build(event_shape: tuple[int, ...], args: argparse.Namespace) -> VAE:
    pyro.clear_param_store()
    pyro.set_rng_seed(args.seed)
    return VAE(event_shape=event_shape, z_dim=args.z_dim, hidden_dim=args.hidden_dim)


def train_lightning(x_train: torch.Tensor, vae: VAE, args: argparse.Namespace) -> bool:
    """Trains ``vae`` with a Lightning Trainer; True on process 0."""
    trainer = lightning.Trainer(
        max_steps=args.steps,
        accelerator=args.accelerator,
        devices=args.devices,
        num_nodes=args.num_nodes,
        strategy=args.strategy,
        precision=args.precision,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=args.progress,
    )
    loader = DataLoader(TensorDataset(x_train), batch_size=args.batch_size, shuffle=True)
    trainer.fit(LightningSVI(vae, transform=dynamic_binarize), loader)
    return trainer.is_global_zero


def test_elbo(vae: VAE, x_test: torch.Tensor, seed: int) -> float:
    pyro.set_rng_seed(seed)  # the same binarized test set and noise for every model
    return float(evaluate_elbo(vae.cpu(), dynamic_binarize(x_test), num_particles=10))


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="digits", choices=["digits", "mnist", "fashion_mnist"])
    parser.add_argument("--num-train", type=int, default=None, help="first N training images")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=64, help="per process")
    parser.add_argument("--z-dim", type=int, default=8)
    parser.add_argument("--hidden-dim", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--num-nodes", type=int, default=1)
    parser.add_argument("--strategy", default="auto")
    parser.add_argument("--precision", default="32-true")
    parser.add_argument("--compare-fit", action="store_true", help="also train with fit")
    parser.add_argument("--progress", action="store_true", help="show Lightning's bar")
    parser.add_argument("--out", type=Path, default=None, help="folder for results.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    x_train, x_test, shape = data(args.data, args.num_train)

    vae = build(shape, args)
    start = time.perf_counter()
    if not train_lightning(x_train, vae, args):
        return {}  # another DDP process: process 0 reports
    results = {"lightning_s": time.perf_counter() - start}
    results["lightning_test_elbo"] = test_elbo(vae, x_test, args.seed + 1)
    if args.compare_fit:
        vae_fit = build(shape, args)
        start = time.perf_counter()
        fit(vae_fit, x_train, steps=args.steps, batch_size=args.batch_size,
            transform=dynamic_binarize, progress=False)  # fmt: skip
        results["fit_s"] = time.perf_counter() - start
        results["fit_test_elbo"] = test_elbo(vae_fit, x_test, args.seed + 1)
    print(json.dumps({k: round(v, 3) for k, v in results.items()}))
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps(results))
        torch.save(vae.state_dict(), args.out / "vae.pt")
    return results


if __name__ == "__main__":
    main()
