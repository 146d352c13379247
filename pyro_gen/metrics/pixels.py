"""What the classifier metrics accept as images: grayscale pixels in [0, 1], in the
layouts users' models produce."""

from __future__ import annotations

import math

import torch

from pyro_gen.metrics.inputs import as_tensor

#: Slack on [0, 1] for rounding (a sigmoid's 1 + 1 ulp), far below any other pixel scale.
_RANGE_SLACK = 1e-6


def check_unit_interval(images: torch.Tensor, name: str) -> torch.Tensor:
    """``images`` as floating-point pixels in [0, 1] (boolean pixels, a binarized model's
    samples, become 0.0 and 1.0); anything else is refused, saying what range was found.

    Example:
        >>> check_unit_interval(torch.tensor([True, False]), "x")
        tensor([1., 0.])
    """
    if images.dtype == torch.bool:
        images = images.to(torch.get_default_dtype())
    # uint8 pixels (0..255) failed inside the first conv layer with torch's "Input type ...
    # and bias type ... should be the same"
    if not images.is_floating_point():
        raise ValueError(
            f"{name} must be floating-point pixels in [0, 1], got dtype {images.dtype} "
            "(divide integer pixels by their maximum, e.g. x / 255)"
        )
    if images.numel() == 0:
        return images
    # [-1, 1] images (a tanh generator, a diffusion model's space) and 0..255 floats were
    # scored silently: the classifier, trained on [0, 1], gave meaningless features
    if not bool(torch.isfinite(images).all()):
        raise ValueError(
            f"{name} must be pixels in [0, 1], found NaN or infinite values (a diverged "
            "model's samples?): drop or fix them before scoring"
        )
    low, high = float(images.detach().min()), float(images.detach().max())
    if low < -_RANGE_SLACK or high > 1 + _RANGE_SLACK:
        raise ValueError(
            f"{name} must be pixels in [0, 1], found values from {low:.4g} to {high:.4g}: "
            "map [-1, 1] images with (x + 1) / 2, divide 0..255 pixels by 255, or clamp "
            "samples that overshoot with x.clamp(0, 1)"
        )
    return images


def as_image_batch(x: torch.Tensor) -> torch.Tensor:
    """Grayscale images as ``(B, 1, H, W)`` from ``(B, H, W)``, ``(B, 1, H, W)``,
    channels-last ``(B, H, W, 1)`` or square images flattened to ``(B, H * W)``; any other
    shape is refused, saying which it got.

    Example:
        >>> as_image_batch(torch.zeros(3, 784)).shape
        torch.Size([3, 1, 28, 28])
    """
    # (B, 784) failed inside conv2d ("Expected 3D (unbatched) or 4D (batched) input"), and a
    # (B, C, H, W) batch with C > 1 inside it as a channel mismatch
    side = math.isqrt(x.shape[-1]) if x.dim() == 2 else 0
    if x.dim() == 2 and side * side == x.shape[-1]:
        return x.reshape(x.shape[0], 1, side, side)
    if x.dim() == 3:
        return x[:, None]
    if x.dim() == 4 and x.shape[1] == 1:
        return x
    # channels-last grayscale (numpy, PIL and TensorFlow datasets) was refused; with one
    # channel moving it first is a reshape that keeps every pixel in place
    if x.dim() == 4 and x.shape[-1] == 1:
        return x.reshape(x.shape[0], 1, x.shape[1], x.shape[2])
    raise ValueError(
        f"images must be grayscale (B, H, W), (B, 1, H, W), (B, H, W, 1) or square images "
        f"flattened to (B, H*W), got shape {tuple(x.shape)}: reshape them, e.g. "
        "x.reshape(-1, 1, 28, 28) "
        "(draws of pyro.infer.Predictive carry a leading num_samples dim)"
    )


def _check_same_layout(shape: tuple[int, ...], image_shape: tuple[int, ...], name: str) -> None:
    """Reshaping keeps pixels in place only between layouts that differ by size-1 dims or
    where one side is flat: channels-last ``(N, 32, 32, 3)`` samples against ``(M, 3, 32,
    32)`` real images were reshaped, not permuted, and scored as scrambled pixels."""
    a, b = [n for n in shape if n != 1], [n for n in image_shape if n != 1]
    if a == b or len(a) <= 1 or len(b) <= 1:
        return
    hint = ""
    if len(a) == 3 and a[-1:] + a[:-1] == b:
        hint = f" ({name} look channels-last: x.permute(0, 3, 1, 2) makes them channels-first)"
    raise ValueError(
        f"{name} hold images of shape {shape}, the real images {image_shape}: a reshape would "
        f"scramble their pixels, so give both sets in one layout{hint}"
    )


