"""``pyro-gen impute RUN``: hide pixels of test images at random, fill them with the run's VAE
by self-normalised importance sampling (:func:`pyro_gen.vae.impute`), and compare with mean
imputation on the same hidden pixels.

Example:
    >>> truth = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    >>> seen = torch.tensor([[True, False], [True, True]])
    >>> mean_imputation(truth, seen).tolist()  # column 1's observed mean is 0
    [[1.0, 0.0], [0.0, 0.0]]
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from pyro_gen.cli_evaluate import report, with_se
from pyro_gen.cli_models_vae import missing_mask
from pyro_gen.cli_spec import DataView

# Images shown in the PNG (each as truth, observed and imputed).
SHOWN = 8


def mean_imputation(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``x`` with each missing pixel set to the mean of that pixel where it is observed
    (over the batch): the baseline of Mattei & Frellsen's MIWAE experiments."""
    seen = mask.to(x.dtype)
    means = (x * seen).sum(0) / seen.sum(0).clamp(min=1)
    return torch.where(mask, x, means.expand_as(x))


def _error(filled: torch.Tensor, truth: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    # mean squared error over each image's hidden pixels
    per_pixel = (filled - truth).pow(2) * hidden
    return per_pixel.flatten(1).sum(1) / hidden.flatten(1).sum(1).clamp(min=1)


def impute_command(
    model: Any, config: dict[str, Any], view: DataView, args: argparse.Namespace, path: Path
) -> None:
    """Imputes ``args.num_test`` test images and prints, and writes to ``RUN/imputation.json``,
    the mean squared error on the hidden pixels (with standard errors) for the VAE and for
    mean imputation; draws truth, observed and imputed images into ``path``."""
    from pyro_gen import plotting
    from pyro_gen.vae import impute

    rate = args.missing_rate
    if rate is None:
        rate = config["options"].get("missing_rate") or 0.5
    device = next(model.parameters()).device
    with torch.random.fork_rng():  # the same binarized test images on every call
        torch.manual_seed(int(config["seed"]))
        truth = view.transform(view.x) if view.transform is not None else view.x
    truth = truth.to(device)
    mask = missing_mask(truth, rate, config["seed"], "test").to(device)
    filled = impute(model, truth, mask, num_samples=args.k, chunk=min(args.k, 250))
    hidden = (~mask).to(truth.dtype)
    results: dict[str, Any] = {"num_test": int(truth.shape[0]), "missing_rate": rate, "k": args.k}
    for name, guess in (("vae", filled), ("mean_imputation", mean_imputation(truth, mask))):
        with_se(results, f"{name}_mse", _error(guess, truth, hidden))
    n = min(SHOWN, truth.shape[0])
    observed = torch.where(mask, truth, torch.full_like(truth, 0.5))  # hidden pixels grey
    rows = torch.cat([truth[:n], observed[:n], filled[:n]]).cpu()
    plotting.save_image_grid(rows.reshape(rows.shape[0], *rows.shape[-2:]), path, nrow=n)
    target = Path(args.run) / "imputation.json"
    report(results, target)
    print(f"written to {target}")
    print(f"truth, observed and imputed images written to {path}")
