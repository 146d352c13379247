r"""Autoregressive flows on a MADE conditioner: MAF and IAF, with the fast direction explicit.

Both are generic over the element-wise bijection :math:`h` (affine by default). In Pyro's
convention the transform maps base noise :math:`u` to data :math:`x`:

* MAF (:class:`MaskedAutoregressive`): :math:`x_i = h(u_i;\ \theta_i(x_{<i}))`. The
  conditioner reads the *data*, so the density (inverse, ``log_prob``) takes one MADE
  pass; sampling takes :math:`D` passes.
* IAF (:class:`InverseAutoregressive`): :math:`x_i = h(u_i;\ \theta_i(u_{<i}))`. The
  conditioner reads the *noise*, so sampling (forward) is one pass; the density of an
  arbitrary point takes :math:`D` passes (cache the samples' log-det when scoring them).

Pyro's :class:`pyro.distributions.transforms.AffineAutoregressive` is the affine IAF (on
:class:`pyro.nn.AutoRegressiveNN`); we reuse it in the registry test. Ours adds the MAF
direction as a module (``AffineAutoregressive(...).inv`` is not an ``nn.Module``, so its
parameters would not be registered) and works in float64 (Pyro's inverse allocates in the
default dtype).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from pyro_gen.nn.arguments import check_count
from pyro_gen.nn.made import MADE
from pyro_gen.nn.mlp import layer_widths
from pyro_gen.transforms import conditioner_output as output
from pyro_gen.transforms._base import (
    ConditionalModule,
    FlowTransformModule,
    as_event_shape,
    check_context,
)
from pyro_gen.transforms.conditioning import bind_context
from pyro_gen.transforms.elementwise import Additive, Affine, ElementwiseBijection
from pyro_gen.transforms.ladj_cache import conditioner_modules
from pyro_gen.transforms.pyro_arguments import pyro_arguments

_tracing_state = torch._C._get_tracing_state


def _elementwise(kind: str | ElementwiseBijection, log_scale_bound: float) -> ElementwiseBijection:
    if isinstance(kind, ElementwiseBijection):
        return kind
    if kind == "affine":
        return Affine(log_scale_bound)
    if kind == "additive":
        return Additive()
    raise ValueError(f"elementwise must be 'affine', 'additive' or an ElementwiseBijection: {kind}")


class _Autoregressive(FlowTransformModule):
    def __init__(
        self,
        input_dim: int,
        made: Callable[[torch.Tensor], torch.Tensor],
        elementwise: ElementwiseBijection,
        *,
        cache_size: int = 1,
    ) -> None:
        super().__init__((input_dim,), cache_size=cache_size)
        output.check_elementwise(elementwise)
        self.made = made
        self.elementwise = elementwise
        self._conditioner_modules = conditioner_modules(made)

    def _params(self, v: torch.Tensor) -> tuple[torch.Tensor, ...]:
        theta, d, p = self.made(v), self.event_shape[0], self.elementwise.num_params
        if not torch.is_tensor(theta) or theta.shape[-1] != p * d:
            # Pyro's AutoRegressiveNN: one tensor per parameter (its default param_dims
            # [1, 1]: mean, log_scale), or with param_dims=[p] one (..., p, D) tensor; both
            # hold the parameters in our parameter-major order
            if torch.is_tensor(theta) and p > 1 and theta.dim() >= 2 and theta.shape[-2:] == (p, d):
                theta = theta.flatten(-2)
            theta, _ = output.conditioner_features(theta, 1, p, d)
        return self.elementwise.unpack(theta, -1, d)

    def _one_pass(self, v: torch.Tensor, cond: torch.Tensor, inverse: bool):
        h = self.elementwise.inverse if inverse else self.elementwise.forward
        out, ladj = output.elementwise_output(h(v, self._params(cond)), 1, self.elementwise)
        return out, ladj.sum(-1)

    def _sequential(self, v: torch.Tensor, inverse: bool):
        """D passes: after pass k the first k coordinates (in MADE order) are exact."""
        h = self.elementwise.inverse if inverse else self.elementwise.forward
        out = torch.zeros_like(v)
        ladj = None
        for _ in range(self.event_shape[0]):
            out, ladj = output.elementwise_output(h(v, self._params(out)), 1, self.elementwise)
            out = out.expand(torch.broadcast_shapes(out.shape, v.shape))
        return out, ladj.sum(-1)


class MaskedAutoregressive(_Autoregressive):
    r"""MAF layer :math:`x_i = h(u_i; \theta_i(x_{<i}))`: one-pass density, D-pass sampling.

    ``log_prob`` (the inverse :math:`u_i = h^{-1}(x_i; \theta_i(x_{<i}))`) needs one MADE
    pass; ``sample`` (the forward) needs :math:`D`. Build one with
    :func:`masked_autoregressive`; stack several with :class:`Permute` between them.

    Args:
        input_dim: :math:`D`.
        made: autoregressive conditioner: MADE's output layout (``num_params * D``
            outputs, parameter-major), or Pyro's :class:`~pyro.nn.AutoRegressiveNN` as it is
            (a tuple of ``num_params`` tensors of ``D`` features, or ``(..., num_params, D)``).
        elementwise: the element-wise bijection :math:`h`.
        cache_size: 1 (default, as Pyro's autoregressive transforms) remembers the last
            input/output pair, so ``t.inv(t(u))`` costs nothing; 0 recomputes.

    References:
        Papamakarios et al., Masked Autoregressive Flow for Density Estimation,
        arXiv:1705.07057.

    Example:
        >>> t = masked_autoregressive(3, hidden_dims=[16])
        >>> x = torch.randn(5, 3)
        >>> torch.allclose(t(t.inv(x)), x, atol=1e-6)
        True
    """

    _ladj_direction = "inverse"

    def _forward(self, x):
        return self._sequential(x, inverse=False)

    def _backward(self, y):
        return self._one_pass(y, y, inverse=True)


class InverseAutoregressive(_Autoregressive):
    r"""IAF layer :math:`x_i = h(u_i; \theta_i(u_{<i}))`: one-pass sampling, D-pass density.

    Sampling (forward) needs one MADE pass and gives the log-det for free, the direction
    a variational posterior needs; scoring an arbitrary point needs :math:`D` passes. The
    default ``cache_size=1`` makes scoring the transform's own samples (what a guide
    does) reuse the forward pass. Arguments as :class:`MaskedAutoregressive`; build one
    with :func:`inverse_autoregressive`.

    References:
        Kingma et al., Improved Variational Inference with Inverse Autoregressive Flow,
        arXiv:1606.04934.

    Example:
        >>> t = inverse_autoregressive(3, hidden_dims=[16])
        >>> u = torch.randn(5, 3)
        >>> x = t(u)
        >>> t.inv(x) is u  # its own sample: the cached input, no D-pass inverse
        True
        >>> torch.allclose(t.inv(x.clone()), u, atol=1e-6)  # any other point: D passes
        True
    """

    _ladj_direction = "forward"

    def _forward(self, x):
        return self._one_pass(x, x, inverse=False)

    def _backward(self, y):
        return self._sequential(y, inverse=True)


class _ConditionalAutoregressive(ConditionalModule):
    _concrete: type[_Autoregressive]

    def __init__(
        self,
        input_dim: int,
        made: MADE,
        elementwise: ElementwiseBijection,
        *,
        cache_size: int = 1,
    ) -> None:
        super().__init__()
        self.input_dim = input_dim
        self.event_shape = (input_dim,)
        self.made = made
        self.elementwise = elementwise
        self.cache_size = cache_size

    def condition(self, context: torch.Tensor) -> _Autoregressive:
        check_context(context, self.made, type(self).__name__)
        made = bind_context(self.made, context, 1)
        return self._concrete(self.input_dim, made, self.elementwise, cache_size=self.cache_size)


class ConditionalMaskedAutoregressive(_ConditionalAutoregressive):
    """MAF conditioned on a context vector (fed to every MADE hidden unit).

    Example:
        >>> t = conditional_masked_autoregressive(3, context_dim=2, hidden_dims=[8])
        >>> t.condition(torch.zeros(4, 2)).inv(torch.randn(4, 3)).shape
        torch.Size([4, 3])
    """

    _concrete = MaskedAutoregressive


class ConditionalInverseAutoregressive(_ConditionalAutoregressive):
    """IAF conditioned on a context vector (fed to every MADE hidden unit).

    Example:
        >>> t = conditional_inverse_autoregressive(3, context_dim=2, hidden_dims=[8])
        >>> t.condition(torch.zeros(2))(torch.randn(4, 3)).shape
        torch.Size([4, 3])
    """

    _concrete = InverseAutoregressive


class ReLUInPlace(nn.ReLU):
    """ReLU in place, except while ``torch.jit`` traces it.

    In place: each follows a masked linear layer, whose backward does not need its output,
    so it saves an allocation per layer (~2% of an IAF guide's step on CPU). Not while
    traced: the traced graph replays the in-place op on tensors that may then be views of
    its inputs (an unbatched MAF or IAF under Pyro's ``JitTrace_ELBO`` failed with "a view
    of a leaf Variable that requires grad is being used in an in-place operation").

    Example:
        >>> h = torch.tensor([-1.0, 2.0])
        >>> ReLUInPlace()(h) is h, h.tolist()
        (True, [0.0, 2.0])
    """

    def __init__(self) -> None:
        super().__init__(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # torch's own calls, not F.relu and torch.jit.is_tracing: their Python wrappers cost
        # about 1 us a call, four calls a step of a 2-layer IAF guide
        return torch.relu_(x) if _tracing_state() is None else torch.relu(x)


def _made(
    input_dim: int,
    hidden_dims: Sequence[int] | None,
    elementwise: ElementwiseBijection,
    order: torch.Tensor | None,
    context_dim: int,
) -> MADE:
    (input_dim,) = as_event_shape(input_dim)  # a clear error before MADE's own
    hidden = [max(10 * input_dim, 32)] * 2 if hidden_dims is None else layer_widths(hidden_dims)
    return MADE(
        input_dim,
        hidden,
        elementwise.num_params,
        order=order,
        context_dim=context_dim,
        activation=ReLUInPlace,
    )


@pyro_arguments
def masked_autoregressive(
    input_dim: int,
    hidden_dims: Sequence[int] | None = None,
    *,
    elementwise: str | ElementwiseBijection = "affine",
    order: torch.Tensor | None = None,
    log_scale_bound: float = 3.0,
    cache_size: int = 1,
) -> MaskedAutoregressive:
    """Builds a MAF layer on a zero-initialised :class:`~pyro_gen.nn.MADE` (starts at identity).

    Args:
        input_dim: :math:`D`.
        hidden_dims: MADE hidden widths (default ``[max(10 D, 32)] * 2``).
        elementwise: ``"affine"`` (MAF), ``"additive"`` or an ElementwiseBijection.
        order: MADE input order (default identity; or alternate with :class:`Permute`).
        log_scale_bound: bound of the affine log-scale.
        cache_size: 1 (Pyro's default for autoregressive transforms) or 0; see
            :class:`MaskedAutoregressive`.

    Example:
        >>> masked_autoregressive(4).made.input_dim
        4
    """
    h = _elementwise(elementwise, log_scale_bound)
    made = _made(input_dim, hidden_dims, h, order, 0)
    return MaskedAutoregressive(input_dim, made, h, cache_size=cache_size)


@pyro_arguments
def inverse_autoregressive(
    input_dim: int,
    hidden_dims: Sequence[int] | None = None,
    *,
    elementwise: str | ElementwiseBijection = "affine",
    order: torch.Tensor | None = None,
    log_scale_bound: float = 3.0,
    cache_size: int = 1,
) -> InverseAutoregressive:
    """Builds an IAF layer on a zero-initialised MADE; arguments as :func:`masked_autoregressive`.

    Example:
        >>> inverse_autoregressive(4, [8]).made.input_dim
        4
    """
    h = _elementwise(elementwise, log_scale_bound)
    made = _made(input_dim, hidden_dims, h, order, 0)
    return InverseAutoregressive(input_dim, made, h, cache_size=cache_size)


@pyro_arguments
def conditional_masked_autoregressive(
    input_dim: int,
    context_dim: int,
    hidden_dims: Sequence[int] | None = None,
    *,
    elementwise: str | ElementwiseBijection = "affine",
    order: torch.Tensor | None = None,
    log_scale_bound: float = 3.0,
    cache_size: int = 1,
) -> ConditionalMaskedAutoregressive:
    """Builds a conditional MAF layer; the context feeds every MADE hidden unit.

    Arguments as :func:`masked_autoregressive`; ``cache_size`` applies to the transforms
    that ``condition(context)`` returns.

    Example:
        >>> conditional_masked_autoregressive(4, 2).made.context_dim
        2
    """
    h = _elementwise(elementwise, log_scale_bound)
    made = _made(input_dim, hidden_dims, h, order, check_count("context_dim", context_dim))
    return ConditionalMaskedAutoregressive(input_dim, made, h, cache_size=cache_size)


@pyro_arguments
def conditional_inverse_autoregressive(
    input_dim: int,
    context_dim: int,
    hidden_dims: Sequence[int] | None = None,
    *,
    elementwise: str | ElementwiseBijection = "affine",
    order: torch.Tensor | None = None,
    log_scale_bound: float = 3.0,
    cache_size: int = 1,
) -> ConditionalInverseAutoregressive:
    """Builds a conditional IAF layer; the context feeds every MADE hidden unit.

    Arguments as :func:`masked_autoregressive`; ``cache_size`` applies to the transforms
    that ``condition(context)`` returns.

    Example:
        >>> conditional_inverse_autoregressive(4, 2).made.context_dim
        2
    """
    h = _elementwise(elementwise, log_scale_bound)
    made = _made(input_dim, hidden_dims, h, order, check_count("context_dim", context_dim))
    return ConditionalInverseAutoregressive(input_dim, made, h, cache_size=cache_size)
