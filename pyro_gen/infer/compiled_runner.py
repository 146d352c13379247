"""Running a recorded SVI step's program: its inputs (parameters, data, annealing factors
filled in place, fresh noise), and the checks that it still stands for the model (values
the model branched on, the loss against Pyro's on the same draws), undone when it does not
(a mixin of :class:`~pyro_gen.infer.compiled.CompiledSVI`)."""

from __future__ import annotations

import math

import torch

from pyro_gen.infer.compiled_backends import resolved_backend
from pyro_gen.infer.compiled_elbo import BETA_DTYPE
from pyro_gen.infer.compiled_recording import (
    _Noise,
    _Program,
    _Unsupported,
    noise_devices,
    noise_rng_state,
    set_noise_rng_state,
)

__all__ = ["ProgramRunner"]


class _StaleConstants(Exception):
    """A recorded program's loss is not Pyro's on the same draws: it holds a value that
    has changed since it was recorded."""


class ProgramRunner:
    """Mixin of :class:`~pyro_gen.infer.compiled.CompiledSVI`: :meth:`_run`.

    Reads the step's ``backend``, ``_kl`` and ``_betas``.

    Example:
        A recorded step of ``-|w|^2`` returns its loss and the gradient ``2 w``, with no
        update (the step applies it):

        >>> import pyro
        >>> from pyro_gen.infer.compiled import CompiledSVI
        >>> def model():
        ...     pyro.factor("f", -pyro.param("w", torch.ones(2)).square().sum())
        >>> svi = CompiledSVI(model, lambda: None, pyro.optim.SGD({"lr": 0.1}), backend="fx")
        >>> _, _ = svi.step(), svi.step()  # a plain step, then the recording
        >>> (prog,) = svi._programs.values()
        >>> w = pyro.param("w").detach().clone()
        >>> loss, grads, found, failed = svi._run(prog, [])
        >>> torch.allclose(loss, w.square().sum()), torch.allclose(grads[0], 2 * w)
        (True, True)
        >>> float(found), failed is None  # the guard's flag; no input checks
        (0.0, True)
    """

    def _beta_values(self) -> list[float]:
        return [float(m.beta() if callable(m.beta) else m.beta) for m in self._kl]

    def _run(
        self, prog: _Program, data: list[torch.Tensor], expected_loss: float | None = None
    ) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor | None, torch.Tensor | None]:
        """Runs the program: the loss, the gradients, the guard's non-finite flag (None
        unless the program computes it) and the input checks' flag (None unless the model
        has input checks). Values the model branched on are read back and compared here,
        and the loss with ``expected_loss`` (Pyro's on the same draws) where given."""
        dtype = prog.params[0].dtype if prog.params else torch.get_default_dtype()
        device = data[0].device if data else torch.device("cpu")
        betas = self._beta_tensors(dtype, device)
        # A step whose branch changed, or whose loss is not Pyro's, does not count: its noise
        # draws and the buffers it updated (running statistics) are put back before the
        # plain step redoes it.
        checked = bool(prog.guards) or expected_loss is not None
        kept = [e for e in prog.extras if torch.is_tensor(e)] if checked else []
        before = [t.clone() for t in kept]
        rng = noise_rng_state(noise_devices(data)) if checked else None
        extras = [e.draw() if isinstance(e, _Noise) else e for e in prog.extras]
        cuda_graphs = prog.compiled and device.type == "cuda" and resolved_backend(self.backend)
        if cuda_graphs == "inductor":
            torch.compiler.cudagraph_mark_step_begin()
        with torch.no_grad():
            out = prog.fn(*prog.params, *data, *betas, *extras)
        loss = out[0].clone() if cuda_graphs == "inductor" else out[0]
        n_grads = len(prog.grad_params)
        found = out[1 + n_grads] if prog.guarded else None
        failed = out[1 + n_grads + prog.guarded] if prog.checked else None

        def undo() -> None:
            with torch.no_grad():
                for target, value in zip(kept, before):
                    target.copy_(value)
            set_noise_rng_state(rng, noise_devices(data))

        for read, expected in zip(out[1 + n_grads + prog.guarded + prog.checked :], prog.guards):
            # One host read per value the model branched on (none for most models).
            if read.item() != expected:
                undo()
                raise _Unsupported(
                    "data-dependent control flow: a tensor value the model or guide branched "
                    f"on changed ({expected!r} when recorded, {read.item()!r} now)"
                )
        if expected_loss is not None:
            got = float(loss)
            # Rounding differs between the program and Pyro's run by far less than this; a
            # constant that went stale (a Python number the model reads) moves it by more.
            if (
                math.isfinite(got)
                and math.isfinite(expected_loss)
                and not math.isclose(got, expected_loss, rel_tol=1e-4, abs_tol=1e-4)
            ):
                undo()
                raise _StaleConstants(
                    f"the recorded step's loss ({got:.6g}) is not Pyro's on the same draws "
                    f"({expected_loss:.6g}): a value the model or guide reads besides its "
                    "parameters and inputs, held as a constant by the recording, has changed"
                )
        return loss, list(out[1 : 1 + n_grads]), found, failed

    def _beta_tensors(self, dtype: torch.dtype, device: torch.device) -> list[torch.Tensor]:
        values = self._beta_values()
        held = self._betas.get((dtype, device))
        if held is None or len(held) != len(values):
            held = [torch.empty((), dtype=BETA_DTYPE, device=device) for _ in values]
            self._betas[(dtype, device)] = held
        for t, v in zip(held, values):
            t.fill_(v)  # a kernel argument: no copy from the host
        return held
