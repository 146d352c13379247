"""What a ``pyro-gen train`` run records in ``config.json``: the settings, their defaults,
how each is checked where it is parsed, and how a resume is compared with the record.

Example:
    >>> override_names("lr,batch-size")
    ['lr', 'batch_size']
    >>> positive_finite("inf")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: must be a finite number > 0, got inf
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import torch

from pyro_gen.cli_models import DEFAULT_TOY_SAMPLES, MODELS, PIXEL_LEVELS, ModelSpec
from pyro_gen.cli_spec import NUM_CLASSES, UsageError
from pyro_gen.infer.usable_device import device_problem

# Training settings of every model. None of them changes the model's architecture, so a
# resume may change them with --override.
TRAINING_DEFAULTS: dict[str, Any] = {
    "batch_size": 128,
    "lr": 1e-3,
    "grad_clip": None,
    "subset": None,
    "test_subset": None,
    "eval_every": 1,
    "toy_samples": DEFAULT_TOY_SAMPLES,
    "seed": 0,
}
# Model options (each model's ModelSpec.options says which are its own, and
# ModelSpec.defaults where its default differs from these).
OPTION_DEFAULTS: dict[str, Any] = {
    "z_dim": 50,
    "hidden_dim": 400,
    "likelihood": "bernoulli",
    "layers": 1,
    "prior": "normal",
    "guide": "normal",
    "objective": "elbo",
    "k": 50,
    "dequantization": "uniform",
    "velocity_net": None,  # cnf: by the objective (see _build_cnf)
    "schedule": "linear",
    "param": "eps",
    "diffusion_objective": "elbo",
    "timesteps": 1000,
    "ema_decay": 0.999,
    "missing_rate": 0.0,
    "labels": 100,
    "labelled_passes": 1.0,
    "alpha": 50.0,
    "mask_file": None,
    "sde": "vp",
    "weighting": "sigma2",
    "loss": "nonsaturating",
    "n_critic": None,  # the loss's own: 1, or 5 for the Wasserstein losses
    "cycle_weight": 10.0,
}
# Options a resume may change for some model (ModelSpec.loss_options says for which).
OVERRIDABLE = (
    *TRAINING_DEFAULTS,
    *dict.fromkeys(n for s in MODELS.values() for n in s.loss_options),
)


def flag(name: str) -> str:
    """The command-line flag of a setting: ``batch_size`` -> ``--batch-size``."""
    return "--" + name.replace("_", "-")


def whole_number(text: str) -> int:
    """An argparse type: an integer, refusing ``2.5`` rather than rounding it."""
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None


def non_negative(text: str) -> int:
    """An argparse type: an integer >= 0."""
    value = whole_number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {value}")
    return value


def positive(text: str) -> int:
    """An argparse type: an integer >= 1."""
    value = whole_number(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def seed_value(text: str) -> int:
    """An argparse type: a random seed, an integer in [0, 2**32) (what numpy's seed takes)."""
    value = whole_number(text)
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"must be an integer from 0 to 2**32 - 1, got {value}")
    return value


def positive_finite(text: str) -> float:
    """An argparse type: a finite float > 0 (learning rates, clipping norms)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def ema_decay_value(text: str) -> float:
    """An argparse type: a weight-average decay in (0, 1), or 0 for none."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not (value == 0 or 0 < value < 1):
        raise argparse.ArgumentTypeError(f"must lie in (0, 1), or be 0 for no average; got {text}")
    return value


