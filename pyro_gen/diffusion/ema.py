"""Exponential moving average of a network's parameters, for sampling."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from pyro_gen.infer.callbacks import changes_only_tensors

__all__ = ["EMA", "ema_callback"]


class EMA(nn.Module):
    """Keeps :math:`\\bar\\theta \\leftarrow d\\,\\bar\\theta + (1 - d)\\,\\theta` after each
    :meth:`update`, with the warm-up :math:`d_n = \\min(d, (1 + n)/(10 + n))` so early averages
    are not dominated by the initialization.

    The averages are buffers (they follow ``.to(device)`` and ``state_dict``); the tracked
    module is held outside the module tree so its parameters are not registered twice.
    Calling the object updates it, so it can also serve as a training callback.

    Args:
        module: the network whose parameters are averaged.
        decay: :math:`d` in (0, 1).

    References:
        Ho, Jain, Abbeel. Denoising Diffusion Probabilistic Models (appendix B).
        arXiv:2006.11239.

    Example:
        >>> net = nn.Linear(2, 1)
        >>> ema = EMA(net, decay=0.5)
        >>> with torch.no_grad():
        ...     _ = net.bias.fill_(1.0)
        >>> ema.update()
        >>> with ema.average_parameters():
        ...     bool(net.bias.item() < 1.0)
        True
        >>> net.bias.item()
        1.0
    """

    num_updates: torch.Tensor

    def __init__(self, module: nn.Module, decay: float = 0.999) -> None:
        super().__init__()
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must lie in (0, 1), got {decay}")
        self.decay = float(decay)
        self.__dict__["_target"] = module
        self._names = [n for n, p in module.named_parameters() if p.requires_grad]
        for n, p in module.named_parameters():
            if p.requires_grad:
                self.register_buffer(self._key(n), p.detach().clone())
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

    @staticmethod
    def _key(name: str) -> str:
        return "avg__" + name.replace(".", "__")

    @torch.no_grad()
    def update(self) -> None:
        """Move the averages towards the module's current parameters."""
        n = int(self.num_updates)
        d = min(self.decay, (1 + n) / (10 + n))
        params = dict(self._target.named_parameters())
        for name in self._names:
            avg = getattr(self, self._key(name))
            avg.lerp_(params[name].detach().to(avg.dtype), 1 - d)
        self.num_updates += 1

    def __call__(self, *args, **kwargs) -> None:  # usable as a callback of any signature
        self.update()

    @contextmanager
    def average_parameters(self) -> Iterator[nn.Module]:
        """Temporarily load the averages into the module (restored on exit); before the first
        :meth:`update` there is no average, and the module keeps its own weights.

        Why: the averages start as a copy of the initial weights, so a model trained without
        updates (in Pyro's own ``SVI`` loop, or restored from ``pyro.get_param_store()``,
        which holds no buffers) sampled from its untrained initial network: a DDPM on
        N(3, 0.5^2) data drew a mean of -618 where its trained weights drew 2.9.
        """
        if int(self.num_updates) == 0:
            yield self._target
            return
        params = dict(self._target.named_parameters())
        saved = {n: params[n].detach().clone() for n in self._names}
        with torch.no_grad():
            for n in self._names:
                params[n].copy_(getattr(self, self._key(n)))
        try:
            yield self._target
        finally:
            with torch.no_grad():
                for n in self._names:
                    params[n].copy_(saved[n])


@changes_only_tensors
def ema_callback(step: int, gen_model: nn.Module) -> None:
    """Per-step callback for :func:`pyro_gen.infer.fit` (``step_callbacks=[ema_callback]``):
    updates every :class:`EMA` held inside ``gen_model`` after the optimizer step.

    The update lives here rather than in ``model()`` because the average should follow the
    parameter update, once per step, and a model without side effects is what the compiled
    training step can record.

    Args:
        step: the optimisation step just taken (unused: the EMA counts its own updates).
        gen_model: the model being trained, e.g. a
            :class:`~pyro_gen.diffusion.DDPM` built with ``ema_decay``.

    Raises:
        ValueError: when ``gen_model`` holds no EMA (build it with ``ema_decay``).

    Example:
        >>> class Holder(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.net = nn.Linear(2, 1)
        ...         self.ema = EMA(self.net, decay=0.9)
        >>> h = Holder()
        >>> ema_callback(0, h)
        >>> int(h.ema.num_updates)
        1
    """
    emas = [m for m in gen_model.modules() if isinstance(m, EMA)]
    if not emas:
        raise ValueError(
            f"ema_callback: {type(gen_model).__name__} holds no EMA; build the model with "
            "ema_decay (e.g. build_ddpm(..., ema_decay=0.999)) or drop the callback"
        )
    for ema in emas:
        ema.update()
