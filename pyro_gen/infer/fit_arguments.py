"""``fit``'s arguments checked before anything is set up, and the device it trains on."""

from __future__ import annotations

import inspect
import math
import numbers
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyro
import pyro.optim
import pyro.optim.multi
import torch

from pyro_gen.infer.evaluation import module_device
from pyro_gen.infer.program import Program
from pyro_gen.infer.usable_device import device_problem


def _whole(name: str, value: Any, minimum: int) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        kind = "non-negative" if minimum == 0 else "positive"
        raise ValueError(f"{name} must be a {kind} whole number, got {value!r}")


def _check_run_directory(path: Path) -> None:
    """A ``checkpoint_dir`` that is a file, or lies under one, failed creating it with
    ``[Errno 17] File exists`` (or ``20 Not a directory``), naming neither the argument nor
    what to do."""
    for part in (path, *path.parents):
        if part.exists():
            if not part.is_dir():
                where = "is" if part == path else f"is under {part}, which is"
                raise NotADirectoryError(
                    f"checkpoint_dir={str(path)!r} {where} a file, not a directory: pass a "
                    "directory (made if missing) for the run's checkpoint and metrics"
                )
            return


def _check_arguments(
    epochs: Any,
    steps: Any,
    batch_size: Any,
    grad_clip: Any,
    eval_every: Any,
    checkpoint_every: Any,
    checkpoint_dir: Any,
    optim: Any,
) -> None:
    if (epochs is None) == (steps is None):
        raise ValueError("give exactly one of epochs= or steps=")
    _whole("epochs", epochs, 0)
    _whole("steps", steps, 0)
    _whole("batch_size", batch_size, 1)
    _whole("eval_every", eval_every, 1)
    _whole("checkpoint_every", checkpoint_every, 1)
    if checkpoint_every is not None and checkpoint_dir is None:
        raise ValueError("checkpoint_every= needs checkpoint_dir= (where to write them)")
    # Path("") is ".": the run's files went among the user's own in the working directory
    if isinstance(checkpoint_dir, str) and not checkpoint_dir:
        raise ValueError(
            "checkpoint_dir='' names the current directory; pass None to keep nothing on disk, "
            "or '.' to write the checkpoint and metrics there"
        )
    if checkpoint_dir is not None and not isinstance(checkpoint_dir, str | os.PathLike):
        raise TypeError(
            f"checkpoint_dir must be a directory path (str or pathlib.Path) or None, got "
            f"{type(checkpoint_dir).__name__} {checkpoint_dir!r}"
        )
    if isinstance(checkpoint_dir, str | os.PathLike):
        _check_run_directory(Path(checkpoint_dir))
    if grad_clip is not None and not (
        isinstance(grad_clip, numbers.Real) and math.isfinite(grad_clip) and grad_clip > 0
    ):
        raise ValueError(
            f"grad_clip must be a positive finite gradient norm, got {grad_clip!r} "
            "(None turns clipping off)"
        )
    if optim is not None and not isinstance(optim, pyro.optim.PyroOptim):
        raise TypeError(
            f"optim must be a pyro.optim.PyroOptim such as pyro.optim.Adam({{'lr': 1e-3}}), "
            f"got {_what(optim)}"
        )
    _refuse_closure_optimizer(optim)


def _refuse_closure_optimizer(optim: Any) -> None:
    """A torch optimizer whose ``step`` takes a closure it cannot do without (LBFGS, which
    re-evaluates the loss during its line search) failed at the first step, after fit's
    checks and a recording, with torch's "step() missing 1 required positional argument:
    'closure'": Pyro's SVI, which ``fit`` steps as, calls ``step()`` with none."""
    ctor = getattr(optim, "pt_optim_constructor", None)
    if not (isinstance(ctor, type) and issubclass(ctor, torch.optim.Optimizer)):
        return
    closure = inspect.signature(ctor.step).parameters.get("closure")
    if closure is not None and closure.default is inspect.Parameter.empty:
        raise TypeError(
            f"optim wraps torch.optim.{ctor.__name__}, whose step needs a closure that "
            "evaluates the loss again, and Pyro's SVI (which fit steps as) gives its "
            "optimizers none: train with a first-order optimizer such as "
            "pyro.optim.Adam({'lr': 1e-3}), or step "
            f"{ctor.__name__} in your own loop over "
            "pyro.infer.Trace_ELBO().differentiable_loss(model, guide, ...)"
        )


def checked_callbacks(kind: str, callbacks: Iterable[Any], call: str) -> list[Any]:
    """``callbacks`` as a list, each checked to take the call ``call`` (two positional
    arguments) before training starts: a wrong one failed only at the end of the first
    epoch, which can be hours in.

    Example:
        >>> try:
        ...     checked_callbacks("callbacks", [lambda: None], "callback(record, model)")
        ... except TypeError as e:
        ...     print(str(e).split(":")[0])
        callbacks[0] (<lambda>) cannot be called as callback(record, model)
    """
    if callable(callbacks):
        raise TypeError(f"{kind} takes a list of callables, got one callable: {kind}=[...]")
    out = list(callbacks)
    for i, cb in enumerate(out):
        if not callable(cb):
            raise TypeError(f"{kind}[{i}] is a {type(cb).__name__}, not callable as {call}")
        try:
            signature = inspect.signature(cb)
        except (TypeError, ValueError):  # a builtin without a signature: its call will tell
            continue
        try:
            signature.bind(None, None)
        except TypeError as e:
            name = getattr(cb, "__qualname__", type(cb).__name__)
            raise TypeError(
                f"{kind}[{i}] ({name}) cannot be called as {call}: {e}. Give it two "
                "parameters (it may ignore them)"
            ) from None
    return out


