"""Shared machinery for pyro_gen transforms: shape checks, ``with_cache``, pickling (the
cache itself: :mod:`pyro_gen.transforms.ladj_cache`)."""

from __future__ import annotations

import numbers
import weakref
from collections.abc import Sequence
from typing import Any

import torch
from pyro.distributions import constraints
from pyro.distributions.conditional import ConditionalTransformModule
from pyro.distributions.torch_transform import TransformModule
from torch.distributions.transforms import ComposeTransform, _InverseTransform

from pyro_gen.transforms.ladj_cache import _LadjCache, _version_of


def drop_pyro_weakrefs(module: torch.nn.Module) -> None:
    """Removes the ``unconstrained`` weakrefs that ``pyro.param`` attaches to parameters.

    ``pyro.module(name, m)`` passes each parameter through the param store, which sets
    ``param.unconstrained = weakref.ref(param)``; weakrefs cannot be pickled, so
    ``torch.save(m)`` would fail. Pyro's own ``PyroModule.__getstate__`` drops them the same
    way, and the param store sets them again on the next ``pyro.param`` access.
    """
    for param in module.parameters():
        param.__dict__.pop("unconstrained", None)


class PicklableModule(torch.nn.Module):
    """Mixin: the module pickles (``torch.save(module)``, ``copy.deepcopy``) after
    ``pyro.module`` registered it (see :func:`drop_pyro_weakrefs`)."""

    def __getstate__(self) -> dict[str, Any]:
        drop_pyro_weakrefs(self)
        return super().__getstate__()


class ConditionalModule(PicklableModule, ConditionalTransformModule):
    """Base of pyro_gen's conditional transforms (Pyro's
    :class:`~pyro.distributions.conditional.ConditionalTransformModule`): ``condition(c)``
    gives the transform for context ``c``. Applied directly, Pyro's base said only that
    ``forward`` is missing; this says what to do instead.

    Example:
        >>> from pyro_gen.transforms import conditional_affine_coupling
        >>> conditional_affine_coupling(4, context_dim=3)(torch.zeros(2, 4))
        Traceback (most recent call last):
        ...
        TypeError: ConditionalAffineCoupling is a conditional transform: apply ... t.condition(c)(x)
    """

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            f"{type(self).__name__} is a conditional transform: apply t.condition(context) "
            "(the transform for that context), e.g. t.condition(c)(x)"
        )


class _Mode:
    """The ``training`` flag, one object shared by a transform and its ``with_cache`` twins,
    and those transforms (weakly), whose caches a change of mode drops."""

    __slots__ = ("training", "sharers")

    def __init__(self, training: bool = True) -> None:
        self.training = training
        self.sharers: weakref.WeakSet[FlowTransformModule] = weakref.WeakSet()

    def __reduce__(self) -> tuple:
        # each unpickled or deep-copied transform adds itself again (__setstate__)
        return (_Mode, (self.training,))


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
    """Normalizes an int or sequence to a tuple event shape.

    Raises:
        ValueError: for anything but positive whole numbers (a float dimension failed with
            "'float' object is not iterable", and ``0`` built a flow over nothing).

    Example:
        >>> as_event_shape(3), as_event_shape(torch.Size([1, 28, 28]))
        ((3,), (1, 28, 28))
    """
    sizes = (event_shape,) if isinstance(event_shape, numbers.Integral) else event_shape
    try:
        dims = list(sizes)  # type: ignore[arg-type]
    except TypeError:
        dims = [event_shape]
    if not all(isinstance(d, numbers.Integral) and not isinstance(d, bool) and d > 0 for d in dims):
        raise ValueError(
            f"a shape (or dimension) must be a positive whole number or a sequence of them, "
            f"got {event_shape!r}"
        )
    return tuple(int(d) for d in dims)


def sample_count(num_samples: object) -> int:
    """``num_samples`` of a ``sample`` method, checked: a whole number >= 0 (torch's own
    errors named neither: "The expanded size of the tensor (-1) isn't allowed", or
    "torch.Size() takes an iterable of 'int'" for 2.5).

    Example:
        >>> sample_count(3)
        3
        >>> sample_count(-1)
        Traceback (most recent call last):
        ...
        ValueError: num_samples must be a whole number >= 0, got -1
    """
    whole = isinstance(num_samples, numbers.Integral) and not isinstance(num_samples, bool)
    if not (whole and num_samples >= 0):  # type: ignore[operator]
        raise ValueError(f"num_samples must be a whole number >= 0, got {num_samples!r}")
    return int(num_samples)  # type: ignore[call-overload]


