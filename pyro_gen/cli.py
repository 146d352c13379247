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
import io
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyro
import torch

from pyro_gen import data as datasets
from pyro_gen.cli_evaluate import bound_results, report
from pyro_gen.cli_figures import draw_samples, samples_path, save_samples
from pyro_gen.cli_impute import impute_command
from pyro_gen.cli_interrupt import (
    SIGTERM_STATUS,
    Terminated,
    interrupted_message,
    sigterm_raises,
)
from pyro_gen.cli_models import (
    MODELS,
    ModelSpec,
    build_model,
    check_model,
    held_out_view,
    load_run,
    run_options,
)
from pyro_gen.cli_parser import EVALUATE_DEFAULTS, build_parser
from pyro_gen.cli_settings import UsageError, device_option, flag, train_command
from pyro_gen.cli_spec import EVALUATE_OPTIONS, Evaluation
from pyro_gen.cli_train import train
from pyro_gen.infer import CheckpointError, NonFiniteLossError
from pyro_gen.infer.checkpoint import CHECKPOINT_NAME, METRICS_NAME
from pyro_gen.infer.files import UnsafePathError, refuse_symlink
from pyro_gen.infer.legacy_checkpoint import convert_legacy_checkpoint
from pyro_gen.runs import (
    RunError,
    checkpoint_path,
    probe_writable,
    read_config,
    recorded_epochs,
)

__all__ = ["UsageError", "build_model", "load_run", "main"]


# ---------------------------------------------------------------------------------------
# Loading a run.


def _load_run_or_explain(run: Path, config: dict[str, Any], device: torch.device) -> Any:
    if not (Path(run) / CHECKPOINT_NAME).exists():
        done = recorded_epochs(Path(run))
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
# evaluate and sample


def _evaluate(args: argparse.Namespace) -> None:
    device = device_option(args.device)
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


def _sample_command(args: argparse.Namespace) -> None:
    device = device_option(args.device)
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
    sampler = args.sampler or spec.default_sampler
    if args.steps is not None and sampler in spec.fixed_step_samplers:
        stepped = [name for name in spec.samplers if name not in spec.fixed_step_samplers]
        which = (
            f"--sampler {sampler}"
            if args.sampler
            else f"{sampler} sampling, this {config['model']}'s default"
        )
        raise UsageError(
            f"--steps does not apply to {which}, which sets its own number of steps; drop it, "
            f"or pick a sampler that takes them with --sampler ({', '.join(stepped)})"
        )
    path = samples_path(args, "samples.png")
    model = _load_run_or_explain(args.run, config, device)
    if args.seed is not None:
        pyro.set_rng_seed(args.seed)
    samples = draw_samples(spec, config, model, args.num_samples, args.sampler, args.steps)
    path = save_samples(model, samples, path, spec.plot_density(run_options(config)))
    print(f"{args.num_samples} sample{'s' * (args.num_samples != 1)} written to {path}")


def _impute(args: argparse.Namespace) -> None:
    device = device_option(args.device)
    config = read_config(args.run)
    check_model(config, args.run)
    if config["model"] != "vae":
        raise UsageError(f"impute fills pixels with a vae; {args.run} holds a {config['model']}")
    if args.missing_rate == 0:  # it reported an error of 0 for both methods on no pixel
        raise UsageError(
            "--missing-rate 0 hides no pixel, so there is nothing to impute; give a share in "
            "(0, 1), or leave it out for the run's own (or 0.5)"
        )
    path = samples_path(args, "imputed.png")
    refuse_symlink(Path(args.run) / "imputation.json")
    probe_writable(args.run, "imputation.json")
    model = _load_run_or_explain(args.run, config, device)
    view, _ = held_out_view(config, args.num_test)
    # importance draws from the run's own seed, as evaluate's: imputing a run twice gives one
    # answer (unseeded, two calls differed in the third digit of vae_mse)
    pyro.set_rng_seed(config["seed"])
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
            # a file size limit (ulimit -f, a quota, FAT's 4 GiB) cut the write short
            errno.EFBIG: (
                "the file outgrew the size allowed for one file there (ulimit -f, quota or "
                "file system); raise it or choose another path; files written before are intact"
            ),
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


def _out_of_memory(error: BaseException) -> str | None:
    """One line for an allocation that failed, or None for any other error."""
    text = str(error)
    if not (
        isinstance(error, (MemoryError, torch.OutOfMemoryError))
        or "can't allocate memory" in text
        or "out of memory" in text
    ):
        return None
    asked = re.search(r"allocate (\d+) bytes", text)
    size = f" ({int(asked[1]) / 2**30:.1f} GiB asked for at once)" if asked else ""
    return (
        f"out of memory{size}: the model or batch these options describe does not fit; choose "
        "smaller sizes (--z-dim, --hidden-dim, --layers, --batch-size, --k, -n) or another "
        "--device; files written before are intact"
    )


def _output_closed() -> None:
    """Says on stderr, if it is still open, that the output was closed; and points stdout
    at /dev/null, so that the interpreter's last flush does not print a traceback."""
    # stdout may be replaced (a test's capture), and stderr closed with it (2>&1 | head)
    with contextlib.suppress(OSError, ValueError, io.UnsupportedOperation):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    with contextlib.suppress(OSError):
        print(
            "pyro-gen: stopped: its output was closed (the reader of a pipe exited); the "
            "run's files written so far are intact",
            file=sys.stderr,
        )


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
        "train": train,
        "evaluate": _evaluate,
        "sample": _sample_command,
        "impute": _impute,
        "convert-checkpoint": _convert,
    }
    try:
        with sigterm_raises():  # a scheduler's SIGTERM stops a command as Ctrl-C does
            commands[args.command](args)
            sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's last flush
    except BrokenPipeError as e:
        # The reader of the output exited (`pyro-gen train ... | head`): OSError's line
        # blamed a path ("check that path, then rerun") the command was never given.
        if args.debug or e.filename is not None:
            raise
        _output_closed()
        return 141  # 128 + SIGPIPE, as a shell reports a command a closed pipe stopped
    except EXPECTED_ERRORS as e:
        if args.debug:
            raise
        print(f"pyro-gen: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as e:
        # Sizes a user typed (--z-dim 100000000) that no memory holds: torch's allocator
        # raises a RuntimeError, CUDA's a torch.OutOfMemoryError. Any other is a bug.
        if args.debug or not _out_of_memory(e):
            raise
        print(f"pyro-gen: error: {_out_of_memory(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        print(f"pyro-gen: {interrupted_message(args, e.__traceback__)}", file=sys.stderr)
        return 130
    except Terminated as e:
        when = "" if e.step is None else f" after step {e.step}, checkpointed"
        said = interrupted_message(args, e.__traceback__, f"terminated (SIGTERM){when}")
        print(f"pyro-gen: {said}", file=sys.stderr)
        return SIGTERM_STATUS
    return 0


if __name__ == "__main__":
    sys.exit(main())
