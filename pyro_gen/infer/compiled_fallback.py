"""The plain Pyro step of a compiled SVI step: where no recorded program stands for the
model (a new input signature, a loss or model the program cannot take, ``backend="pyro"``),
the step runs Pyro's own ``loss_and_grads`` and the same guarded update (a mixin of
:class:`~pyro_gen.infer.compiled.CompiledSVI`)."""

from __future__ import annotations

import logging

import pyro
import torch

logger = logging.getLogger("pyro_gen")

__all__ = ["PlainFallback"]


class PlainFallback:
    """Mixin of :class:`~pyro_gen.infer.compiled.CompiledSVI`: :meth:`_pyro_step` and
    :meth:`_fall_back`.

    Reads the step's ``model``, ``guide``, ``loss``, ``grad_clip``, ``step_guard``,
    ``fused_update`` and ``_updates``, and calls ``_networks``.

    Example:
        >>> import pyro.distributions as dist
        >>> from pyro_gen.infer.compiled import CompiledSVI
        >>> def model(x):
        ...     loc = pyro.param("loc", torch.zeros(1))
        ...     with pyro.plate("data", x.shape[0]):
        ...         pyro.sample("x", dist.Normal(loc, 1.0), obs=x)
        >>> svi = CompiledSVI(model, lambda x: None, loss=pyro.infer.TraceGraph_ELBO())
        >>> svi.fallback_reason
        'TraceGraph_ELBO is not supported'
        >>> loss = svi.step(torch.full((4,), 1.0))  # Pyro's step: 4 * (log(2 pi) / 2 + 1 / 2)
        >>> round(float(loss), 4)
        5.6758
    """

    def _fall_back(self, reason: str) -> None:
        self.fallback_reason = reason
        # Said once the plain step has run: a model that fails in Pyro's own step as well
        # (a user's shape error, found first by the recording) gets its error alone, not a
        # line about the compiled step before it.
        self._unannounced = reason

    def _announce_fallback(self) -> None:
        reason = self.__dict__.pop("_unannounced", None)
        if reason is not None:
            logger.warning("pyro_gen: compiled SVI step off, using plain Pyro SVI: %s", reason)

    def _plain_loss_and_grads(
        self, args: tuple, kwargs: dict
    ) -> tuple[float | tuple[float, ...], list[torch.Tensor]]:
        """Pyro's loss and gradients, clipped as the program clips them. The loss is a float,
        or a tuple of floats for a loss with several terms, which Pyro's SVI returns as they
        are (ReweightedWakeSleep: the model's and the guide's loss)."""
        with self._networks(args, kwargs), pyro.poutine.trace(param_only=True) as capture:
            if hasattr(self.loss, "loss_and_grads"):
                loss = self.loss.loss_and_grads(self.model, self.guide, *args, **kwargs)
            else:  # a callable loss, as Pyro's SVI takes one (EnergyDistance)
                loss = self.loss(self.model, self.guide, *args, **kwargs)
                if getattr(loss, "requires_grad", False):
                    loss.backward()
        self._announce_fallback()
        # In the trace's order, not a set's (memory addresses): clip_grad_norm_ sums the norms
        # in this order, and a resumed run must clip by the same number as a straight one.
        params = list(
            dict.fromkeys(s["value"].unconstrained() for s in capture.trace.nodes.values())
        )
        if self.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(params, self.grad_clip)
        if isinstance(loss, tuple):
            return tuple(map(_as_float, loss)), params
        return _as_float(loss), params

    def _pyro_step(self, args: tuple, kwargs: dict) -> torch.Tensor:
        """The step as SVI takes it, updated by :meth:`GuardedUpdate.plain`."""
        loss, params = self._plain_loss_and_grads(args, kwargs)
        return self._updates.plain(loss, params, guard=self.step_guard, fused=self.fused_update)


def _as_float(loss: torch.Tensor | float) -> float:
    return float(loss.detach() if torch.is_tensor(loss) else loss)
