"""Derivatives of a transform's own map (a log-det by ``torch.autograd.grad``), whatever
grad mode the caller runs under."""

from __future__ import annotations

from typing import Any

import torch


class _GradOutsideInference:
    """``torch.inference_mode(False)`` and ``torch.enable_grad()`` together."""

    __slots__ = ("_modes",)

    def __enter__(self) -> None:
        self._modes = (torch.inference_mode(False), torch.enable_grad())
        for mode in self._modes:
            mode.__enter__()

    def __exit__(self, *exc: object) -> None:
        for mode in reversed(self._modes):
            mode.__exit__(*exc)


def autograd_enabled() -> Any:
    """A context in which a transform can take derivatives of its own map (a log-det by
    ``torch.autograd.grad``), whatever the caller's mode.

    ``torch.enable_grad()`` is enough under ``no_grad``, but not under
    ``torch.inference_mode()`` (how Lightning's validation and many evaluation scripts run):
    there it records nothing and the derivative fails with "element 0 of tensors does not
    require grad". Inside this context, pass the caller's tensors through
    :func:`graph_input` first.
    """
    if torch.is_inference_mode_enabled():
        return _GradOutsideInference()
    return torch.enable_grad()


def graph_input(x: torch.Tensor) -> torch.Tensor:
    """``x``, or a normal copy of it when it is an inference tensor (one made under
    ``torch.inference_mode``), which autograd can neither differentiate nor save."""
    return x.clone() if x.is_inference() else x
