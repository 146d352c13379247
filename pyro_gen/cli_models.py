"""The model table of the ``pyro-gen`` command: names to classes, and how each model
family sees a dataset; :func:`load_run` rebuilds a run directory's trained model.

This and :mod:`pyro_gen.cli` are the one place that wires names (``vae``, ``realnvp``,
``ddpm``, ``mnist``, ...) to classes; everything else in pyro_gen takes objects.

Example:
    >>> sorted(MODELS)[:3]
    ['cnf', 'ddpm', 'glow']
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from pyro.infer import ELBO, Trace_ELBO, TraceMeanField_ELBO

from pyro_gen import data as datasets
from pyro_gen.infer.checkpoint import (
    load_checkpoint,
    restore_modules,
)
from pyro_gen.runs import (
    CONFIG_NAME,
    RunError,
    checkpoint_path,
    read_config,
)

IMAGE_DATA = ("mnist", "fashion_mnist", "digits")
TOY_DATA = ("moons", "eight_gaussians", "checkerboard", "rings", "spirals", "pinwheel")
# Intensity levels per pixel: 8-bit for the MNISTs, 0..16 for sklearn's digits.
PIXEL_LEVELS = {"mnist": 256, "fashion_mnist": 256, "digits": 17}
# Training samples drawn from a 2D toy (the test split gets a quarter as many).
DEFAULT_TOY_SAMPLES = 20000


# ---------------------------------------------------------------------------------------
# What each model sees of the data.


@dataclass(frozen=True)
class DataView:
    """How a model family consumes a dataset: the stored tensor, the per-batch transform
    applied on the device, and the event shape the model is built for."""

    x: torch.Tensor
    transform: Callable[[torch.Tensor], torch.Tensor] | None
    event_shape: tuple[int, ...]
    levels: int | None  # pixel levels for images (bits/dim), None for continuous data


def _unit_interval(levels: int) -> Callable[[torch.Tensor], torch.Tensor]:
    def transform(x: torch.Tensor) -> torch.Tensor:
        return x.to(torch.get_default_dtype()) / (levels - 1)

    return transform


def _binarized(levels: int) -> Callable[[torch.Tensor], torch.Tensor]:
    def transform(x: torch.Tensor) -> torch.Tensor:
        return datasets.dynamic_binarize(x.to(torch.get_default_dtype()) / (levels - 1))

    return transform


def data_view(kind: str, name: str, x: torch.Tensor) -> DataView:
    """Prepares ``x`` from dataset ``name`` for a model that wants ``kind`` of data:
    ``binary`` (dynamic binarization), ``unit`` (intensities in [0, 1]) or ``levels``
    (the integer pixels themselves, for models that dequantize inside their guide)."""
    if name in TOY_DATA:
        return DataView(x, None, tuple(x.shape[1:]), None)
    levels = PIXEL_LEVELS[name]
    shape = tuple(x.shape[1:])
    if kind == "binary":
        return DataView(x, _binarized(levels), shape, levels)
    if kind == "unit":
        return DataView(x, _unit_interval(levels), shape, levels)
    if kind == "levels":
        return DataView(x, None, shape, levels)
    raise ValueError(f"unknown data kind {kind!r}")


# ---------------------------------------------------------------------------------------
# The model table.


@dataclass(frozen=True)
class ModelSpec:
    """A trainable model name: how to build it, what data it takes, how to train it."""

    build: Callable[[tuple[int, ...], dict[str, Any]], torch.nn.Module]
    data_kind: Callable[[dict[str, Any]], str]
    options: tuple[str, ...]
    loss: Callable[[dict[str, Any]], ELBO] = field(default=lambda opts: Trace_ELBO())
    images_only: bool = False
    # Whether the likelihood is over discrete pixels, so that -log p / (D log 2) is bits/dim.
    discrete: Callable[[dict[str, Any]], bool] = field(default=lambda opts: True)
    # Called by fit after every optimizer step (e.g. the DDPM's weight average).
    step_callbacks: Callable[[dict[str, Any]], tuple[Callable[..., Any], ...]] = field(
        default=lambda opts: ()
    )


def _build_vae(event_shape: tuple[int, ...], opts: dict[str, Any]) -> torch.nn.Module:
    from pyro_gen.vae import build_vae

    return build_vae(
        event_shape,
        prior=opts["prior"],
        guide=opts["guide"],
        layers=opts["layers"],
        likelihood=opts["likelihood"],
        z_dim=opts["z_dim"],
        hidden_dim=opts["hidden_dim"],
    )


def _vae_loss(opts: dict[str, Any]) -> ELBO:
    from pyro_gen.vae import make_loss

    return make_loss(opts["objective"], num_particles=opts["k"])


def _build_ddpm(event_shape: tuple[int, ...], opts: dict[str, Any]) -> torch.nn.Module:
    from pyro_gen.diffusion import build_ddpm

    return build_ddpm(
        event_shape,
        schedule=opts["schedule"],
        param=opts["param"],
        objective=opts["diffusion_objective"],
        timesteps=opts["timesteps"],
        num_bins=opts.get("num_bins", 256),
        ema_decay=opts.get("ema_decay") or None,  # runs from before the option: no EMA
    )


def _ddpm_step_callbacks(opts: dict[str, Any]) -> tuple[Callable[..., Any], ...]:
    from pyro_gen.diffusion import ema_callback

    return (ema_callback,) if opts.get("ema_decay") else ()


def _flow_builder(name: str) -> Callable[[tuple[int, ...], dict[str, Any]], torch.nn.Module]:
    def build(event_shape: tuple[int, ...], opts: dict[str, Any]) -> torch.nn.Module:
        from pyro_gen.flows import build as build_flow

        if len(event_shape) == 1:  # continuous 2D data
            return build_flow(name, event_shape)
        return build_flow(
            name, event_shape, dequantization=opts["dequantization"], num_bins=opts["num_bins"]
        )

    return build


MODELS: dict[str, ModelSpec] = {
    "vae": ModelSpec(
        build=_build_vae,
        data_kind=lambda o: "binary" if o["likelihood"] == "bernoulli" else "unit",
        options=("z_dim", "hidden_dim", "layers", "likelihood", "prior", "guide", "objective", "k"),
        loss=_vae_loss,
        images_only=True,
        discrete=lambda o: not o["likelihood"].startswith("gaussian"),
    ),
    **{
        name: ModelSpec(
            build=_flow_builder(name),
            # Flows dequantize inside the model (its guide), so they see integer pixels.
            data_kind=lambda o: "levels",
            options=("dequantization",),
        )
        for name in ("nice", "realnvp", "glow", "maf", "nsf", "cnf")
    },
    "ddpm": ModelSpec(
        build=_build_ddpm,
        data_kind=lambda o: "unit",
        options=("schedule", "param", "diffusion_objective", "timesteps", "ema_decay"),
        # Analytic KL per time step: the reduced-variance form of the bound.
        loss=lambda o: TraceMeanField_ELBO(),
        step_callbacks=_ddpm_step_callbacks,
    ),
}


def load_split(name: str, split: str, config: dict[str, Any], limit: int | None) -> torch.Tensor:
    """The first ``limit`` examples (all if None) of a dataset split, as the run's config
    asks (2D toys are drawn, ``toy_samples`` of them for training)."""
    if name in TOY_DATA:
        toy = config.get("toy_samples") or DEFAULT_TOY_SAMPLES
        n = toy if split == "train" else max(toy // 4, 1)
        x, _ = datasets.load(name, split, num_samples=n)
    else:
        x, _ = datasets.load(name, split)
    return x[:limit] if limit is not None else x


def build_model(config: dict[str, Any]) -> torch.nn.Module:
    """Rebuilds the (untrained) model a run config describes."""
    return MODELS[config["model"]].build(tuple(config["event_shape"]), config["options"])


def held_out_view(config: dict[str, Any], limit: int | None) -> DataView:
    """The test split of a run's dataset, prepared as its model sees data."""
    x = load_split(config["data"], "test", config, limit)
    return data_view(MODELS[config["model"]].data_kind(config["options"]), config["data"], x)


