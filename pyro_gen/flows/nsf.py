"""NSF: neural spline flows (autoregressive or coupling) as density models."""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor

from pyro_gen.flows.arguments import check_count, check_levels
from pyro_gen.flows.base import FlowModel, flat_pixel_output, image_shape, pixel_output
from pyro_gen.flows.realnvp import multiscale_couplings
from pyro_gen.transforms import permute, spline_autoregressive, spline_coupling
from pyro_gen.transforms._base import as_event_shape
from pyro_gen.transforms.dequantization import UniformDequantization
from pyro_gen.transforms.spline import check_spline_bound

__all__ = ["NSF"]


class NSF(FlowModel):
    r"""Neural spline flow: rational-quadratic spline layers with reversed orders between.

    Each layer maps every transformed coordinate through a monotone rational-quadratic
    spline on :math:`[-B, B]` (the identity outside) whose :math:`K` bins and knot
    derivatives come from a conditioner network
    (:class:`~pyro_gen.transforms.spline.RationalQuadratic`):

    * ``layer="coupling"`` (NSF-C, the default): alternating-mask couplings, one pass either
      way; on images, RealNVP's multi-scale architecture
      (:func:`~pyro_gen.flows.realnvp.multiscale_couplings`: checkerboard and channel
      couplings, squeeze, half the channels factored out per level) with spline couplings
      on conv-net conditioners;
    * ``layer="autoregressive"`` (NSF-AR): MADE conditioners in the MAF direction, so
      ``log_prob`` takes one pass per layer and ``sample`` takes :math:`D`.

    Why the defaults (coupling, 32 bins), measured on the 2D toys in thread CPU time (one
    thread, ``benchmarks/flows_spline_2d.py``, ``benchmarks/RESULTS.md``): four 32-bin spline
    couplings take 15 ms per step against 25 ms for four autoregressive spline layers of the
    same widths, and in 60 CPU s reach 0.034 nats KL on the checkerboard against 0.062; 32
    bins cost about 1.5 times 8 bins per step but follow the checkerboard's density jumps
    (0.034 against 0.050 at 60 s). At 300 s the 32-bin coupling flow reaches 0.012 nats on
    the checkerboard and 0.002 on eight Gaussians, below zuko's NSF in the same runs at 0.57-0.65
    of its time per step. ``build("nsf", ...)`` (and ``pyro-gen train nsf``) keeps these for
    vectors; on images it builds the multi-scale couplings at RealNVP's CPU size with 8 bins,
    which reach 1.33 bits/dim on MNIST in 8 CPU minutes against 1.65 for two flattened
    autoregressive spline layers (and RealNVP's 1.88 at the same size).

    Every layer starts at the identity. Only the data-side layer sees the data, so
    ``model(x)`` checks that the bound covers them: more than ``max_outside`` of the
    coordinates outside :math:`[-B, B]` is an error naming the share, since the tails are
    the identity and such data are left to the base distribution (under ``fit``'s compiled
    step the check runs on the batches the model runs eagerly: the first ones of each batch
    shape, which suffices for a bound meant to cover the data with margin). Images (``(H, W)`` or
    ``(C, H, W)``, pixels in :math:`[0,1]`) are modelled in logit space (flattened for the
    autoregressive layers), whose range :math:`\pm\log((1-\alpha)/\alpha)` (2.9 at
    :math:`\alpha = 0.05`) lies inside the default bound.

    Args:
        event_shape: ``(D,)``, ``(H, W)`` or ``(C, H, W)``.
        num_layers: spline layers.
        hidden_dims: hidden widths of each conditioner (vectors, and autoregressive images).
        layer: ``"autoregressive"`` or ``"coupling"``.
        spline_bins: bins :math:`K` per spline. The derivative is continuous at the knots,
            so every jump of the density is made inside bins: a density with many edges
            needs more (the checkerboard: 32 bins 0.034 nats against 8 bins 0.050 at equal
            CPU time; ``benchmarks/RESULTS.md``). Smooth densities need fewer, and each bin
            costs conditioner outputs (:math:`3K - 1` per coordinate).
        bound: :math:`B` (standardize data to well inside it).
        hidden_channels: conv width of the multi-scale couplings (coupling images).
        num_blocks: residual blocks per conv conditioner (coupling images).
        num_levels: multi-scale levels (coupling images; default: as many as the size
            allows, <= 3).
        max_outside: share of training coordinates allowed outside :math:`[-B, B]`
            (``None`` skips the check).
        alpha: logit margin for images.
        dequantization: see :class:`~pyro_gen.flows.base.FlowModel`.
        num_bins: discrete levels of the data (dequantization, bits/dim), not spline bins.
        name: param-store prefix.

    References:
        Durkan, Bekasov, Murray, Papamakarios. Neural Spline Flows. NeurIPS 2019,
        arXiv:1906.04032.

    Example:
        >>> import torch
        >>> flow = NSF((2,), num_layers=2, hidden_dims=(16,), spline_bins=4)
        >>> x = torch.randn(5, 2)
        >>> torch.allclose(flow.log_prob(x), torch.distributions.Normal(0, 1).log_prob(x).sum(-1))
        True
        >>> flow.model(torch.full((4, 2), 6.0))
        Traceback (most recent call last):
        ...
        ValueError: 100.0% of the values of 'x' lie outside the spline bound [-5, 5] ...
        >>> image = NSF((1, 4, 4), num_layers=1, layer="coupling", hidden_channels=4, num_blocks=1)
        >>> image.sample(2).shape
        torch.Size([2, 1, 4, 4])
    """

    def __init__(
        self,
        event_shape: Sequence[int] = (2,),
        num_layers: int = 4,
        hidden_dims: Sequence[int] = (64, 64),
        *,
        layer: str = "coupling",
        spline_bins: int = 32,
        bound: float = 5.0,
        hidden_channels: int = 64,
        num_blocks: int = 2,
        num_levels: int | None = None,
        max_outside: float | None = 0.01,
        alpha: float = 0.05,
        dequantization: str | UniformDequantization | None = None,
        num_bins: int = 256,
        name: str | None = None,
    ) -> None:
        if layer not in ("autoregressive", "coupling"):
            raise ValueError(f"layer must be 'autoregressive' or 'coupling', got {layer!r}")
        event_shape = as_event_shape(event_shape)
        num_layers = check_count("num_layers", num_layers)
        spline = dict(num_bins=spline_bins, bound=bound)
        if layer == "coupling" and len(event_shape) > 1:
            chw = image_shape(event_shape)
            levels = check_levels("NSF", chw, num_levels, squeeze_last=False)
            conv = dict(hidden_channels=hidden_channels, num_blocks=num_blocks, **spline)

            def make(shape: tuple[int, int, int], mask: str, parity: int):
                return spline_coupling(shape, mask=mask, parity=parity, **conv)

            transforms = [multiscale_couplings(chw, make, num_layers, levels)]
            transforms += pixel_output(event_shape, alpha)
        else:
            transforms = self._vector_layers(event_shape, num_layers, hidden_dims, layer, spline)
            transforms += flat_pixel_output(event_shape, alpha)
        super().__init__(
            event_shape, transforms, name=name, dequantization=dequantization, num_bins=num_bins
        )
        self.bound = float(bound)
        self.max_outside = max_outside

    @staticmethod
    def _vector_layers(
        event_shape: tuple[int, ...],
        num_layers: int,
        hidden_dims: Sequence[int],
        layer: str,
        spline: dict,
    ) -> list:
        """Spline layers on the flattened event, base to data."""
        dim = math.prod(event_shape)
        density_order: list = []  # data -> base
        for i in range(num_layers):
            if layer == "coupling":
                t = spline_coupling(dim, parity=i % 2, hidden_dims=hidden_dims, **spline)
            else:
                if i > 0:
                    density_order.append(permute(dim, "reverse"))
                t = spline_autoregressive(dim, hidden_dims, **spline)
            density_order.append(t)
        return list(reversed(density_order))

    def model(
        self, x: Tensor | None = None, num_samples: int = 1, y: Tensor | None = None, **context
    ) -> Tensor:
        """As :meth:`FlowModel.model`, after checking that the spline bound covers vector data."""
        if x is not None and self.max_outside is not None and self.event_dim == 1:
            check_spline_bound(x, self.bound, site=self.site, max_outside=self.max_outside)
        return super().model(x, num_samples=num_samples, y=y, **context)