def _floating_dtype(module: object) -> torch.dtype | None:
    """The dtype of ``module``'s first floating parameter (None: no module, or none)."""
    if not isinstance(module, torch.nn.Module):
        return None
    return next((p.dtype for p in module.parameters() if p.is_floating_point()), None)


def check_context(context: torch.Tensor, conditioner: object, name: str) -> None:
    """Raises a clear ValueError when ``context``'s last dim is not the conditioner's
    ``context_dim`` (the network's own error was a matrix-size mismatch deep inside it), and
    a TypeError for a floating context of more precision than the network's parameters (a
    float64 context for a float32 flow: torch said "mat1 and mat2 must have the same
    dtype" when the transform was first applied, naming neither)."""
    k = getattr(conditioner, "context_dim", None)
    if k and (context.dim() == 0 or context.shape[-1] != k):
        raise ValueError(
            f"{name}.condition(context) expects contexts of size context_dim={k} in the last "
            f"dim, got shape {tuple(context.shape)}"
        )
    dtype = _floating_dtype(conditioner)
    if (
        dtype is not None
        and context.is_floating_point()
        and torch.finfo(context.dtype).bits > torch.finfo(dtype).bits
    ):
        raise TypeError(
            f"{name} holds {dtype} parameters and got a {context.dtype} context: convert "
            f"one to the other (context.to({dtype}), or the transform .to({context.dtype}))"
        )


def context_in_dtype(context: torch.Tensor, conditioner: object) -> torch.Tensor:
    """``context`` in the dtype of the conditioner's parameters when it is integer, boolean
    or of less precision (one-hot labels from ``F.one_hot`` are int64): a vector network
    promoted those when it concatenated them to its float input, a convolutional one failed
    with "mat1 and mat2 must have the same dtype". Call after :func:`check_context`."""
    dtype = _floating_dtype(conditioner)
    if dtype is None or context.dtype == dtype:
        return context
    return context.to(dtype)


def dtype_mismatch(module: torch.nn.Module, x: torch.Tensor) -> str | None:
    """What to say when ``x``'s dtype is not that of ``module``'s floating parameters (torch
    said "mat1 and mat2 must have the same dtype", naming neither), or None.

    Example:
        >>> dtype_mismatch(torch.nn.Linear(2, 2), torch.zeros(2, dtype=torch.float64))
        'Linear holds torch.float32 parameters and got torch.float64 input: ...'
        >>> dtype_mismatch(torch.nn.Linear(2, 2), torch.zeros(2, dtype=torch.long))
        'Linear holds torch.float32 parameters and got torch.int64 input: a flow takes ...'
    """
    # a conditioned transform owns no parameters: they are its network's (see
    # FlowTransformModule._conditioner_modules), and torch's error named neither
    modules = (module, *getattr(module, "_conditioner_modules", ()))
    dtype = next((d for m in modules if (d := _floating_dtype(m)) is not None), None)
    if dtype is None or dtype == x.dtype:
        return None
    said = f"{type(module).__name__} holds {dtype} parameters and got {x.dtype} input"
    if not x.is_floating_point():
        return (
            f"{said}: a flow takes floating input (x.to({dtype}); integer data such as "
            "pixels is dequantized first, e.g. pyro_gen.data.uniform_dequantize)"
        )
    return f"{said}: convert one to the other (x.to({dtype}), or the module .to({x.dtype}))"


def check_event_shape(x: torch.Tensor, event_shape: tuple[int, ...], name: str) -> None:
    """Raises a clear ValueError when the rightmost dims of ``x`` are not ``event_shape``."""
    k = len(event_shape)
    if x.dim() < k or tuple(x.shape[x.dim() - k :]) != event_shape:
        raise ValueError(
            f"{name} expects inputs with event shape {event_shape}, got shape {tuple(x.shape)}"
        )


