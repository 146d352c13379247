"""A pyro_gen module or a user's own Pyro model, with its guide: what the VAE helpers that
run a model and guide (:func:`~pyro_gen.vae.missing.impute`, the posterior diagnostics)
take, and the evaluation mode they run in."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

from pyro_gen.data.batch_call import Call
from pyro_gen.infer.evaluation_batches import evaluation_mode
from pyro_gen.infer.program import program, trace_once

__all__ = ["evaluated_pair", "model_and_guide"]


def model_and_guide(vae: Any, guide: Callable | None) -> tuple[Callable, Callable]:
    """``(model, guide)``: a module's ``model`` and (unless ``guide`` is given) its
    ``guide``, or a model callable with the ``guide`` given.

    Example:
        >>> def model(x): ...
        >>> def guide(x): ...
        >>> model_and_guide(model, guide) == (model, guide)
        True
    """
    module = vae if hasattr(vae, "model") and hasattr(vae, "guide") else None
    model = module.model if module is not None else vae
    guide = guide if guide is not None else (module.guide if module is not None else None)
    if not callable(model) or guide is None or not callable(guide):
        raise TypeError(
            "expected a pyro_gen VAE, or a Pyro model callable with guide=...: got "
            f"{type(vae).__name__}" + ("" if guide is None else f" and {type(guide).__name__}")
        )
    return model, guide


@contextmanager
def evaluated_pair(
    vae: Any, guide: Callable | None, x: torch.Tensor, context: dict[str, Any]
) -> Iterator[tuple[Callable, Callable]]:
    """``(model, guide)`` as :func:`model_and_guide` gives them, with every module they run
    in evaluation mode (dropout off, batch norm frozen) inside the block and restored after:
    a module passed in, and the networks a user's functions register with ``pyro.module``,
    found by one run on ``x`` (which leaves the RNG and the networks' buffers as they were).

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> net = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Dropout(0.5))
        >>> def model(x):
        ...     pyro.module("net", net)
        ...     with pyro.plate("data", x.shape[0]):
        ...         pyro.sample("x", dist.Normal(net(x), 1.0).to_event(1), obs=x)
        >>> with evaluated_pair(model, lambda x: None, torch.ones(2, 3), {}):
        ...     print(net.training)
        False
        >>> net.training
        True
    """
    model, guide = model_and_guide(vae, guide)
    prog = program(model, guide)
    trace_once(prog, Call((x,), dict(context)))
    modules = list(prog.modules.values()) + ([vae] if isinstance(vae, torch.nn.Module) else [])
    with evaluation_mode(modules):
        yield model, guide
