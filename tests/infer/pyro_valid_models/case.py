"""A row of the fit-against-SVI tables: the model/guide pair, its loss, batches and path."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pyro
import pyro.optim
import pytest
import torch

SEED = 3
STEPS = 3
COMPILED = "compiled"  # the row's step is recorded and stays recorded
# fit chose plain Pyro SVI without a log line (a loss the program does not support)
PLAIN_UNSAID = "plain Pyro SVI, no log line"


# The path for a loss the compiled step does not support: see
# test_a_loss_the_compiled_step_does_not_support_says_so for the missing log line.
UNSUPPORTED = "not supported"


def sgd() -> pyro.optim.PyroOptim:
    return pyro.optim.SGD({"lr": 0.05})


def adam() -> pyro.optim.PyroOptim:
    return pyro.optim.Adam({"lr": 0.05})


@dataclass(frozen=True)
class Case:
    """A model/guide pair, its loss, the batches of its steps and the path its step takes.

    ``batches`` None calls ``model()`` at every step (``fit(..., data=())``); otherwise the
    steps take the batches in turn, a tuple positionally and a dict by name. ``path`` is
    ``COMPILED`` or a regular expression the fallback's logged reason must match.
    """

    id: str
    model: Callable[..., Any]
    guide: Callable[..., Any]
    loss: Callable[[], Any]
    path: str
    batches: list[Any] | None = None
    optim: Callable[[], pyro.optim.PyroOptim] = sgd
    steps: int = STEPS
    # distinct input signatures: each runs one plain step, then the recorded program
    signatures: int = 1
    # modules the pair closes over: put back before each run, their state (batch norm's
    # running statistics included) compared after it
    modules: tuple[torch.nn.Module, ...] = ()
    marks: tuple[Any, ...] = field(default_factory=tuple)


class Autoguide:
    """A Pyro autoguide built afresh for each run (it keeps its parameters itself)."""

    def __init__(self, build: Callable[[], Callable[..., Any]]) -> None:
        self.build = build
        self.guide: Callable[..., Any] | None = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.guide is None:
            self.guide = self.build()
        return self.guide(*args, **kwargs)


def case_params(cases: list[Case]) -> list[Any]:
    """The rows as pytest params, each with its id and marks."""
    return [pytest.param(c, id=c.id, marks=c.marks) for c in cases]