def check_model(config: dict[str, Any], run: str | Path) -> ModelSpec:
    """The table entry of a run's model, after checking that its config can rebuild it.

    Raises:
        RunError: naming the model or the options the config lacks.
    """
    if config["model"] not in MODELS:
        raise RunError(
            f"{run} holds a {config['model']!r} run, which this version cannot build "
            f"(it builds {', '.join(sorted(MODELS))})"
        )
    spec = MODELS[config["model"]]
    # Runs from before --ema-decay existed have none and sample without an average.
    missing = [n for n in spec.options if n not in config["options"] and n != "ema_decay"]
    if missing:
        raise RunError(
            f"{Path(run) / CONFIG_NAME} lacks the {config['model']} options "
            f"{', '.join(missing)}; restore it from a copy or retrain into a fresh directory"
        )
    return spec


def load_run(run: str | Path, device: torch.device | str = "cpu") -> torch.nn.Module:
    """The trained model of a run directory, on ``device``, in eval mode.

    Raises:
        RunError: if the directory or its config.json is missing or malformed.
        CheckpointError: if checkpoint.pt is missing, damaged, of another format or model.
    """
    config = read_config(run)
    check_model(config, run)
    model = build_model(config)
    ckpt = load_checkpoint(checkpoint_path(run), map_location="cpu")
    restore_modules(ckpt, {"model": model})
    return model.to(device).eval()