def rate(text: str) -> float:
    """An argparse type: a probability in [0, 1) (a share of pixels to hide)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must lie in [0, 1), got {text}")
    return value


def path_value(text: str) -> Path:
    """An argparse type: a path, refusing the empty string, which ``Path`` reads as the
    current directory: ``--out "$RUN"`` with ``RUN`` unset trained into wherever the command
    ran (the checkpoint, config and figures among the user's files), and ``sample ""`` read
    whatever run lay there.

    Example:
        >>> path_value("runs/vae")
        PosixPath('runs/vae')
    """
    if not text:
        raise argparse.ArgumentTypeError(
            "must name a path, got an empty string (an unset shell variable?); give it, or "
            "'.' for the current directory"
        )
    return Path(text)


def override_names(text: str) -> list[str]:
    """An argparse type: comma-separated settings a resume may change (``lr,batch-size``)."""
    names = [n.strip().lstrip("-").replace("-", "_") for n in text.split(",") if n.strip()]
    for name in names:
        if name not in OVERRIDABLE:
            allowed = ", ".join(n.replace("_", "-") for n in OVERRIDABLE)
            raise argparse.ArgumentTypeError(
                f"{name.replace('_', '-')!r} cannot be changed on resume; one of: {allowed}"
            )
    return names


def train_command(config: dict[str, Any], out: Path | str) -> str:
    """The ``pyro-gen train`` command that rebuilds a run from scratch."""
    words = ["pyro-gen", "train", str(config.get("model")), "--data", str(config.get("data"))]
    settings = {**config.get("options", {}), **{k: config.get(k) for k in TRAINING_DEFAULTS}}
    for name, value in settings.items():
        default = {**TRAINING_DEFAULTS, **OPTION_DEFAULTS}.get(name, value)
        if value is not None and value != default:
            words += [flag(name), str(value)]
    return " ".join([*words, "--out", str(out)])


def requested_settings(args: argparse.Namespace, spec: ModelSpec) -> dict[str, Any]:
    """The settings the user typed, after refusing those that do not apply."""
    given = {k: v for k, v in vars(args).items() if k in TRAINING_DEFAULTS or k in OPTION_DEFAULTS}
    for name in given:
        if name in OPTION_DEFAULTS and name not in spec.options:
            owners = [m for m, s in MODELS.items() if name in s.options]
            raise UsageError(
                f"{flag(name)} is not an option of {args.model} (it belongs to "
                f"{', '.join(sorted(set(owners)))}); drop it"
            )
    for name, allowed in spec.choices.items():
        if name in given and given[name] not in allowed:
            raise UsageError(
                f"{flag(name)} {given[name]} does not apply to {args.model} (it takes "
                f"{', '.join(map(str, allowed))})"
            )
    images = args.data in PIXEL_LEVELS
    if "toy_samples" in given and images:
        raise UsageError(f"--toy-samples applies to the 2D toy datasets, not {args.data}; drop it")
    if "dequantization" in given and not images:
        raise UsageError(f"--dequantization applies to image data, not {args.data}; drop it")
    if spec.labelled and args.data not in NUM_CLASSES:
        raise UsageError(
            f"{args.model} trains on labelled data and {args.data} has no labels; pick one of "
            f"{', '.join(NUM_CLASSES)}"
        )
    return given


def new_config(args: argparse.Namespace, spec: ModelSpec, given: dict[str, Any]) -> dict:
    """The config of a fresh run: the settings typed, defaults for the rest."""
    defaults = {**OPTION_DEFAULTS, **spec.defaults}
    options = {name: given.get(name, defaults[name]) for name in spec.options}
    if args.data in PIXEL_LEVELS:
        options["num_bins"] = PIXEL_LEVELS[args.data]
    if spec.labelled:
        options["num_classes"] = NUM_CLASSES[args.data]
    settings = {name: given.get(name, default) for name, default in TRAINING_DEFAULTS.items()}
    return {"model": args.model, "data": args.data, "options": options, **settings}


def resumed_config(
    args: argparse.Namespace, out: Path, given: dict[str, Any], previous: dict[str, Any]
) -> dict[str, Any]:
    """The recorded config with the user's changes, refusing changes not asked for."""
    if (previous["model"], previous["data"]) != (args.model, args.data):
        raise UsageError(
            f"{out} holds a {previous['model']} run on {previous['data']}; choose a fresh "
            f"--out for {args.model} on {args.data}"
        )
    config = json.loads(json.dumps(previous))  # a deep copy
    changed, refused = [], []
    for name, value in given.items():
        in_options = name in OPTION_DEFAULTS
        recorded = (
            {**MODELS[args.model].added_later, **previous["options"]}.get(name)
            if in_options
            else previous.get(name, TRAINING_DEFAULTS[name])
        )
        if value == recorded:
            continue
        (changed if name in args.override else refused).append((name, recorded, value))
        (config["options"] if in_options else config)[name] = value
    overridable = (*TRAINING_DEFAULTS, *MODELS[args.model].loss_options)
    fixed = [(n, a, b) for n, a, b in refused if n not in overridable]
    if fixed:
        raise UsageError(
            f"{out} was trained with "
            + ", ".join(f"{flag(n)} {a}" for n, a, _ in fixed)
            + "; those change the model, so a resume cannot change them: drop them to resume, "
            "or choose a fresh --out"
        )
    if refused:
        asked = ", ".join(f"{flag(n)} {b}" for n, _, b in refused)
        was = ", ".join(f"{flag(n)} {a}" for n, a, _ in refused)
        names = ",".join(n.replace("_", "-") for n, _, _ in refused)
        raise UsageError(
            f"{out} was trained with {was}, not {asked}: drop those options to resume as "
            f"recorded, add --override {names} to change them from here on, or choose a "
            "fresh --out"
        )
    if changed:
        config.setdefault("overrides", []).append(
            {name: {"from": a, "to": b} for name, a, b in changed}
        )
    return config


def device_option(name: str) -> torch.device:
    """The torch device ``--device NAME`` names, or one line saying why it cannot be used."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"unknown --device {name!r}: use cpu, cuda or cuda:N") from None
    problem = device_problem(device)
    if problem is not None:
        raise UsageError(f"--device {name}: {problem}")
    return device
