"""The gradient all-reduce of data-parallel training (see :mod:`pyro_gen.infer.distributed`):
every rank's weighted loss and gradients summed in one collective per dtype."""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import torch
import torch.distributed as dist


class GradReducer:
    """Sums ``weight`` times every rank's loss and parameter gradients in one all-reduce
    per dtype, then clips the summed gradient.

    Called by :class:`~pyro_gen.infer.compiled.CompiledSVI` as ``reduce(loss, params)``
    between the gradient and the update, with the gradients in ``params[i].grad``; the
    gradients are replaced in place and the combined loss is returned. Parameters are
    ordered by their param-store names; the first time a set of names is seen, the ranks
    check that they agree (a rank whose model reaches other parameters is an error, not a
    silent mix-up).

    Args:
        device: where the reduction runs (this rank's training device).
        grad_clip: clip the global norm of the reduced gradient to this.
    """

    def __init__(self, device: torch.device, grad_clip: float | None) -> None:
        self.device, self.grad_clip = device, grad_clip
        self.weight = 1.0  # w_r, set by fit before each step
        self._layouts: set[tuple[str, ...]] = set()
        self._reduced = False

    def begin_step(self, weight: float) -> None:
        """Called by ``fit`` before each step, with this rank's weight :math:`w_r`."""
        self.weight, self._reduced = weight, False

    def __call__(self, loss: torch.Tensor, params: Sequence[torch.Tensor]) -> torch.Tensor:
        if self._reduced:
            # Every rank must reduce once per step, or the collectives pair up wrongly.
            raise RuntimeError(
                "this process's step ran its gradient twice (a batch that failed one of the "
                "model's input checks in the compiled step is re-run as a plain step), which "
                "data-parallel training cannot match on the other processes: fix the batch "
                "the model refuses, or train with compile=False"
            )
        self._reduced = True
        store = pyro.get_param_store()
        named = sorted(
            ((store.param_name(p), p) for p in params if p.grad is not None),
            key=lambda item: str(item[0]),
        )
        if any(name is None for name, _ in named):
            raise RuntimeError(
                "a parameter being trained is not in the Pyro param store, so the processes "
                "cannot match it by name: register networks with pyro.module"
            )
        self._check_layout(tuple(name for name, _ in named))
        grads = [p.grad for _, p in named]
        shape = loss.shape  # a 0-dim loss, or one term each of a loss with several
        loss = loss.detach().reshape(-1).to(self.device)
        buckets: dict[torch.dtype, list[torch.Tensor]] = {}
        for t in (loss, *grads):
            buckets.setdefault(t.dtype, []).append(t)
        for tensors in buckets.values():
            flat = torch.cat([t.reshape(-1).to(self.device) for t in tensors])
            if self.weight != 1.0:
                flat.mul_(self.weight)
            dist.all_reduce(flat)
            for t, piece in zip(tensors, flat.split([t.numel() for t in tensors])):
                t.copy_(piece.view_as(t))
        if self.grad_clip is not None and grads:
            torch.nn.utils.clip_grad_norm_([p for _, p in named], self.grad_clip)
        return loss.reshape(shape)

    def _check_layout(self, names: tuple[str, ...]) -> None:
        if names in self._layouts:
            return
        everyone = [None] * dist.get_world_size()
        dist.all_gather_object(everyone, names)
        if any(n != names for n in everyone):
            differ = [r for r, n in enumerate(everyone) if n != names]
            raise RuntimeError(
                f"the processes' gradients reach different parameters (rank "
                f"{dist.get_rank()}: {list(names)}; ranks {differ} differ): data-parallel "
                "training needs a model whose parameters do not depend on the batch"
            )
        self._layouts.add(names)
