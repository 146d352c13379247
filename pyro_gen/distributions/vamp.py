"""VampPrior: the aggregate posterior at learned pseudo-inputs, used as a prior."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from pyro_gen.distributions.mixture import GaussianMixture
from pyro_gen.transforms._base import PicklableModule, as_event_shape

Encode = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class VampPrior(PicklableModule):
    """Variational mixture of posteriors prior,

    .. math:: p(z) = \\frac{1}{K} \\sum_{k=1}^K q(z \\mid u_k),

    where :math:`u_1, \\dots, u_K` are learnable pseudo-inputs in data space and
    :math:`q(z \\mid x) = \\mathcal{N}(\\mu(x), \\operatorname{diag}\\sigma^2(x))` is the
    (amortized Normal) guide. The pseudo-inputs are kept in :math:`[0, 1]` through a
    sigmoid. The encoder is taken from the guide by :meth:`bind` (the VAE does this); it is
    held by reference, not registered as a submodule, so its weights enter Pyro's param
    store once, through the guide. With a flow guide (IAF) the components are the Normal
    stage of the guide (before its flow steps), so the prior is still a Gaussian mixture.

    Args:
        event_shape: shape of one example (and of each pseudo-input); an int is one
            dimension.
        num_components: number of pseudo-inputs :math:`K` (default 500, or the rows of
            ``init``).
        encode: optional ``x -> (loc, scale)``; else supplied by :meth:`bind`.
        init: optional initial pseudo-inputs in :math:`(0, 1)`, shape ``(K, *event_shape)``
            (e.g. random training images).

    References:
        Tomczak & Welling, VAE with a VampPrior, arXiv:1705.07120.

    Example:
        >>> enc = lambda u: (u.flatten(1)[:, :2], torch.ones(u.shape[0], 2))
        >>> prior = VampPrior((4,), num_components=3, encode=enc)
        >>> prior().log_prob(torch.zeros(5, 2)).shape
        torch.Size([5])
    """

    def __init__(
        self,
        event_shape: int | Sequence[int],
        num_components: int | None = None,
        encode: Encode | None = None,
        init: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        # an int is one dimension, as for Flow (tuple(784) failed: int is not iterable)
        self.event_shape = as_event_shape(event_shape)
        if init is None:
            num_components = 500 if num_components is None else num_components
            if num_components < 1:
                raise ValueError(f"num_components must be at least 1, got {num_components}")
            raw = 0.1 * torch.randn(num_components, *self.event_shape)
        else:
            _check_init(init, self.event_shape, num_components)
            # the default dtype, as the randn above and every module's parameters: float32
            # pseudo-inputs in a float64 program trained in float32
            p = init.to(torch.get_default_dtype()).clamp(0.01, 0.99)
            raw = (p / (1 - p)).log()
        self.pseudo_inputs_raw = nn.Parameter(raw)
        self._encode = [encode]  # a list, so the encoder is not registered as a submodule

    @property
    def num_components(self) -> int:
        return self.pseudo_inputs_raw.shape[0]

    def bind(self, guide: nn.Module) -> None:
        """Use ``guide.encode`` (an amortized Normal guide) for the mixture components."""
        if not hasattr(guide, "encode"):
            raise TypeError(
                f"VampPrior needs an amortized Normal guide with encode(x) -> (loc, scale); "
                f"{type(guide).__name__} has none"
            )
        self._encode[0] = guide.encode

    def pseudo_inputs(self) -> torch.Tensor:
        return torch.sigmoid(self.pseudo_inputs_raw)

    def forward(self, context: torch.Tensor | None = None, **kwargs) -> GaussianMixture:
        if self._encode[0] is None:
            raise RuntimeError("VampPrior has no encoder: pass encode= or call bind(guide)")
        if context is not None:
            raise NotImplementedError("VampPrior does not support a conditional VAE")
        u = self.pseudo_inputs()
        try:
            out = self._encode[0](u)
        except RuntimeError as e:
            # a float64 encoder fed the float32 pseudo-inputs failed inside its first layer
            if "dtype" not in str(e) and "scalar type" not in str(e):
                raise
            raise TypeError(
                f"VampPrior's pseudo-inputs are {u.dtype} and its encoder refused them "
                f"({e}); give both one dtype: prior.to(<the encoder's dtype>)"
            ) from e
        if not (
            isinstance(out, (tuple, list))
            and len(out) == 2
            and all(isinstance(t, torch.Tensor) for t in out)
            and out[0].dim() == 2
            and out[0].shape[0] == u.shape[0]
        ):
            got = _describe(out)
            raise TypeError(
                f"VampPrior's encoder must return (loc, scale) of shape (K, z_dim) for the K = "
                f"{u.shape[0]} pseudo-inputs; it returned {got}"
            )
        loc, scale = out
        logits = torch.full(loc.shape[:1], -math.log(loc.shape[0]), device=loc.device)
        return GaussianMixture(logits.to(loc.dtype), loc, scale)


def _check_init(
    init: torch.Tensor, event_shape: tuple[int, ...], num_components: int | None
) -> None:
    """One clear error for initial pseudo-inputs the prior would otherwise clamp or reshape
    into something else without a word (0..255 images all became 0.99)."""
    expected = ("K", *event_shape) if num_components is None else (num_components, *event_shape)
    if init.dim() != len(event_shape) + 1 or tuple(init.shape[1:]) != event_shape:
        raise ValueError(
            f"init must have shape (K, *event_shape) = {expected}, got {tuple(init.shape)}; "
            f"reshape the examples to the prior's event shape"
        )
    if num_components is not None and init.shape[0] != num_components:
        raise ValueError(
            f"init has {init.shape[0]} pseudo-inputs but num_components={num_components}; "
            f"pass as many rows as components (or leave num_components out)"
        )
    if init.shape[0] < 1:
        raise ValueError("init needs at least one pseudo-input")
    values = init.double()
    if not bool(torch.isfinite(values).all()) or values.min() < 0 or values.max() > 1:
        raise ValueError(
            f"init must hold pseudo-inputs in [0, 1] (they pass through a sigmoid), got "
            f"values in [{values.min().item():.4g}, {values.max().item():.4g}]; scale the "
            f"data first (e.g. images / 255)"
        )


def _describe(out: object) -> str:
    if isinstance(out, torch.Tensor):
        return f"a tensor of shape {tuple(out.shape)}"
    if isinstance(out, (tuple, list)):
        return "(" + ", ".join(_describe(t) for t in out) + ")"
    return type(out).__name__
