"""The GANs of the ``pyro-gen`` command: ``gan``, ``wgan`` and the conditional ``cgan``.

The model is a :class:`~pyro_gen.gan.Generator` (the trained object ``pyro_gen.load``
returns); the adversarial loss object owns the discriminator, which ``fit`` checkpoints
beside it. 2D data and sklearn's 8x8 digits get MLP networks, 28x28 images DCGAN ones.

Example:
    >>> sorted(GAN_MODELS), LOSSES["wgan-gp"].__name__
    (['cgan', 'gan', 'wgan'], 'WassersteinGP')
"""

from __future__ import annotations

from typing import Any

import torch

from pyro_gen.cli_evaluate import mixture_results, sample_quality
from pyro_gen.cli_spec import IMAGE_SIZES, PIXEL_LEVELS, Evaluation, ModelSpec
from pyro_gen.gan import (
    HingeGAN,
    LeastSquaresGAN,
    MinimaxGAN,
    NonSaturatingGAN,
    WassersteinGAN,
    WassersteinGP,
)
from pyro_gen.infer.callbacks import changes_only_tensors

#: ``--loss`` names -> the adversarial objectives
LOSSES = {
    "minimax": MinimaxGAN,
    "nonsaturating": NonSaturatingGAN,
    "lsgan": LeastSquaresGAN,
    "hinge": HingeGAN,
    "wgan-clip": WassersteinGAN,
    "wgan-gp": WassersteinGP,
}
WASSERSTEIN = ("wgan-clip", "wgan-gp")
# Samples scored by `evaluate` (mode coverage needs many; the classifier scores as many
# samples as real test images).
MIXTURE_SAMPLES = 2500


def _conditional(opts: dict[str, Any]) -> int:
    return int(opts.get("num_classes") or 0)


# Image sizes whose GANs have DCGAN networks (the others MLPs of --hidden-dim units).
DCGAN_SIZE = (28, 28)


def _networks(event_shape: tuple[int, ...], opts: dict[str, Any], which: str) -> torch.nn.Module:
    from pyro_gen.nn import DCGANDiscriminator, DCGANGenerator, MLPDiscriminator, MLPGenerator

    context, hidden = _conditional(opts), (opts["hidden_dim"],) * 2
    if tuple(event_shape[-2:]) == DCGAN_SIZE:
        if which == "generator":
            return DCGANGenerator(opts["z_dim"], event_shape, context_dim=context)
        conditioning = opts.get("conditioning", "projection")
        return DCGANDiscriminator(event_shape, context_dim=context, conditioning=conditioning)
    if which == "generator":
        return MLPGenerator(opts["z_dim"], event_shape, hidden, context_dim=context)
    return MLPDiscriminator(event_shape, hidden, context_dim=context)


def _build(event_shape: tuple[int, ...], opts: dict[str, Any]) -> torch.nn.Module:
    from pyro_gen.gan import Generator

    net = _networks(event_shape, opts, "generator")
    average = opts.get("ema_decay") or None  # sample() then uses the averaged weights
    return Generator(net, num_classes=_conditional(opts) or None, average=average)


@changes_only_tensors
def _update_average(step: int, generator: Any) -> None:
    generator.update_average()


def _loss(event_shape: tuple[int, ...], opts: dict[str, Any]) -> torch.nn.Module:
    kwargs = {"n_critic": opts["n_critic"]} if opts.get("n_critic") else {}
    return LOSSES[opts["loss"]](_networks(event_shape, opts, "discriminator"), **kwargs)


def _labelled_data(x: torch.Tensor, y: torch.Tensor | None, config: dict, split: str) -> Any:
    return {"x": x, "y": y}


def _requested_labels(model: Any, n: int) -> torch.Tensor | None:
    # Every class in turn, so a grid of samples shows each row's digit.
    classes = getattr(model, "num_classes", None)
    return None if not classes else torch.arange(n) % classes


