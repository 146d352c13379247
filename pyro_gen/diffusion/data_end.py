"""Whether a score model's score exists at the data-end time ``eps`` the samplers and the
probability-flow likelihood run to.

Why a check: a network predicting ``"eps"``, ``"x0"`` or ``"v"`` becomes a score by dividing
by the marginal std :math:`\\sigma(t)`, and a VP, sub-VP or DDPM schedule SDE has
:math:`\\sigma(0) = 0`. Asked for ``eps=0``, the probability-flow ODE then stopped inside
torchdiffeq with ``AssertionError: underflow in dt 0.0`` (its drift NaN), and the
predictor-corrector sampler returned NaN draws without a word.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["check_score_at_data_end", "prediction_of"]


def prediction_of(model: Any) -> str | None:
    """What ``model``'s network predicts (``"eps"``, ``"x0"``, ``"v"``, ``"score"``): a
    :class:`~pyro_gen.diffusion.ScoreModel`'s ``param``, a DDPM's (read as a score model);
    ``None`` for a user's object that gives its score directly.

    Example:
        >>> from pyro_gen.diffusion import build_ddpm
        >>> from pyro_gen.diffusion.score import DDPMScore
        >>> prediction_of(DDPMScore(build_ddpm((2,), timesteps=5, hidden_dim=8)))
        'eps'
    """
    param = getattr(model, "param", None)
    if param is None:
        param = getattr(getattr(model, "ddpm", None), "param", None)
    return param if isinstance(param, str) else None


def check_score_at_data_end(model: Any, eps: float, what: str) -> None:
    """Refuses ``eps`` where ``model``'s score is undefined: :math:`\\sigma(\\text{eps}) = 0`
    and a network predicting anything but the score itself (the conversion divides by
    :math:`\\sigma`). A score given directly (``param="score"``, or a user's object with a
    ``score`` method) is left to the user: it may well be finite at :math:`t = 0`.

    Raises:
        ValueError: naming the model's prediction, the SDE, and the ``eps`` to use instead.

    Example:
        >>> from pyro_gen.diffusion import build_ddpm
        >>> from pyro_gen.diffusion.score import DDPMScore
        >>> sm = DDPMScore(build_ddpm((2,), timesteps=5, hidden_dim=8))
        >>> check_score_at_data_end(sm, 0.2, "the ODE sampler")  # sigma(0.2) > 0: fine
        >>> check_score_at_data_end(sm, 0.0, "the ODE sampler")
        Traceback (most recent call last):
        ...
        ValueError: the ODE sampler runs to eps=0.0, where this model has no score: ...
    """
    param = prediction_of(model)
    if param in (None, "score") or not 0 <= eps < 1:  # a time out of range: the caller's error
        return
    sde = model.sde
    ref = next(iter([*sde.buffers(), *sde.parameters()]), None)
    dtype = ref.dtype if ref is not None else torch.float64
    device = ref.device if ref is not None else None
    with torch.no_grad():
        sigma = sde.marginal(torch.tensor(float(eps), dtype=dtype, device=device))[1]
    if float(sigma) > 0:
        return
    default = getattr(model, "eps", None)
    instead = f" (the model's own is {default:g})" if default else ""
    raise ValueError(
        f"{what} runs to eps={eps}, where this model has no score: its network predicts "
        f"{param!r}, which becomes a score by dividing by the noise std sigma(t), and "
        f"{type(sde).__name__} has sigma({eps}) = 0. Use an eps > 0{instead}"
    )
