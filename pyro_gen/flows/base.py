r"""The shared base of every ready-made flow: a transform stack on a standard normal base.

A flow density model is a Pyro model with one observed site and no latent variables,

.. math::

    x = T(z), \quad z \sim \mathcal{N}(0, I), \qquad
    \log p(x) = \log \mathcal{N}(T^{-1}(x); 0, I)
        + \log\left|\det \frac{\partial T^{-1}(x)}{\partial x}\right|,

so with an empty guide ``Trace_ELBO`` equals :math:`\log p(x)` exactly and SVI is maximum
likelihood. With a dequantizer (:mod:`pyro_gen.transforms.dequantization`) the model takes
integer data, gains a latent noise site and the guide learns or fixes :math:`q(u \mid x)`; the
ELBO then bounds the discrete log-likelihood.

Subclasses only build their transform stack (see ``nice.py``, ``realnvp.py``, ...).

References:
    Papamakarios, Nalisnick, Rezende, Mohamed, Lakshminarayanan. Normalizing Flows for
    Probabilistic Modeling and Inference. JMLR 2021, arXiv:1912.02762.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pyro
import torch
from torch import Tensor
from torch.distributions import Transform
from torch.distributions.transforms import ReshapeTransform

from pyro_gen.distributions.flow import Flow, FlowDistribution
from pyro_gen.flows.arguments import check_count
from pyro_gen.nn.registration import register_module
from pyro_gen.plates import check_sample_count, data_plate
from pyro_gen.transforms._base import PicklableModule, as_event_shape, sample_count
from pyro_gen.transforms.dequantization import (
    ScaledSigmoid,
    UniformDequantization,
    VariationalDequantization,
)

__all__ = ["FlowModel", "image_shape", "make_dequantizer", "pixel_output"]


def image_shape(event_shape: Sequence[int]) -> tuple[int, int, int]:
    """``(H, W)`` or ``(C, H, W)`` as ``(C, H, W)``; anything else is an error."""
    shape = tuple(int(s) for s in event_shape)
    if len(shape) == 2:
        return (1, *shape)
    if len(shape) == 3:
        return shape  # type: ignore[return-value]
    raise ValueError(f"image flows take (H, W) or (C, H, W) events, got {shape}")


def pixel_output(event_shape: Sequence[int], alpha: float) -> list[Transform]:
    """Last transforms of an image flow: the data shape, then logit space to pixels in [0, 1].

    The flow works on ``(C, H, W)``; ``(H, W)`` data get a reshape, and :class:`ScaledSigmoid`
    makes the density one on pixels (the RealNVP logit preprocessing, inverted). The sigmoid
    comes last so that its interval is the distribution's ``support``: after a reshape the
    support would read as all reals, and Pyro's autoguides and MCMC (``biject_to(support)``)
    would propose pixels where the density is not defined.
    """
    chw = image_shape(event_shape)
    out: list[Transform] = []
    if tuple(event_shape) != chw:
        out.append(ReshapeTransform(torch.Size(chw), torch.Size(event_shape)))
    out.append(ScaledSigmoid(alpha, event_dim=len(event_shape)))
    return out


def flat_pixel_output(event_shape: Sequence[int], alpha: float) -> list[Transform]:
    """Last transforms of a flow on flattened events (MAF, NICE); none for vector data.

    Images are unflattened to ``(C, H, W)``, then mapped to pixels by :func:`pixel_output`.
    """
    if len(event_shape) == 1:
        return []
    chw = torch.Size(image_shape(event_shape))
    return [ReshapeTransform(torch.Size((chw.numel(),)), chw), *pixel_output(event_shape, alpha)]


def make_dequantizer(
    dequantization: str | UniformDequantization | None,
    event_shape: Sequence[int],
    num_bins: int,
) -> UniformDequantization | None:
    """``None``, ``"uniform"``, ``"variational"`` or a ready dequantizer module."""
    if dequantization is None or isinstance(dequantization, UniformDequantization):
        return dequantization
    if dequantization == "uniform":
        return UniformDequantization(event_shape, num_bins)
    if dequantization == "variational":
        return VariationalDequantization(event_shape, num_bins)
    raise ValueError(
        f"dequantization must be None, 'uniform' or 'variational', got {dequantization!r}"
    )


class FlowModel(PicklableModule):
    r"""A normalizing flow density model following the pyro_gen model protocol.

    Args:
        event_shape: shape of one data point.
        transforms: bijections from the base to the data, applied in order (Pyro convention).
        name: prefix of the parameters in Pyro's param store.
        dequantization: ``None`` (continuous data), ``"uniform"``, ``"variational"`` or a
            dequantizer module; with one, ``model``/``guide`` take integers ``0..num_bins-1``.
        num_bins: number of discrete levels for dequantization and :meth:`bits_per_dim`.
        base: a learnable base distribution module instead of the standard normal (see
            :class:`~pyro_gen.distributions.flow.LearnedNormal` and its siblings).

    With conditional transforms (``conditional_affine_coupling(..., context_dim=C)``, a
    :class:`~pyro_gen.distributions.flow.ConditionalNormal` base) the model is a conditional
    density :math:`p(x \mid y)`: ``model``, ``guide`` and :meth:`log_prob` take the context
    as ``y=`` (one row of ``C`` features per example), as a conditional VAE takes its labels.
    (Not ``context=``: Pyro's handlers take that keyword themselves.)

    Example:
        >>> import pyro.distributions as dist
        >>> from pyro.distributions.transforms import AffineTransform
        >>> flow = FlowModel((2,), [AffineTransform(1.0, 2.0, event_dim=1)])
        >>> x = torch.randn(4, 2)
        >>> lp = dist.Normal(1.0, 2.0).log_prob(x).sum(-1)
        >>> torch.allclose(flow.log_prob(x), lp)
        True
        >>> flow.sample(3).shape
        torch.Size([3, 2])
    """

    #: name of the observed site
    site = "x"

    def __init__(
        self,
        event_shape: Sequence[int],
        transforms: Sequence[Transform],
        *,
        name: str | None = None,
        dequantization: str | UniformDequantization | None = None,
        num_bins: int = 256,
        base: torch.nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.event_shape = torch.Size(as_event_shape(event_shape))
        # The distribution itself (base, transforms, shapes) is pyro_gen.distributions.Flow;
        # this class adds the model protocol around it.
        self.flow = Flow(tuple(self.event_shape), list(transforms), base=base)
        self.base_shape = torch.Size(self.flow.base_shape)
        self.name = name or type(self).__name__.lower()
        # int() truncated 2.5 bins to 2 and 0 failed later in a log ("math domain error")
        self.num_bins = check_count("num_bins", num_bins)
        self.dequantization = make_dequantizer(dequantization, self.event_shape, self.num_bins)

    @property
    def event_dim(self) -> int:
        return len(self.event_shape)

    @property
    def transforms(self) -> list[Transform]:
        """The bijections from the base to the data, in order."""
        return list(self.flow._transforms)

    def distribution(
        self,
        temperature: float = 1.0,
        batch_shape: Sequence[int] = (),
        y: Tensor | None = None,
    ) -> FlowDistribution:
        """The flow as a Pyro distribution, usable in ``pyro.sample`` under plates.

        Args:
            temperature: scale of the base standard deviation (1 gives the model's density).
            batch_shape: batch shape to expand to (``pyro.plate`` also expands it).
            y: the context of a conditional flow (its batch shape is ``y.shape[:-1]``).
        """
        d = self.flow(self._context(y), temperature=temperature)
        return d.expand(torch.Size(batch_shape)) if batch_shape else d

    def _context(self, y: Tensor | None) -> Tensor | None:
        if not self.flow.conditional:
            if y is not None:
                raise ValueError(
                    f"y= was given but this {type(self).__name__} is not conditional (none of "
                    "its transforms or its base takes a context): drop y=, or build it with "
                    "conditional transforms"
                )
            return None
        if y is None:
            raise ValueError(
                f"this {type(self).__name__} has conditional transforms: call it with y=<context>"
                " (one row of context features per example)"
            )
        return y

    def _check(self, x: Tensor) -> None:
        if x.dim() < self.event_dim or x.shape[x.dim() - self.event_dim :] != self.event_shape:
            raise ValueError(
                f"{type(self).__name__} expects data of shape (batch, *{tuple(self.event_shape)}), "
                f"got {tuple(x.shape)}"
            )
        if x.is_floating_point() and not torch.isfinite(x).all():
            raise ValueError(f"{type(self).__name__} got non-finite data")

    def _check_batch(self, x: Tensor) -> None:
        """``model`` and ``guide`` observe one batch dim under ``pyro.plate("data", B)``: a
        single example of shape ``event_shape`` made the plate its first event dim and was
        scored that many times (3x for ``(3,)``, silently); more batch dims failed in Pyro
        with "Value is not broadcastable with batch_shape+event_shape"."""
        if x.dim() != self.event_dim + 1:
            raise ValueError(
                f"{type(self).__name__}.model and .guide observe a batch of shape (B, "
                f"*{tuple(self.event_shape)}) under pyro.plate('data', B), got "
                f"{tuple(x.shape)}: one example is x.unsqueeze(0); for more batch dims "
                "flatten them (x.reshape(-1, *event_shape)), or observe "
                "pyro.sample(name, flow.distribution(), obs=x) under plates of your own"
            )

    def model(
        self, x: Tensor | None = None, num_samples: int = 1, y: Tensor | None = None, **context
    ) -> Tensor:
        """Observe ``x`` (shape ``(B, *event_shape)``) under ``pyro.plate("data", B)``.

        With ``x=None`` it draws ``num_samples`` data points (continuous, before quantization),
        one per row of ``y`` for a conditional flow. ``y``: the context of a conditional flow.
        Other keyword arguments (``idx``, labels of an unconditional flow's dataset) are
        ignored.
        """
        register_module(self.name, self.flow)
        if x is None:
            # the rows of y are its second-to-last dim: dims left of it are batch dims, a
            # draw per Predictive(parallel=True) sample when y comes from a latent (its first
            # dim made the plate the number of samples: "Shape mismatch inside plate('data')")
            n = num_samples if y is None or y.dim() < 2 else y.shape[-2]
            if y is not None and y.dim() >= 2:
                check_sample_count(type(self).__name__, num_samples, n, "row")
            with data_plate(n, type(self).__name__):
                return pyro.sample(self.site, self.distribution(y=y))
        self._check(x)
        self._check_batch(x)
        with data_plate(x.shape[0], type(self).__name__):
            if self.dequantization is not None:
                return self.dequantization.model_step(x, self.distribution(y=y), self.site)
            return pyro.sample(self.site, self.distribution(y=y), obs=x)

    def guide(
        self, x: Tensor | None = None, num_samples: int = 1, y: Tensor | None = None, **context
    ) -> None:
        r"""Empty (exact maximum likelihood), or :math:`q(u \mid x)` with dequantization."""
        if x is None or self.dequantization is None:
            return None
        self._check_batch(x)
        register_module(self.name + ".dequantization", self.dequantization)
        with data_plate(x.shape[0], type(self).__name__):
            self.dequantization.guide_step(x)
        return None

    def log_prob(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        r"""Exact :math:`\log p(x)` (:math:`\log p(x \mid y)` for a conditional flow) of
        continuous data, shape ``x.shape[:-event_dim]``."""
        self._check(x)
        return self.distribution(y=y).log_prob(x)

    @torch.no_grad()
    def sample(self, num_samples: int, temperature: float = 1.0, y: Tensor | None = None) -> Tensor:
        """Draw ``(num_samples, *event_shape)`` from the base at ``temperature`` pushed
        forward; for a conditional flow, ``num_samples`` draws for each row of the context
        ``y``: ``(num_samples, *y.shape[:-1], *event_shape)``."""
        num_samples = sample_count(num_samples)
        return self.distribution(temperature, y=y).sample((num_samples,))

    def bits_per_dim(
        self, x: Tensor, num_bins: int | None = None, y: Tensor | None = None
    ) -> Tensor:
        r"""Mean bits per dimension of dequantized data :math:`x = (k + u)/K \in [0,1]^D`.

        .. math::

            \text{bpd} = -\frac{\log p(x) - D \log K}{D \log 2},

        the discrete negative log-likelihood bound in bits, the number image-flow papers report.
        (Same conversion as ``pyro_gen.data.bits_per_dim`` on ``-log p + D log K`` nats.)
        """
        k = self.num_bins if num_bins is None else check_count("num_bins", num_bins)
        d = math.prod(self.event_shape)
        nll = -(self.log_prob(x, y=y) - d * math.log(k))
        return nll.mean() / (d * math.log(2.0))
