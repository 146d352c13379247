"""Invertible linear maps: Glow's LU-parameterised 1x1 convolution (and its vector form)."""

from __future__ import annotations

import torch
from pyro.distributions.util import is_validation_enabled
from torch import nn

from pyro_gen.transforms._base import FlowTransformModule


class InvertibleConv1x1(FlowTransformModule):
    r"""Invertible 1x1 convolution (Glow), LU-parameterised; a dense linear map on vectors.

    Mixes the channels of every pixel with one matrix
    :math:`W = P L (U + \operatorname{diag}(\operatorname{sign}(s)\, e^{\log|s|}))`,
    where :math:`P` is a fixed permutation, :math:`L` unit lower triangular and :math:`U`
    strictly upper triangular, so

    .. math::

        y_{:, h, w} = W x_{:, h, w}, \qquad \log|\det J| = H W \textstyle\sum_c \log|s_c|,

    costs :math:`O(C)` instead of :math:`O(C^3)`, and the inverse uses two triangular
    solves. :math:`P`, :math:`\operatorname{sign}(s)` and the triangular masks are
    buffers. With ``event_shape=(D,)`` the same map acts on vectors (an invertible linear
    layer).

    Initialised at a uniformly random rotation (as Glow), drawn so that all of its
    randomness sits in the parameters: :math:`P = I` and :math:`\operatorname{sign}(s) = +1`.
    (If :math:`Q = P' L U` is a random rotation, :math:`P'^\top Q D` with
    :math:`D = \operatorname{diag}(\operatorname{sign}\, U_{ii})` is one too, by the
    invariance of the Haar measure, and factors without pivoting.) A model restored from
    parameters alone, as Pyro's param store does, is then the saved map, not one with
    another random permutation.

    The inverse raises ``ValueError`` if the matrix has become numerically singular
    (non-finite :math:`\log|s|` or :math:`|s| < 10^{-12}`) instead of returning garbage
    (checked while Pyro validation is enabled, its default).

    Args:
        event_shape: ``(C, H, W)`` for images or ``D`` / ``(D,)`` for vectors.
        cache_size: 0 (default, as Pyro's ``GeneralizedChannelPermute``) or 1.

    References:
        Kingma and Dhariwal, Glow: Generative Flow with Invertible 1x1 Convolutions,
        arXiv:1807.03039.

    Example:
        >>> t = InvertibleConv1x1((3, 4, 4))
        >>> x = torch.randn(2, 3, 4, 4)
        >>> torch.allclose(t.inv(t(x)), x, atol=1e-5)
        True
        >>> t.log_abs_det_jacobian(x, t(x)).abs().max().item() < 1e-5  # a rotation
        True
    """

    def __init__(self, event_shape: int | tuple[int, ...], *, cache_size: int = 0) -> None:
        super().__init__(event_shape, cache_size=cache_size)
        if len(self.event_shape) not in (1, 3):
            raise ValueError(f"event_shape must be (D,) or (C, H, W), got {self.event_shape}")
        c = self.event_shape[0]
        q = torch.linalg.qr(torch.randn(c, c))[0]
        _, lower, upper = torch.linalg.lu(q)
        upper = upper * torch.sign(torch.diagonal(upper))  # W = L U = P'^T Q D, see above
        s = torch.diagonal(upper)
        # buffers kept (fixed at I and +1) so state_dicts of earlier versions still load
        self.register_buffer("perm", torch.eye(c))
        self.register_buffer("sign_s", torch.ones(c))
        self.register_buffer("lower_mask", torch.tril(torch.ones(c, c), -1))
        self.register_buffer("eye", torch.eye(c))
        self.lower = nn.Parameter(lower * self.lower_mask)
        self.upper = nn.Parameter(torch.triu(upper, 1))
        self.log_s = nn.Parameter(torch.log(torch.abs(s)))
        self._spatial = 1
        for n in self.event_shape[1:]:
            self._spatial *= n

    def _check_invertible(self) -> None:
        # host sync, so only with validation on (Pyro's default) and only before inverting
        log_s = self.log_s
        if not bool(torch.isfinite(log_s).all()) or bool((log_s < -27.6).any()):
            raise ValueError("InvertibleConv1x1 became singular: |s| underflowed or is not finite")

    def _factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        log_s = self.log_s
        lower = self.lower * self.lower_mask + self.eye
        upper = self.upper * self.lower_mask.T + torch.diag(self.sign_s * torch.exp(log_s))
        return lower, upper

    def weight(self) -> torch.Tensor:
        """The current matrix :math:`W` (shape ``(C, C)``)."""
        lower, upper = self._factors()
        return self.perm @ lower @ upper

    def inverse_weight(self) -> torch.Tensor:
        r""":math:`W^{-1} = U^{-1} L^{-1} P^\top` via triangular solves."""
        if is_validation_enabled():
            self._check_invertible()
        lower, upper = self._factors()
        eye = self.eye
        l_inv = torch.linalg.solve_triangular(lower, eye, upper=False, unitriangular=True)
        u_inv = torch.linalg.solve_triangular(upper, eye, upper=True)
        return u_inv @ l_inv @ self.perm.T

    def _mix(self, w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if len(self.event_shape) == 1:
            return x @ w.T
        # W times every pixel's channel vector as one product over (C, H*W): the output is
        # contiguous (einsum's was channel-strided, and transforms after this one that
        # .view it failed, torch's AffineTransform.log_abs_det_jacobian among them)
        return torch.matmul(w, x.flatten(-2)).view(x.shape)

    def _ladj(self, v: torch.Tensor) -> torch.Tensor:
        batch = v.shape[: v.dim() - len(self.event_shape)]
        return (self.log_s.sum() * self._spatial).expand(batch)

    def _forward(self, x):
        return self._mix(self.weight(), x), self._ladj(x)

    def _backward(self, y):
        return self._mix(self.inverse_weight(), y), self._ladj(y)


def invertible_conv1x1(
    event_shape: int | tuple[int, ...], *, cache_size: int = 0
) -> InvertibleConv1x1:
    """Builds an :class:`InvertibleConv1x1` (no conditioner; for API symmetry).

    Example:
        >>> invertible_conv1x1(4).weight().shape
        torch.Size([4, 4])
    """
    return InvertibleConv1x1(event_shape, cache_size=cache_size)
