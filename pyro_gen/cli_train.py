"""``pyro-gen train``: a new run or a resumed one, refused in one line when it cannot apply.

A resume reads the run's ``config.json`` and checkpoint, refuses settings that differ from
the recorded ones (unless ``--override`` names them) and records nothing until the run is
accepted; the run directory is locked while training.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyro
import pyro.optim
import torch

from pyro_gen.cli_evaluate import samples_latents
from pyro_gen.cli_figures import write_figures
from pyro_gen.cli_interrupt import SigtermStop, sigterm_stops_training
from pyro_gen.cli_models import (
    IMAGE_DATA,
    MODELS,
    PIXEL_LEVELS,
    ModelSpec,
    build_model,
    check_model,
    data_view,
    held_out_view,
    load_split,
    run_options,
)
from pyro_gen.cli_parser import EPOCHS_DEFAULT
from pyro_gen.cli_settings import (
    OPTION_DEFAULTS,
    UsageError,
    device_option,
    flag,
    new_config,
    requested_settings,
    resumed_config,
    train_command,
)
from pyro_gen.infer import CheckpointError, NonFiniteLossError, bits_per_dim_from_nats, fit
from pyro_gen.infer.checkpoint import (
    CHECKPOINT_NAME,
    LOCK_NAME,
    METRICS_NAME,
    RunLockedError,
    load_checkpoint,
    restore_modules,
    run_lock,
    verify_checkpoint,
)
from pyro_gen.infer.distributed import is_main_process
from pyro_gen.infer.files import refuse_symlink
from pyro_gen.runs import (
    CONFIG_NAME,
    RunError,
    probe_writable,
    read_config,
    recorded_epochs,
    write_config,
)

__all__ = ["train"]


# Files train writes into a run directory.
RUN_FILES = (CONFIG_NAME, CHECKPOINT_NAME, METRICS_NAME, "curves.png", "samples.png")


@contextlib.contextmanager
def _stop_on_sigterm() -> Iterator[list[SigtermStop]]:
    """fit's extra step callbacks: in one process, a SIGTERM stops training after the step
    it came in, with that step's checkpoint (raising ``Terminated`` after ``fit``), where
    Ctrl-C loses the epoch's steps. Under torchrun each process would stop at another step
    (``fit`` refuses that): there, a SIGTERM stops the command as Ctrl-C does."""
    if (os.environ.get("WORLD_SIZE") or "1") != "1":
        yield []
        return
    with sigterm_stops_training() as stop:
        yield [stop]


def train(args: argparse.Namespace) -> None:
    spec = MODELS[args.model]
    if spec.images_only and args.data not in PIXEL_LEVELS:
        raise UsageError(f"{args.model} models images; pick one of {', '.join(IMAGE_DATA)}")
    given = requested_settings(args, spec)
    device = device_option(args.device)
    out = args.out or Path("runs") / f"{args.model}-{args.data}"
    created = not out.exists()
    if created:  # refuse what cannot apply before creating anything
        _check_applicable(args, given, None, out)
    out = _run_directory(out)
    try:
        _train_locked(args, spec, given, out, device)
    except RunLockedError:  # another process took the folder meanwhile: it is theirs
        raise
    except BaseException:
        if created:  # refused once the data or the model were read: leave no folder behind
            _remove_unrecorded(out)
        raise


def _train_locked(
    args: argparse.Namespace,
    spec: ModelSpec,
    given: dict[str, Any],
    out: Path,
    device: torch.device,
) -> None:
    with _locked(out):
        probe_writable(out, "the run's files")
        for name in RUN_FILES:  # refused now, not after the data are loaded
            refuse_symlink(out / name)
        previous = read_config(out) if (out / CONFIG_NAME).exists() else None
        if previous is not None:  # what resuming reads from it, before anything is built
            check_model(previous, out)  # the recorded settings too (cli_recorded)
        _check_applicable(args, given, previous, out)
        if previous is not None:
            config = resumed_config(args, out, given, previous)
            if (out / CHECKPOINT_NAME).exists():
                _verify_or_explain(out / CHECKPOINT_NAME, config, out)
        else:
            # A fresh run writes these names: ones already there without a config.json are
            # not a run's (a user's folder given as --out), and were replaced unasked.
            found = [name for name in RUN_FILES[1:] if (out / name).exists()]
            if found:
                raise UsageError(
                    f"{out} has {', '.join(found)} but no {CONFIG_NAME}: it is not a complete "
                    "pyro-gen run, and a new run would replace them; move them or choose a "
                    "fresh --out"
                )
            config = new_config(args, spec, given)
        _train_run(args, spec, config, config["options"], out, device)


def _remove_unrecorded(out: Path) -> None:
    """Removes the run directory this command created if it holds nothing but its lock
    file: no config.json was written, so the run was never accepted (a refused fresh run
    left an empty folder with a lock file, which the next try then took for a run)."""
    lock = out / LOCK_NAME
    try:
        if {p.name for p in out.iterdir()} <= {LOCK_NAME}:
            lock.unlink(missing_ok=True)
            out.rmdir()
    except OSError:  # another process wrote into it meanwhile: it is theirs now
        pass


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


def _check_checkpoint_fits(model: torch.nn.Module, config: dict[str, Any], out: Path) -> None:
    """Refuses a checkpoint written by another model than config.json describes (copied in,
    or config.json edited) before the record is rewritten, as ``evaluate`` does; fit refused
    it only after, listing every parameter and naming its own ``checkpoint_dir``."""
    try:
        # fit restores the same values again (a model with an autoguide cannot be copied);
        # restoring fills the param store, which this command owns and clears for fit
        restore_modules(load_checkpoint(out / CHECKPOINT_NAME), {"model": model})
    except CheckpointError as e:
        raise UsageError(
            f"{out / CHECKPOINT_NAME}: {e}; restore the run's own checkpoint, or retrain: "
            f"{train_command(config, str(out) + '-new')}"
        ) from e
    finally:
        pyro.clear_param_store()


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
    done_before = recorded_epochs(out)
    try:
        model = build_model(config)
    except (ValueError, TypeError, OverflowError) as e:
        if not (out / CONFIG_NAME).exists():  # a fresh run's options: the error says which
            raise
        raise RunError(
            f"{out / CONFIG_NAME} records options no {config['model']} can be built from "
            f"({e}); restore it from a copy or retrain into a fresh directory"
        ) from e
    if (out / CHECKPOINT_NAME).exists():  # a resume: the checkpoint must fit this model
        _check_checkpoint_fits(model, config, out)
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
        with (
            pyro.validation_enabled(False),
            warnings.catch_warnings(),
            _stop_on_sigterm() as stop,
        ):
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
                step_callbacks=[*spec.step_callbacks(options), *stop],
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
        default = " (the default)" if args.epochs == EPOCHS_DEFAULT else ""
        print(
            f"nothing to train: {out} holds {epochs}, and --epochs {args.epochs}{default} "
            f"counts the epochs done; give --epochs {result.epoch + 1} or more to train further"
        )
        return
    bound = config["test_elbo_is"]
    last = result.history[-1] if result.history else {}
    figures = write_figures(spec, config, model, out, result.history, bound=bound)
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