def _sample(model: Any, n: int, sampler: str | None, steps: int | None) -> torch.Tensor:
    y = _requested_labels(model, n)
    device = next(model.parameters()).device
    return model.sample(n, y=None if y is None else y.to(device))


def _evaluate_options(opts: dict[str, Any], data: str) -> tuple[str, ...]:
    # images: samples against as many test images, by a classifier; 2D data: the generator's
    # own samples, however many test points there are
    return ("num_test", "classifier_epochs") if data in PIXEL_LEVELS else ("num_samples",)


def _unused_options(opts: dict[str, Any], data: str) -> dict[str, str]:
    if IMAGE_SIZES.get(data) == DCGAN_SIZE:
        return {"hidden_dim": f"sets the MLP width, and {data} GANs have DCGAN networks"}
    return {}


def _evaluate(ev: Evaluation) -> dict[str, Any]:
    from pyro_gen.cli_models import MIXTURES

    model, config, view = ev.model, ev.config, ev.view
    if view.levels is None:
        mixture = MIXTURES.get(config["data"])
        if mixture is None:
            raise ValueError(
                f"a GAN has no likelihood, and {config['data']} is not a mixture of Gaussians "
                f"whose modes could be counted: train on {', '.join(sorted(MIXTURES))} to "
                "evaluate mode coverage, or on images for classifier scores"
            )
        with torch.no_grad():
            samples = _sample(model, ev.args.num_samples or MIXTURE_SAMPLES, None, None)
        # scored by its own samples: no test example is used, so no num_test
        return mixture_results(samples.cpu(), *mixture)
    n = int(view.x.shape[0])
    requested = _requested_labels(model, n)
    with torch.no_grad():
        samples = _sample(model, n, None, None).cpu()
    real = view.transform(view.x) if view.transform is not None else view.x
    return {"num_test": n, **sample_quality(ev, samples, real, requested)}


_GAN_OPTIONS = ("z_dim", "hidden_dim", "loss", "n_critic", "ema_decay")
_GAN_DEFAULTS = {"z_dim": 16, "hidden_dim": 128}
_COMMON = dict(
    build=_build,
    # pixels in [0, 1], the DCGAN generator's sigmoid range
    data_kind=lambda o: "unit",
    loss=_loss,
    step_callbacks=lambda o: (_update_average,) if o.get("ema_decay") else (),
    # runs from before --ema-decay applied to GANs sample with the raw weights
    added_later={"ema_decay": 0},
    # the discriminator's schedule only: a resume may change it
    loss_options=("n_critic",),
    evaluate=_evaluate,
    evaluate_options=_evaluate_options,
    unused_options=_unused_options,
    sample=_sample,
    bound=lambda o: "generator loss",
    bound_is_loss=True,
    # DCGAN's Adam settings for the generator (Radford et al.)
    adam={"betas": (0.5, 0.999)},
)

GAN_MODELS: dict[str, ModelSpec] = {
    "gan": ModelSpec(
        options=_GAN_OPTIONS,
        defaults={**_GAN_DEFAULTS, "loss": "nonsaturating"},
        choices={"loss": tuple(n for n in LOSSES if n not in WASSERSTEIN)},
        **_COMMON,
    ),
    "wgan": ModelSpec(
        options=_GAN_OPTIONS,
        defaults={**_GAN_DEFAULTS, "loss": "wgan-gp"},
        choices={"loss": WASSERSTEIN},
        **_COMMON,
    ),
    # How the image discriminator takes the label: recorded in the run's options (no flag);
    # runs from before the projection discriminator took it as input channels.
    "cgan": ModelSpec(
        options=(*_GAN_OPTIONS, "conditioning"),
        defaults={**_GAN_DEFAULTS, "loss": "nonsaturating", "conditioning": "projection"},
        labelled=True,
        fit_data=_labelled_data,
        **{**_COMMON, "added_later": {**_COMMON["added_later"], "conditioning": "concat"}},
    ),
}
