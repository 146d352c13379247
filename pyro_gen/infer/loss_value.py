"""A Pyro loss's value as the one number a run reports, and how many examples it stands for."""

from __future__ import annotations

from typing import Any

import torch
from pyro.infer import ELBO
from pyro.poutine import Trace

from pyro_gen.infer.log_weights import find_data_plate, sample_sites

__all__ = ["loss_name", "reported_loss", "subsampled_size"]


def reported_loss(value: Any) -> float:
    """``value`` as a float; for a loss of several terms (a tuple: ReweightedWakeSleep
    returns the model's loss, then the guide's, as Pyro's ``SVI.step`` does), its first
    term, the one a model is judged by (for ReweightedWakeSleep the negative importance
    weighted bound).

    Example:
        >>> reported_loss(torch.tensor(2.5)), reported_loss((torch.tensor(3.0), 7.0))
        (2.5, 3.0)
    """
    if isinstance(value, tuple):
        value = value[0]
    return float(value.detach() if torch.is_tensor(value) else value)


def subsampled_size(model_trace: Trace, plate_name: str | None = None) -> int | None:
    """The number of examples a step's loss stands for, where the data plate subsamples:
    its full size :math:`N`, since Pyro scales a subsample of :math:`B` examples by
    :math:`N / B` (the loss estimates the whole data set's); None when the data plate does
    not subsample (the loss is the batch's own) or the model has no single data plate.

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> def model(idx):
        ...     with pyro.plate("data", 100, subsample=idx):
        ...         pyro.sample("x", dist.Normal(0.0, 1.0), obs=torch.zeros(len(idx)))
        >>> subsampled_size(pyro.poutine.trace(model).get_trace(torch.arange(10)))
        100
    """
    try:
        plate = find_data_plate(model_trace, plate_name)
    except ValueError:  # no single data plate (a GAN's generator, a model without data)
        return None
    for _, site in sample_sites(model_trace):
        for frame in site["cond_indep_stack"]:
            if frame.name == plate.name and frame.full_size not in (None, frame.size):
                return int(frame.full_size)
    return None


def loss_name(loss: Any) -> str:
    """A loss as a user wrote it: a function's or bound method's name, else the loss
    object's class.

    Example:
        >>> from pyro.infer import Trace_ELBO
        >>> elbo = Trace_ELBO()
        >>> loss_name(elbo), loss_name(elbo.differentiable_loss)
        ('Trace_ELBO', 'Trace_ELBO.differentiable_loss')
    """
    if isinstance(loss, ELBO) or not hasattr(loss, "__qualname__"):
        return type(loss).__name__
    return loss.__qualname__