def images_like(
    x: torch.Tensor, image_shape: tuple[int, ...] | torch.Size | None, name: str
) -> torch.Tensor:
    """``x`` as a batch ``(B, *image_shape)``: the leading dims of ``pyro.infer.Predictive``
    (``(num_samples, N, ...)``) become one batch dim, and an image flattened differently
    (``(N, 784)`` against ``(M, 1, 28, 28)``) takes ``image_shape``. Without
    ``image_shape``, ``x`` must already be a batch ``(B, ...)``.

    Example:
        >>> images_like(torch.zeros(5, 4, 784), (1, 28, 28), "samples").shape
        torch.Size([20, 1, 28, 28])
    """
    x = as_tensor(x, name, "a tensor of images")
    if image_shape is None:
        if x.dim() < 2:
            raise ValueError(f"{name} must be a batch of images (B, ...), got {tuple(x.shape)}")
        return x
    size = math.prod(image_shape)
    # (num_samples, N, 784) was read as num_samples images of N x 784 pixels and scored
    # without a word; a leading block of dims, then one image's pixels, is unambiguous
    for k in range(1, x.dim() + 1):
        if math.prod(x.shape[k:]) == size:
            _check_same_layout(tuple(x.shape[k:]), tuple(image_shape), name)
            return x.reshape(math.prod(x.shape[:k]), *image_shape)
    raise ValueError(
        f"{name} of shape {tuple(x.shape)} do not end in images of the real images' shape "
        f"{tuple(image_shape)} ({size} pixels each): give both sets in one layout"
    )


def labelled_images(
    x: torch.Tensor, labels: torch.Tensor, draws: bool | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``(B, ...)`` and labels ``(B,)`` from images whose leading dims are the
    labels' shape (``draws=False``), or one more leading dim (``draws=True``: the
    ``num_samples`` of ``pyro.infer.Predictive``, drawn for the same labels). ``draws=None``
    reads the shapes, and refuses samples that fit both readings.

    Example:
        >>> x, y = labelled_images(torch.zeros(5, 3, 784), torch.tensor([0, 1, 2]))
        >>> x.shape, y.tolist()
        (torch.Size([15, 784]), [0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2])
    """
    x = as_tensor(x, "samples", "a tensor of images")
    labels = as_tensor(labels, "labels", "class indices")
    # OneHotCategorical's float one-hot labels (a semi-supervised VAE's y) against (N, 10, 10)
    # images were read as 10 labels per image, each 0 or 1, and scored without a word
    if labels.is_floating_point() or labels.is_complex():
        raise ValueError(
            f"labels must be integer class indices, got dtype {labels.dtype} of shape "
            f"{tuple(labels.shape)} (one-hot labels, e.g. OneHotCategorical draws: pass "
            "labels.argmax(-1))"
        )
    d = labels.dim()
    per_sample = draws is not True and d >= 1 and x.shape[:d] == labels.shape
    per_draw = draws is not False and d >= 1 and x.dim() >= d + 2
    per_draw = per_draw and x.shape[1 : 1 + d] == labels.shape
    # Predictive(num_samples=10) of a model given labels arange(10) draws (10, 10, 784): read
    # as 10 images of 10 x 784 pixels it was scored without a word; when both readings fit
    # and differ, only the caller knows which is meant (one label's two readings differ by a
    # size-1 dim only, and keep the per-sample one)
    if per_sample and per_draw and labels.numel() > 1:
        raise ValueError(
            f"samples of shape {tuple(x.shape)} with labels of shape {tuple(labels.shape)} "
            f"read two ways: {x.shape[0]} images of shape {tuple(x.shape[d:])}, or "
            f"{x.shape[0]} draws (Predictive's num_samples) of {labels.numel()} images of shape "
            f"{tuple(x.shape[d + 1 :])}: pass draws=True for Predictive's draws, draws=False "
            "for one image per label"
        )
    if per_sample:
        lead = d
    elif per_draw:
        lead, labels = d + 1, labels.expand(x.shape[: d + 1])
    else:
        lead_dims = {
            None: "the samples' leading dims, or those after Predictive's num_samples dim",
            False: "the samples' leading dims (draws=False)",
            True: "the samples' dims after Predictive's num_samples dim (draws=True)",
        }[draws]
        raise ValueError(
            f"labels must hold one label per sample: samples of shape {tuple(x.shape)}, "
            f"labels of shape {tuple(labels.shape)} (their shape must be {lead_dims})"
        )
    return x.reshape(math.prod(x.shape[:lead]), *x.shape[lead:]), labels.reshape(-1)
