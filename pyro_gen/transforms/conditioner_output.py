"""What a coupling layer's conditioner network may return, checked in one place.

Why: pyro_gen's conditioners return one tensor holding ``num_params * n`` features
(parameter-major), but Pyro's own idiom, ``DenseNN(split, hidden, param_dims=[n, n])`` as
the hypernet of ``AffineCoupling``, returns one tensor per parameter, a tuple. A Pyro
program that swaps in :class:`~pyro_gen.transforms.Coupling` with its network unchanged
failed with ``'tuple' object has no attribute 'dim'``. A tuple of ``num_params`` tensors of
``n`` features each is the same parameters split, so it is joined in that order (for
:class:`~pyro_gen.transforms.Affine` the shift, then the log-scale: Pyro's ``(mean,
log_scale)``).
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
