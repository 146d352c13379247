"""Where a site's examples lie: the data plate's dimension of a site's value, so that
per-example results come out one row per example whatever the data's layout (LDA's words
by documents, with the documents plate last), and a model that subsamples the examples it
is given is refused by name by the helpers that answer for every example."""

from __future__ import annotations

import torch
from pyro.poutine import Trace

from pyro_gen.infer.log_weights import DataPlate

__all__ = ["check_every_example", "example_rows", "plate_dim"]


def plate_dim(node: dict, plate: DataPlate) -> int:
    """The (negative) dimension of ``node``'s value that runs over ``plate``'s examples.

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> from pyro import poutine
        >>> def model():
        ...     with pyro.plate("docs", 3):
        ...         pyro.sample("theta", dist.Normal(torch.zeros(3, 2), 1.0).to_event(1))
        >>> plate_dim(poutine.trace(model).get_trace().nodes["theta"], DataPlate("docs", -1))
        -2
    """
    frame = next(f for f in node["cond_indep_stack"] if f.name == plate.name)
    return frame.dim - len(node["fn"].event_shape)


def example_rows(t: torch.Tensor, node: dict, plate: DataPlate) -> torch.Tensor:
    """``t`` (broadcastable to ``node``'s value) as ``(examples, -1)``: one row per element
    of the plate.

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> from pyro import poutine
        >>> def model():  # examples along the last dimension, an event of 2 after them
        ...     with pyro.plate("docs", 3):
        ...         pyro.sample("theta", dist.Normal(torch.zeros(4, 3, 2), 1.0).to_event(1))
        >>> node = poutine.trace(model).get_trace().nodes["theta"]
        >>> example_rows(node["value"], node, DataPlate("docs", -1)).shape
        torch.Size([3, 8])
    """
    dim = plate_dim(node, plate)
    value = node["value"]
    return t.expand(value.shape).movedim(dim, 0).reshape(value.shape[dim], -1)


def check_every_example(model_trace: Trace, plate: DataPlate, x: torch.Tensor, helper: str):
    """Refuses a model whose data plate draws a subsample of the ``x`` it is given
    (``pyro.plate(..., subsample_size=)`` over x's rows): a helper that answers for every
    example would answer for a random part of them. A plate given the minibatch's indices
    (``subsample=idx``, Pyro's SVI Part II) holds every example of x and passes.

    Raises:
        ValueError: naming the plate, the sizes and what to do.

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> from pyro import poutine
        >>> def model(x):
        ...     with pyro.plate("data", x.shape[0], subsample_size=2) as idx:
        ...         pyro.sample("x", dist.Normal(0.0, 1.0), obs=x[idx])
        >>> x = torch.zeros(5)
        >>> check_every_example(poutine.trace(model).get_trace(x), DataPlate("data", -1), x, "f")
        Traceback (most recent call last):
        ...
        ValueError: f answers for every example of x, but the model's data plate 'data' draws 2 ...
    """
    for node in model_trace.nodes.values():
        for frame in node.get("cond_indep_stack", ()):
            if frame.name != plate.name:
                continue
            full = frame.full_size if frame.full_size is not None else frame.size
            if frame.size < full and x.dim() > 0 and full == x.shape[0]:
                raise ValueError(
                    f"{helper} answers for every example of x, but the model's data plate "
                    f"{plate.name!r} draws {frame.size} of its {full} examples at each run: "
                    "give it a model that takes the examples it is given (no subsample_size "
                    "in that plate), or pass the subsample's indices (subsample=...)"
                )
            return
