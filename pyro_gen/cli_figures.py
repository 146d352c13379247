"""What ``pyro-gen train`` and ``sample`` draw and write: samples, the run's figures, and
where a PNG goes (checked before any computing)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from pyro_gen.cli_models import ModelSpec, run_options
from pyro_gen.cli_spec import UsageError
from pyro_gen.infer.files import refuse_symlink
from pyro_gen.runs import probe_writable


def draw_samples(
    spec: ModelSpec,
    config: dict[str, Any],
    model: torch.nn.Module,
    n: int,
    sampler: str | None = None,
    steps: int | None = None,
) -> torch.Tensor:
    try:
        with torch.no_grad():
            if spec.figure is not None:  # a model that transforms data rather than samples
                return spec.figure(model, config, n)
            return spec.sample(model, n, sampler, steps)
    except ValueError as e:  # a knob out of range for this model (e.g. DDIM steps > T)
        raise UsageError(f"cannot sample: {e}") from e


def write_figures(
    spec: ModelSpec,
    config: dict[str, Any],
    model: torch.nn.Module,
    out: Path,
    history: Sequence[dict[str, Any]],
    num_samples: int = 64,
    bound: str = "ELBO",
) -> list[Path]:
    from pyro_gen import plotting

    train_bound = spec.train_bound(run_options(config))
    curves = out / "curves.png"
    paths = (
        [plotting.save_curves(history, curves, bound, train_bound, spec.bound_is_loss)]
        if history
        else []
    )
    samples = draw_samples(spec, config, model.eval(), num_samples)
    behind = spec.plot_density(run_options(config))
    paths.append(save_samples(model, samples, out / "samples.png", behind))
    return paths


def save_samples(
    model: torch.nn.Module, samples: torch.Tensor, path: Path, density_behind: bool = True
) -> Path:
    from pyro_gen import plotting

    if samples.dim() == 2 and samples.shape[-1] == 2:
        density = getattr(model, "log_prob", None) if density_behind else None
        return plotting.save_scatter(samples, path, density)
    return plotting.save_image_grid(samples.reshape(samples.shape[0], *samples.shape[-2:]), path)


def samples_path(args: argparse.Namespace, name: str) -> Path:
    """Where ``sample`` (or ``impute``) writes its PNG, checked before any computing."""
    if args.out is None:
        path = Path(args.run) / name
    elif args.out.is_dir():
        path = args.out / name
    else:
        path = args.out
        if path.suffix.lower() != ".png":
            raise UsageError(f"--out {path}: give a .png file name or an existing folder")
        if not path.parent.is_dir():
            raise UsageError(
                f"--out {path}: folder {path.parent} does not exist; create it or choose "
                "another --out"
            )
    refuse_symlink(path)
    probe_writable(path.parent, path.name)
    return path
