"""Generator and discriminator networks for adversarial training (no probability here).

Two sizes: fully connected networks for vector data (the 2D toys) and DCGAN-style
convolutional networks for 28x28 images, small enough to train on a CPU; and an
image-to-image translator for CycleGAN. Every network
records the shapes it works on (``event_shape``, and ``latent_dim`` for generators), which
the adversarial losses read to refuse a discriminator that does not fit the generator.
A conditional network (``context_dim > 0``) takes a context vector, such as a one-hot
label, as its second argument.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as _spectral_norm

from pyro_gen.nn.arguments import check_count
from pyro_gen.nn.conditional_norm import ConditionalBatchNorm
from pyro_gen.nn.mlp import MLP, broadcast_context
from pyro_gen.nn.resnet import ResNetConv


def _event_shape(shape: int | Sequence[int]) -> tuple[int, ...]:
    # a size of 0 built a network over nothing (and 2.5 was truncated to 2)
    whole = numbers.Integral
    sizes = [shape] if isinstance(shape, whole) else list(shape)
    if not all(isinstance(s, whole) and not isinstance(s, bool) and s >= 1 for s in sizes):
        raise ValueError(f"event_shape must hold positive whole sizes, got {shape!r}")
    return tuple(int(s) for s in sizes)


def _check_input(x: torch.Tensor, event_shape: tuple[int, ...], name: str) -> None:
    n = len(event_shape)
    if x.dim() < n or tuple(x.shape[x.dim() - n :]) != event_shape:
        raise ValueError(
            f"{name} takes inputs of event shape {event_shape}, got a tensor of shape "
            f"{tuple(x.shape)}"
        )


def _check_context(context: torch.Tensor | None, context_dim: int, name: str) -> None:
    if context_dim and context is None:
        raise ValueError(
            f"this {name} is conditional (context_dim={context_dim}): pass a context, e.g. "
            "a one-hot label"
        )
    if not context_dim and context is not None:
        raise ValueError(f"a context was given to this {name}, built with context_dim=0")


class MLPGenerator(nn.Module):
    """Fully connected generator :math:`G: \\mathbb{R}^{d_z} \\to \\mathbb{R}^{\\text{event}}`.

    Args:
        latent_dim: size of the latent code ``z``.
        event_shape: shape of one generated example, e.g. ``(2,)``.
        hidden_dims: widths of the hidden layers.
        context_dim: size of an optional context vector concatenated to ``z``.
        activation: activation module class of the hidden layers.

    Example:
        >>> g = MLPGenerator(4, (2,), hidden_dims=(16,))
        >>> g(torch.randn(5, 4)).shape
        torch.Size([5, 2])
    """

    def __init__(
        self,
        latent_dim: int,
        event_shape: int | Sequence[int],
        hidden_dims: Sequence[int] = (128, 128),
        *,
        context_dim: int = 0,
        activation: type[nn.Module] = nn.ReLU,
    ) -> None:
        super().__init__()
        latent_dim = check_count("latent_dim", latent_dim)
        context_dim = check_count("context_dim", context_dim, minimum=0)
        self.latent_dim, self.context_dim = latent_dim, context_dim
        self.event_shape = _event_shape(event_shape)
        out = math.prod(self.event_shape)
        self.net = MLP(latent_dim, hidden_dims, out, activation, context_dim=context_dim)

    def forward(self, z: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        _check_context(context, self.context_dim, "generator")
        return self.net(z, context).unflatten(-1, self.event_shape)


class MLPDiscriminator(nn.Module):
    """Fully connected discriminator (or critic): one unbounded score per example.

    The output is a logit (or a Wasserstein critic value), never a probability: the
    adversarial losses apply the sigmoid themselves where they need one.

    Args:
        event_shape: shape of one example.
        hidden_dims: widths of the hidden layers.
        context_dim: size of an optional context vector concatenated to the input.
        activation: activation module class; LeakyReLU(0.2) as in DCGAN.

    Example:
        >>> d = MLPDiscriminator((2,), hidden_dims=(16,))
        >>> d(torch.randn(5, 2)).shape
        torch.Size([5])
    """

    def __init__(
        self,
        event_shape: int | Sequence[int],
        hidden_dims: Sequence[int] = (128, 128),
        *,
        context_dim: int = 0,
        activation: type[nn.Module] | None = None,
    ) -> None:
        super().__init__()
        self.event_shape = _event_shape(event_shape)
        self.context_dim = context_dim
        act = activation if activation is not None else _LeakyReLU
        self.net = MLP(math.prod(self.event_shape), hidden_dims, 1, act, context_dim=context_dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        _check_input(x, self.event_shape, "this discriminator")
        _check_context(context, self.context_dim, "discriminator")
        h = x.flatten(x.dim() - len(self.event_shape)) if self.event_shape else x[..., None]
        return self.net(h, context).squeeze(-1)


class _LeakyReLU(nn.LeakyReLU):
    def __init__(self) -> None:
        super().__init__(0.2)


def _image_shape(event_shape: Sequence[int]) -> tuple[int, int, int]:
    shape = _event_shape(event_shape)
    if len(shape) == 2:
        shape = (1, *shape)
    if len(shape) != 3 or shape[1:] != (28, 28):
        raise ValueError(
            f"the DCGAN networks are sized for 28x28 images: event_shape (28, 28) or "
            f"(channels, 28, 28), got {tuple(event_shape)}"
        )
    return shape  # type: ignore[return-value]


class DCGANGenerator(nn.Module):
    """DCGAN-style generator for 28x28 images (Radford et al.).

    ``z`` (with the context appended) goes through a linear layer to a 7x7 feature map,
    then two stride-2 transposed convolutions (with batch norm and ReLU between) to 28x28.
    Layers followed by batch norm have no bias (the norm's shift replaces it; a bias there
    gets no gradient). The output passes through a sigmoid (pixels in [0, 1], as pyro_gen's
    image datasets) or a tanh (pixels in [-1, 1]).

    A context (a one-hot label) is appended to ``z``; with ``conditioning="batchnorm"`` it
    also sets the scale and shift of both batch norms
    (:class:`~pyro_gen.nn.conditional_norm.ConditionalBatchNorm`, the generator of Miyato &
    Koyama's conditional GAN), so it acts on every layer and not only through the input.

    Args:
        latent_dim: size of ``z``.
        event_shape: ``(28, 28)`` or ``(channels, 28, 28)``.
        width: channels of the 14x14 layer (the 7x7 layer has twice as many).
        context_dim: size of an optional context vector (a one-hot label).
        output: ``"sigmoid"`` or ``"tanh"``.
        conditioning: ``"concat"`` (the context appended to ``z`` only) or
            ``"batchnorm"`` (also class-conditional batch norm).

    References:
        Radford, Metz & Chintala, Unsupervised Representation Learning with Deep
        Convolutional Generative Adversarial Networks, arXiv:1511.06434.
        Miyato & Koyama, cGANs with Projection Discriminator, arXiv:1802.05637.

    Example:
        >>> g = DCGANGenerator(8, width=4)
        >>> g(torch.randn(3, 8)).shape
        torch.Size([3, 28, 28])
    """

    def __init__(
        self,
        latent_dim: int,
        event_shape: Sequence[int] = (28, 28),
        width: int = 32,
        *,
        context_dim: int = 0,
        output: str = "sigmoid",
        conditioning: str = "concat",
    ) -> None:
        super().__init__()
        if output not in ("sigmoid", "tanh"):
            raise ValueError(f"output must be 'sigmoid' or 'tanh', got {output!r}")
        if conditioning not in ("concat", "batchnorm"):
            raise ValueError(f"conditioning must be 'concat' or 'batchnorm', got {conditioning!r}")
        latent_dim = check_count("latent_dim", latent_dim)
        context_dim = check_count("context_dim", context_dim, minimum=0)
        width = check_count("width", width)
        self.latent_dim, self.context_dim = latent_dim, context_dim
        self.event_shape = _event_shape(event_shape)
        channels = _image_shape(event_shape)[0]
        self.conditioning = conditioning
        cbn = bool(context_dim) and conditioning == "batchnorm"

        def norm(features: int, plain: type[nn.Module]) -> nn.Module:
            return ConditionalBatchNorm(features, context_dim) if cbn else plain(features)

        self.fc = nn.Sequential(
            nn.Linear(latent_dim + context_dim, 2 * width * 49, bias=False),
            norm(2 * width * 49, nn.BatchNorm1d),
            nn.ReLU(),
        )
        self.conv = nn.Sequential(
            nn.ConvTranspose2d(2 * width, width, 4, 2, 1, bias=False),
            norm(width, nn.BatchNorm2d),
            nn.ReLU(),
            nn.ConvTranspose2d(width, channels, 4, 2, 1),
            nn.Sigmoid() if output == "sigmoid" else nn.Tanh(),
        )
        self.width = width

    def forward(self, z: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        _check_context(context, self.context_dim, "generator")
        c = None
        if context is not None:
            context = broadcast_context(z, context, 1)
            z = torch.cat([z.expand(context.shape[:-1] + z.shape[-1:]), context], -1)
            c = context.reshape(-1, context.shape[-1])
        batch = z.shape[:-1]
        h = _run(self.fc, z.reshape(-1, z.shape[-1]), c)
        h = _run(self.conv, h.unflatten(-1, (2 * self.width, 7, 7)), c)
        return h.reshape(*batch, *self.event_shape)


def _run(layers: nn.Sequential, h: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
    """``layers(h)``, passing the context to the conditional batch norms."""
    for layer in layers:
        h = layer(h, context) if isinstance(layer, ConditionalBatchNorm) else layer(h)
    return h


class DCGANDiscriminator(nn.Module):
    """DCGAN-style discriminator (or critic) for 28x28 images: one unbounded score each.

    Two stride-2 convolutions with LeakyReLU(0.2) down to 7x7 features :math:`\\phi(x)`,
    then a linear layer :math:`\\psi`. No batch norm: it would couple the examples of a
    batch, which the gradient penalty (defined per example) forbids. With
    ``spectral_norm=True`` every layer's weight is divided by its largest singular value
    (Miyato et al.), bounding the network's Lipschitz constant.

    A context :math:`c` (a one-hot label) enters in one of two ways:

    - ``conditioning="projection"`` (the default; Miyato & Koyama 2018):
      :math:`D(x, c) = \\psi(\\phi(x)) + c^\\top V \\phi(x)`, an inner product of the
      features with the label's embedding :math:`V^\\top c`. This is the form of the
      optimal discriminator's logit when :math:`\\log p(c \\mid x)` is a softmax of
      features, so the label acts on what the network has recognised in the image.
    - ``conditioning="concat"``: the context as constant extra input channels (Mirza &
      Osindero), which the first convolution has to learn to combine with the pixels.

    Args:
        event_shape: ``(28, 28)`` or ``(channels, 28, 28)``.
        width: channels of the first convolution (the second has twice as many).
        context_dim: size of an optional context vector.
        spectral_norm: apply spectral normalization to every layer (the embedding too).
        conditioning: ``"projection"`` or ``"concat"``, how a context enters.

    References:
        Radford, Metz & Chintala, arXiv:1511.06434. Miyato, Kataoka, Koyama & Yoshida,
        Spectral Normalization for Generative Adversarial Networks, arXiv:1802.05957.
        Miyato & Koyama, cGANs with Projection Discriminator, arXiv:1802.05637.

    Example:
        >>> d = DCGANDiscriminator(width=4, spectral_norm=True)
        >>> d(torch.rand(3, 28, 28)).shape
        torch.Size([3])
    """

    def __init__(
        self,
        event_shape: Sequence[int] = (28, 28),
        width: int = 32,
        *,
        context_dim: int = 0,
        spectral_norm: bool = False,
        conditioning: str = "projection",
    ) -> None:
        super().__init__()
        if conditioning not in ("projection", "concat"):
            raise ValueError(f"conditioning must be 'projection' or 'concat', got {conditioning!r}")
        width = check_count("width", width)
        context_dim = check_count("context_dim", context_dim, minimum=0)
        self.event_shape = _event_shape(event_shape)
        self.image_shape = _image_shape(event_shape)
        self.context_dim = context_dim
        self.conditioning = conditioning
        concat = context_dim if conditioning == "concat" else 0

        def sn(layer: nn.Module) -> nn.Module:
            return _spectral_norm(layer) if spectral_norm else layer

        features = 2 * width * 49
        self.net = nn.Sequential(
            sn(nn.Conv2d(self.image_shape[0] + concat, width, 4, 2, 1)),
            nn.LeakyReLU(0.2),
            sn(nn.Conv2d(width, 2 * width, 4, 2, 1)),
            nn.LeakyReLU(0.2),
            nn.Flatten(),
            sn(nn.Linear(features, 1)),
        )
        # V of the projection term: row c of V^T is the embedding of label c
        self.embed = (
            sn(nn.Linear(context_dim, features, bias=False))
            if context_dim and conditioning == "projection"
            else None
        )

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        _check_input(x, self.event_shape, "this discriminator")
        _check_context(context, self.context_dim, "discriminator")
        batch = x.shape[: x.dim() - len(self.event_shape)]
        h = x.reshape(-1, *self.image_shape)
        c = None
        if context is not None:
            c = context.expand(*batch, self.context_dim).reshape(-1, self.context_dim).to(h)
        if self.embed is None:
            if c is not None:
                h = torch.cat([h, c[:, :, None, None].expand(-1, -1, 28, 28)], 1)
            return self.net(h).reshape(batch)
        features = self.net[:-1](h)
        score = self.net[-1](features).squeeze(-1) + (self.embed(c) * features).sum(-1)
        return score.reshape(batch)


class ConvTranslator(nn.Module):
    """Image-to-image translator for CycleGAN on images in [0, 1] of any size:
    :math:`G(x) = \\sigma(\\operatorname{logit}(x) + r(x))` with a residual convolutional net
    :math:`r` (:class:`~pyro_gen.nn.ResNetConv`) whose last layer starts at zero, so the
    translator starts as the identity and learns the change between the domains.

    Args:
        channels: image channels (input and output).
        width: channels of the residual trunk.
        num_blocks: residual blocks.
        eps: inputs are clamped to ``[eps, 1 - eps]`` before the logit.

    Example:
        >>> t = ConvTranslator(1, width=4, num_blocks=1)
        >>> x = torch.rand(2, 1, 28, 28) * 0.9 + 0.05
        >>> torch.allclose(t(x), x, atol=1e-5)  # the identity at initialisation
        True
    """

    def __init__(
        self, channels: int = 1, width: int = 32, num_blocks: int = 2, *, eps: float = 1e-3
    ) -> None:
        super().__init__()
        self.net = ResNetConv(channels, width, channels, num_blocks=num_blocks)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(torch.logit(x.clamp(self.eps, 1 - self.eps)) + self.net(x))
