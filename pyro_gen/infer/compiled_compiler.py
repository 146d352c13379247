"""Compiling a recorded SVI step's program with the step's backend
(:func:`~pyro_gen.infer.compiled_backends.compile_program`), on example inputs that leave
the captured buffers as they were (a mixin of :class:`~pyro_gen.infer.compiled.CompiledSVI`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from pyro_gen.infer.compiled_backends import compile_program, resolved_backend
from pyro_gen.infer.compiled_elbo import BETA_DTYPE
from pyro_gen.infer.compiled_optim import shares_elements
from pyro_gen.infer.compiled_recording import _Noise, _Program

__all__ = ["ProgramCompiler"]


class ProgramCompiler:
    """Mixin of :class:`~pyro_gen.infer.compiled.CompiledSVI`: :meth:`_compile`.

    Reads the step's ``backend`` and calls ``_beta_values`` and ``_quiet_rng``.

    Example:
        TorchScript takes the recorded step of ``-|w|^2`` and computes what it computes:

        >>> import pyro
        >>> from pyro_gen.infer.compiled import CompiledSVI
        >>> def model():
        ...     pyro.factor("f", -pyro.param("w", torch.ones(2)).square().sum())
        >>> svi = CompiledSVI(model, lambda: None, pyro.optim.SGD({"lr": 0.1}), backend="fx")
        >>> _, _ = svi.step(), svi.step()  # a plain step, then the recording
        >>> (prog,) = svi._programs.values()
        >>> scripted = svi._compile(prog, [], backend="jit")
        >>> inputs = svi._example_inputs(prog, [])
        >>> all(torch.equal(a, b) for a, b in zip(scripted(*inputs), prog.gm(*inputs)))
        True
    """

    def _compile(
        self, prog: _Program, data: list[torch.Tensor], backend: str | None = None
    ) -> Callable[..., Any]:
        device = prog.params[0].device if prog.params else torch.device("cpu")
        # Compiling runs the program on example inputs; the buffers it captured (running
        # statistics) must not count those runs as steps. A constant whose elements share
        # memory (a prior's expanded loc, as PyroSample's ``Normal(0, 1).expand(...)``
        # holds) cannot be written in place, by the program or by this restore.
        buffers = [t for t in prog.extras if torch.is_tensor(t) and not shares_elements(t)]
        saved = [t.clone() for t in buffers]
        try:
            return compile_program(
                prog.gm,
                backend or resolved_backend(self.backend),
                device,
                lambda: self._example_inputs(prog, data),
                lambda: self._quiet_rng(prog.params),
            )
        finally:
            with torch.no_grad():
                for target, value in zip(buffers, saved):
                    target.copy_(value)

    def _example_inputs(self, prog: _Program, data: list[torch.Tensor]) -> list[torch.Tensor]:
        # The program returns gradients and mutates no parameter; copies of data and
        # captured buffers keep a warm-up from touching running statistics.
        device = data[0].device if data else torch.device("cpu")
        out = [*prog.params, *(t.clone() for t in data)]
        out += [torch.tensor(b, dtype=BETA_DTYPE, device=device) for b in self._beta_values()]
        for e in prog.extras:
            out.append(e.draw() if isinstance(e, _Noise) else e.clone())
        return out
