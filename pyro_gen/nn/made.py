"""MADE: masked autoencoder for distribution estimation (autoregressive conditioner)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from pyro_gen.nn.arguments import check_count
from pyro_gen.nn.legacy_keys import LegacyKeys
from pyro_gen.nn.mlp import concat_context, layer_widths


class MaskedLinear(nn.Linear):
    """Linear layer whose weight is multiplied by a fixed 0/1 mask (a buffer).

    The mask has the weight's shape ``(out_features, in_features)``; a transposed one used to
    be accepted and failed at the first call.

    Example:
        >>> layer = MaskedLinear(2, 2, torch.tensor([[0.0, 0.0], [1.0, 0.0]]))
        >>> layer.bias.data.zero_()  # doctest: +ELLIPSIS
        tensor(...)
        >>> layer(torch.tensor([3.0, 5.0]))[0].item()  # row 0 of the mask sees nothing
        0.0
    """

    def __init__(self, in_features: int, out_features: int, mask: torch.Tensor) -> None:
        super().__init__(in_features, out_features)
        if tuple(mask.shape) != tuple(self.weight.shape):
            raise ValueError(
                f"mask must have the weight's shape (out_features, in_features) = "
                f"{tuple(self.weight.shape)}, got {tuple(mask.shape)}"
            )
        self.register_buffer("mask", mask.to(self.weight.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)


def _as_order(order: object, d: int) -> torch.Tensor:
    """``order`` as a CPU long tensor, refused unless it is a permutation of ``range(d)``
    (a float order such as ``[0.0, 1.0, 2.5]`` used to be truncated to integers)."""
    tensor = torch.as_tensor(order).cpu()
    if tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool:
        raise ValueError(f"order must be a permutation of range({d}) in integers, got {order!r}")
    tensor = tensor.long()
    if tensor.shape != (d,) or not torch.equal(tensor.sort().values, torch.arange(d)):
        raise ValueError(f"order must be a permutation of range({d}), got {order!r}")
    return tensor


def _warn_if_narrow(widths: list[int], d: int, context_dim: int) -> None:
    """Warns when a hidden layer has fewer units than the degrees it must carry: the path
    from the input of degree :math:`k` to the output of degree :math:`k + 1` needs a unit of
    degree :math:`k` in every layer (and, with a context, one of degree 0 for the first output),
    so a narrower layer silently cuts dependences the network is meant to have (a conditional
    ``MADE(2, [1], context_dim=2)`` had its second output ignore the first input)."""
    needed = d if context_dim else d - 1
    narrow = [h for h in widths if h < needed]
    if d > 1 and narrow:
        warnings.warn(
            f"MADE hidden_dims {widths} has layers narrower than {needed} (input_dim "
            f"{d}{', with a context' if context_dim else ''}): some outputs will not depend on "
            f"all the inputs before them in the order; use widths >= {needed}",
            UserWarning,
            stacklevel=3,
        )


class MADE(LegacyKeys):
    r"""Masked MLP whose output :math:`i` depends only on inputs that precede :math:`i`.

    With input order :math:`\pi` (a permutation; default identity) the network returns
    ``num_params`` outputs per input dimension, each a function of
    :math:`x_{\pi_1}, \dots, x_{\pi_{k-1}}` for the input at position :math:`\pi_k`
    (the first in the order gets constants). Hidden units get degrees cycling through
    :math:`1..D-1`; masks are buffers. An optional context vector (degree 0) is connected
    to every hidden unit, and hidden degrees then start at 0, so every output, the first
    in the order included, depends on the context (conditional flows).

    Output layout: ``(..., num_params * D)``, parameter-major (all shifts, then all
    log-scales, ...), i.e. ``out.unflatten(-1, (num_params, D))``.

    Args:
        input_dim: :math:`D`.
        hidden_dims: hidden layer widths. Each should be at least :math:`D-1` (:math:`D`
            with a context): a narrower layer has fewer units than degrees, so some outputs
            cannot depend on every input before them (a warning says so; Pyro's
            ``AutoRegressiveNN`` refuses widths below :math:`D`).
        num_params: outputs per input dimension.
        order: input order :math:`\pi` (a permutation of ``range(D)``).
        context_dim: size of an optional context vector.
        activation: activation class.
        zero_init_output: zero the output layer (a flow on it starts at the identity).

    References:
        Germain et al., MADE: Masked Autoencoder for Distribution Estimation,
        arXiv:1502.03509.

    Example:
        >>> made = MADE(3, [16], num_params=2, zero_init_output=False)
        >>> x = torch.randn(3, requires_grad=True)
        >>> out = made(x).unflatten(-1, (2, 3))
        >>> g = torch.autograd.grad(out[0, 1], x)[0]  # shift of x_1 depends on x_0 only
        >>> (g != 0).tolist()
        [True, False, False]
    """

    def __init__(
        self,
        input_dim: int,
        hidden_dims: Sequence[int],
        num_params: int = 2,
        *,
        order: torch.Tensor | None = None,
        context_dim: int = 0,
        activation: type[nn.Module] = nn.ReLU,
        zero_init_output: bool = True,
    ) -> None:
        super().__init__()
        d = check_count("input_dim", input_dim)
        self.input_dim = d
        self.num_params = check_count("num_params", num_params)
        self.context_dim = context_dim = check_count("context_dim", context_dim, minimum=0)
        widths = layer_widths(hidden_dims)
        order = torch.arange(d) if order is None else _as_order(order, d)
        _warn_if_narrow(widths, d, context_dim)
        self.register_buffer("order", order)
        # degree of input at position order[k] is k + 1
        deg_in = torch.empty(d, dtype=torch.long)
        deg_in[order] = torch.arange(1, d + 1)
        deg_in = torch.cat([deg_in, torch.zeros(context_dim, dtype=torch.long)])
        layers: list[nn.Module] = []
        prev = deg_in
        # with a context, degree-0 hidden units (seeing only the context) let it reach the
        # first output in the order too; without one they would be constants
        low = 0 if context_dim else 1
        for h in widths:
            deg_h = torch.arange(h) % max(d - low, 1) + low
            mask = (deg_h[:, None] >= prev[None, :]).float()
            layers += [MaskedLinear(prev.numel(), h, mask), activation()]
            prev = deg_h
        deg_out = deg_in[:d].repeat(num_params)
        out_mask = (deg_out[:, None] > prev[None, :]).float()
        self.output = MaskedLinear(prev.numel(), num_params * d, out_mask)
        if zero_init_output:
            nn.init.zeros_(self.output.weight)
            nn.init.zeros_(self.output.bias)
        # The hidden layers only: the output layer is registered once, as ``output`` (the name
        # the param store knows it by), so each tensor has one name in the state dict.
        self.net = nn.Sequential(*layers)

    def _legacy_keys(self) -> dict[str, str]:
        # Earlier versions also held the output layer as the last entry of ``net``, so their
        # state dicts name its tensors twice: ``net.<2 * len(hidden_dims)>.*`` as well.
        return {f"net.{len(self.net)}.": "output."}

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        x = concat_context(x, context, self.input_dim, self.context_dim, "MADE")
        return self.output(self.net(x))
