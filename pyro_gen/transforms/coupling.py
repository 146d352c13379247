"""Coupling transforms (NICE, RealNVP, Glow), generic over the element-wise bijection."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
from torch import nn

from pyro_gen.transforms import conditioner_output as output
from pyro_gen.transforms._base import (
    ConditionalModule,
    FlowTransformModule,
    as_event_shape,
    check_context,
    context_in_dtype,
)
from pyro_gen.transforms.conditioning import bind_context
from pyro_gen.transforms.coupling_networks import coupling_conditioner as _conditioner
from pyro_gen.transforms.elementwise import Additive, Affine, ElementwiseBijection
from pyro_gen.transforms.ladj_cache import conditioner_modules
from pyro_gen.transforms.masks import (
    MaskLayout,
    alternating_mask,
    channel_mask,
    checkerboard_mask,
    half_mask,
)
from pyro_gen.transforms.pyro_arguments import pyro_arguments

Conditioner = Callable[..., torch.Tensor]
#: the mask layout's former home: modules pickled before it moved to masks.py name it here
_Layout = MaskLayout


class Coupling(FlowTransformModule):
    r"""Coupling layer: transform part of the input element-wise, conditioned on the rest.

    With a binary mask :math:`m` (``True`` = conditioning elements),

    .. math::

        y = m \odot x + (1 - m) \odot h\big(x;\ \theta(m \odot x)\big),
        \qquad \log|\det J| = \sum_{i: m_i = 0} \log|h'(x_i; \theta_i)|,

    where :math:`h` is an :class:`~pyro_gen.transforms.elementwise.ElementwiseBijection`
    (:class:`~pyro_gen.transforms.elementwise.Additive` gives NICE,
    :class:`~pyro_gen.transforms.elementwise.Affine` RealNVP) and :math:`\theta` is the
    conditioner network. The Jacobian is triangular, so both directions and the
    log-determinant cost one conditioner pass.

    Conditioner contract. If the mask depends only on the first event dim (vector masks,
    channel masks) the layer works on the selected slices: the conditioner receives the
    conditioning entries, shape ``(..., n_cond, *rest)``, and returns
    ``(..., num_params * n_trans, *rest)``. Otherwise (checkerboard) it receives
    ``x * mask`` of the full event shape and returns
    ``(..., num_params * event_shape[0], *event_shape[1:])``, or either as a tuple of
    ``num_params`` tensors (Pyro's ``DenseNN(..., param_dims=[n, n])``). The mask is a buffer.

    Args:
        mask: bool tensor of the event shape, ``True`` where the input is kept.
        conditioner: network (or any callable) as above.
        elementwise: the element-wise bijection :math:`h`.
        cache_size: 1 (default, as Pyro's ``AffineCoupling``) remembers the last
            input/output pair, so ``t.inv(t(x))`` costs nothing; 0 recomputes.

    References:
        Dinh et al., NICE: Non-linear Independent Components Estimation, arXiv:1410.8516.
        Dinh et al., Density estimation using Real NVP, arXiv:1605.08803.

    Example:
        >>> from pyro_gen.nn import MLP
        >>> t = Coupling(alternating_mask(4), MLP(2, [8], 4), Affine())
        >>> x = torch.randn(3, 4)
        >>> torch.allclose(t.inv(t(x)), x, atol=1e-6)
        True
        >>> t.log_abs_det_jacobian(x, t(x)).shape
        torch.Size([3])
    """

    def __init__(
        self,
        mask: torch.Tensor,
        conditioner: Conditioner,
        elementwise: ElementwiseBijection,
        *,
        cache_size: int = 1,
        _layout: MaskLayout | None = None,
    ) -> None:
        mask = torch.as_tensor(mask).bool()
        layout = MaskLayout(mask) if _layout is None else _layout
        super().__init__(layout.event_shape, cache_size=cache_size)
        self.register_buffer("mask", mask)
        self.conditioner = conditioner  # registered as submodule when it is a Module
        self._conditioner_modules = conditioner_modules(conditioner)
        output.check_elementwise(elementwise)
        self.elementwise = elementwise
        self.split = layout.split
        if not self.split:
            # the mask as numbers, kept so that each call does not convert the bool mask again;
            # not persistent: state_dicts stay as they were, and it follows .to(dtype/device)
            self.register_buffer(
                "mask_values", mask.to(torch.get_default_dtype()), persistent=False
            )
        if self.split:
            self.register_buffer("cond_idx", layout.cond_idx.to(mask.device))
            self.register_buffer("trans_idx", layout.trans_idx.to(mask.device))
            self._cond_slice = layout.cond_slice
            self._trans_slice = layout.trans_slice
            # index tuples built once: they are the same on every call
            self._cond_index = self._index(layout.cond_slice)
            self._trans_index = self._index(layout.trans_slice)

    def _index(self, sl: slice | None) -> tuple | None:
        if sl is None:
            return None
        return (Ellipsis, sl) + (slice(None),) * (len(self.event_shape) - 1)

    def _select(self, x: torch.Tensor, idx: torch.Tensor, index: tuple | None) -> torch.Tensor:
        if index is not None:
            return x[index]
        return x.index_select(x.dim() - len(self.event_shape), idx)

    def _params(self, h: torch.Tensor, n: int) -> tuple[torch.Tensor, ...]:
        p, k = self.elementwise.num_params, len(self.event_shape)
        theta, dim = output.conditioner_features(self.conditioner(h), k, p, n)
        return self.elementwise.unpack(theta, dim, n)

    def _couple(self, x: torch.Tensor, inverse: bool) -> tuple[torch.Tensor, torch.Tensor]:
        fn = self.elementwise.inverse if inverse else self.elementwise.forward
        k = len(self.event_shape)
        if self.split:
            dim = x.dim() - k
            cs, ts = self._cond_slice, self._trans_slice
            xc = self._select(x, self.cond_idx, self._cond_index)
            xt = self._select(x, self.trans_idx, self._trans_index)
            yt, ladj = fn(xt, self._params(xc, xt.shape[dim]))
            yt, ladj = output.elementwise_output((yt, ladj), k, self.elementwise)
            # The output's batch shape is that of x broadcast with the conditioner's output,
            # whose batch is a conditional layer's context's: a context batch of (N,) with a
            # single x gives N outputs, as the autoregressive layers do. Broadcast only where
            # shapes differ: a no-op expand still adds an autograd node, which costs a little
            # on every backward pass of every layer.
            batch = yt.shape[: yt.dim() - k]
            if batch != xt.shape[:dim]:
                batch = torch.broadcast_shapes(batch, xt.shape[:dim])
                yt = yt.expand(batch + yt.shape[yt.dim() - k :])
                x = x.expand(batch + x.shape[dim:])
                dim = len(batch)
            if cs is not None and ts is not None:
                if xc.shape[: xc.dim() - k] != batch:
                    xc = xc.expand(batch + xc.shape[xc.dim() - k :])
                if cs.step == 1 and ts.step == 1:  # contiguous halves
                    y = torch.cat([xc, yt] if cs.start == 0 else [yt, xc], dim=dim)
                else:
                    y = yt.new_empty(batch + x.shape[dim:])
                    y[self._cond_index] = xc
                    y[self._trans_index] = yt
            else:
                y = x.index_copy(dim, self.trans_idx, yt)
        else:
            mask, values = self.mask, self.mask_values
            masked = x * (values if values.dtype == x.dtype else values.to(x.dtype))
            yt, ladj = fn(x, self._params(masked, self.event_shape[0]))
            yt, ladj = output.elementwise_output((yt, ladj), k, self.elementwise)
            y = torch.where(mask, x, yt)
            ladj = ladj.masked_fill(mask, 0.0)
        ladj = (ladj if k == 1 else ladj.flatten(ladj.dim() - k)).sum(-1)
        # both directions report log|dy/dx| of the forward map (the elementwise returns it)
        return y, ladj

    def _forward(self, x):
        return self._couple(x, inverse=False)

    def _backward(self, y):
        return self._couple(y, inverse=True)


class AdditiveCoupling(Coupling):
    r"""NICE additive coupling :math:`y_{\bar m} = x_{\bar m} + t(x_m)`; volume preserving.

    See :class:`Coupling` for the mask/conditioner contract; build one with
    :func:`additive_coupling`.

    References:
        Dinh et al., NICE: Non-linear Independent Components Estimation, arXiv:1410.8516.

    Example:
        >>> t = additive_coupling(4)
        >>> x = torch.randn(2, 4)
        >>> t.log_abs_det_jacobian(x, t(x)).tolist()
        [0.0, 0.0]
    """

    def __init__(self, mask: torch.Tensor, conditioner: Conditioner, *, cache_size: int = 1):
        super().__init__(mask, conditioner, Additive(), cache_size=cache_size)


class AffineCoupling(Coupling):
    r"""RealNVP affine coupling :math:`y_{\bar m} = x_{\bar m} \exp(s(x_m)) + t(x_m)`.

    The log-scale is soft-bounded, :math:`s = B\tanh(\tilde s/B)` (see
    :class:`~pyro_gen.transforms.elementwise.Affine`). Conditioner output: shift first,
    raw log-scale second (``num_params = 2``). Build one with :func:`affine_coupling`.

    References:
        Dinh et al., Density estimation using Real NVP, arXiv:1605.08803.

    Example:
        >>> t = affine_coupling((2, 4, 4), mask="checkerboard", hidden_channels=8)
        >>> t(torch.randn(5, 2, 4, 4)).shape
        torch.Size([5, 2, 4, 4])
    """

    def __init__(
        self,
        mask: torch.Tensor,
        conditioner: Conditioner,
        *,
        log_scale_bound: float = 3.0,
        cache_size: int = 1,
    ):
        super().__init__(mask, conditioner, Affine(log_scale_bound), cache_size=cache_size)


class ConditionalCoupling(ConditionalModule):
    r"""Coupling layer whose conditioner also sees a context :math:`c` (e.g. a class one-hot).

    :math:`\theta = \theta(m \odot x, c)`. ``condition(context)`` returns a
    :class:`Coupling` sharing this module's mask, conditioner and parameters, the Pyro
    :class:`~pyro.distributions.conditional.ConditionalTransformModule` protocol.
    ``condition`` may run under ``torch.jit.trace`` (a ``JitTrace_ELBO`` guide conditioned on
    its data).

    Args:
        mask: bool mask (see :class:`Coupling`).
        conditioner: network called as ``conditioner(h, context)``.
        elementwise: element-wise bijection.
        cache_size: cache of the transforms ``condition`` returns (see :class:`Coupling`).

    Example:
        >>> t = conditional_affine_coupling(4, context_dim=3)
        >>> x, c = torch.randn(6, 4), torch.randn(6, 3)
        >>> tc = t.condition(c)
        >>> torch.allclose(tc.inv(tc(x)), x, atol=1e-6)
        True
    """

    def __init__(
        self,
        mask: torch.Tensor,
        conditioner: nn.Module,
        elementwise: ElementwiseBijection,
        *,
        cache_size: int = 1,
    ) -> None:
        super().__init__()
        mask = torch.as_tensor(mask).bool()
        self.register_buffer("mask", mask)
        self.conditioner = conditioner
        output.check_elementwise(elementwise)
        self.elementwise = elementwise
        self.cache_size = cache_size
        self._layout = MaskLayout(mask)
        self.event_shape = self._layout.event_shape
        if self._layout.split:
            self.register_buffer("cond_idx", self._layout.cond_idx)
            self.register_buffer("trans_idx", self._layout.trans_idx)

    def condition(self, context: torch.Tensor) -> Coupling:
        # reuse the precomputed layout with this module's (device-resident) index buffers:
        # conditioning on each batch costs no host sync
        check_context(context, self.conditioner, type(self).__name__)
        context = context_in_dtype(context, self.conditioner)
        layout = copy.copy(self._layout)
        if layout.split:
            layout.cond_idx, layout.trans_idx = self.cond_idx, self.trans_idx
        cond = bind_context(self.conditioner, context, len(self.event_shape))
        return Coupling(
            self.mask, cond, self.elementwise, cache_size=self.cache_size, _layout=layout
        )


class ConditionalAdditiveCoupling(ConditionalCoupling):
    """Conditional NICE coupling; see :class:`ConditionalCoupling`.

    Example:
        >>> t = conditional_additive_coupling(4, context_dim=2)
        >>> t.condition(torch.zeros(2))(torch.randn(3, 4)).shape
        torch.Size([3, 4])
    """

    def __init__(self, mask: torch.Tensor, conditioner: nn.Module, *, cache_size: int = 1) -> None:
        super().__init__(mask, conditioner, Additive(), cache_size=cache_size)


class ConditionalAffineCoupling(ConditionalCoupling):
    """Conditional RealNVP coupling; see :class:`ConditionalCoupling`.

    Example:
        >>> t = conditional_affine_coupling((2, 4, 4), context_dim=3, hidden_channels=8)
        >>> t.condition(torch.zeros(5, 3))(torch.randn(5, 2, 4, 4)).shape
        torch.Size([5, 2, 4, 4])
    """

    def __init__(
        self,
        mask: torch.Tensor,
        conditioner: nn.Module,
        *,
        log_scale_bound: float = 3.0,
        cache_size: int = 1,
    ) -> None:
        super().__init__(mask, conditioner, Affine(log_scale_bound), cache_size=cache_size)


# --------------------------------------------------------------------------- helpers


def make_mask(
    event_shape: int | Sequence[int], mask: str | torch.Tensor | None = None, parity: int = 0
) -> torch.Tensor:
    """Builds a named mask for an event shape.

    Args:
        event_shape: ``D`` / ``(D,)`` for vectors or ``(C, H, W)`` for images.
        mask: ``"alternating"`` (vector default), ``"half"``, ``"checkerboard"`` (image
            default), ``"channel"``, or a ready mask of 0/1 or False/True (tensor or list).
        parity: which half is kept fixed; alternate it between layers.

    Example:
        >>> make_mask(4, "half", parity=1).int().tolist()
        [0, 0, 1, 1]
    """
    shape = as_event_shape(event_shape)
    if isinstance(mask, (list, tuple)):  # "unhashable type: 'list'" in the lookup below
        mask = torch.tensor(mask)
    if isinstance(mask, torch.Tensor):
        if tuple(mask.shape) != shape:
            raise ValueError(f"mask shape {tuple(mask.shape)} != event shape {shape}")
        if not bool(((mask == 0) | (mask == 1)).all()):  # 0.5 or 2 were read as "kept"
            raise ValueError(f"a mask holds 0/1 or False/True only, got {mask.tolist()}")
        return mask.bool()
    if len(shape) == 1:
        kind = mask or "alternating"
        fns = {"alternating": alternating_mask, "half": half_mask}
    elif len(shape) == 3:
        kind = mask or "checkerboard"
        fns = {"checkerboard": checkerboard_mask, "channel": channel_mask}
    else:
        raise ValueError(f"event_shape must be (D,) or (C, H, W), got {shape}")
    if kind not in fns:
        raise ValueError(f"mask {kind!r} not valid for event shape {shape}; use one of {list(fns)}")
    return fns[kind](*shape, parity=parity)


def coupling(
    event_shape: int | Sequence[int],
    elementwise: ElementwiseBijection,
    *,
    mask: str | torch.Tensor | None = None,
    parity: int = 0,
    hidden_dims: Sequence[int] = (256, 256),
    hidden_channels: int = 64,
    num_blocks: int = 2,
    cache_size: int = 1,
) -> Coupling:
    """Builds a :class:`Coupling` with an MLP (vectors) or ResNetConv (images) conditioner.

    The conditioner's last layer is zero-initialised, so the layer starts at the identity.

    Args:
        event_shape: ``D`` for vectors or ``(C, H, W)`` for images.
        elementwise: the element-wise bijection.
        mask: see :func:`make_mask`.
        parity: which half is kept fixed.
        hidden_dims: MLP hidden widths (vectors).
        hidden_channels: ResNetConv width (images).
        num_blocks: ResNetConv residual blocks (images).
        cache_size: 1 (Pyro's default for couplings) or 0; see :class:`Coupling`.

    Example:
        >>> coupling(6, Affine(), hidden_dims=[8])(torch.randn(6)).shape
        torch.Size([6])
    """
    m = make_mask(event_shape, mask, parity)
    net = _conditioner(m, elementwise.num_params, hidden_dims, hidden_channels, num_blocks, None)
    return Coupling(m, net, elementwise, cache_size=cache_size)


@pyro_arguments
def additive_coupling(
    event_shape: int | Sequence[int],
    hidden_dims: Sequence[int] = (256, 256),
    *,
    mask: str | torch.Tensor | None = None,
    parity: int = 0,
    hidden_channels: int = 64,
    num_blocks: int = 2,
    cache_size: int = 1,
) -> AdditiveCoupling:
    """Builds an :class:`AdditiveCoupling` (NICE); arguments as in :func:`coupling`.

    Example:
        >>> additive_coupling(4, parity=1, hidden_dims=[8]).mask.int().tolist()
        [0, 1, 0, 1]
    """
    m = make_mask(event_shape, mask, parity)
    net = _conditioner(m, 1, hidden_dims, hidden_channels, num_blocks, None)
    return AdditiveCoupling(m, net, cache_size=cache_size)


@pyro_arguments
def affine_coupling(
    event_shape: int | Sequence[int],
    hidden_dims: Sequence[int] = (256, 256),
    *,
    mask: str | torch.Tensor | None = None,
    parity: int = 0,
    hidden_channels: int = 64,
    num_blocks: int = 2,
    log_scale_bound: float = 3.0,
    cache_size: int = 1,
) -> AffineCoupling:
    """Builds an :class:`AffineCoupling` (RealNVP); arguments as in :func:`coupling`.

    Example:
        >>> t = affine_coupling((4, 2, 2), mask="channel", hidden_channels=8)
        >>> t.conditioner.in_channels, t.conditioner.out_channels
        (2, 4)
    """
    m = make_mask(event_shape, mask, parity)
    net = _conditioner(m, 2, hidden_dims, hidden_channels, num_blocks, None)
    return AffineCoupling(m, net, log_scale_bound=log_scale_bound, cache_size=cache_size)


@pyro_arguments
def conditional_additive_coupling(
    event_shape: int | Sequence[int],
    context_dim: int,
    hidden_dims: Sequence[int] = (256, 256),
    *,
    mask: str | torch.Tensor | None = None,
    parity: int = 0,
    hidden_channels: int = 64,
    num_blocks: int = 2,
    cache_size: int = 1,
) -> ConditionalAdditiveCoupling:
    """Builds a :class:`ConditionalAdditiveCoupling`; the context is fed to the conditioner.

    Example:
        >>> t = conditional_additive_coupling(4, 2, hidden_dims=[8])
        >>> t.conditioner.context_dim
        2
    """
    m = make_mask(event_shape, mask, parity)
    net = _conditioner(m, 1, hidden_dims, hidden_channels, num_blocks, context_dim)
    return ConditionalAdditiveCoupling(m, net, cache_size=cache_size)


@pyro_arguments
def conditional_affine_coupling(
    event_shape: int | Sequence[int],
    context_dim: int,
    hidden_dims: Sequence[int] = (256, 256),
    *,
    mask: str | torch.Tensor | None = None,
    parity: int = 0,
    hidden_channels: int = 64,
    num_blocks: int = 2,
    log_scale_bound: float = 3.0,
    cache_size: int = 1,
) -> ConditionalAffineCoupling:
    """Builds a :class:`ConditionalAffineCoupling`; the context is fed to the conditioner.

    Example:
        >>> t = conditional_affine_coupling(4, 2, hidden_dims=[8])
        >>> t.condition(torch.zeros(2)).log_abs_det_jacobian(torch.ones(4), torch.ones(4)).item()
        0.0
    """
    m = make_mask(event_shape, mask, parity)
    net = _conditioner(m, 2, hidden_dims, hidden_channels, num_blocks, context_dim)
    return ConditionalAffineCoupling(m, net, log_scale_bound=log_scale_bound, cache_size=cache_size)
