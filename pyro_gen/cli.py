"""The ``pyro-gen`` command: train, evaluate and sample generative models.

Every failure a user can cause (a bad option, a file-system problem, a diverged run, a
damaged or foreign file, the wrong run for a command) is one line on stderr saying what was
wrong and what to do, with a non-zero exit; ``--debug`` shows the traceback instead.

Example:
    >>> _parser().parse_args(["train", "vae", "--data", "digits", "--epochs", "1"]).epochs
    1
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import math
import sys
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

import pyro
import pyro.optim
import torch

from pyro_gen import data as datasets
from pyro_gen.cli_evaluate import bound_results
from pyro_gen.cli_impute import impute_command
from pyro_gen.cli_models import (
    IMAGE_DATA,
    MODELS,
    PIXEL_LEVELS,
    TOY_DATA,
    ModelSpec,
    build_model,
    check_model,
    data_view,
    held_out_view,
    load_run,
    load_split,
    run_options,
)
from pyro_gen.cli_models_gan import LOSSES
from pyro_gen.cli_settings import (
    OPTION_DEFAULTS,
    TRAINING_DEFAULTS,
    UsageError,
    ema_decay_value,
    flag,
    new_config,
    non_negative,
    override_names,
    positive,
    positive_finite,
    rate,
    requested_settings,
    resumed_config,
    train_command,
    whole_number,
)
from pyro_gen.cli_spec import MIXTURE_DATA, Evaluation
from pyro_gen.infer import (
    CheckpointError,
    NonFiniteLossError,
    bits_per_dim_from_nats,
    fit,
)
from pyro_gen.infer.checkpoint import (
    CHECKPOINT_NAME,
    METRICS_NAME,
    run_lock,
    verify_checkpoint,
)
from pyro_gen.infer.distributed import is_main_process
from pyro_gen.infer.files import UnsafePathError, atomic_write_bytes, refuse_symlink
from pyro_gen.infer.legacy_checkpoint import convert_legacy_checkpoint
from pyro_gen.runs import (
    CONFIG_NAME,
    RunError,
    checkpoint_path,
    probe_writable,
    read_config,
    write_config,
)

__all__ = ["UsageError", "build_model", "load_run", "main"]


# ---------------------------------------------------------------------------------------
# Argument parsing. Every value is checked here, where the user typed it.


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, no usage dump: the user sees what was wrong and where to look.
        self.exit(2, f"pyro-gen: error: {message} (see `{self.prog} --help`)\n")


def _add_setting(group: Any, name: str, help: str, **kwargs: Any) -> None:
    # SUPPRESS: an option appears in the parsed arguments only if the user typed it, so a
    # resume can tell a setting asked for from a default, and options of other models
    # can be refused by name.
    default = {**TRAINING_DEFAULTS, **OPTION_DEFAULTS}[name]
    shown = "default: " + ("none" if default is None else str(default))
    group.add_argument(flag(name), default=argparse.SUPPRESS, help=f"{help} ({shown})", **kwargs)


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    parser = _Parser(prog="pyro-gen", description="Deep generative models written the Pyro way.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    train = sub.add_parser(
        "train",
        parents=[common],
        help="train a model into a run directory (resumes if present)",
        description="Train a model into --out. If --out holds a run, training resumes from its "
        "checkpoint: settings not given take the recorded values, and a setting given with "
        "another value is refused unless --override names it.",
    )
    train.add_argument("model", choices=sorted(MODELS), help="model to train")
    train.add_argument(
        "--data",
        required=True,
        choices=IMAGE_DATA + TOY_DATA + MIXTURE_DATA,
        help="dataset (grid and ring: the GAN benchmarks' 25- and 8-Gaussian mixtures)",
    )
    train.add_argument(
        "--epochs",
        type=non_negative,
        default=3,
        help="total epochs, counting resumed ones (default: 3)",
    )
    _add_setting(train, "batch_size", "examples per step", type=positive)
    _add_setting(train, "lr", "Adam learning rate", type=positive_finite)
    _add_setting(train, "grad_clip", "clip the gradient norm to this", type=positive_finite)
    _add_setting(train, "subset", "use only the first N training examples", type=positive)
    _add_setting(train, "test_subset", "evaluate on the first N test examples", type=positive)
    _add_setting(train, "toy_samples", "training samples of a 2D toy dataset", type=positive)
    _add_setting(train, "seed", "random seed", type=whole_number)
    train.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    train.add_argument(
        "--out", type=Path, default=None, help="run directory (default runs/MODEL-DATA)"
    )
    train.add_argument(
        "--override",
        type=override_names,
        action="extend",
        default=[],
        help="on resume, settings that may differ from the recorded run (e.g. lr,batch-size)",
    )
    train.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    train.add_argument(
        "--no-compile",
        action="store_true",
        help="plain Pyro SVI steps instead of the compiled step, whose tracing takes seconds "
        "before the first step (worth it for long runs only)",
    )

    vae = train.add_argument_group("vae, ssvae options (z-dim: also GANs; hidden-dim: also others)")
    _add_setting(vae, "z_dim", "latent size (GANs: 16)", type=positive)
    _add_setting(
        vae,
        "hidden_dim",
        "hidden width (GANs, ncsn, sde: 128; cyclegan: 32 channels)",
        type=positive,
    )
    _add_setting(
        vae,
        "likelihood",
        "pixel likelihood",
        choices=("bernoulli", "gaussian", "gaussian_learned", "categorical"),
    )
    _add_setting(vae, "layers", "stochastic layers", type=positive)
    _add_setting(vae, "prior", "latent prior", choices=("normal", "mog", "vamp", "flow"))
    _add_setting(vae, "guide", "amortized guide", choices=("normal", "iaf", "auto"))
    _add_setting(
        vae,
        "objective",
        "vae: Trace_ELBO, TraceMeanField_ELBO (analytic KL), IWAE bound, or free bits; "
        "cnf: maximum likelihood (ml), flow-matching or rectified (cnf default: ml)",
        choices=("elbo", "meanfield", "iwae", "freebits", "ml", "flow-matching", "rectified"),
    )
    _add_setting(vae, "k", "importance samples of --objective iwae", type=positive)
    _add_setting(
        vae,
        "missing_rate",
        "hide this share of pixels at random; the model scores the observed ones (with "
        "--objective iwae: MIWAE)",
        type=rate,
    )
    _add_setting(vae, "labels", "ssvae: labelled training examples, balanced by class",
                 type=positive)  # fmt: skip

    flows = train.add_argument_group("flow options (nice, realnvp, glow, maf, nsf, resflow, cnf)")
    _add_setting(
        flows,
        "dequantization",
        "how image flows turn pixels into continuous data",
        choices=("uniform", "variational"),
    )

    gan = train.add_argument_group("gan, wgan, cgan, cyclegan options")
    _add_setting(
        gan,
        "loss",
        "adversarial objective (wgan: wgan-gp, or wgan-clip; gan: not the wgan ones)",
        choices=tuple(LOSSES),
    )
    _add_setting(
        gan,
        "n_critic",
        "discriminator steps per generator step (the loss's own: 1, or 5 for wgan)",
        type=positive,
    )

    _add_setting(
        gan,
        "cycle_weight",
        "cyclegan: weight of the L1 cycle-consistency error",
        type=positive_finite,
    )

    score = train.add_argument_group("ncsn, sde options")
    _add_setting(score, "sde", "forward SDE (ncsn: ve)", choices=("ve", "vp", "subvp"))
    _add_setting(
        score,
        "weighting",
        "denoising score matching weight: sigma^2, g^2 (a likelihood bound), or none",
        choices=("sigma2", "likelihood", "none"),
    )

    ddpm = train.add_argument_group("ddpm options (ema-decay: also gan, wgan, cgan)")
    _add_setting(ddpm, "schedule", "noise schedule", choices=("linear", "cosine", "sigmoid"))
    _add_setting(ddpm, "param", "what the network predicts", choices=("eps", "x0", "v"))
    _add_setting(
        ddpm,
        "diffusion_objective",
        "the variational bound, or the reweighted L_simple",
        choices=("elbo", "simple"),
    )
    _add_setting(ddpm, "timesteps", "diffusion steps", type=positive)
    _add_setting(ddpm, "ema_decay", "decay of the weight average (0: none)", type=ema_decay_value)

    evaluate = sub.add_parser(
        "evaluate",
        parents=[common],
        help="test ELBO and importance-weighted log-likelihood; exact densities; GAN metrics",
    )
    evaluate.add_argument("run", type=Path, help="run directory")
    evaluate.add_argument(
        "--k", type=positive, default=1000, help="importance samples (default 1000)"
    )
    evaluate.add_argument(
        "--num-test", type=positive, default=None, help="evaluate on the first N test examples"
    )
    evaluate.add_argument(
        "-n", "--num-samples", type=positive, default=None,
        help="samples a GAN on a 2D mixture is scored by (default 2500)",
    )  # fmt: skip
    evaluate.add_argument(
        "--classifier-epochs", type=positive, default=3,
        help="epochs of the classifier that scores GAN images (default 3)",
    )  # fmt: skip
    evaluate.add_argument(
        "--probability-flow", action="store_true",
        help="ddpm: also the probability-flow ODE likelihood (slow for images)",
    )  # fmt: skip
    evaluate.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")

    sample = sub.add_parser(
        "sample", parents=[common], help="draw samples from a trained run into a PNG"
    )
    sample.add_argument("run", type=Path, help="run directory")
    sample.add_argument("-n", "--num-samples", type=positive, default=64)
    sample.add_argument(
        "--sampler",
        choices=sorted({name for spec in MODELS.values() for name in spec.samplers}),
        default=None,
        help="ddpm: ancestral (default) or ddim; ddpm, ncsn, sde: langevin (ncsn's default), "
        "euler-maruyama, pc (sde's default) or ode",
    )
    sample.add_argument(
        "--steps", type=positive, default=None,
        help="sampling steps (langevin: noise levels; ode: ignored, it is adaptive)",
    )  # fmt: skip
    sample.add_argument(
        "--out",
        type=Path,
        default=None,
        help="PNG file, or an existing folder for FOLDER/samples.png (default RUN/samples.png)",
    )
    sample.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")

    impute = sub.add_parser(
        "impute",
        parents=[common],
        help="fill pixels hidden at random in test images with a trained vae (MIWAE)",
        description="Hides pixels of test images at random, fills them by self-normalised "
        "importance sampling with the run's VAE, and reports the error on the hidden pixels "
        "beside mean imputation; writes a PNG of truth, observed and imputed images.",
    )
    impute.add_argument("run", type=Path, help="run directory of a vae")
    impute.add_argument(
        "--missing-rate", type=rate, default=None,
        help="share of pixels hidden (default: the run's --missing-rate, or 0.5)",
    )  # fmt: skip
    impute.add_argument(
        "--k", type=positive, default=1000, help="importance samples per image (default 1000)"
    )
    impute.add_argument(
        "--num-test", type=positive, default=100, help="test images to impute (default 100)"
    )
    impute.add_argument(
        "--out", type=Path, default=None,
        help="PNG file, or an existing folder for FOLDER/imputed.png (default RUN/imputed.png)",
    )  # fmt: skip
    impute.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")

    convert = sub.add_parser(
        "convert-checkpoint",
        parents=[common],
        help="rewrite the checkpoint of an older pyro-gen run in the current format",
    )
    convert.add_argument("run", type=Path, help="run directory")
    convert.add_argument(
        "--trust-pickle",
        action="store_true",
        help="required: the old checkpoint is yours (reading it runs any code it holds)",
    )
    return parser


# ---------------------------------------------------------------------------------------
# Shared checks.


def _device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"unknown --device {name!r}: use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise UsageError(f"--device {name}: no CUDA device is available here; use cpu")
        if device.index is not None and device.index >= count:
            raise UsageError(f"--device {name}: there are {count} CUDA devices (0..{count - 1})")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise UsageError(f"--device {name}: MPS is not available here; use cpu")
    elif device.type != "cpu":
        raise UsageError(f"--device {name} cannot hold a trained model; use cpu, cuda or cuda:N")
    return device


def _run_directory(out: Path) -> Path:
    """Creates the run directory ``out`` (``--out``) or says in one line why it cannot."""
    for parent in (out, *out.parents):
        if parent.exists() and not parent.is_dir():
            where = "is a file" if parent == out else f"is under {parent}, which is a file"
            raise UsageError(f"--out {out} {where}; choose a directory path for the run")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(
            f"cannot create run directory {out} ({e.strerror}); choose another --out or make "
            f"{next((p for p in out.parents if p.exists()), out.parent)} writable"
        ) from e
    return out


# ---------------------------------------------------------------------------------------
# Loading a run.


def _load_run_or_explain(run: Path, config: dict[str, Any], device: torch.device) -> Any:
    try:
        return load_run(run, device)
    except CheckpointError as e:
        raise UsageError(f"{e}; to retrain: {train_command(config, run)}") from e


# ---------------------------------------------------------------------------------------
# train


# Files train writes into a run directory.
RUN_FILES = (CONFIG_NAME, CHECKPOINT_NAME, METRICS_NAME, "curves.png", "samples.png")


def _train(args: argparse.Namespace) -> None:
    spec = MODELS[args.model]
    if spec.images_only and args.data not in PIXEL_LEVELS:
        raise UsageError(f"{args.model} models images; pick one of {', '.join(IMAGE_DATA)}")
    given = requested_settings(args, spec)
    device = _device(args.device)
    out = args.out or Path("runs") / f"{args.model}-{args.data}"
    if not out.exists():  # refuse what cannot apply before creating anything
        _check_applicable(args, given, None, out)
    out = _run_directory(out)
    with _locked(out):
        probe_writable(out, "the run's files")
        for name in RUN_FILES:  # refused now, not after the data are loaded
            refuse_symlink(out / name)
        previous = read_config(out) if (out / CONFIG_NAME).exists() else None
        _check_applicable(args, given, previous, out)
        if previous is not None:
            config = resumed_config(args, out, given, previous)
            if (out / CHECKPOINT_NAME).exists():
                _verify_or_explain(out / CHECKPOINT_NAME, config, out)
        else:
            if (out / CHECKPOINT_NAME).exists():
                raise UsageError(
                    f"{out} has a {CHECKPOINT_NAME} but no {CONFIG_NAME}: it is not a complete "
                    "pyro-gen run; choose a fresh --out"
                )
            config = new_config(args, spec, given)
        _train_run(args, spec, config, config["options"], out, device)


def _check_applicable(
    args: argparse.Namespace, given: dict[str, Any], previous: dict[str, Any] | None, out: Path
) -> None:
    """Refuses options that mean nothing for this run: new (``previous`` None) or resumed."""
    recorded = previous["options"] if previous is not None else OPTION_DEFAULTS
    if "k" in given and given.get("objective", recorded.get("objective")) != "iwae":
        raise UsageError("--k applies only with --objective iwae; drop it")
    if args.override and previous is None:
        raise UsageError(f"--override applies when resuming; {out} holds no run yet")


@contextlib.contextmanager
def _locked(out: Path) -> Iterator[None]:
    """:func:`run_lock` on ``out``, with a read-only directory reported as one line."""
    if not is_main_process():  # under torchrun, rank 0 owns the run directory
        yield
        return
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(run_lock(out))
        except OSError as e:  # the lock file is the first thing written into the run
            raise UsageError(
                f"cannot write to run directory {out} ({e.strerror}); make it writable or "
                "choose another --out"
            ) from e
        yield


def _verify_or_explain(path: Path, config: dict[str, Any], out: Path) -> None:
    try:
        verify_checkpoint(path)
    except CheckpointError as e:
        raise UsageError(
            f"{e}; to retrain from scratch: {train_command(config, str(out) + '-new')}"
        ) from e


def _train_run(
    args: argparse.Namespace,
    spec: ModelSpec,
    config: dict[str, Any],
    options: dict[str, Any],
    out: Path,
    device: torch.device,
) -> None:
    pyro.clear_param_store()  # the command owns this process's param store
    pyro.set_rng_seed(config["seed"])
    x, y = load_split(args.data, "train", config, config["subset"])
    view = data_view(spec.data_kind(options), args.data, x)
    test_view, test_y = held_out_view(config, config["test_subset"])
    recorded_shape = config.get("event_shape")
    if recorded_shape is not None and list(view.event_shape) != recorded_shape:
        raise UsageError(
            f"{out} was trained on data of shape {recorded_shape}, this data has "
            f"{list(view.event_shape)}; choose a fresh --out"
        )
    config["event_shape"] = list(view.event_shape)
    # fit scores held-out data with evaluate_elbo: the plain ELBO (averaged over the
    # objective's particles) whatever the objective; `pyro-gen evaluate --k` gives the IWAE.
    # Score and flow-matching models' "ELBO" is their negated regression loss.
    config["test_elbo_is"] = spec.bound(run_options(config))
    model = build_model(config)
    loss = spec.loss(tuple(view.event_shape), run_options(config))
    train_data = spec.fit_data(view.x, y, config, "train")
    test_data = None
    if spec.held_out_in_fit(options):
        test_data = spec.fit_data(test_view.x, test_y, config, "test")
    if is_main_process():
        write_config(out, config)  # the run is accepted: record it
    try:
        # Validation would report a diverged run as a value outside some site's support,
        # deep in a trace; without it the divergence reaches the loss, and fit names the step.
        with pyro.validation_enabled(False), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Encountered NaN")  # fit reports it
            result = fit(
                model,
                train_data,
                epochs=args.epochs,
                batch_size=config["batch_size"],
                optim=pyro.optim.Adam({"lr": config["lr"], **spec.adam}),
                loss=loss,
                device=device,
                grad_clip=config["grad_clip"],
                transform=view.transform,
                eval_data=test_data,
                checkpoint_dir=out,
                step_callbacks=spec.step_callbacks(options),
                progress=not args.no_progress,
                compile=False if args.no_compile else None,
            )
    except NonFiniteLossError as e:
        kept = (
            f"{out / CHECKPOINT_NAME} still holds the last checkpoint before it"
            if (out / CHECKPOINT_NAME).exists()
            else "no checkpoint was written"
        )
        raise UsageError(
            f"training stopped: {e}. Try a smaller --lr (this run: {config['lr']:g}) or "
            f"--grad-clip (e.g. 5), with --override lr,grad-clip to resume; {kept}"
        ) from e
    if not is_main_process():  # rank 0 draws the figures and reports
        return
    bound = config["test_elbo_is"]
    figures = _write_figures(spec, config, model, out, result.history, bound=bound)
    last = result.history[-1] if result.history else {}
    epochs = f"{result.epoch} epoch" + ("" if result.epoch == 1 else "s")
    summary = f"trained {args.model} on {args.data}: {epochs}"
    if "test_elbo" in last:
        value = last["test_elbo"]
        summary += f", test {bound} {value:.2f} nats"
        if test_view.levels is not None and spec.discrete(options):
            bpd = bits_per_dim_from_nats(value, math.prod(test_view.event_shape))
            summary += f" ({bpd:.3f} bits/dim)"
    elif "test_loss" in last:  # an adversarial objective: no likelihood to report
        summary += f", test {bound} {last['test_loss']:.3f} per example"
    print(summary)
    print(f"run directory: {out}")
    for path in (out / METRICS_NAME, *figures):
        if path.is_file():
            print(f"{'metrics' if path.suffix == '.jsonl' else 'figure'}: {path}")


def _sample(
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


def _write_figures(
    spec: ModelSpec,
    config: dict[str, Any],
    model: torch.nn.Module,
    out: Path,
    history: Sequence[dict[str, Any]],
    num_samples: int = 64,
    bound: str = "ELBO",
) -> list[Path]:
    from pyro_gen import plotting

    paths = [plotting.save_curves(history, out / "curves.png", bound=bound)] if history else []
    samples = _sample(spec, config, model.eval(), num_samples)
    behind = spec.plot_density(run_options(config))
    paths.append(_save_samples(model, samples, out / "samples.png", behind))
    return paths


def _save_samples(
    model: torch.nn.Module, samples: torch.Tensor, path: Path, density_behind: bool = True
) -> Path:
    from pyro_gen import plotting

    if samples.dim() == 2 and samples.shape[-1] == 2:
        density = getattr(model, "log_prob", None) if density_behind else None
        return plotting.save_scatter(samples, path, density)
    return plotting.save_image_grid(samples.reshape(samples.shape[0], *samples.shape[-2:]), path)


# ---------------------------------------------------------------------------------------
# evaluate and sample


def _evaluate(args: argparse.Namespace) -> None:
    device = _device(args.device)
    config = read_config(args.run)
    spec = check_model(config, args.run)
    if args.probability_flow and config["model"] != "ddpm":
        raise UsageError(
            f"--probability-flow applies to ddpm runs ({config['model']} runs report their "
            "own likelihood or metrics); drop it"
        )
    target = refuse_symlink(Path(args.run) / "evaluation.json")
    probe_writable(args.run, "evaluation.json")  # before minutes of computing, not after
    model = _load_run_or_explain(args.run, config, device)
    view, labels = held_out_view(config, args.num_test)
    ev = Evaluation(model, config, view, labels, args)
    if spec.evaluate is None:
        results = bound_results(ev, spec.discrete(run_options(config)))
    else:
        results = spec.evaluate(ev)
    atomic_write_bytes(target, (json.dumps(results, indent=2) + "\n").encode())
    for key, value in results.items():
        print(f"{key}: {value:.4f}" if isinstance(value, float) else f"{key}: {value}")
    print(f"written to {target}")


def _samples_path(args: argparse.Namespace, name: str) -> Path:
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


def _sample_command(args: argparse.Namespace) -> None:
    device = _device(args.device)
    config = read_config(args.run)
    check_model(config, args.run)
    spec = MODELS[config["model"]]
    takes = sorted(m for m, s in MODELS.items() if args.sampler in s.samplers)
    if args.sampler is not None and args.sampler not in spec.samplers:
        own = f" (it takes {', '.join(spec.samplers)})" if spec.samplers else ""
        raise UsageError(
            f"--sampler applies to {', '.join(takes)} runs ({args.sampler}); {args.run} holds a "
            f"{config['model']}{own}"
        )
    if args.steps is not None and not spec.samplers:
        takes = sorted(m for m, s in MODELS.items() if s.samplers)
        raise UsageError(
            f"--steps applies to {', '.join(takes)} runs; {args.run} holds a {config['model']}"
        )
    path = _samples_path(args, "samples.png")
    model = _load_run_or_explain(args.run, config, device)
    samples = _sample(spec, config, model, args.num_samples, args.sampler, args.steps)
    path = _save_samples(model, samples, path, spec.plot_density(run_options(config)))
    print(f"{args.num_samples} samples written to {path}")


def _impute(args: argparse.Namespace) -> None:
    device = _device(args.device)
    config = read_config(args.run)
    check_model(config, args.run)
    if config["model"] != "vae" or config["options"].get("layers", 1) != 1:
        raise UsageError(
            f"impute fills pixels with a one-layer vae; {args.run} holds a "
            f"{config['options'].get('layers')}-layer {config['model']}"
            if config["model"] == "vae"
            else f"impute fills pixels with a one-layer vae; {args.run} holds a {config['model']}"
        )
    path = _samples_path(args, "imputed.png")
    refuse_symlink(Path(args.run) / "imputation.json")
    probe_writable(args.run, "imputation.json")
    model = _load_run_or_explain(args.run, config, device)
    view, _ = held_out_view(config, args.num_test)
    impute_command(model, config, view, args, path)


def _convert(args: argparse.Namespace) -> None:
    config = read_config(args.run)
    check_model(config, args.run)
    if not args.trust_pickle:
        raise UsageError(
            f"convert-checkpoint unpickles {Path(args.run) / CHECKPOINT_NAME}, which runs any "
            "code a crafted file holds; add --trust-pickle only if you wrote it yourself"
        )
    path = checkpoint_path(args.run)
    legacy = convert_legacy_checkpoint(path, trust_pickle=True)
    load_run(args.run)  # the converted checkpoint fits the run's model
    print(f"converted {path}; the original is kept as {legacy}")


# ---------------------------------------------------------------------------------------
# Entry point: one error path.

# Failures a user can cause and fix; each is reported as one line. Anything else is a bug
# and keeps its traceback.
OWN_ERRORS = (UsageError, RunError, CheckpointError, datasets.DatasetError, NonFiniteLossError)
EXPECTED_ERRORS = (*OWN_ERRORS, OSError, ValueError)


def _one_line(error: BaseException) -> str:
    if isinstance(error, OSError) and error.strerror and not isinstance(error, UnsafePathError):
        where = f": {error.filename}" if error.filename else ""
        advice = {
            errno.ENOSPC: "free some space there and rerun; files written before are intact",
            errno.EACCES: "check its permissions, then rerun",
            errno.EPERM: "check its permissions, then rerun",
            errno.EROFS: "it is on a read-only file system; choose another path",
        }.get(error.errno, "check that path, then rerun")
        return f"{error.strerror}{where}; {advice}"
    text = " ".join(str(error).split())
    if isinstance(error, OWN_ERRORS) or len(text) <= 400:
        return text
    # Another library's message that quotes tensors or traces is not for one line.
    return text[:400] + " ... (--debug shows all of it)"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pyro-gen`` console script; returns the exit status.

    Example:
        >>> main(["train", "vae", "--data", "digits", "--lr", "inf"])
        2
    """
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:  # argparse has printed its one line (or --help)
        return int(e.code or 0)
    commands = {
        "train": _train,
        "evaluate": _evaluate,
        "sample": _sample_command,
        "impute": _impute,
        "convert-checkpoint": _convert,
    }
    try:
        commands[args.command](args)
    except EXPECTED_ERRORS as e:
        if args.debug:
            raise
        print(f"pyro-gen: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("pyro-gen: interrupted; the last checkpoint is intact", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
