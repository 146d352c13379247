"""``pyro-gen train cyclegan``: CycleGAN between an image dataset and the same images with
thickened strokes, trained on unpaired halves.

The true mapping is known, :math:`T(x) = \\operatorname{maxpool}_{3\\times3}(x)` (grey-level
dilation), but never given in pairs: domain ``X`` is the first half of the training images,
``Y`` the second half dilated (the setting of ``benchmarks/gan_cyclegan.py``). ``evaluate``
scores the translator :math:`G: X \\to Y` on the test images: class preservation (a
classifier trained on dilated training images reads the digit of :math:`G(x)`), the L1
distance per pixel to :math:`T(x)` beside the identity's, and the cycle error.

Example:
    >>> dilate(torch.eye(3)[None, None])[0, 0]
    tensor([[1., 1., 1.],
            [1., 1., 1.],
            [1., 1., 1.]])
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from pyro_gen.cli_evaluate import with_se
from pyro_gen.cli_spec import PIXEL_LEVELS, Evaluation, ModelSpec, UsageError


def dilate(x: torch.Tensor) -> torch.Tensor:
    """The true mapping: grey-level dilation by a 3x3 square (thicker strokes)."""
    return F.max_pool2d(x, 3, stride=1, padding=1)


def _image_shape(event_shape: tuple[int, ...]) -> tuple[int, ...]:
    return (1, *event_shape[-2:])


def _discriminator(shape: tuple[int, ...], opts: dict[str, Any]) -> nn.Module:
    from pyro_gen.nn import DCGANDiscriminator, MLPDiscriminator

    if shape[-2:] == (28, 28):
        return DCGANDiscriminator(shape)
    return MLPDiscriminator(shape, (opts["hidden_dim"],) * 2)


def _build(event_shape: tuple[int, ...], opts: dict[str, Any]) -> nn.Module:
    from pyro_gen.gan import CycleGAN
    from pyro_gen.nn import ConvTranslator

    shape = _image_shape(event_shape)
    width = opts["hidden_dim"]
    return CycleGAN(ConvTranslator(1, width), ConvTranslator(1, width), shape, shape)


def _loss(event_shape: tuple[int, ...], opts: dict[str, Any]) -> nn.Module:
    from pyro_gen.gan import CycleGANLoss

    shape = _image_shape(event_shape)
    d_x, d_y = _discriminator(shape, opts), _discriminator(shape, opts)
    return CycleGANLoss(d_x, d_y, cycle_weight=opts["cycle_weight"])


def _unit(x: torch.Tensor, config: dict[str, Any]) -> torch.Tensor:
    return x.to(torch.get_default_dtype()).unsqueeze(-3) / (PIXEL_LEVELS[config["data"]] - 1)


def _domains(x: torch.Tensor, y: torch.Tensor | None, config: dict, split: str) -> Any:
    # unpaired: X is one half, Y the other half dilated; no image appears in both
    unit = _unit(x, config)
    half = unit.shape[0] // 2
    return {"x": unit[:half], "y": dilate(unit[half : 2 * half])}


def _translations(model: Any, config: dict[str, Any], n: int) -> torch.Tensor:
    from pyro_gen.cli_models import load_split

    x, _ = load_split(config["data"], "test", config, n)
    if x.shape[0] < n:  # it drew fewer than asked for and counted the -n asked
        raise UsageError(
            f"-n {n}: a cyclegan's samples are translations of test images, and "
            f"{config['data']} has {x.shape[0]} test images; give -n {x.shape[0]} or fewer"
        )
    return model.translate(_unit(x, config).to(next(model.parameters()).device))


def _evaluate(ev: Evaluation) -> dict[str, Any]:
    from pyro_gen.cli_models import load_split
    from pyro_gen.metrics import label_agreement, train_classifier

    config, model = ev.config, ev.model
    device = next(model.parameters()).device
    test = _unit(ev.view.x, config).to(device)
    x, y = load_split(config["data"], "train", config, None)
    clf = train_classifier(dilate(_unit(x, config)), y, epochs=ev.args.classifier_epochs,
                           seed=config["seed"])  # fmt: skip
    with torch.no_grad():
        translated, truth = model.translate(test), dilate(test)
        back = model.translate_back(translated)
    results: dict[str, Any] = {"num_test": int(test.shape[0])}
    share, se = label_agreement(clf, translated, ev.labels, draws=False)
    results["class_preservation"], results["class_preservation_se"] = share, se
    results["classifier_accuracy_on_dilated_test"] = label_agreement(
        clf, truth, ev.labels, draws=False
    )[0]
    with_se(results, "l1_to_true_mapping", (translated - truth).abs().flatten(1).mean(1))
    with_se(results, "l1_identity_to_true_mapping", (test - truth).abs().flatten(1).mean(1))
    with_se(results, "cycle_error", (back - test).abs().flatten(1).mean(1))
    return results


CYCLEGAN_MODELS: dict[str, ModelSpec] = {
    "cyclegan": ModelSpec(
        build=_build,
        # the integer pixels: _domains scales both domains itself (a transform reaches x only)
        data_kind=lambda o: "levels",
        options=("hidden_dim", "cycle_weight"),
        defaults={"hidden_dim": 32},
        loss=_loss,
        images_only=True,
        loss_options=("cycle_weight",),
        fit_data=_domains,
        evaluate=_evaluate,
        # translations of test images, scored by a classifier
        evaluate_options=lambda o, data: ("num_test", "classifier_epochs"),
        figure=_translations,
        bound=lambda o: "translators' loss",
        bound_is_loss=True,
        adam={"betas": (0.5, 0.999)},
    ),
}