def _check_rank(shape: Sequence[int], event_shape: tuple[int, ...], name: str, fn: str) -> None:
    """Raises ValueError, as torch's ``ReshapeTransform`` does, for a shape with fewer dims
    than the event: slicing ``shape[: len(shape) - k]`` with a negative end silently made
    up a shape (``Squeeze((1, 4, 2)).forward_shape((4, 2))`` was ``(4, 4, 2, 1)``).

    Sizes are compared by :meth:`FlowTransformModule.forward_shape` only (see
    :func:`_check_sizes`): ``inverse_shape`` walks a stack backwards for ``Flow`` and
    ``MultiScale``, which report a mismatched stack with their own messages.
    """
    if len(shape) < len(event_shape):
        raise ValueError(
            f"{name}.{fn} expects a shape ending in the event shape {event_shape}, got "
            f"{tuple(shape)} with fewer dims"
        )


def _check_sizes(shape: Sequence[int], event_shape: tuple[int, ...], name: str) -> None:
    """Raises ValueError, as torch's ``ReshapeTransform`` does, when the rightmost dims of
    ``shape`` are not the event shape.

    ``TransformedDistribution(base, transforms)`` takes its shapes from ``forward_shape``
    alone: a base or preceding transform of other sizes (a (5,) base under a coupling on
    3 features, an image layer before a vector one with no reshape) gave the distribution
    an event shape no draw has, ``(1, 4, 16)`` for ``(1, 4, 4)`` images under a coupling on
    16 features, and the error came only at sampling, contradicting ``event_shape``.
    """
    k = len(event_shape)
    if tuple(shape[len(shape) - k :]) != event_shape:
        raise ValueError(
            f"{name} takes events of shape {event_shape}, but the base distribution or the "
            f"transform before it gives shape {tuple(shape)}: make their event shapes agree "
            "(e.g. a torch.distributions.transforms.ReshapeTransform between them)"
        )


