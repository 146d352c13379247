"""Pyro's own run of a compiled SVI step's model and guide, outside any recorded program:
the trace signature and loss that check a program against Pyro on the same draws, on a
forked random stream and with buffers put back, so that training sees neither (a mixin of
:class:`~pyro_gen.infer.compiled.CompiledSVI`)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils import _pytree as pytree

from pyro_gen.infer.compiled_elbo import BETA_DTYPE, _bound_betas, _elbo_particle, _signature
from pyro_gen.infer.compiled_precision import networks_in
from pyro_gen.infer.compiled_recording import _Unsupported, noise_devices
from pyro_gen.infer.local_params import LocalParamError, local_params
from pyro_gen.infer.undo_writes import UndoWrites

__all__ = ["EagerRuns"]


class EagerRuns:
    """Mixin of :class:`~pyro_gen.infer.compiled.CompiledSVI`: :meth:`_eager_run` and the
    context every run of the model and guide takes (networks' precision, quiet RNG).

    Reads the step's ``model``, ``guide``, ``loss``, ``mixed_precision``, ``_kl`` and
    ``_local_params``, and calls ``_beta_values``.

    Example:
        >>> import pyro
        >>> import pyro.distributions as dist
        >>> from pyro_gen.infer.compiled import CompiledSVI
        >>> def model(x):
        ...     loc = pyro.param("loc", torch.zeros(1))
        ...     with pyro.plate("data", x.shape[0]):
        ...         pyro.sample("x", dist.Normal(loc, 1.0), obs=x)
        >>> svi = CompiledSVI(model, lambda x: None, backend="fx")
        >>> state = torch.get_rng_state()
        >>> signature, loss = svi._eager_run((torch.zeros(4),), {})
        >>> round(loss, 4), torch.equal(state, torch.get_rng_state())
        (3.6758, True)
    """

    def _traces(self, args: tuple, kwargs: dict) -> Iterator[tuple[Any, Any]]:
        return self.loss._get_traces(self.model, self.guide, args, kwargs)

    def _eager_signature(self, args: tuple, kwargs: dict) -> tuple:
        return self._eager_run(args, kwargs, with_loss=False)[0]

    def _eager_run(
        self, args: tuple, kwargs: dict, *, with_loss: bool = True
    ) -> tuple[tuple, float | None]:
        """The trace signature of a step on these inputs and (``with_loss``) its loss, from
        Pyro's own run of the model and guide (no update, no gradient)."""
        # On copies of the inputs: transforms cache their last result by the input's
        # identity (Pyro's cache_size=1), and a no-grad result must not be found by the
        # step that follows on the same tensors.
        args, kwargs = pytree.tree_map(
            lambda v: v.clone() if torch.is_tensor(v) else v, (args, kwargs)
        )
        # The check is not a step: running statistics and other buffers it would update
        # (batch norm's) are put back after it, so that they see each step once, as in SVI.
        with torch.no_grad(), self._networks(args, kwargs), UndoWrites():
            betas = [torch.tensor(b, dtype=BETA_DTYPE) for b in self._beta_values()]
            sigs, loss = [], 0.0
            with _bound_betas(self._kl, betas):
                for m, g in self._traces(args, kwargs):
                    sigs.append(_signature(m, g))
                    self._note_local_params(m, g)
                    if with_loss:
                        loss = loss + _elbo_particle(self.loss, m, g)
        return tuple(sigs), float(loss) / self.loss.num_particles if with_loss else None

    def _note_local_params(self, *traces: Any) -> None:
        """Remembers the tensors of param sites outside the global param store (a
        PyroModule's own under Pyro's ``module_local_params``)."""
        try:
            self._local_params.update(local_params(*traces))
        except LocalParamError as exc:
            raise _Unsupported(str(exc)) from exc

    def _networks(self, args: tuple, kwargs: dict) -> contextlib.AbstractContextManager:
        """The networks' precision for a step on these inputs (mixed_precision)."""
        if self.mixed_precision is None:  # skips flattening the arguments on every step
            return contextlib.nullcontext()
        tensors = [v for v in pytree.tree_leaves((args, kwargs)) if torch.is_tensor(v)]
        device_type = tensors[0].device.type if tensors else "cpu"
        return networks_in(self.mixed_precision, device_type)

    @contextlib.contextmanager
    def _quiet_rng(self, tensors: Sequence[torch.Tensor]) -> Iterator[None]:
        # Recording and checking draw noise of their own; the training stream must not
        # notice, so that compiled and plain Pyro runs see the same draws.
        with torch.random.fork_rng(devices=noise_devices(tensors)):
            yield
