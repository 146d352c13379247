r"""The divergence :math:`\operatorname{tr}(\partial f / \partial z)` of a vector field, the
rate at which a continuous flow's log-determinant changes: exactly (one backward pass per
dimension) or by Hutchinson's estimator (one backward pass). Used by
:mod:`pyro_gen.transforms.continuous` and re-exported there."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["divergence_exact", "divergence_hutchinson"]


def divergence_exact(dz: Tensor, z: Tensor, event_dim: int, create_graph: bool) -> Tensor:
    r"""Exact trace of the Jacobian :math:`\operatorname{tr}(\partial f/\partial z)`.

    Uses one vector-Jacobian product per event element, so it costs ``D`` backward passes; meant
    for small ``D`` (2D toys, tests). Batch elements must not interact inside ``f``.

    Args:
        dz: ``f(z, t)``, same shape as ``z``.
        z: the state, requiring grad, shape ``batch_shape + event_shape``.
        event_dim: number of rightmost dimensions forming one event.
        create_graph: keep the graph (needed when the result is differentiated again).

    Returns:
        Tensor of shape ``batch_shape``.

    Example:
        >>> z = torch.randn(3, 2, requires_grad=True)
        >>> div = divergence_exact(2.0 * z, z, event_dim=1, create_graph=False)
        >>> torch.allclose(div, torch.full((3,), 4.0))
        True
        >>> divergence_exact(torch.ones(3, 2), z, event_dim=1, create_graph=False)  # constant
        tensor([0., 0., 0.])
    """
    batch_shape = z.shape[: z.dim() - event_dim]
    div = torch.zeros(batch_shape, dtype=z.dtype, device=z.device)
    if not dz.requires_grad:  # a field that reads neither z nor a parameter: no divergence
        return div
    flat_dz = _flat_event(dz, event_dim)
    num_dims = flat_dz.shape[-1]
    for i in range(num_dims):
        (grad,) = torch.autograd.grad(
            flat_dz[..., i].sum(),
            z,
            create_graph=create_graph,
            retain_graph=True,
            allow_unused=True,
            materialize_grads=True,  # a field that does not read z has zero divergence
        )
        div = div + _flat_event(grad, event_dim)[..., i]
    return div


def _flat_event(t: Tensor, event_dim: int) -> Tensor:
    """``t`` with its event dims flattened into one; unlike ``reshape(batch + (-1,))`` it
    takes an empty batch, whose -1 torch cannot infer."""
    return t.flatten(t.dim() - event_dim) if event_dim else t.unsqueeze(-1)


def divergence_hutchinson(
    dz: Tensor, z: Tensor, noise: Tensor, event_dim: int, create_graph: bool
) -> Tensor:
    r"""Hutchinson estimate :math:`\epsilon^\top (\partial f/\partial z)\, \epsilon`.

    Unbiased for :math:`\operatorname{tr}(\partial f / \partial z)` when
    :math:`\mathbb{E}[\epsilon \epsilon^\top] = I` (Rademacher or standard normal noise); costs
    one backward pass whatever ``D`` is.

    Args:
        dz: ``f(z, t)``.
        z: the state, requiring grad.
        noise: :math:`\epsilon`, same shape as ``z``; keep it fixed during one ODE solve.
        event_dim: number of rightmost dimensions forming one event.
        create_graph: keep the graph for a later backward pass.

    Returns:
        Tensor of shape ``batch_shape``.

    Example:
        >>> z = torch.randn(3, 4, requires_grad=True)
        >>> eps = torch.randn(3, 4)
        >>> est = divergence_hutchinson(3.0 * z, z, eps, event_dim=1, create_graph=False)
        >>> torch.allclose(est, 3.0 * (eps**2).sum(-1))
        True
    """
    if not dz.requires_grad:  # a field that reads neither z nor a parameter
        return torch.zeros(z.shape[: z.dim() - event_dim], dtype=z.dtype, device=z.device)
    (vjp,) = torch.autograd.grad(
        dz,
        z,
        noise,
        create_graph=create_graph,
        retain_graph=True,
        allow_unused=True,
        materialize_grads=True,
    )
    prod = vjp * noise
    return _flat_event(prod, event_dim).sum(-1)
