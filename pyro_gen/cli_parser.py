"""The grammar of the ``pyro-gen`` command: its subcommands and options, each value checked
where the user typed it (the commands themselves are in :mod:`pyro_gen.cli`).

Example:
    >>> build_parser().parse_args(["train", "vae", "--data", "digits", "--epochs", "1"]).epochs
    1
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any, NoReturn

from pyro_gen import __version__
from pyro_gen.cli_models import IMAGE_DATA, MODELS, TOY_DATA
from pyro_gen.cli_models_gan import LOSSES, MIXTURE_SAMPLES
from pyro_gen.cli_settings import (
    OPTION_DEFAULTS,
    TRAINING_DEFAULTS,
    ema_decay_value,
    flag,
    non_negative,
    override_names,
    path_value,
    positive,
    positive_finite,
    rate,
    seed_value,
)
from pyro_gen.cli_spec import MIXTURE_DATA

# Defaults of evaluate's options, filled in once the run's model has refused the options it
# does not read (which it can tell only from an option's parsed value of None: not typed).
EVALUATE_DEFAULTS = {"k": 1000, "classifier_epochs": 3}
# train's --epochs when not given (a resume names it as the default it met).
EPOCHS_DEFAULT = 3
# One text per option that several subcommands share, so that one name reads one way.
_DEVICE_HELP = "cpu, cuda or cuda:N (default: cpu)"
_NO_PROGRESS_HELP = "hide the progress bars (default: shown)"

# ---------------------------------------------------------------------------------------
# Argument parsing. Every value is checked here, where the user typed it.


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, no usage dump: the user sees what was wrong and where to look.
        self.exit(2, f"pyro-gen: error: {message} (see `{self.prog} --help`)\n")


# How each setting is checked where it is typed (its type and choices), kept by
# _add_setting so that a value read back from a run's config.json is checked the same way.
_SETTING_CHECKS: dict[str, tuple[Callable[[str], Any] | None, tuple[str, ...] | None]] = {}


def recorded_setting_problem(name: str, value: Any) -> bool:
    """Whether ``value`` is one the command line could not have recorded for setting
    ``name`` (what ``--name value`` would refuse, or not give back as that value).

    Example:
        >>> recorded_setting_problem("k", 5), recorded_setting_problem("k", "x")
        (False, True)
        >>> recorded_setting_problem("loss", "xyz"), recorded_setting_problem("layers", 1.5)
        (True, True)
    """
    if not _SETTING_CHECKS:
        build_parser()
    check, choices = _SETTING_CHECKS[name]
    if value is None:  # recorded for a setting whose default is none
        return {**TRAINING_DEFAULTS, **OPTION_DEFAULTS}[name] is not None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return True
    if choices is not None:
        return value not in choices
    if check is None:  # a path
        return not isinstance(value, str)
    try:
        return check(str(value)) != value
    except argparse.ArgumentTypeError:
        return True


def _add_setting(group: Any, name: str, help: str, shown: str | None = None, **kwargs: Any) -> None:
    # SUPPRESS: an option appears in the parsed arguments only if the user typed it, so a
    # resume can tell a setting asked for from a default, and options of other models
    # can be refused by name. `shown`: what the default means, where "none" would not say.
    _SETTING_CHECKS[name] = (kwargs.get("type"), kwargs.get("choices"))
    default = {**TRAINING_DEFAULTS, **OPTION_DEFAULTS}[name]
    shown = "default: " + (shown or ("none" if default is None else str(default)))
    group.add_argument(flag(name), default=argparse.SUPPRESS, help=f"{help} ({shown})", **kwargs)


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    parser = _Parser(prog="pyro-gen", description="Deep generative models written the Pyro way.")
    # the first thing a bug report asks for (it met "required: command")
    parser.add_argument("--version", action="version", version=f"pyro-gen {__version__}")
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
        default=EPOCHS_DEFAULT,
        help="total epochs, counting resumed ones; 0 records a new run's settings only "
        f"(default: {EPOCHS_DEFAULT})",
    )
    _add_setting(train, "batch_size", "examples per step", type=positive)
    _add_setting(train, "lr", "Adam learning rate", type=positive_finite)
    _add_setting(train, "grad_clip", "clip the gradient norm to this", type=positive_finite)
    _add_setting(train, "subset", "use only the first N training examples", type=positive)
    _add_setting(train, "test_subset", "evaluate on the first N test examples", type=positive)
    _add_setting(
        train,
        "eval_every",
        "score the held-out data after every N-th epoch (and the last)",
        type=positive,
    )
    _add_setting(train, "toy_samples", "training samples of a 2D toy dataset", type=positive)
    _add_setting(train, "seed", "random seed", type=seed_value)
    train.add_argument("--device", default="cpu", help=_DEVICE_HELP)
    train.add_argument(
        "--out", type=path_value, default=None, help="run directory (default: runs/MODEL-DATA)"
    )
    train.add_argument(
        "--override",
        type=override_names,
        action="extend",
        default=[],
        help="on resume, settings that may differ from the recorded run, comma-separated "
        "(e.g. lr,batch-size) (default: none)",
    )
    train.add_argument("--no-progress", action="store_true", help=_NO_PROGRESS_HELP)
    train.add_argument(
        "--no-compile",
        action="store_true",
        help="plain Pyro SVI steps instead of the compiled step, whose tracing takes seconds "
        "before the first step (worth it for long runs only)",
    )

    vae = train.add_argument_group("vae, ssvae options (z-dim, hidden-dim: also others)")
    _add_setting(vae, "z_dim", "latent size (also gan, wgan, cgan: 16)", type=positive)
    _add_setting(
        vae,
        "hidden_dim",
        "hidden width (also gan, wgan, cgan, but not of 28x28 images, and ncsn, sde on 2D "
        "data: 128; cyclegan: 32 channels)",
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
    _add_setting(
        vae,
        "labelled_passes",
        "ssvae: passes over the labelled examples per epoch (1: each example once)",
        type=positive_finite,
    )
    _add_setting(
        vae, "alpha", "ssvae: weight of log q(y|x) per labelled example", type=positive_finite
    )
    _add_setting(
        vae,
        "mask_file",
        "vae: observation mask of the training images, .pt or .npy, of their shape (N, H, W), "
        "N after --subset: one entry per pixel of each image (True or 1 = observed); the model "
        "scores the observed pixels",
    )

    flows = train.add_argument_group("flow options (nice, realnvp, glow, maf, nsf, resflow, cnf)")
    _add_setting(
        flows,
        "dequantization",
        "how image flows turn pixels into continuous data",
        choices=("uniform", "variational"),
    )
    _add_setting(
        flows,
        "velocity_net",
        "cnf on 2D data: the network of the ODE's velocity, FFJORD's concat_squash or "
        "time_mlp (a sinusoidal time embedding, which halved the checkerboard KL of flow "
        "matching)",
        shown="time_mlp for --objective flow-matching and rectified, concat_squash for ml",
        choices=("concat_squash", "time_mlp"),
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
        "discriminator steps per generator step",
        shown="the loss's own: 5 for wgan-gp and wgan-clip, else 1",
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
        description="Scores a trained run on its held-out data and writes the numbers to "
        "RUN/evaluation.json. What is measured depends on the run's model, and an option its "
        "evaluation does not read is refused. Random draws come from the run's --seed: "
        "evaluating a run twice gives one answer.",
    )
    evaluate.add_argument("run", type=path_value, help="run directory")
    evaluate.add_argument(
        "--k", type=positive, default=None,
        help="importance samples of the IWAE log-likelihood: VAEs, flows on images "
        f"(default: {EVALUATE_DEFAULTS['k']})",
    )  # fmt: skip
    evaluate.add_argument(
        "--num-test", type=positive, default=None,
        help="evaluate on the first N test examples (default: all; not GANs on 2D data, "
        "which are scored by their own samples)",
    )  # fmt: skip
    evaluate.add_argument(
        "-n", "--num-samples", type=positive, default=None,
        help=f"samples a GAN on a 2D mixture is scored by (default: {MIXTURE_SAMPLES})",
    )  # fmt: skip
    evaluate.add_argument(
        "--classifier-epochs", type=positive, default=None,
        help="epochs of the classifier that scores GAN and CycleGAN images "
        f"(default: {EVALUATE_DEFAULTS['classifier_epochs']})",
    )  # fmt: skip
    evaluate.add_argument(
        "--probability-flow", action="store_true",
        help="ddpm: also the probability-flow ODE likelihood (slow for images)",
    )  # fmt: skip
    evaluate.add_argument("--device", default="cpu", help=_DEVICE_HELP)
    evaluate.add_argument("--no-progress", action="store_true", help=_NO_PROGRESS_HELP)

    sample = sub.add_parser(
        "sample",
        parents=[common],
        help="draw samples from a trained run into a PNG",
        description="Draws samples from a trained run into a PNG: a grid of images, or a "
        "scatter of 2D points over the model's density where it has one (cgan: the classes "
        "0-9 in turn; cyclegan: the first N test images translated).",
    )
    sample.add_argument("run", type=path_value, help="run directory")
    sample.add_argument(
        "-n", "--num-samples", type=positive, default=64, help="samples to draw (default: 64)"
    )
    sample.add_argument(
        "--sampler",
        choices=sorted({name for spec in MODELS.values() for name in spec.samplers}),
        default=None,
        help="ddpm: ancestral or ddim; ddpm, ncsn, sde: langevin, euler-maruyama, pc or ode "
        "(default: ancestral for ddpm, langevin for ncsn, pc for sde)",
    )
    sample.add_argument(
        "--steps", type=positive, default=None,
        help="sampling steps (langevin: noise levels; not ode, which is adaptive, nor ddpm's "
        "ancestral, which takes all T) (default: T for ddim, 10 levels for langevin, 500 for "
        "euler-maruyama and pc)",
    )  # fmt: skip
    sample.add_argument(
        "--out",
        type=path_value,
        default=None,
        help="PNG file, or an existing folder for FOLDER/samples.png (default: RUN/samples.png)",
    )
    sample.add_argument("--device", default="cpu", help=_DEVICE_HELP)
    sample.add_argument(
        "--seed", type=seed_value, default=None,
        help="random seed, for samples drawn again the same (default: unseeded, new ones)",
    )  # fmt: skip

    impute = sub.add_parser(
        "impute",
        parents=[common],
        help="fill pixels hidden at random in test images with a trained vae (MIWAE)",
        description="Hides pixels of test images at random, fills them by self-normalised "
        "importance sampling with the run's VAE, and reports the error on the hidden pixels "
        "beside mean imputation, and writes them to RUN/imputation.json; draws a PNG of truth, "
        "observed and imputed images. Random draws come from the run's --seed: imputing twice "
        "gives one answer.",
    )
    impute.add_argument("run", type=path_value, help="run directory of a vae")
    impute.add_argument(
        "--missing-rate", type=rate, default=None,
        help="share of pixels hidden (default: the run's --missing-rate, or 0.5)",
    )  # fmt: skip
    impute.add_argument(
        "--k", type=positive, default=1000, help="importance samples per image (default: 1000)"
    )
    impute.add_argument(
        "--num-test", type=positive, default=100, help="test images to impute (default: 100)"
    )
    impute.add_argument(
        "--out", type=path_value, default=None,
        help="PNG file, or an existing folder for FOLDER/imputed.png "
        "(default: RUN/imputed.png)",
    )  # fmt: skip
    impute.add_argument("--device", default="cpu", help=_DEVICE_HELP)

    convert = sub.add_parser(
        "convert-checkpoint",
        parents=[common],
        help="rewrite the checkpoint of an older pyro-gen run in the current format",
        description="Rewrites RUN/checkpoint.pt, written by a pyro-gen older than its "
        "current checkpoint format, in that format (which loads without running code), and "
        "keeps the original beside it. Needed once per such run; evaluate, sample and a "
        "resumed train say when.",
    )
    convert.add_argument("run", type=path_value, help="run directory")
    convert.add_argument(
        "--trust-pickle",
        action="store_true",
        help="required: the old checkpoint is yours (reading it runs any code it holds)",
    )
    return parser


# ---------------------------------------------------------------------------------------
# Shared checks.
