"""The model table of the ``pyro-gen`` command: names to classes, and how each model
family sees a dataset; :func:`load_run` rebuilds a run directory's trained model.

This module, its family tables (:mod:`pyro_gen.cli_models_vae`, ``cli_models_gan``,
``cli_models_cyclegan``, ``cli_models_score``) and :mod:`pyro_gen.cli` are the one place that
wires names (``vae``, ``realnvp``, ``ddpm``, ``mnist``, ...) to classes; everything else in
pyro_gen takes objects.
The flows are here.

Example:
    >>> sorted(MODELS)  # doctest: +NORMALIZE_WHITESPACE
    ['cgan', 'cnf', 'cyclegan', 'ddpm', 'gan', 'glow', 'maf', 'ncsn', 'nice', 'nsf', 'realnvp',
     'resflow', 'sde', 'ssvae', 'vae', 'wgan']
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from pyro_gen import data as datasets
from pyro_gen.cli_evaluate import bound_results, density_results
from pyro_gen.cli_models_cyclegan import CYCLEGAN_MODELS
from pyro_gen.cli_models_gan import GAN_MODELS
from pyro_gen.cli_models_score import SCORE_MODELS
from pyro_gen.cli_models_vae import VAE_MODELS
from pyro_gen.cli_spec import (
    DEFAULT_TOY_SAMPLES,
    IMAGE_DATA,
    MIXTURE_DATA,
    PIXEL_LEVELS,
    TOY_DATA,
    DataView,
    Evaluation,
    ModelSpec,
    UsageError,
    data_view,
)
from pyro_gen.infer.checkpoint import (
    CHECKPOINT_NAME,
    CheckpointError,
    load_checkpoint,
    restore_modules,
    verify_checkpoint,
)
from pyro_gen.infer.usable_device import device_problem
from pyro_gen.metrics import grid_modes, ring_modes, sample_modes
from pyro_gen.runs import CONFIG_NAME, RunError, checkpoint_path, read_config

__all__ = [
    "DEFAULT_TOY_SAMPLES",
    "IMAGE_DATA",
    "MIXTURES",
    "MODELS",
    "PIXEL_LEVELS",
    "TOY_DATA",
    "DataView",
    "ModelSpec",
    "build_model",
    "check_model",
    "data_view",
    "held_out_view",
    "load_run",
    "load_split",
]

#: 2D mixtures of isotropic Gaussians by dataset name: (means, standard deviation). The
#: eight Gaussians of pyro_gen.data (radius 4 and std 0.5, shrunk by sqrt 2), and the GAN
#: benchmarks' 25-Gaussian grid and 8-Gaussian ring (VEEGAN, PacGAN).
MIXTURES: dict[str, tuple[torch.Tensor, float]] = {
    "eight_gaussians": (ring_modes(8, 4.0 / math.sqrt(2)), 0.5 / math.sqrt(2)),
    "grid": (grid_modes(), 0.05),
    "ring": (ring_modes(), 0.02),
}


# ---------------------------------------------------------------------------------------
# Flows.


def _flow_builder(name: str) -> Callable[[tuple[int, ...], dict[str, Any]], torch.nn.Module]:
    def build(event_shape: tuple[int, ...], opts: dict[str, Any]) -> torch.nn.Module:
        from pyro_gen.flows import build as build_flow

        if len(event_shape) == 1:  # continuous 2D data
            return build_flow(name, event_shape)
        return build_flow(
            name, event_shape, dequantization=opts["dequantization"], num_bins=opts["num_bins"]
        )

    return build


#: cnf --objective -> pyro_gen.diffusion.FlowMatching's objective (None: maximum likelihood)
CNF_OBJECTIVES = {"ml": None, "flow-matching": "cfm", "rectified": "rectified"}


def _build_cnf(event_shape: tuple[int, ...], opts: dict[str, Any]) -> torch.nn.Module:
    objective = CNF_OBJECTIVES[opts.get("objective", "ml")]
    net = opts.get("velocity_net")
    if len(event_shape) != 1:
        # (a run from before the option records concat_squash, the vector default, for all)
        if net == "time_mlp":
            raise UsageError("--velocity-net time_mlp is for 2D data; image CNFs use a conv net")
        flow = _flow_builder("cnf")(event_shape, opts)
    else:
        # Flow matching regresses a velocity at every time: a sinusoidal time embedding
        # (time_mlp) reached half the checkerboard KL of FFJORD's net (RESULTS.md, issue 13).
        net = net or ("concat_squash" if objective is None else "time_mlp")
        from pyro_gen.flows import build as build_flow

        flow = build_flow("cnf", event_shape, dynamics=net)
    if objective is None:
        return flow
    if len(event_shape) != 1:
        raise UsageError(
            f"--objective {opts['objective']} trains the velocity field of a vector CNF; "
            "use a 2D toy dataset, or --objective ml for images"
        )
    from pyro_gen.diffusion import FlowMatching

    return FlowMatching(flow, objective=objective)


def _flow_evaluate_options(opts: dict[str, Any], data: str) -> tuple[str, ...]:
    # On images the dequantization noise is a latent that the IWAE weights; a flow on 2D
    # data has none, so its evaluation is the exact log-likelihood (see bound_results).
    return ("k", "num_test") if data in PIXEL_LEVELS else ("num_test",)


def _cnf_evaluate_options(opts: dict[str, Any], data: str) -> tuple[str, ...]:
    if CNF_OBJECTIVES[opts["objective"]] is None:
        return _flow_evaluate_options(opts, data)
    return ("num_test",)  # the exact ODE density (see _cnf_evaluate)


def _cnf_unused(opts: dict[str, Any], data: str) -> dict[str, str]:
    if data not in PIXEL_LEVELS:
        return {}
    unused = {"velocity_net": "applies to 2D data, and image CNFs use a conv net"}  # _build_cnf
    objective = opts.get("objective", "ml")
    if CNF_OBJECTIVES[objective] is not None:  # refused here, before the run directory exists
        unused["objective"] = (
            f"{objective} trains the velocity field of a vector CNF, on 2D toy data; image "
            "CNFs train by maximum likelihood (ml, the default)"
        )
    return unused


def _cnf_evaluate(ev: Evaluation) -> dict[str, Any]:
    if CNF_OBJECTIVES[ev.config["options"].get("objective", "ml")] is None:
        return bound_results(ev, discrete=True)
    return density_results(ev)  # a flow-matching loss is no bound: the exact ODE density


_FLOWS = ("nice", "realnvp", "glow", "maf", "nsf", "resflow")

MODELS: dict[str, ModelSpec] = {
    **VAE_MODELS,
    **{
        name: ModelSpec(
            build=_flow_builder(name),
            # Flows dequantize inside the model (its guide), so they see integer pixels.
            data_kind=lambda o: "levels",
            options=("dequantization",),
            evaluate_options=_flow_evaluate_options,
        )
        for name in _FLOWS
    },
    "cnf": ModelSpec(
        build=_build_cnf,
        data_kind=lambda o: "levels",
        options=("dequantization", "objective", "velocity_net"),
        evaluate_options=_cnf_evaluate_options,
        unused_options=_cnf_unused,
        defaults={"objective": "ml"},
        choices={"objective": tuple(CNF_OBJECTIVES)},
        # runs written before --velocity-net used FFJORD's net whatever the objective
        added_later={"objective": "ml", "velocity_net": "concat_squash"},
        evaluate=_cnf_evaluate,
        plot_density=lambda o: o["objective"] == "ml",
        held_out_in_fit=lambda o: o["objective"] == "ml",
        bound=lambda o: "ELBO" if o["objective"] == "ml" else "negated flow-matching loss",
    ),
    **SCORE_MODELS,
    **GAN_MODELS,
    **CYCLEGAN_MODELS,
}


def load_split(
    name: str, split: str, config: dict[str, Any], limit: int | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The first ``limit`` examples (all if None) of a dataset split and their labels (None
    for 2D data), as the run's config asks (2D toys are drawn, ``toy_samples`` of them for
    training)."""
    if name in TOY_DATA or name in MIXTURE_DATA:
        toy = config.get("toy_samples") or DEFAULT_TOY_SAMPLES
        n = toy if split == "train" else max(toy // 4, 1)
        if name in MIXTURE_DATA:
            seed = 2 * int(config.get("seed") or 0) + (split == "test")
            x, y = sample_modes(*MIXTURES[name], n, torch.Generator().manual_seed(seed)), None
        else:
            x, y = datasets.load(name, split, num_samples=n)
    else:
        x, y = datasets.load(name, split)
    if limit is not None:
        x, y = x[:limit], (None if y is None else y[:limit])
    return x, y


def run_options(config: dict[str, Any]) -> dict[str, Any]:
    """A run's model options, with the values that runs from before an option had."""
    return {**MODELS[config["model"]].added_later, **config["options"]}


def build_model(config: dict[str, Any]) -> torch.nn.Module:
    """Rebuilds the (untrained) model a run config describes."""
    return MODELS[config["model"]].build(tuple(config["event_shape"]), run_options(config))


def held_out_view(
    config: dict[str, Any], limit: int | None
) -> tuple[DataView, torch.Tensor | None]:
    """The test split of a run's dataset, prepared as its model sees data, and its labels."""
    x, y = load_split(config["data"], "test", config, limit)
    kind = MODELS[config["model"]].data_kind(run_options(config))
    return data_view(kind, config["data"], x), y


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
    missing = [n for n in spec.options if n not in run_options(config)]
    if missing:
        raise RunError(
            f"{Path(run) / CONFIG_NAME} lacks the {config['model']} options "
            f"{', '.join(missing)}; restore it from a copy or retrain into a fresh directory"
        )
    problem = _option_problem(config, Path(run))
    if problem is not None:
        raise RunError(
            f"{Path(run) / CONFIG_NAME} {problem}, which no pyro-gen run records; restore it "
            "from a copy or retrain into a fresh directory"
        )
    # Imported here: it reads the option table of the command line, which imports this.
    from pyro_gen.cli_recorded import check_recorded_settings

    check_recorded_settings(config, Path(run))
    return spec


def _option_problem(config: dict[str, Any], run: Path) -> str | None:
    """What in a config's options no run could have recorded, or None.

    Options are finite numbers, strings, booleans or null. A size is checked before a model
    is built from it, since building one of 2**31 layers takes hours: no option or
    event size of the model a checkpoint stores exceeds that checkpoint's byte count (each
    unit of a size is at least one stored parameter), so a larger one was not recorded.
    """
    options = run_options(config)
    for name, value in options.items():
        plain = value is None or isinstance(value, (bool, str, int, float))
        if not plain or (isinstance(value, float) and not math.isfinite(value)):
            return f"records the option {name} as {value!r}"
    ckpt = run / CHECKPOINT_NAME
    try:
        limit = ckpt.stat().st_size
    except OSError:  # a missing checkpoint is reported as itself (load_run)
        return None
    sizes = {n: v for n, v in options.items() if isinstance(v, int) and not isinstance(v, bool)}
    sizes["event_shape"] = math.prod(config["event_shape"])
    for name, value in sizes.items():
        if value > limit:
            # A damaged (truncated) checkpoint is reported as itself, before a model is
            # built; the bytes are read and hashed only here, where a size is refused, not on
            # every load (load_checkpoint verifies them once: 25 ms for 8 MB).
            try:
                verify_checkpoint(ckpt)
            except CheckpointError:
                return None
            return (
                f"records {name} = {value}, larger than the {limit} bytes of its "
                f"{CHECKPOINT_NAME} could store a model of"
            )
    return None


def load_run(run: str | Path, device: torch.device | str = "cpu") -> torch.nn.Module:
    """The trained model of a run directory, on ``device``, in eval mode.

    Raises:
        ValueError: if ``device`` is no device, or none this machine has.
        RunError: if the directory or its config.json is missing or malformed.
        CheckpointError: if checkpoint.pt is missing, damaged, of another format or model.
    """
    # Checked first: torch refused "gpu" with a list of 25 device types, and "cuda" on a
    # CPU-only build with "AssertionError: Torch not compiled with CUDA enabled", after the
    # checkpoint was read.
    try:
        device = torch.device(device)
    except RuntimeError:
        raise ValueError(f"unknown device {device!r}: use cpu, cuda or cuda:N") from None
    problem = device_problem(device)
    if problem is not None:
        raise ValueError(f"device {str(device)!r}: {problem}")
    config = read_config(run)
    check_model(config, run)
    ckpt = load_checkpoint(checkpoint_path(run), map_location="cpu")
    try:
        model = build_model(config)
    # an option of the right type that the model refuses (an unknown prior, a size of 0)
    except (ValueError, TypeError, OverflowError) as e:
        raise RunError(
            f"{Path(run) / CONFIG_NAME} records options no {config['model']} can be built "
            f"from ({e}); restore it from a copy or retrain into a fresh directory"
        ) from e
    restore_modules(ckpt, {"model": model})
    return model.to(device).eval()
