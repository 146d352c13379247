"""How a step's gradients become an update: one fused optimizer per Pyro optimizer (shared
with every loop given it), gradients summed over processes when data-parallel, and the guard
that skips an update whose loss or gradient is not finite, as :class:`torch.amp.GradScaler`
does."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pyro
import pyro.optim
import torch

from pyro_gen.infer.compiled_optim import (
    _FusedParamView,
    flag_tensors,
    fuse,
    guarded_loss,
    non_finite,
    skipped_loss,
    takes_found_inf,
)
from pyro_gen.infer.fused_adam_step import fused_adam_step


class GuardedUpdate:
    """The update of :class:`~pyro_gen.infer.compiled.CompiledSVI`, for the recorded program
    and for the plain Pyro step alike.

    Args:
        optim: the Pyro optimizer. ``Adam``/``AdamW`` with a dict of arguments and no
            ``clip_args`` run as one fused torch optimizer whose per-parameter state Pyro's
            optimizer still reads and steps; anything else steps through ``optim``.
        grad_reducer: ``reduce(loss, params)`` run between the gradients (in ``p.grad``) and
            the update (data-parallel training's all-reduce).

    Example:
        >>> w = torch.zeros(2, requires_grad=True)
        >>> update = GuardedUpdate(pyro.optim.Adam({"lr": 0.1}))
        >>> update.register([w])
        >>> w.grad = torch.tensor([1.0, float("nan")])
        >>> update.plain(2.0, [w], guard=True, fused=True)  # skipped: w stays where it was
        tensor(nan, dtype=torch.float64)
        >>> w.tolist()
        [0.0, 0.0]
    """

    def __init__(
        self,
        optim: pyro.optim.PyroOptim,
        grad_reducer: Callable[[torch.Tensor, list[torch.Tensor]], torch.Tensor] | None = None,
    ) -> None:
        self.optim = optim
        self.grad_reducer = grad_reducer
        self.optimizer: torch.optim.Optimizer | None = None  # the fused one, once made
        self.params: list[torch.Tensor] = []
        self._param_ids: set[int] = set()  # of params: register runs on every plain step
        self._flags: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}
        self._raised: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}
        # The CPU's raised flag as a NumPy array over its memory: reading it costs a quarter
        # of Tensor.item()'s dispatch (and the guard reads it every step).
        self._raised_on_cpu: tuple[torch.Tensor, np.ndarray] | None = None

    def register(self, params: list[torch.Tensor]) -> None:
        """Adds parameters to the fused optimizer (when ``optim`` can be fused)."""
        new = [p for p in params if id(p) not in self._param_ids]
        if not new:
            return
        self.params.extend(new)
        self._param_ids.update(map(id, new))
        # One fused optimizer per Pyro optimizer, shared with every other loop given it.
        self.optimizer = fuse(self.optim, new)
        if self.optimizer is not None:
            self._consume_waiting_state()

    def _consume_waiting_state(self) -> None:
        waiting = self.optim._state_waiting_to_be_consumed
        if not waiting:
            return
        store = pyro.get_param_store()
        for p in self.params:
            view = self.optim.optim_objs.get(p)
            if isinstance(view, _FusedParamView):
                state = waiting.pop(store.param_name(p), None)
                if state is not None:
                    view.load_state_dict(state)

    def raised_flags(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The flag tensors (:func:`flag_tensors`) that recorded programs whose flag the
        host reads raise with ``non_finite(..., reset=False)``: kept here between steps,
        cleared by :meth:`program` when it reads them raised, so a program neither makes
        nor clears them (three ops a step)."""
        if device not in self._raised:
            self._raised[device] = flag_tensors(device)
            if device.type == "cpu":
                flag = self._raised[device][0]
                self._raised_on_cpu = flag, flag.numpy()
        return self._raised[device]

    def program(
        self,
        grad_params: list[torch.Tensor],
        loss: torch.Tensor,
        grads: list[torch.Tensor],
        found: torch.Tensor | None,
        failed: torch.Tensor | None,
        *,
        guard: bool,
        read_flags: bool = False,
        hold_failed: Callable[[torch.Tensor], None],
    ) -> torch.Tensor | None:
        """Applies a recorded program's gradients unless the guard finds a non-finite loss
        or gradient or the batch failed an input check; ``found`` is the flag the program
        computed (None when it has none), ``failed`` the input checks' flag (None when
        there are none), ``hold_failed(failed)`` keeps a batch whose checks are read later.
        ``read_flags``: read the flags on the host now (the CPU, where a read is free);
        otherwise an accelerator's fused update reads ``found`` on the device.

        Returns:
            the loss, or None when the batch failed an input check that was read here (the
            caller runs the batch as a plain step). Where the flags stay on the device, a
            failing batch is kept there for :meth:`CompiledSVI.check`.
        """
        for p, g in zip(grad_params, grads):
            p.grad = g
        if self.grad_reducer is not None:  # data-parallel: every process updates with the sum
            if failed is not None:
                # A batch this process refuses makes every process skip the step.
                loss = torch.where(failed > 0, math.nan, loss)
            loss = self.grad_reducer(loss, grad_params)
            if found is not None:
                loss, found = guarded_loss(loss, grads)
        if self.optimizer is not None:
            self._consume_waiting_state()
        try:
            if found is not None and read_flags:
                # On the CPU a read is free, while fused Adam's found_inf path cost more than
                # the read (measured: benchmarks/RESULTS.md, step guard): read the program's
                # flag, and the input checks' flag after it.
                if not self._raised_now(found):  # the common case, read here
                    if failed is not None and failed.item():
                        return None
                    self.apply(grad_params)
                    return loss
                return self._read_flags(grad_params, loss, found, failed)
            if found is not None:  # on an accelerator: the program made the flag
                if failed is not None:
                    hold_failed(failed)
                if takes_found_inf(self.optimizer):
                    # The fused kernels skip the whole update (and undo the step count)
                    # when found_inf is 1: no host read-back.
                    fused_adam_step(self.optimizer, found_inf=found)  # type: ignore[arg-type]
                elif not found.item():  # other optimizers: one read of the flag
                    self.apply(grad_params)
                return loss
            if not guard:
                if failed is not None and failed.item():
                    return None
                self.apply(grad_params)
                return loss
            # A program recorded without the guard, stepped with it: check after it.
            return self._read_flags(
                grad_params, loss, self._non_finite_flag([loss, *grads]), failed
            )
        finally:
            for p in grad_params:
                p.grad = None

    def plain(
        self,
        loss: float | tuple[float, ...],
        params: list[torch.Tensor],
        *,
        guard: bool,
        fused: bool,
    ) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """Applies the gradients a plain Pyro step left in ``p.grad`` (and clears them);
        ``loss`` is the step's, already read back, so the guard reads its flag too. The
        update is the fused optimizer's with ``fused`` or once a program made it (it keeps
        the same per-parameter state, which Pyro's optimizer reads and writes), else
        Pyro's own.

        A loss of several terms (a tuple: ReweightedWakeSleep's model and guide losses) is
        returned as a tuple of 0-dim tensors, as Pyro's ``SVI.step`` returns it; the update
        is skipped when any term is not finite, and then every term is returned non-finite.
        """
        terms = loss if isinstance(loss, tuple) else (loss,)
        if self.grad_reducer is not None:  # every process skips, or none does
            summed = self.grad_reducer(torch.tensor(terms, dtype=torch.float64), params)
            terms = tuple(summed.tolist())
        try:
            grads = [p.grad for p in params if p.grad is not None]
            skip = not all(map(math.isfinite, terms)) or (
                guard and bool(grads) and bool(non_finite(grads).item())
            )
            # Pyro's loss is a Python float (a double): kept as float64, every digit of it
            # (the default dtype would round a float64 model's loss to float32)
            values = [torch.tensor(t, dtype=torch.float64) for t in terms]
            if skip:
                out = tuple(map(skipped_loss, values))
            else:
                if fused or self.optimizer is not None:
                    self.register(params)
                self.apply(params)
                out = tuple(values)
            return out if isinstance(loss, tuple) else out[0]
        finally:
            for p in params:
                p.grad = None

    def _raised_now(self, found: torch.Tensor) -> bool:
        """``found``'s value, read through the NumPy view when it is the kept CPU flag."""
        kept = self._raised_on_cpu
        if kept is not None and found is kept[0]:
            return bool(kept[1])
        return bool(found.item())

    def _read_flags(
        self,
        grad_params: list[torch.Tensor],
        loss: torch.Tensor,
        found: torch.Tensor,
        failed: torch.Tensor | None,
    ) -> torch.Tensor | None:
        """The update, unless the flags say a batch failed an input check (None: the caller
        runs it as a plain step) or a value was not finite. A raised
        non-finite flag is checked again exactly: a program's flag may come from sums of the
        gradients (:func:`~pyro_gen.infer.compiled_check_placement.check_where_made`), and
        a sum of finite values can overflow."""
        if failed is None:
            raised, failed_now = found.item(), 0.0
        elif found.device.type == "cpu":
            # Two reads, not one of ``found + 2 * failed``: a CPU read costs well under a
            # microsecond, the two ops that would combine them several (1% of a 1 ms step).
            raised, failed_now = found.item(), failed.item()
        else:  # one transfer where a read waits for the device
            raised, failed_now = torch.stack([found, failed.to(found.dtype)]).tolist()
        if raised:  # a raised flag stays raised (raised_flags) until read: clear it
            found.zero_()
            if found.device in self._raised:  # found is it, unless a backend copied it
                self._raised[found.device][0].zero_()
        if failed_now:
            return None
        if raised:  # rare: the exact check decides
            grads = [p.grad for p in grad_params if p.grad is not None]
            if self._non_finite_flag([loss, *grads]).item():
                return skipped_loss(loss)
        self.apply(grad_params)
        return loss

    def _non_finite_flag(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        """:func:`non_finite` with the flag tensors kept between steps (two fewer ops)."""
        device = tensors[0].device
        if device not in self._flags:
            self._flags[device] = flag_tensors(device)
        return non_finite(tensors, self._flags[device])

    def apply(self, params: list[torch.Tensor]) -> None:
        """One optimizer step on ``params``' gradients, with no guard."""
        if self.optimizer is not None:
            fused_adam_step(self.optimizer)
        else:
            self.optim(params)