class FlowTransformModule(TransformModule):
    """Base class: a bijection on a fixed event shape that computes its log-det on the fly.

    Subclasses implement ``_forward(x) -> (y, ladj)`` and ``_backward(y) -> (x, ladj)``,
    where ``ladj`` is :math:`\\log|\\det \\partial y / \\partial x|` summed over the event
    dims (shape = batch shape). The pair from the most recent call is cached so that
    :meth:`log_abs_det_jacobian` after a forward or inverse pass costs nothing, which is
    how :class:`~pyro.distributions.TransformedDistribution` uses transforms.

    Caching follows torch/Pyro: with ``cache_size=1``, ``t.inv(t(x))`` returns ``x`` without
    running the inverse (an IAF scores its own samples in one pass). Unlike torch's cache,
    a hit also requires the parameters to be unchanged since the value was cached (the same
    objects, not written since), the same grad mode (see :func:`parameter_stamp`) and the
    input not written in place since, so a density flow that scores one data tensor at every
    SVI step recomputes after each optimizer step, and a buffer reused for every batch is
    scored afresh. :meth:`with_cache`
    returns a twin with another cache size that shares this module's parameters, buffers,
    submodules and ``training`` flag.

    Example:
        A transform of one's own: a learnable diagonal scale. Its density through Pyro's
        ``TransformedDistribution`` is the closed form's, scoring its own sample reuses the
        forward pass, and an optimizer step invalidates the cache:

        >>> import pyro.distributions as dist
        >>> class DiagonalScale(FlowTransformModule):
        ...     def __init__(self, dim):
        ...         super().__init__(dim, cache_size=1)
        ...         self.log_scale = torch.nn.Parameter(torch.full((dim,), 0.5))
        ...     def _forward(self, x):
        ...         return x * self.log_scale.exp(), self.log_scale.sum().expand(x.shape[:-1])
        ...     def _backward(self, y):
        ...         x = y * (-self.log_scale).exp()
        ...         return x, self.log_scale.sum().expand(y.shape[:-1])
        >>> t = DiagonalScale(2)
        >>> base = dist.Normal(torch.zeros(2), 1.0).to_event(1)
        >>> flow = dist.TransformedDistribution(base, [t])
        >>> u = base.sample((3,))
        >>> x = t(u)
        >>> t.inv(x) is u  # cached: no inverse computed
        True
        >>> exact = dist.Normal(torch.zeros(2), t.log_scale.exp()).to_event(1).log_prob(x)
        >>> torch.allclose(flow.log_prob(x), exact)
        True
        >>> optimizer = torch.optim.SGD(t.parameters(), lr=0.1)
        >>> flow.log_prob(x).sum().backward()
        >>> optimizer.step()
        >>> t.inv(x) is u  # the parameters changed: computed afresh
        False
    """

    bijective = True
    # On the class, as torch's dependent properties read there; each instance sets its own.
    domain: constraints.Constraint = constraints.dependent(is_discrete=False)
    codomain: constraints.Constraint = constraints.dependent(is_discrete=False)
    #: direction used to recompute log|det J| on a cache miss ("forward" or "inverse");
    #: autoregressive transforms pick their one-pass direction.
    _ladj_direction = "forward"
    #: modules whose parameters the map uses without owning them (the network of a
    #: conditional transform, held in a ``functools.partial`` with the context): their
    #: versions are part of the cache stamp too
    _conditioner_modules: tuple[torch.nn.Module, ...] = ()

    def __init__(
        self,
        event_shape: int | Sequence[int],
        out_shape: int | Sequence[int] | None = None,
        cache_size: int = 0,
    ) -> None:
        if cache_size not in (0, 1):
            raise ValueError(f"cache_size must be 0 or 1, got {cache_size!r}")
        super().__init__(cache_size=cache_size)
        self.event_shape = as_event_shape(event_shape)
        self.out_shape = self.event_shape if out_shape is None else as_event_shape(out_shape)
        self._ladj_cache = _LadjCache()
        # Instance attributes, built once: TransformedDistribution and Pyro read them
        # dozens of times a step, and a property call costs 7x an attribute read (about
        # 10 us a step of a 2-layer IAF guide).
        self.domain = constraints.independent(constraints.real, len(self.event_shape))
        self.codomain = constraints.independent(constraints.real, len(self.out_shape))

    # ``training`` lives in a shared cell, so ``t.eval()`` also switches the twins that
    # ``with_cache`` made (e.g. the parts of ``ComposeTransformModule(..., cache_size=1)``)
    @property
    def training(self) -> bool:  # type: ignore[override]
        mode = self.__dict__.get("_mode")
        if mode is None:
            mode = self._shared_mode()
        return mode.training

    def _shared_mode(self) -> _Mode:
        """The ``_Mode`` of this transform, made (and this transform added to its sharers)
        where there is none: unpickled from a version that kept a plain attribute."""
        mode = self.__dict__.get("_mode")
        if mode is None:
            mode = self.__dict__["_mode"] = _Mode(self.__dict__.pop("training", True))
        mode.sharers.add(self)
        return mode

    @training.setter
    def training(self, value: bool) -> None:
        mode = self.__dict__.get("_mode")
        if mode is None:  # nn.Module.__init__ sets the flag first
            mode = self.__dict__["_mode"] = _Mode(value)
            mode.sharers.add(self)
        elif mode.training != value:
            mode.training = value
            # What a transform computes may depend on the mode (BatchNorm's batch or running
            # statistics, ResidualBlock's random or exact log-det, dropout in a user's
            # conditioner) while the cache stamp (parameters, grad mode) does not see it:
            # after .eval() a density of the same data tensor was the training mode's.
            # Dropped here, on the rare mode change, so that cache lookups stay as cheap.
            for twin in mode.sharers:
                twin._drop_cached()

    def _drop_cached(self) -> None:
        cache = self.__dict__.get("_ladj_cache")
        if cache is not None:
            cache.clear()
            self.__dict__["_cached_x_y"] = (None, None)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._shared_mode()

    def with_cache(self, cache_size: int = 1) -> FlowTransformModule:
        """This transform with another ``cache_size``, sharing all its state.

        Args:
            cache_size: 0 (no cache) or 1 (remember the last input/output pair).

        Returns:
            ``self`` when the size is unchanged, else a twin whose parameters, buffers,
            submodules and training flag are this module's own objects.
        """
        if cache_size == self._cache_size:
            return self
        if cache_size not in (0, 1):
            raise ValueError(f"cache_size must be 0 or 1, got {cache_size!r}")
        mode = self._shared_mode()
        twin = type(self).__new__(type(self))
        twin.__dict__.update(self.__dict__)  # the same _parameters/_buffers/_modules dicts
        twin._cache_size = cache_size
        twin._cached_x_y = (None, None)
        twin._inv = None
        twin._ladj_cache = _LadjCache()
        mode.sharers.add(twin)
        return twin

    # torch.Size, as torch's transforms return: a TransformedDistribution takes its batch
    # and event shapes from these, and Pyro's code calls their .numel() (AutoGaussian)
    def forward_shape(self, shape: Sequence[int]) -> torch.Size:
        _check_rank(shape, self.event_shape, type(self).__name__, "forward_shape")
        _check_sizes(shape, self.event_shape, type(self).__name__)
        k = len(self.event_shape)
        return torch.Size(tuple(shape[: len(shape) - k]) + self.out_shape)

    def inverse_shape(self, shape: Sequence[int]) -> torch.Size:
        _check_rank(shape, self.out_shape, type(self).__name__, "inverse_shape")
        k = len(self.out_shape)
        return torch.Size(tuple(shape[: len(shape) - k]) + self.event_shape)

    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def _backward(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self._cache_size == 1 and self._ladj_cache.holds(x, None):
            return self._ladj_cache.y
        return self._call(x)

    def _inv_call(self, y: torch.Tensor) -> torch.Tensor:
        if self._cache_size == 1 and self._ladj_cache.holds(None, y):
            return self._ladj_cache.x
        return self._inverse(y)

    def _call(self, x: torch.Tensor) -> torch.Tensor:
        check_event_shape(x, self.event_shape, type(self).__name__)
        try:
            y, ladj = self._forward(x)
        except RuntimeError as exc:  # explained only on failure: nothing on the hot path
            if (mismatch := dtype_mismatch(self, x)) is None:
                raise
            raise TypeError(mismatch) from exc
        self._store(x, y, ladj)
        return y

    def _inverse(self, y: torch.Tensor) -> torch.Tensor:
        check_event_shape(y, self.out_shape, type(self).__name__)
        try:
            x, ladj = self._backward(y)
        except RuntimeError as exc:
            if (mismatch := dtype_mismatch(self, y)) is None:
                raise
            raise TypeError(mismatch) from exc
        self._store(x, y, ladj)
        return x

    def _store(self, x: torch.Tensor, y: torch.Tensor, ladj: torch.Tensor) -> None:
        # stamped after the call: ActNorm's data-dependent init changes parameters inside it.
        # Both caches (torch's x/y pair and the log-det) hold the same pair, so one stamp
        # guards both; the parameter walk happens here, once per real computation.
        cache = self._ladj_cache
        cache.stamp = cache.locate((self, *self._conditioner_modules))
        cache.x, cache.y, cache.ladj = x, y, ladj
        cache.x_version, cache.y_version = _version_of(x), _version_of(y)
        if self._cache_size == 1:
            # Into __dict__, where torch's Transform keeps it: nn.Module's __setattr__ costs
            # 1.5 us (its parameter and submodule checks), for a plain pair.
            self.__dict__["_cached_x_y"] = x, y

    def clear_cache(self) -> None:
        """Drops the cached input/output pair and log-det, so that no tensor or autograd graph
        of the last call stays referenced (what ``TransformedDistribution.clear_cache()``
        after a training step, as in Pyro's flow tutorials, is for)."""
        super().clear_cache()
        self._ladj_cache.clear()

    def _apply(self, fn: Any, recurse: bool = True) -> FlowTransformModule:
        # .to(dtype/device), .double(), .cuda() convert parameters in place (same objects,
        # same versions): a cached pair would still pass for valid, in the old dtype/device
        self.clear_cache()
        return super()._apply(fn, recurse)

    def log_abs_det_jacobian(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        cache = self._ladj_cache
        if cache.holds(x, y):
            return cache.ladj
        if self._ladj_direction == "forward":
            return self._forward(x)[1]
        return self._backward(y)[1]

    def __getstate__(self) -> dict[str, Any]:
        drop_pyro_weakrefs(self)
        state = super().__getstate__()
        if "_cached_x_y" in state:
            state["_cached_x_y"] = (None, None)
        return state
