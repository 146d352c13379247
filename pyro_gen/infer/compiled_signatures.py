"""Which recorded program a compiled SVI step's inputs get: their input signature (the
arguments' structure, tensor shapes and non-tensor values), a plain Pyro step the first
time a signature is seen and a recording the second, and the refusals of inputs whose
signature or sites change from batch to batch (a mixin of
:class:`~pyro_gen.infer.compiled.CompiledSVI`)."""

from __future__ import annotations

import time
from typing import Any

import pyro
import torch
from torch.utils import _pytree as pytree

from pyro_gen.infer.compiled_backends import compile_after
from pyro_gen.infer.compiled_elbo import _describe_change
from pyro_gen.infer.compiled_recording import _Program, _Unsupported

__all__ = ["SignaturePrograms"]


def _site_names(signature: tuple) -> set[tuple[str, str]]:
    """The (model/guide, name) of every sample and param site of an eager signature."""
    return {(s[0], s[2] if s[1] == "param" else s[1]) for sig in signature for s in sig}


class SignaturePrograms:
    """Mixin of :class:`~pyro_gen.infer.compiled.CompiledSVI`: :meth:`_program_for` and the
    input signatures it keys programs by.

    Reads the step's ``_programs``, ``_sightings``, ``_first_signatures``, ``_stale``,
    ``_local_params``, ``_calls``, ``_verify``, ``_updates``, ``_resumed``, ``backend``,
    ``compile_after``, ``max_programs``, ``check_steps``, ``check_every`` and
    ``compile_time_s``, and calls ``_record``, ``_compile``, ``_eager_signature``,
    ``_eager_run``, ``_take_resumed`` and ``_quiet_rng``.

    Example:
        >>> import pyro.distributions as dist
        >>> from pyro_gen.infer.compiled import CompiledSVI
        >>> def model(x):
        ...     loc = pyro.param("loc", torch.zeros(1))
        ...     with pyro.plate("data", x.shape[0]):
        ...         pyro.sample("x", dist.Normal(loc, 1.0), obs=x)
        >>> svi = CompiledSVI(model, lambda x: None, backend="fx")
        >>> for n in (8, 8, 8, 5, 5):  # a last partial batch is a second signature
        ...     _ = svi.step(torch.zeros(n))
        >>> len(svi._sightings), len(svi._programs)  # each recorded when seen again
        (2, 2)
    """

    def _key(self, args: tuple, kwargs: dict) -> tuple[Any, list[torch.Tensor]]:
        flat, spec = pytree.tree_flatten((args, kwargs))
        tensors = [v for v in flat if torch.is_tensor(v)]
        statics = tuple(None if torch.is_tensor(v) else v for v in flat)
        shapes = tuple((tuple(t.shape), t.dtype, t.device, t.requires_grad) for t in tensors)
        key = (spec, shapes, statics, torch.is_grad_enabled())
        try:
            hash(key)
        except TypeError as exc:
            raise _Unsupported(f"a non-tensor argument is not hashable ({exc})") from exc
        return key, tensors

    def _program_for(
        self, args: tuple, kwargs: dict
    ) -> tuple[_Program, list[torch.Tensor], float | None] | None:
        """The program for these inputs, recorded now if their signature was seen before,
        and the loss Pyro's own run gives on the draws the program will take, where the
        step is checked (else None); None the first time a signature is seen (the caller
        runs a plain step)."""
        key, tensors = self._key(args, kwargs)
        self._calls += 1
        prog = self._programs.get(key)
        held = None
        # A stale program is recorded again, with today's values. (``self._stale and``: the
        # key's hash walks the argument structure in Python, 4 us, and none is stale on
        # nearly every step.)
        if prog is not None and self._stale and key in self._stale:
            self._stale.discard(key)
            held, prog = self._programs.pop(key).held, None
        if prog is None:
            # One eager forward pass, which a recording would start with anyway: it tells a
            # model whose sites change with the batch before any recording is spent on it.
            with self._quiet_rng(tensors):
                signature = self._eager_signature(args, kwargs)
            self._check_sites(signature, structure=(key[0], key[2]))
            # What the run that wrote a restored checkpoint had done with this signature
            # (compiled_resume): met before, it is recorded now, as that run did.
            resumed = self._take_resumed(key) if self._resumed else None
            if key not in self._sightings and resumed is not None:
                self._sightings[key] = signature
                self._updates.register(self._params_of(signature))
            if key not in self._sightings:
                seen = len(self._sightings)
                # Training data give one signature per argument structure (a semi-supervised
                # model's labelled and unlabelled batches are two), two with a last partial
                # batch; more of one structure, early on, means the shapes change from batch
                # to batch (packed sequences, bucketed lengths), and recording each would
                # cost more than it saves.
                same = sum((k[0], k[2]) == (key[0], key[2]) for k in self._sightings)
                if seen >= self.max_programs or (same >= 2 and self._calls < 10 * (same + 1)):
                    raise _Unsupported(self._why_signatures_vary(key, args, kwargs, same))
                self._sightings[key] = signature
                self._updates.register(self._params_of(signature))
                return None
            calls, compiled = resumed if resumed is not None else (0, None)
            prog = self._record(args, kwargs, tensors, signature, compiled=compiled)
            self._programs[key], prog.calls = prog, calls
            if held is not None:  # batches whose input checks failed, not yet reported
                prog.held = held
        # Not a program recorded at this step (no calls yet: _record compiled it or not),
        # unless it continues a checkpoint's count: then it compiles where the
        # uninterrupted run did. That test comes last: the steady state stops before it.
        if (
            not prog.compiled
            and prog.calls
            >= compile_after(
                self.backend,
                self.compile_after,
                first=False,
                device=tensors[0].device if tensors else None,
            )
            and prog.calls > 0
        ):
            start = time.perf_counter()
            prog.fn, prog.compiled = self._compile(prog, tensors), True
            self.compile_time_s += time.perf_counter() - start
        prog.calls += 1
        due = (
            self._verify
            or 1 < prog.calls <= 1 + self.check_steps
            or (self.check_every > 0 and prog.calls % self.check_every == 0)
        )
        expected = None
        if due:
            self._verify = False
            # Under the training stream's RNG state, restored after: the program then draws
            # the same noise, and its loss must be Pyro's.
            with self._quiet_rng(tensors):
                sig, expected = self._eager_run(args, kwargs)
            if sig != prog.signature:
                raise _Unsupported(
                    f"the program's structure changed between steps: "
                    f"{_describe_change(prog.signature, sig)}"
                )
        return prog, tensors, expected

    def _why_signatures_vary(self, key: tuple, args: tuple, kwargs: dict, same: int) -> str:
        """Why this step saw too many input signatures: a non-tensor argument taking new
        values (named, with what to do), or the tensors' shapes changing."""
        keys = [k for k in (*self._sightings, key) if k[0] == key[0]]
        varying = [i for i in range(len(key[2])) if len({k[2][i] for k in keys}) > 1]
        if varying:
            paths = [path for path, _ in pytree.tree_flatten_with_path((args, kwargs))[0]]
            where = ", ".join(f"{_argument_name(paths[i])} (now {key[2][i]!r})" for i in varying)
            return (
                f"a non-tensor argument takes a new value from batch to batch ({where}), and "
                "each value would need its own recording: pass it as a tensor "
                "(torch.tensor(value)) to keep the compiled step"
            )
        return (
            f"the shapes of the inputs change from batch to batch ({same + 1} distinct input "
            f"shapes of one argument structure in {self._calls} steps)"
        )

    def _check_sites(self, signature: tuple, structure: Any) -> None:
        """Raises when the names of the sites differ from those of the first batch with the
        same argument ``structure`` (the pytree of the arguments and their non-tensor
        values, shapes aside). Arguments that change the program by their structure, such
        as the labels a semi-supervised model takes on labelled batches only, give one
        site set each; sites that change with the shapes alone (one site per time step of
        a sequence) mean that each batch would need its own recording. The sites' order
        and kinds are left to the recording's own check: a guide built on its first call
        (Pyro's ``AutoNormal``) visits its sites in another order that once."""
        first = self._first_signatures.setdefault(structure, signature)
        if _site_names(signature) != _site_names(first):
            raise _Unsupported(
                "the model's sites change with the batch, so each batch would need its own "
                f"recording: {_describe_change(first, signature)}"
            )

    def _params_of(self, signature: tuple) -> list[torch.Tensor]:
        names = sorted({s[2] for sig in signature for s in sig if s[1] == "param"})
        store = pyro.get_param_store()
        # A name the store lacks is a module's own param (Pyro's module_local_params): its
        # tensor was read from the eager run's trace.
        found = (store._params[n] if n in store._params else self._local_params[n] for n in names)
        # One tensor may sit under two names (Pyro's AutoNormalizingFlow keeps its first
        # transform parameter as "_prototype_tensor" too): it is one parameter, updated once.
        return list({id(t): t for t in found}.values())


def _argument_name(path: tuple) -> str:
    """A leaf of ``(args, kwargs)`` as a user names it: ``positional argument 1``,
    ``argument 'beta'``, with the place inside a container after it."""
    top, *rest = path[1:]
    head = (
        f"positional argument {top.idx}"
        if isinstance(top, pytree.SequenceKey)
        else f"argument {top.key!r}"
    )
    return head + (pytree.keystr(tuple(rest)) if rest else "")