def _what(optim: Any) -> str:
    """What a wrong ``optim`` is and what to pass instead: torch's optimizers and
    schedulers, and Pyro's wrappers not yet called, were reported by bare type names ("got
    Adam" for ``torch.optim.Adam(...)``, "got function" for ``pyro.optim.Adam``)."""
    if isinstance(optim, pyro.optim.multi.MultiOptimizer):
        return _multi_optimizer(optim)
    schedulers = (torch.optim.lr_scheduler.LRScheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
    if isinstance(optim, type) and issubclass(optim, torch.optim.Optimizer):
        what, name = f"the class torch.optim.{optim.__name__}", optim.__name__
    elif isinstance(optim, (torch.optim.Optimizer, *schedulers)):
        what, name = f"a torch {type(optim).__name__}", type(optim).__name__
    elif callable(optim) and getattr(optim, "__module__", "").startswith("pyro.optim"):
        what, name = f"pyro.optim.{optim.__name__} not called", optim.__name__
    else:
        return type(optim).__name__
    if hasattr(torch.optim.lr_scheduler, name):
        return (
            f"{what}: pass pyro.optim.{name}({{'optimizer': torch.optim.SGD, 'optim_args': "
            "{'lr': 0.01}, ...}), which schedules each parameter's optimizer, and step it "
            "from callbacks= as fit's docstring shows"
        )
    return (
        f"{what}: pass pyro.optim.{name}({{'lr': ...}}) with its arguments, which makes one "
        "torch optimizer per parameter as Pyro's SVI does"
    )


def _multi_optimizer(optim: pyro.optim.multi.MultiOptimizer) -> str:
    """What to pass instead of a ``pyro.optim.multi`` optimizer, which steps from a loss it
    differentiates itself (``optim.step(loss, params)``), where SVI steps a ``PyroOptim`` on
    the gradients each step leaves: ``fit`` refused one as "got PyroMultiOptimizer"."""
    name = type(optim).__name__
    what = (
        f"pyro.optim.multi.{name}, which steps from a differentiable loss in one's own loop "
        "(optim.step(loss, params)), not from the gradients of an SVI step"
    )
    wrapped = getattr(optim, "optim", None)
    if isinstance(optim, pyro.optim.multi.PyroMultiOptimizer) and isinstance(
        wrapped, pyro.optim.PyroOptim
    ):
        ctor, args = wrapped.pt_optim_constructor, wrapped.pt_optim_args
        where = "torch.optim" if getattr(torch.optim, ctor.__name__, None) is ctor else None
        where = where or ("pyro.optim" if getattr(pyro.optim, ctor.__name__, None) is ctor else "")
        here = (
            f" (here pyro.optim.PyroOptim({where or ctor.__module__}.{ctor.__name__}, {args!r}))"
            if isinstance(args, dict)
            else ""
        )
        return f"{what}: pass the PyroOptim it wraps, its .optim{here}"
    return (
        f"{what}: pass a pyro.optim.PyroOptim such as pyro.optim.Adam({{'lr': 1e-3}}), or run "
        f"{name} in your own loop over pyro.infer.Trace_ELBO().differentiable_loss(model, "
        "guide, ...)"
    )


def _data_device(data: Any) -> torch.device | None:
    """Where tensor data lie: the first tensor of a tensor, a tuple or list, or a dict."""
    if isinstance(data, torch.Tensor):
        return data.device
    if isinstance(data, dict):
        data = tuple(data.values())
    for item in data if isinstance(data, tuple | list) else ():
        if isinstance(item, torch.Tensor):
            return item.device
    return None


def _device(
    model: Any, prog: Program, device: torch.device | str | None, data: Any = None
) -> torch.device:
    """``device`` when given; else that of the first module of the pair with a parameter or
    buffer; else, for a plain model function (whose networks ``fit`` meets only when it
    runs), the tensor data's device, as Pyro's loop would leave the user's data; else the
    CPU.

    Example:
        >>> _device(lambda x: None, Program(print, print, {}), None, torch.zeros(2, device="meta"))
        device(type='meta')
    """
    if device is not None:
        try:
            chosen = torch.device(device)
        except (RuntimeError, TypeError) as e:
            msg = f"device={device!r} is not a device ({e}); use 'cpu' or 'cuda'"
            raise ValueError(msg) from None
        problem = device_problem(chosen)
        if problem is not None:
            raise ValueError(f"device={device!r}: {problem}")
        return chosen
    for m in prog.modules.values():
        if next(iter([*m.parameters(), *m.buffers()]), None) is not None:
            return module_device(m)
    return _data_device(data) or torch.device("cpu")
