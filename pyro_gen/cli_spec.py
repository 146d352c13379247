"""What the ``pyro-gen`` command knows about a trainable model name (:class:`ModelSpec`) and
how each model family sees a dataset (:class:`DataView`).

The family tables (:mod:`pyro_gen.cli_models` and its ``cli_models_*`` siblings) fill these
in; :mod:`pyro_gen.cli` only reads them, so adding a model touches one family file.

Example:
    >>> view = data_view("unit", "digits", torch.full((2, 8, 8), 16, dtype=torch.uint8))
    >>> view.transform(view.x).max().item(), view.event_shape, view.levels
    (1.0, (8, 8), 17)
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from pyro.infer import Trace_ELBO

from pyro_gen import data as datasets

IMAGE_DATA = ("mnist", "fashion_mnist", "digits")
TOY_DATA = ("moons", "eight_gaussians", "checkerboard", "rings", "spirals", "pinwheel")
# The GAN benchmarks' mixtures (VEEGAN, PacGAN), drawn by the command itself.
MIXTURE_DATA = ("grid", "ring")
# Intensity levels per pixel: 8-bit for the MNISTs, 0..16 for sklearn's digits.
PIXEL_LEVELS = {"mnist": 256, "fashion_mnist": 256, "digits": 17}
# Classes of the labelled datasets (every image dataset here has ten).
NUM_CLASSES = {"mnist": 10, "fashion_mnist": 10, "digits": 10}
# Training samples drawn from a 2D toy (the test split gets a quarter as many).
DEFAULT_TOY_SAMPLES = 20000
# Height and width of each image dataset's images (networks are chosen by them).
IMAGE_SIZES = {"mnist": (28, 28), "fashion_mnist": (28, 28), "digits": (8, 8)}
#: The options of ``pyro-gen evaluate`` that some family's evaluation reads, with what each
#: sets; each :class:`ModelSpec` names those its evaluation honours, and the others are
#: refused. (``--device``, and the switches ``--no-progress`` and ``--debug``, which ask for
#: nothing a run could lack, apply to every run.)
EVALUATE_OPTIONS: dict[str, str] = {
    "k": "importance samples of the IWAE log-likelihood",
    "num_test": "test examples scored",
    "num_samples": "generated samples scored",
    "classifier_epochs": "epochs of the classifier that scores images",
    "probability_flow": "the probability-flow ODE likelihood",
}


class UsageError(ValueError):
    """Bad command-line input; reported as one line without a traceback."""


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


def _dequantized_channel(levels: int) -> Callable[[torch.Tensor], torch.Tensor]:
    # Pixel i becomes a uniform draw from its bin [i, i + 1) / levels, so a density of the
    # result bounds the discrete likelihood (bits/dim); the channel axis is what conv
    # networs of score models take.
    def transform(x: torch.Tensor) -> torch.Tensor:
        x = x.to(torch.get_default_dtype())
        return ((x + torch.rand_like(x)) / levels).unsqueeze(-3)

    return transform


def data_view(kind: str, name: str, x: torch.Tensor) -> DataView:
    """Prepares ``x`` from dataset ``name`` for a model that wants ``kind`` of data:
    ``binary`` (dynamic binarization), ``unit`` (intensities in [0, 1]), ``levels``
    (the integer pixels themselves, for models that dequantize inside their guide) or
    ``dequantized`` (uniformly dequantized into [0, 1], with a channel axis)."""
    if name not in PIXEL_LEVELS:
        return DataView(x, None, tuple(x.shape[1:]), None)
    levels = PIXEL_LEVELS[name]
    shape = tuple(x.shape[1:])
    if kind == "binary":
        return DataView(x, _binarized(levels), shape, levels)
    if kind == "unit":
        return DataView(x, _unit_interval(levels), shape, levels)
    if kind == "levels":
        return DataView(x, None, shape, levels)
    if kind == "dequantized":
        return DataView(x, _dequantized_channel(levels), (1, *shape), levels)
    raise ValueError(f"unknown data kind {kind!r}")


# ---------------------------------------------------------------------------------------
# What `evaluate` hands a family's evaluation.


@dataclass(frozen=True)
class Evaluation:
    """A trained model with its run's held-out data, for a family's ``evaluate``.

    Attributes:
        model: the trained model (eval mode).
        config: the run's ``config.json``.
        view: the held-out split as the model sees it (``view.x`` raw, ``view.transform``).
        labels: the held-out labels, or None for unlabelled data.
        args: the ``evaluate`` command's arguments (``k``, ``num_test``, ...).
    """

    model: torch.nn.Module
    config: dict[str, Any]
    view: DataView
    labels: torch.Tensor | None
    args: argparse.Namespace


# ---------------------------------------------------------------------------------------
# A trainable model name.


def _whole_tensor(x: torch.Tensor, y: torch.Tensor | None, config: dict, split: str) -> Any:
    return x


def _plain_sample(model: Any, n: int, sampler: str | None, steps: int | None) -> torch.Tensor:
    kwargs = {k: v for k, v in (("sampler", sampler), ("steps", steps)) if v is not None}
    return model.sample(n, **kwargs)


@dataclass(frozen=True)
class ModelSpec:
    """A trainable model name: how to build it, what data it takes, how to train, evaluate
    and sample it.

    Attributes:
        build: ``(event_shape, options) -> module`` following the model protocol.
        data_kind: ``options -> kind`` of :func:`data_view`.
        options: the model options (``config["options"]``) this model records.
        evaluate_options: ``(options, data) -> names``: the :data:`EVALUATE_OPTIONS` that
            ``evaluate`` honours for a run of this model on dataset ``data`` (required, so
            that a new model cannot ignore one silently: ``evaluate`` refuses the rest).
        loss: ``(event_shape, options) -> loss`` given to ``fit`` (an ELBO or a loss object).
        images_only: refuses the 2D toys.
        labelled: trains on ``(x, y)``: refuses unlabelled data.
        discrete: whether the likelihood is over discrete pixels (so bits/dim apply).
        step_callbacks: ``options -> callbacks`` run by ``fit`` after every step.
        defaults: this model's defaults of shared options (over ``OPTION_DEFAULTS``).
        choices: the values of shared options this model accepts, by option.
        added_later: options that runs written before them lack, with the value they had.
        loss_options: options that change only the loss, so a resume may change them.
        unused_options: ``(options, data) -> {name: why}``: options of this model that a run
            with these options on dataset ``data`` would not read, each with the reason
            (``train`` refuses them when typed).
        fit_data: ``(x, y, config, split) -> data`` in a form ``fit`` takes.
        evaluate: ``Evaluation -> results``; None: the test ELBO and IWAE estimate.
        samplers: the ``sample --sampler`` names it takes (none: ``--sampler`` is refused).
        fixed_step_samplers: those of ``samplers`` whose steps ``--steps`` cannot set (an
            adaptive ODE solver, the DDPM's ancestral chain of all T steps): ``--steps`` is
            refused with them.
        default_sampler: the one of ``samplers`` that ``sample`` uses without ``--sampler``.
        sample: ``(model, n, sampler, steps) -> samples`` in data space.
        bound: ``options -> what fit's held-out test_elbo (or test_loss) is``, in words.
        train_bound: ``options -> what fit's train_loss is``, in words, where it is not
            ``bound`` (None: it is).
        adam: extra Adam arguments of the training optimizer (GANs: ``betas``).
        held_out_in_fit: ``options -> bool``: whether ``fit`` scores the held-out split after
            each epoch (not for models whose time plate, like the data plate, encloses every
            site: ``fit``'s evaluation cannot tell which plate indexes the examples).
        figure: ``(model, config, n) -> images`` drawn instead of ``n`` samples, by a model
            that transforms data rather than samples it (CycleGAN: translated test images).
        plot_density: ``options -> bool``: whether the 2D sample plot shows ``log_prob``
            behind the points (not where each of its 10,000 grid points is an ODE solve).
        bound_is_loss: whether ``bound`` names the loss itself, as ``test_loss`` holds it (an
            adversarial loss), not what ``-train_loss`` and ``test_elbo`` are.
    """

    build: Callable[[tuple[int, ...], dict[str, Any]], torch.nn.Module]
    data_kind: Callable[[dict[str, Any]], str]
    options: tuple[str, ...]
    evaluate_options: Callable[[dict[str, Any], str], tuple[str, ...]]
    loss: Callable[[tuple[int, ...], dict[str, Any]], Any] = field(
        default=lambda shape, opts: Trace_ELBO()
    )
    images_only: bool = False
    labelled: bool = False
    discrete: Callable[[dict[str, Any]], bool] = field(default=lambda opts: True)
    step_callbacks: Callable[[dict[str, Any]], tuple[Callable[..., Any], ...]] = field(
        default=lambda opts: ()
    )
    defaults: Mapping[str, Any] = field(default_factory=dict)
    choices: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)
    added_later: Mapping[str, Any] = field(default_factory=dict)
    loss_options: tuple[str, ...] = ()
    unused_options: Callable[[dict[str, Any], str], Mapping[str, str]] = field(
        default=lambda opts, data: {}
    )
    fit_data: Callable[[torch.Tensor, torch.Tensor | None, dict[str, Any], str], Any] = field(
        default=_whole_tensor
    )
    evaluate: Callable[[Evaluation], dict[str, Any]] | None = None
    samplers: tuple[str, ...] = ()
    fixed_step_samplers: tuple[str, ...] = ()
    default_sampler: str | None = None
    sample: Callable[[Any, int, str | None, int | None], torch.Tensor] = field(
        default=_plain_sample
    )
    bound: Callable[[dict[str, Any]], str] = field(default=lambda opts: "ELBO")
    train_bound: Callable[[dict[str, Any]], str | None] = field(default=lambda opts: None)
    adam: Mapping[str, Any] = field(default_factory=dict)
    held_out_in_fit: Callable[[dict[str, Any]], bool] = field(default=lambda opts: True)
    figure: Callable[[Any, dict[str, Any], int], torch.Tensor] | None = None
    plot_density: Callable[[dict[str, Any]], bool] = field(default=lambda opts: True)
    bound_is_loss: bool = False
