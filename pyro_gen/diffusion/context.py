"""Conditioning inputs (class labels, text features, ...) that the diffusion models pass
through to a user's network as keyword arguments: ``net(x, t, **context)``.

Why a helper: the models call the network on flattened batches whose rows are several copies
of the data batch (time samples, vectorized particles), so each per-example context tensor is
expanded over those dims and flattened the same way. Values that are not tensors (a guidance
scale, a flag) go to the network unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from pyro.poutine.indep_messenger import IndepMessenger
from pyro.poutine.runtime import _PYRO_STACK

from pyro_gen.plates import data_plate  # re-exported: the diffusion models import it here

__all__ = [
    "check_no_positional_labels",
    "check_outer_dims",
    "check_sampler_choice",
    "data_plate",
    "expand_context",
    "slice_context",
]


def expand_context(context: Mapping[str, Any], batch: torch.Size | tuple[int, ...]) -> dict:
    """``context`` with each tensor (one row per example, leading dim ``batch[-1]``) expanded
    to ``batch`` and flattened to ``prod(batch)`` rows, as the network's inputs are.

    Raises:
        ValueError: when a tensor does not hold one row per example.

    Example:
        >>> y = torch.tensor([0, 1])
        >>> expand_context({"y": y, "scale": 2.0}, (3, 2))["y"].tolist()
        [0, 1, 0, 1, 0, 1]
    """
    batch = torch.Size(batch)
    rows = batch[-1] if len(batch) else 1
    out = {}
    for name, value in context.items():
        if torch.is_tensor(value):
            if value.dim() == 0 or value.shape[0] != rows:
                raise ValueError(
                    f"context {name}= must hold one row per example ({rows}, the batch's "
                    f"length), got shape {tuple(value.shape)}"
                )
            value = value.expand(batch + value.shape[1:]).reshape(-1, *value.shape[1:])
        out[name] = value
    return out


def slice_context(context: Mapping[str, Any], start: int, stop: int) -> dict:
    """Rows ``start:stop`` of each tensor of ``context`` (a chunk of samples).

    Example:
        >>> slice_context({"y": torch.arange(5), "scale": 2.0}, 1, 3)
        {'y': tensor([1, 2]), 'scale': 2.0}
    """
    return {k: v[start:stop] if torch.is_tensor(v) else v for k, v in context.items()}


def check_no_positional_labels(x: Any, num_samples: Any, owner: str) -> None:
    """Refuses a tensor in the ``num_samples`` slot of ``model(x, num_samples, **context)``
    beside data: labels given by position (fit's ``(x, y)`` tuples, a DataLoader over a
    ``TensorDataset(x, y)``, ``svi.step(x, y)``) land there, where the model, given data,
    reads no count, and the network would silently train without them.

    Raises:
        ValueError: naming the way to pass labels by name.

    Example:
        >>> check_no_positional_labels(torch.zeros(2, 3), 1, "ScoreModel")  # a count: fine
        >>> check_no_positional_labels(torch.zeros(2, 3), torch.tensor([0, 1]), "ScoreModel")
        Traceback (most recent call last):
        ...
        ValueError: ScoreModel.model(x, num_samples, **context) was given a tensor of shape (2,) ...
    """
    if x is None or not torch.is_tensor(num_samples):
        return
    raise ValueError(
        f"{owner}.model(x, num_samples, **context) was given a tensor of shape "
        f"{tuple(num_samples.shape)} by position after x; labels (or other network inputs) go "
        "by name: model(x, y=labels), and in fit a dict {'x': x, 'y': y} (a DataLoader's "
        "dataset returning such dicts), not a tuple (x, y)"
    )


def check_outer_dims(x: torch.Tensor, event_dim: int, owner: str, time_plate: bool = True) -> None:
    """Refuses data whose dims before the batch dim are not outer plates' dims: the models
    read them as such (a latent's vectorized particles, ``(P, 1, batch, *event_shape)``), so
    stacked batches ``(groups, batch, *event_shape)`` met Pyro's "Shape mismatch inside
    plate('time')" (the time-plate models: their time plate sits at dim -2, so that dim
    must be 1) or "Model and guide shapes disagree at site 'x_4'" (a full-chain DDPM, whose
    model draws one chain per example: a dim of size > 1 needs an enclosing plate there).

    Raises:
        ValueError: naming the shape expected and the two ways to pass stacked batches.

    Example:
        >>> check_outer_dims(torch.zeros(5, 1, 4, 2), 1, "ScoreModel")  # outer plates: fine
        >>> check_outer_dims(torch.zeros(3, 4, 2), 1, "ScoreModel")
        Traceback (most recent call last):
        ...
        ValueError: ScoreModel takes data (batch, *event_shape), got (3, 4, 2) ...
    """
    outer = x.shape[: max(x.dim() - event_dim - 1, 0)]
    if time_plate:
        refused = len(outer) > 0 and outer[-1] != 1
    else:
        plates = {m.dim: m.size for m in _PYRO_STACK if isinstance(m, IndepMessenger)}
        # the batch dim is -1, so the i-th of the outer dims sits at dim i - len(outer) - 1
        dims = range(-len(outer) - 1, -1)
        refused = any(n != 1 and plates.get(d) != n for d, n in zip(dims, outer, strict=True))
    if refused:
        where = "a 1 at the time plate's dim -2" if time_plate else "a plate at each such dim"
        raise ValueError(
            f"{owner} takes data (batch, *event_shape), got {tuple(x.shape)} with event_dim "
            f"{event_dim}: dims before the batch are outer plates' dims, (..., 1, batch, "
            f"*event_shape), with {where}. Stacked batches go in as one: "
            "x.reshape(-1, *event_shape), or as a plate of groups: the call under "
            "pyro.plate('groups', G, dim=-3) with x.unsqueeze(-3)"
        )


#: what a generative program sets itself, so ``sampler_kwargs`` may not
_PROGRAM_OWNS = ("x_init", "x_T", "context", "num_samples")


def check_sampler_choice(
    x: Any, sampler: Any, sampler_kwargs: Any, samplers: tuple[str, ...], owner: str
) -> dict:
    """The checked ``sampler_kwargs`` of ``model(None, num_samples, sampler=..., sampler_kwargs=
    {...})``, the choice of how a model's generative program (Pyro's ``Predictive``, a
    ``poutine.trace`` of the model without data) draws.

    Why keyword arguments of the model: ``Predictive`` and ``poutine`` call ``model`` itself,
    so a choice made anywhere else (``model.sample``'s arguments) never reached those draws,
    and a ``sampler=`` given to the model went on to the network as if it were a label.

    Raises:
        ValueError: for a sampler given with data (the model is then the training objective),
            an unknown name, or ``sampler_kwargs`` setting what the program sets itself.
        TypeError: when ``sampler_kwargs`` is not a mapping.

    Example:
        >>> check_sampler_choice(None, "ode", {"rtol": 1e-3}, ("pc", "ode"), "ScoreModel")
        {'rtol': 0.001}
        >>> check_sampler_choice(None, "ddim", None, ("pc", "ode"), "ScoreModel")
        Traceback (most recent call last):
        ...
        ValueError: ScoreModel.model(None, num_samples, sampler=...): sampler must be one of ...
    """
    if sampler is None and sampler_kwargs is None:
        return {}
    if x is not None:
        raise ValueError(
            f"{owner}.model(x, sampler=..., sampler_kwargs=...): these choose how "
            "model(None, num_samples) draws; given data x the model is the training objective "
            "and draws nothing: leave them out"
        )
    if sampler is not None and sampler not in samplers:
        raise ValueError(
            f"{owner}.model(None, num_samples, sampler=...): sampler must be one of "
            f"{samplers}, got {sampler!r}"
        )
    if sampler_kwargs is None:
        return {}
    if not isinstance(sampler_kwargs, Mapping):
        raise TypeError(
            f"{owner}.model: sampler_kwargs must be a dict of the sampler's settings (e.g. "
            f"{{'steps': 50}}), got {type(sampler_kwargs).__name__}"
        )
    owned = sorted(set(_PROGRAM_OWNS) & set(sampler_kwargs))
    if owned:
        raise ValueError(
            f"{owner}.model: sampler_kwargs may not set {owned}: the program draws the "
            "sampler's start at its prior site (condition that site to fix it) and passes its "
            "own context (labels go as model(None, num_samples, y=labels))"
        )
    return dict(sampler_kwargs)
