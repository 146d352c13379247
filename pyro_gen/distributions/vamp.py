"""VampPrior: the aggregate posterior at learned pseudo-inputs, used as a prior."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from pyro_gen.distributions.mixture import GaussianMixture
from pyro_gen.transforms._base import PicklableModule

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
        event_shape: shape of one example (and of each pseudo-input).
        num_components: number of pseudo-inputs :math:`K`.
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
        event_shape: Sequence[int],
        num_components: int = 500,
        encode: Encode | None = None,
        init: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.event_shape = tuple(event_shape)
        if init is None:
            raw = 0.1 * torch.randn(num_components, *self.event_shape)
        else:
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
        loc, scale = self._encode[0](self.pseudo_inputs())
        logits = torch.full(loc.shape[:1], -math.log(loc.shape[0]), device=loc.device)
        return GaussianMixture(logits.to(loc.dtype), loc, scale)
