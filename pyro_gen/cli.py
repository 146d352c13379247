"""The ``pyro-gen`` command: train, evaluate and sample generative models.

Every failure a user can cause (a bad option, a file-system problem, a diverged run, a
damaged or foreign file, the wrong run for a command) is one line on stderr saying what was
wrong and what to do, with a non-zero exit; ``--debug`` shows the traceback instead.

Example:
    >>> build_parser().parse_args(["train", "vae", "--data", "digits", "--epochs", "1"]).epochs
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
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pyro
import pyro.optim
import torch

from pyro_gen import data as datasets
from pyro_gen.cli_evaluate import bound_results, report, samples_latents
from pyro_gen.cli_impute import impute_command
from pyro_gen.cli_models import (
    IMAGE_DATA,
    MODELS,
    PIXEL_LEVELS,
    ModelSpec,
    build_model,
    check_model,
    data_view,
    held_out_view,
    load_run,
    load_split,
    run_options,
)
from pyro_gen.cli_parser import EVALUATE_DEFAULTS, build_parser
from pyro_gen.cli_settings import (
    OPTION_DEFAULTS,
    UsageError,
    flag,
    new_config,
    requested_settings,
    resumed_config,
    train_command,
)
from pyro_gen.cli_spec import EVALUATE_OPTIONS, Evaluation
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
from pyro_gen.infer.files import UnsafePathError, refuse_symlink
from pyro_gen.infer.legacy_checkpoint import convert_legacy_checkpoint
from pyro_gen.infer.usable_device import device_problem
from pyro_gen.runs import (
    CONFIG_NAME,
    RunError,
    checkpoint_path,
    probe_writable,
    read_config,
    write_config,
)

__all__ = ["UsageError", "build_model", "load_run", "main"]


def _device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"unknown --device {name!r}: use cpu, cuda or cuda:N") from None
    problem = device_problem(device)
    if problem is not None:
        raise UsageError(f"--device {name}: {problem}")
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
    if not (Path(run) / CHECKPOINT_NAME).exists():
        done = _recorded_epochs(Path(run))
        if done:  # trained, and the checkpoint since lost
            raise UsageError(
                f"{run} has no {CHECKPOINT_NAME}, though its {METRICS_NAME} records {done} "
                f"epoch(s): it was moved or deleted; restore it, or retrain: "
                f"{train_command(config, run)}"
            )
        # a run set up with --epochs 0 (or stopped in its first epoch): not a damaged one
        raise UsageError(
            f"{run} has no {CHECKPOINT_NAME}: no epoch has finished (--epochs 0 records a "
            f"run's settings only); train it: {train_command(config, run)} --epochs 1"
        )
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
        if previous is not None:  # what resuming reads from it, before anything is built
            check_model(previous, out)
            _check_recorded_settings(previous, out)
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


def _whole(value: Any, least: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def _positive_number(value: Any) -> bool:
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return number and math.isfinite(value) and value > 0


# The training settings a resume reads from config.json, as `pyro-gen train` records them
# (the checks its command line makes); absent ones are refused, except where noted.
_RECORDED_SETTINGS: dict[str, Callable[[Any], bool]] = {
    "batch_size": lambda v: _whole(v, 1),
    "lr": _positive_number,
    "grad_clip": lambda v: v is None or _positive_number(v),
    "subset": lambda v: v is None or _whole(v, 1),
    "test_subset": lambda v: v is None or _whole(v, 1),
    "seed": lambda v: _whole(v, 0) and v < 2**32,  # what numpy's seed takes
}
# recorded by later versions: a run from before them has its default
_ADDED_LATER_SETTINGS: dict[str, Callable[[Any], bool]] = {
    "eval_every": lambda v: _whole(v, 1),
    "toy_samples": lambda v: _whole(v, 1),
}


def _check_recorded_settings(config: dict[str, Any], out: Path) -> None:
    """Refuses a config.json whose training settings no run records (a damaged or edited
    file), naming it, before a resume indexes or computes with them."""
    path = out / CONFIG_NAME
    for name, valid in {**_RECORDED_SETTINGS, **_ADDED_LATER_SETTINGS}.items():
        if name not in config:
            if name in _RECORDED_SETTINGS:
                raise RunError(
                    f"{path} lacks the setting {name!r}; restore it from a copy or retrain "
                    "into a fresh directory"
                )
        elif not valid(config[name]):
            raise RunError(
                f"{path} records {name} = {config[name]!r}, which `pyro-gen train` never "
                "records; restore it from a copy or retrain into a fresh directory"
            )


def _check_applicable(
    args: argparse.Namespace, given: dict[str, Any], previous: dict[str, Any] | None, out: Path
) -> None:
    """Refuses options that mean nothing for this run: new (``previous`` None) or resumed.

    What a model reads depends on its other options and on the data (``--k`` only with
    ``--objective iwae``, ``--hidden-dim`` not where the network's width is fixed): each
    model's ``unused_options`` says which, so none is ignored silently."""
    if args.override and previous is None:
        raise UsageError(f"--override applies when resuming; {out} holds no run yet")
    spec = MODELS[args.model]
    if previous is not None and previous.get("model") != args.model:
        return  # resumed_config refuses the other model's run directory
    recorded = run_options(previous) if previous is not None else {}
    options = {**OPTION_DEFAULTS, **spec.defaults, **recorded}
    options.update((k, v) for k, v in given.items() if k in OPTION_DEFAULTS)
    unused = dict(spec.unused_options(options, args.data))
    if not spec.held_out_in_fit(options):  # fit then never loads the test split
        unused["test_subset"] = (
            f"sets the held-out examples scored after each epoch, and {args.model} training "
            "with these options scores none (`pyro-gen evaluate RUN --num-test N` chooses the "
            "test examples evaluate scores)"
        )
        unused["eval_every"] = (
            f"sets how often the held-out examples are scored, and {args.model} training "
            "with these options scores none"
        )
    for name in given:
        if name in unused:
            raise UsageError(f"{flag(name)} {unused[name]}; drop it")


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
    # Score and flow-matching models' "ELBO" is their negated regression loss; a model
    # without latents (a flow on vectors) has an ELBO that is its exact log-likelihood.
    done_before = _recorded_epochs(out)
    try:
        model = build_model(config)
    except (ValueError, TypeError, OverflowError) as e:
        if not (out / CONFIG_NAME).exists():  # a fresh run's options: the error says which
            raise
        raise RunError(
            f"{out / CONFIG_NAME} records options no {config['model']} can be built from "
            f"({e}); restore it from a copy or retrain into a fresh directory"
        ) from e
    bound = spec.bound(run_options(config))
    if bound == "ELBO" and not samples_latents(model, view.x, view.transform):
        bound = "exact log-likelihood"
    config["test_elbo_is"] = bound
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
                # a run recorded before --eval-every existed scored every epoch
                eval_every=config.get("eval_every", 1),
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
    if result.epoch == 0:  # a fresh --epochs 0: no checkpoint, so no model to draw from
        print(
            f"{args.model} on {args.data}: trained nothing (--epochs 0), so there is no "
            f"checkpoint yet; to train it: {train_command(config, out)} --epochs 1"
        )
        print(f"settings: {out / CONFIG_NAME}")
        return
    if result.epoch == done_before:  # a resume with no epoch left: the run is as it was
        epochs = f"{result.epoch} epoch" + ("" if result.epoch == 1 else "s")
        print(
            f"nothing to train: {out} holds {epochs}, and --epochs {args.epochs} counts "
            f"the epochs done; give --epochs {result.epoch + 1} or more to train further"
        )
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


def _recorded_epochs(out: Path) -> int:
    """The epochs a run's metrics.jsonl records as finished (0 without one)."""
    try:
        lines = (out / METRICS_NAME).read_text().splitlines()
        return sum(1 for line in lines if line.strip() and not json.loads(line).get("partial"))
    except (OSError, ValueError, AttributeError):  # no records, or not ours: train anew
        return 0


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

    train_bound = spec.train_bound(run_options(config))
    curves = out / "curves.png"
    paths = [plotting.save_curves(history, curves, bound, train_bound)] if history else []
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
    _check_evaluate_options(args, spec, config)
    target = refuse_symlink(Path(args.run) / "evaluation.json")
    probe_writable(args.run, "evaluation.json")  # before minutes of computing, not after
    model = _load_run_or_explain(args.run, config, device)
    view, labels = held_out_view(config, args.num_test)
    for name, default in EVALUATE_DEFAULTS.items():  # None above: not typed
        if getattr(args, name) is None:
            setattr(args, name, default)
    ev = Evaluation(model, config, view, labels, args)
    # Monte Carlo estimates from the run's own seed: evaluating a run twice gives one answer
    # (unseeded, two evaluations of one run differed by 0.4 nats on 300 test images).
    pyro.set_rng_seed(config["seed"])
    if spec.evaluate is None:
        results = bound_results(ev, spec.discrete(run_options(config)))
    else:
        results = spec.evaluate(ev)
    report(results, target)
    print(f"written to {target}")


# How evaluate's options are spelled on the command line, where not by their flag().
_EVALUATE_FLAGS = {"num_samples": "-n/--num-samples"}


def _check_evaluate_options(args: argparse.Namespace, spec: ModelSpec, config: dict) -> None:
    """Refuses the options of ``evaluate`` that this run's evaluation does not read (each
    model's ``evaluate_options`` names those it honours)."""
    honoured = spec.evaluate_options(run_options(config), config["data"])
    for name, what in EVALUATE_OPTIONS.items():
        if name in honoured or getattr(args, name) in (None, False):  # not typed
            continue
        takes = ", ".join(_EVALUATE_FLAGS.get(n, flag(n)) for n in honoured)
        raise UsageError(
            f"{_EVALUATE_FLAGS.get(name, flag(name))} ({what}) does not apply to {args.run}, a "
            f"{config['model']} run on {config['data']} (its evaluation takes "
            f"{takes or 'none of these options'}); drop it"
        )


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
    if args.steps is not None and args.sampler in spec.fixed_step_samplers:
        stepped = [name for name in spec.samplers if name not in spec.fixed_step_samplers]
        raise UsageError(
            f"--steps does not apply to --sampler {args.sampler}, which chooses its own steps; "
            f"drop it, or pick a sampler that takes them ({', '.join(stepped)})"
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
        args = build_parser().parse_args(argv)
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
