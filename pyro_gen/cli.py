"""The ``pyro-gen`` command: train, evaluate and sample generative models.

This is the one place that wires names (``vae``, ``realnvp``, ``ddpm``, ``mnist``, ...)
to classes; everything else in pyro_gen takes objects.

Example:
    >>> _parser().parse_args(["train", "vae", "--data", "digits", "--epochs", "1"]).epochs
    1
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import pyro
import pyro.optim
import torch
from pyro.infer import ELBO, Trace_ELBO, TraceMeanField_ELBO

from pyro_gen import data as datasets
from pyro_gen.infer import (
    CheckpointError,
    bits_per_dim_from_nats,
    evaluate_elbo,
    fit,
    iwae_log_likelihood,
)
from pyro_gen.infer.checkpoint import atomic_write_bytes, load_checkpoint, restore_model
from pyro_gen.runs import RunError, checkpoint_path, read_config, write_config

IMAGE_DATA = ("mnist", "fashion_mnist", "digits")
TOY_DATA = ("moons", "eight_gaussians", "checkerboard", "rings", "spirals", "pinwheel")
# Intensity levels per pixel: 8-bit for the MNISTs, 0..16 for sklearn's digits.
PIXEL_LEVELS = {"mnist": 256, "fashion_mnist": 256, "digits": 17}


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
        for name in ("nice", "realnvp", "glow", "maf", "cnf")
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


# ---------------------------------------------------------------------------------------
# Argument parsing.


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, no usage dump: the user sees what was wrong and where to look.
        self.exit(2, f"pyro-gen: error: {message} (see `{self.prog} --help`)\n")


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {value}")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _ema_decay(text: str) -> float:
    value = float(text)
    if not (value == 0 or 0 < value < 1):
        raise argparse.ArgumentTypeError(f"must lie in (0, 1), or be 0 for no average; got {text}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="pyro-gen", description="Deep generative models written the Pyro way.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    train = sub.add_parser("train", help="train a model into a run directory (resumes if present)")
    train.add_argument("model", choices=sorted(MODELS), help="model to train")
    train.add_argument("--data", required=True, choices=IMAGE_DATA + TOY_DATA, help="dataset")
    train.add_argument("--epochs", type=_non_negative, default=3, help="total epochs (default 3)")
    train.add_argument("--batch-size", type=_positive, default=128, help="examples per step")
    train.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    train.add_argument("--grad-clip", type=float, default=None, help="clip the gradient norm")
    train.add_argument(
        "--subset", type=_positive, default=None, help="use only the first N training examples"
    )
    train.add_argument(
        "--test-subset", type=_positive, default=None, help="evaluate on the first N test examples"
    )
    train.add_argument(
        "--toy-samples", type=_positive, default=20000, help="training samples for 2D toys"
    )
    train.add_argument("--seed", type=int, default=0, help="random seed")
    train.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    train.add_argument(
        "--out", type=Path, default=None, help="run directory (default runs/MODEL-DATA)"
    )
    train.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    vae = train.add_argument_group("vae options")
    vae.add_argument("--z-dim", type=_positive, default=50, help="latent size (default 50)")
    vae.add_argument("--hidden-dim", type=_positive, default=400, help="hidden width (default 400)")
    vae.add_argument(
        "--likelihood",
        choices=("bernoulli", "gaussian", "gaussian_learned", "categorical"),
        default="bernoulli",
    )
    vae.add_argument("--layers", type=_positive, default=1, help="stochastic layers (default 1)")
    vae.add_argument("--prior", choices=("normal", "mog", "vamp", "flow"), default="normal")
    vae.add_argument("--guide", choices=("normal", "iaf", "auto"), default="normal")
    vae.add_argument(
        "--objective",
        choices=("elbo", "meanfield", "iwae", "freebits"),
        default="elbo",
        help="Trace_ELBO, TraceMeanField_ELBO (analytic KL), IWAE bound, or free bits",
    )
    vae.add_argument(
        "--k", type=_positive, default=50, help="importance samples for --objective iwae"
    )

    flows = train.add_argument_group("flow options (nice, realnvp, glow, maf, cnf)")
    flows.add_argument(
        "--dequantization",
        choices=("uniform", "variational"),
        default="uniform",
        help="how image flows turn pixels into continuous data (default uniform)",
    )

    ddpm = train.add_argument_group("ddpm options")
    ddpm.add_argument("--schedule", choices=("linear", "cosine", "sigmoid"), default="linear")
    ddpm.add_argument("--param", choices=("eps", "x0", "v"), default="eps")
    ddpm.add_argument(
        "--diffusion-objective",
        choices=("elbo", "simple"),
        default="elbo",
        help="the variational bound, or the reweighted L_simple",
    )
    ddpm.add_argument("--timesteps", type=_positive, default=1000)
    ddpm.add_argument(
        "--ema-decay",
        type=_ema_decay,
        default=0.999,
        help="decay of the weight average used for sampling (default 0.999; 0: none)",
    )

    evaluate = sub.add_parser("evaluate", help="test ELBO and importance-weighted log-likelihood")
    evaluate.add_argument("run", type=Path, help="run directory")
    evaluate.add_argument(
        "--k", type=_positive, default=1000, help="importance samples (default 1000)"
    )
    evaluate.add_argument(
        "--num-test", type=_positive, default=None, help="evaluate on the first N test examples"
    )
    evaluate.add_argument("--device", default="cpu")

    sample = sub.add_parser("sample", help="draw samples from a trained run into a PNG")
    sample.add_argument("run", type=Path, help="run directory")
    sample.add_argument("-n", "--num-samples", type=_positive, default=64)
    sample.add_argument(
        "--sampler", choices=("ancestral", "ddim"), default=None, help="diffusion sampler"
    )
    sample.add_argument("--steps", type=_positive, default=None, help="diffusion sampling steps")
    sample.add_argument("--out", type=Path, default=None, help="PNG path (default RUN/samples.png)")
    sample.add_argument("--device", default="cpu")
    return parser


# ---------------------------------------------------------------------------------------
# Commands.


def _device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise UsageError(f"unknown device {name!r}: use cpu, cuda or cuda:N") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda asked for, but no CUDA device is available here")
    return device


def _load_split(name: str, split: str, config: dict[str, Any], limit: int | None) -> torch.Tensor:
    if name in TOY_DATA:
        n = config["toy_samples"] if split == "train" else max(config["toy_samples"] // 4, 1)
        x, _ = datasets.load(name, split, num_samples=n)
    else:
        x, _ = datasets.load(name, split)
    return x[:limit] if limit is not None else x


def build_model(config: dict[str, Any]) -> torch.nn.Module:
    """Rebuilds the (untrained) model a run config describes."""
    return MODELS[config["model"]].build(tuple(config["event_shape"]), config["options"])


def _test_view(config: dict[str, Any], limit: int | None) -> DataView:
    x = _load_split(config["data"], "test", config, limit)
    return data_view(MODELS[config["model"]].data_kind(config["options"]), config["data"], x)


def load_run(run: str | Path, device: torch.device | str = "cpu") -> torch.nn.Module:
    """The trained model of a run directory, on ``device``, in eval mode."""
    config = read_config(run)
    if config.get("model") not in MODELS:
        raise RunError(
            f"{run} holds a {config.get('model')!r} run, which this version cannot build"
        )
    model = build_model(config)
    restore_model(load_checkpoint(checkpoint_path(run), map_location="cpu"), model)
    return model.to(device).eval()


def _train(args: argparse.Namespace) -> None:
    spec = MODELS[args.model]
    if spec.images_only and args.data in TOY_DATA:
        raise UsageError(f"{args.model} models images; pick one of {', '.join(IMAGE_DATA)}")
    device = _device(args.device)
    out = args.out or Path("runs") / f"{args.model}-{args.data}"
    options = {name: getattr(args, name) for name in spec.options}
    if args.data in PIXEL_LEVELS:
        options["num_bins"] = PIXEL_LEVELS[args.data]
    config = {
        "model": args.model,
        "data": args.data,
        "options": options,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "subset": args.subset,
        "test_subset": args.test_subset,
        "toy_samples": args.toy_samples,
        "seed": args.seed,
    }
    if (out / "config.json").exists():
        previous = read_config(out)
        if {k: previous.get(k) for k in ("model", "data", "options")} != {
            k: config[k] for k in ("model", "data", "options")
        }:
            raise UsageError(
                f"{out} holds a {previous.get('model')} run on {previous.get('data')} with other "
                "options; pass a fresh --out to start a new run"
            )
    pyro.set_rng_seed(args.seed)
    view = data_view(
        spec.data_kind(options), args.data, _load_split(args.data, "train", config, args.subset)
    )
    test_view = _test_view(config, args.test_subset)
    config["event_shape"] = list(view.event_shape)
    model = build_model(config)
    write_config(out, config)
    result = fit(
        model,
        view.x,
        epochs=args.epochs,
        batch_size=args.batch_size,
        optim=pyro.optim.Adam({"lr": args.lr}),
        loss=spec.loss(options),
        device=device,
        grad_clip=args.grad_clip,
        transform=view.transform,
        eval_data=test_view.x,
        checkpoint_dir=out,
        step_callbacks=spec.step_callbacks(options),
        progress=not args.no_progress,
    )
    figures = _write_figures(model, out, result.history, num_samples=64)
    last = result.history[-1] if result.history else {}
    elbo = last.get("test_elbo", float("nan"))
    summary = (
        f"trained {args.model} on {args.data}: {result.epoch} epochs, test ELBO {elbo:.2f} nats"
    )
    if test_view.levels is not None and spec.discrete(options):
        bpd = bits_per_dim_from_nats(elbo, math.prod(test_view.event_shape))
        summary += f" ({bpd:.3f} bits/dim)"
    print(summary)
    print(f"run directory: {out}")
    print(f"metrics: {out / 'metrics.jsonl'}")
    for path in figures:
        print(f"figure: {path}")


def _sample(model: torch.nn.Module, n: int, **kwargs: Any) -> torch.Tensor:
    with torch.no_grad():
        return model.sample(n, **{k: v for k, v in kwargs.items() if v is not None})


def _write_figures(
    model: torch.nn.Module, out: Path, history: Sequence[dict[str, Any]], num_samples: int
) -> list[Path]:
    from pyro_gen import plotting

    paths = [plotting.save_curves(history, out / "curves.png")] if history else []
    samples = _sample(model.eval(), num_samples)
    paths.append(_save_samples(model, samples, out / "samples.png"))
    return paths


def _save_samples(model: torch.nn.Module, samples: torch.Tensor, path: Path) -> Path:
    from pyro_gen import plotting

    if samples.dim() == 2 and samples.shape[-1] == 2:
        return plotting.save_scatter(samples, path, getattr(model, "log_prob", None))
    return plotting.save_image_grid(samples.reshape(samples.shape[0], *samples.shape[-2:]), path)


def _evaluate(args: argparse.Namespace) -> None:
    device = _device(args.device)
    config = read_config(args.run)
    model = load_run(args.run, device)
    view = _test_view(config, args.num_test)
    results: dict[str, Any] = {"num_test": int(view.x.shape[0])}
    results["test_elbo"] = evaluate_elbo(model, view.x, transform=view.transform)
    results["iwae_k"] = args.k
    results["iwae_log_likelihood"] = iwae_log_likelihood(
        model, view.x, num_samples=args.k, chunk=min(args.k, 500), transform=view.transform
    )
    if view.levels is not None and MODELS[config["model"]].discrete(config["options"]):
        results["bits_per_dim"] = bits_per_dim_from_nats(
            results["iwae_log_likelihood"], math.prod(view.event_shape)
        )
    atomic_write_bytes(
        Path(args.run) / "evaluation.json", (json.dumps(results, indent=2) + "\n").encode()
    )
    for key, value in results.items():
        print(f"{key}: {value:.4f}" if isinstance(value, float) else f"{key}: {value}")
    print(f"written to {Path(args.run) / 'evaluation.json'}")


def _sample_command(args: argparse.Namespace) -> None:
    model = load_run(args.run, _device(args.device))
    samples = _sample(model, args.num_samples, sampler=args.sampler, steps=args.steps)
    path = _save_samples(model, samples, args.out or Path(args.run) / "samples.png")
    print(f"{args.num_samples} samples written to {path}")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pyro-gen`` console script; returns the exit status."""
    args = _parser().parse_args(argv)
    commands = {"train": _train, "evaluate": _evaluate, "sample": _sample_command}
    try:
        commands[args.command](args)
    except (UsageError, RunError, CheckpointError, datasets.DatasetError, ValueError) as e:
        print(f"pyro-gen: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("pyro-gen: interrupted; the last checkpoint is intact", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
