"""What the user-supplied parts of a coupling layer return (its conditioner network, its
element-wise map), checked in one place.

Why: pyro_gen's conditioners return one tensor holding ``num_params * n`` features
(parameter-major), but Pyro's own idiom, ``DenseNN(split, hidden, param_dims=[n, n])`` as
the hypernet of ``AffineCoupling``, returns one tensor per parameter, a tuple. A Pyro
program that swaps in :class:`~pyro_gen.transforms.Coupling` with its network unchanged
failed with ``'tuple' object has no attribute 'dim'``. A tuple of ``num_params`` tensors of
``n`` features each is the same parameters split, so it is joined in that order (for
:class:`~pyro_gen.transforms.Affine` the shift, then the log-scale: Pyro's ``(mean,
log_scale)``).

A user's own :class:`~pyro_gen.transforms.ElementwiseBijection` returns its log-derivative
per element; one summed over the event (Pyro's ``log_abs_det_jacobian`` convention) was
summed again over the batch, and every row's density silently got the batch's total; one
that does not set ``num_params`` left the conditioner with no outputs and failed inside the
layer ("The size of tensor a (2) must match the size of tensor b (0)").
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def conditioner_features(
    theta: torch.Tensor | Sequence[torch.Tensor], event_dims: int, num_params: int, n: int
) -> tuple[torch.Tensor, int]:
    """The conditioner's output as one tensor of ``num_params * n`` features on its first
    event dim, and that dim.

    Args:
        theta: the conditioner's output: one tensor, or one tensor per parameter.
        event_dims: number of event dims of the layer.
        num_params: parameters per transformed element.
        n: number of transformed elements (on the first event dim).

    Example:
        >>> shift, log_scale = torch.zeros(5, 2), torch.ones(5, 2)
        >>> joined, dim = conditioner_features((shift, log_scale), 1, 2, 2)
        >>> joined.shape, dim, joined[0].tolist()
        (torch.Size([5, 4]), 1, [0.0, 0.0, 1.0, 1.0])
    """
    if isinstance(theta, tuple | list):
        if len(theta) != num_params or not all(torch.is_tensor(t) for t in theta):
            raise ValueError(
                f"the conditioner returned {len(theta)} values; return one tensor of "
                f"num_params * {n} = {num_params * n} features, or num_params = {num_params} "
                f"tensors of {n} features each (Pyro's DenseNN(..., param_dims="
                f"{[n] * num_params}))"
            )
        dims = {t.dim() - event_dims for t in theta}
        sizes = [t.shape[t.dim() - event_dims] if t.dim() >= event_dims else None for t in theta]
        if len(dims) != 1 or any(s != n for s in sizes):
            shapes = [tuple(t.shape) for t in theta]
            raise ValueError(
                f"the conditioner returned tensors of shapes {shapes}; each of the "
                f"num_params = {num_params} tensors needs {n} features on the first event dim"
            )
        dim = dims.pop()
        if len({t.shape for t in theta}) > 1:  # one parameter shared over the batch: broadcast
            theta = torch.broadcast_tensors(*theta)
        return torch.cat(list(theta), dim), dim
    dim = theta.dim() - event_dims
    if theta.shape[dim] != num_params * n:
        raise ValueError(
            f"conditioner returned {theta.shape[dim]} features on the first event dim, "
            f"expected num_params * {n} = {num_params * n}"
        )
    return theta, dim


def elementwise_output(
    out: tuple[torch.Tensor, torch.Tensor], event_dims: int, elementwise: object
) -> tuple[torch.Tensor, torch.Tensor]:
    """An element-wise map's ``(y, log|dy/dx|)``, the log-derivative checked to be one per
    element (its event dims those of ``y``; its batch dims may broadcast).

    Example:
        >>> y = torch.zeros(5, 2)
        >>> elementwise_output((y, torch.zeros(2)), 1, None)[1].shape
        torch.Size([2])
        >>> elementwise_output((y, torch.zeros(5)), 1, None)
        Traceback (most recent call last):
        ...
        ValueError: NoneType returned a log-derivative of shape (5,) for outputs of shape ...
    """
    y, ladj = out
    k = event_dims
    if ladj.dim() < k or ladj.shape[ladj.dim() - k :] != y.shape[y.dim() - k :]:
        raise ValueError(
            f"{type(elementwise).__name__} returned a log-derivative of shape "
            f"{tuple(ladj.shape)} for outputs of shape {tuple(y.shape)}: an "
            "ElementwiseBijection returns log|dy/dx| per element, shaped like y (the layer "
            "sums it over the event); do not sum it yourself"
        )
    return y, ladj


def check_elementwise(elementwise: object) -> None:
    """Refuses an element-wise map whose ``num_params`` (the parameters the conditioner
    predicts per element) is not a positive whole number, naming the class to fix.

    Example:
        >>> from pyro_gen.transforms import Affine, ElementwiseBijection
        >>> check_elementwise(Affine())
        >>> check_elementwise(ElementwiseBijection())
        Traceback (most recent call last):
        ...
        ValueError: ElementwiseBijection.num_params is 0: ...
        >>> check_elementwise(Affine)
        Traceback (most recent call last):
        ...
        TypeError: the element-wise map must be an instance, got the class Affine: pass Affine(...)
    """
    if isinstance(elementwise, type):
        # the class passed for an instance (coupling(4, Affine)) failed at the first call
        # with "unpack() missing 1 required positional argument: 'n'"
        raise TypeError(
            f"the element-wise map must be an instance, got the class {elementwise.__name__}: "
            f"pass {elementwise.__name__}(...)"
        )
    n = getattr(elementwise, "num_params", None)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        name = type(elementwise).__name__
        raise ValueError(
            f"{name}.num_params is {n!r}: an element-wise map sets num_params, the number of "
            f"parameters its conditioner predicts per element (num_params = 1 for a scale, 2 "
            f"for Affine's shift and log-scale), as a class attribute of {name}"
        )
