"""Shared machinery for pyro_gen transforms: shape checks and a log-det cache."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from pyro.distributions import constraints
from pyro.distributions.torch_transform import TransformModule
from torch.distributions.transforms import ComposeTransform, _InverseTransform


class _LadjCache:
    """Holds the last (x, y, log|det J|) triple.

    Dropped on deepcopy/pickle, because tensors that carry autograd history cannot be
    deep-copied (copying a model for EMA or checkpointing must not fail).
    """

    __slots__ = ("x", "y", "ladj")

    def __init__(self) -> None:
        self.x = self.y = self.ladj = None

    def __deepcopy__(self, memo: dict) -> _LadjCache:
        return _LadjCache()

    def __reduce__(self) -> tuple:
        return (_LadjCache, ())

    def clear(self) -> None:
        self.x = self.y = self.ladj = None


def modules_of(transform: object) -> list[torch.nn.Module]:
    """The ``nn.Module``s whose parameters a transform uses, for registration.

    ``t.inv`` of a module transform is a plain ``_InverseTransform`` (not a module) and a
    ``ComposeTransform`` of modules is not one either; containers that skipped them would
    silently drop their parameters from ``pyro.module`` and ``.to(device)``.
    """
    if isinstance(transform, torch.nn.Module):
        return [transform]
    if isinstance(transform, _InverseTransform):
        return modules_of(transform._inv)
    if isinstance(transform, ComposeTransform):
        return [m for part in transform.parts for m in modules_of(part)]
    return []


def as_event_shape(event_shape: int | Sequence[int]) -> tuple[int, ...]:
    """Normalizes an int or sequence to a tuple event shape."""
    if isinstance(event_shape, int):
        return (event_shape,)
    return tuple(int(s) for s in event_shape)


def check_event_shape(x: torch.Tensor, event_shape: tuple[int, ...], name: str) -> None:
    """Raises a clear ValueError when the rightmost dims of ``x`` are not ``event_shape``."""
    k = len(event_shape)
    if x.dim() < k or tuple(x.shape[x.dim() - k :]) != event_shape:
        raise ValueError(
            f"{name} expects inputs with event shape {event_shape}, got shape {tuple(x.shape)}"
        )


class FlowTransformModule(TransformModule):
    """Base class: a bijection on a fixed event shape that computes its log-det on the fly.

    Subclasses implement ``_forward(x) -> (y, ladj)`` and ``_backward(y) -> (x, ladj)``,
    where ``ladj`` is :math:`\\log|\\det \\partial y / \\partial x|` summed over the event
    dims (shape = batch shape). The pair from the most recent call is cached so that
    :meth:`log_abs_det_jacobian` after a forward or inverse pass costs nothing, which is
    how :class:`~pyro.distributions.TransformedDistribution` uses transforms.
    """

    bijective = True
    #: direction used to recompute log|det J| on a cache miss ("forward" or "inverse");
    #: autoregressive transforms pick their one-pass direction.
    _ladj_direction = "forward"

    def __init__(
        self,
        event_shape: int | Sequence[int],
        out_shape: int | Sequence[int] | None = None,
        cache_size: int = 0,
    ) -> None:
        super().__init__(cache_size=cache_size)
        self.event_shape = as_event_shape(event_shape)
        self.out_shape = self.event_shape if out_shape is None else as_event_shape(out_shape)
        self._ladj_cache = _LadjCache()

    @constraints.dependent_property(is_discrete=False)
    def domain(self) -> constraints.Constraint:
        return constraints.independent(constraints.real, len(self.event_shape))

    @constraints.dependent_property(is_discrete=False)
    def codomain(self) -> constraints.Constraint:
        return constraints.independent(constraints.real, len(self.out_shape))

    def forward_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
        k = len(self.event_shape)
        return tuple(shape[: len(shape) - k]) + self.out_shape

    def inverse_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
        k = len(self.out_shape)
        return tuple(shape[: len(shape) - k]) + self.event_shape

    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def _backward(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def _call(self, x: torch.Tensor) -> torch.Tensor:
        check_event_shape(x, self.event_shape, type(self).__name__)
        y, ladj = self._forward(x)
        self._store(x, y, ladj)
        return y

    def _inverse(self, y: torch.Tensor) -> torch.Tensor:
        check_event_shape(y, self.out_shape, type(self).__name__)
        x, ladj = self._backward(y)
        self._store(x, y, ladj)
        return x

    def _store(self, x: torch.Tensor, y: torch.Tensor, ladj: torch.Tensor) -> None:
        cache = self._ladj_cache
        cache.x, cache.y, cache.ladj = x, y, ladj

    def log_abs_det_jacobian(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        cache = self._ladj_cache
        if cache.x is x and cache.y is y:
            return cache.ladj
        if self._ladj_direction == "forward":
            return self._forward(x)[1]
        return self._backward(y)[1]

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        if "_cached_x_y" in state:
            state["_cached_x_y"] = (None, None)
        return state
