"""What a pyro_gen module declares about its own model/guide pair, read when that pair is
trained or evaluated: the plate over examples (``data_plate``) where another plate also
encloses every site, and whether the pair on data is a joint density
(``joint_is_density``), without which importance weights over it are meaningless."""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["check_joint_is_density", "declared_plate", "own_pair_module"]


def own_pair_module(model: Any) -> torch.nn.Module | None:
    """The module whose own model/guide pair ``model`` stands for (the module, or its bound
    ``model`` method), else None."""
    owner = model if isinstance(model, torch.nn.Module) else getattr(model, "__self__", None)
    if owner is not None and (model is owner or model == getattr(owner, "model", None)):
        return owner
    return None


def declared_plate(model: Any) -> str | None:
    """The data plate a module names (``data_plate``) for its own pair: its objective may
    hold another plate that encloses every site too (a score model's time samples).

    Example:
        >>> class Points(torch.nn.Module):
        ...     data_plate = "points"
        ...     def model(self, x): ...
        >>> m = Points()
        >>> declared_plate(m), declared_plate(m.model), declared_plate(lambda x: None)
        ('points', 'points', None)
    """
    return getattr(own_pair_module(model), "data_plate", None)


def check_joint_is_density(model: Any) -> None:
    """Refuses a module's own model/guide pair when the module declares (with
    ``joint_is_density = False``) that on data it is a training objective estimating a bound,
    not a joint density over each example's latents with its proposal."""
    owner = own_pair_module(model)
    if owner is not None and not getattr(owner, "joint_is_density", True):
        raise ValueError(
            f"{type(owner).__name__}'s model and guide on data are a training objective "
            "that estimates a bound (its joint_is_density is False), not a density over each "
            "example's whole latent trajectory and its proposal: exp of its log-weight is no "
            "importance weight, so an IWAE of it bounds nothing. Use evaluate_elbo for the "
            "bound it estimates, or an exact likelihood of the model (the probability-flow "
            "log_prob of a score or flow-matching model or a DDPM, or for a DDPM "
            "iwae_log_likelihood(m.chain_model, data, guide=m.chain_guide), the IWAE over "
            "its whole chain)"
        )
