"""Compiling a recorded SVI step: TorchScript, Inductor (CUDA graphs on CUDA) or the fx
program as recorded, and when a signature's program is worth compiling (used by
:class:`pyro_gen.infer.compiled.CompiledSVI`)."""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import torch

from pyro_gen.infer.compiled_traceable import traceable_ops

logger = logging.getLogger("pyro_gen")

BACKENDS = ("auto", "inductor", "jit", "fx", "pyro")


def compile_after(
    backend: str, after: int | None, first: bool, device: torch.device | None = None
) -> int | float:
    """Steps a signature's program runs uncompiled before it is compiled.

    ``after`` (the user's ``compile_after``) wins when given; else 0 for ``"fx"``, and for
    ``"auto"`` 500 on CUDA and never on the CPU; else 0 for the first signature and 50 for
    later ones (the last partial batch of an epoch is not worth a compilation).

    Example:
        >>> compile_after("auto", None, first=True, device=torch.device("cpu"))
        inf
    """
    if backend == "fx":
        return 0
    if after is not None:
        return after
    if backend == "auto":
        # On a small CPU an Inductor compile took 30-150 s in the middle of training
        # and the TorchScript program is already faster than eager PyTorch, so "auto"
        # moves to Inductor (with CUDA graphs) only on CUDA, where it pays.
        return 500 if device is not None and device.type == "cuda" else math.inf
    return 0 if first else 50


def resolved_backend(backend: str) -> str:
    """The backend a compilation uses: ``"auto"`` compiles with Inductor.

    Example:
        >>> resolved_backend("auto"), resolved_backend("jit")
        ('inductor', 'jit')
    """
    return "inductor" if backend == "auto" else backend


def compile_program(
    gm: torch.fx.GraphModule,
    backend: str,
    device: torch.device,
    example_inputs: Callable[[], list[torch.Tensor]],
    quiet_rng: Callable[[], AbstractContextManager],
    what: str = "the ELBO step",
) -> Callable[..., Any]:
    """``gm`` compiled with ``backend`` (``"fx"``, ``"jit"`` or ``"inductor"``) and warmed up
    on ``example_inputs()`` inside ``quiet_rng()`` (noise that the training stream does not
    see); ``what`` names the program in the log line.

    Example:
        >>> from contextlib import nullcontext
        >>> from torch.fx.experimental.proxy_tensor import make_fx
        >>> gm = make_fx(lambda x: (x * 2).sum())(torch.ones(3))
        >>> cpu, inputs = torch.device("cpu"), lambda: [torch.ones(3)]
        >>> fn = compile_program(gm, "jit", cpu, inputs, nullcontext)
        >>> fn(torch.arange(3.0))
        tensor(6.)
    """
    start = time.perf_counter()
    if backend == "fx":
        return gm
    if backend == "jit":
        with quiet_rng(), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # measured, kept as option
            with traceable_ops(gm):
                fn = torch.jit.trace(gm, example_inputs(), check_trace=False)
            # The scripted stand-ins of traceable_ops are recorded as function calls, which
            # the CPU's unoptimized executor runs as calls (a frame and an argument list
            # each: the guard's check cost ~15 us more a step, 1% of a 2-D RealNVP's); inlined
            # they are the ops themselves.
            torch._C._jit_pass_inline(fn.graph)
        # Two runs let TorchScript's profiling executor specialize the program; on the CPU it
        # runs unoptimized, so they would only repeat the trace's own run (0.9 s for the
        # tutorial's DDPM at batch 32).
        warmups = 2
        if device.type == "cpu":
            fn, warmups = _unoptimized(fn), 0
    else:
        mode = "reduce-overhead" if device.type == "cuda" else None
        fn = torch.compile(gm, fullgraph=True, dynamic=False, mode=mode)
        warmups = 1  # the compilation itself happens at the first call
    with quiet_rng(), torch.no_grad():
        for _ in range(warmups):
            fn(*example_inputs())
    logger.info("pyro_gen: compiled %s (%s) in %.1f s", what, backend, time.perf_counter() - start)
    return fn


def _unoptimized(traced: Callable[..., Any]) -> Callable[..., Any]:
    """Runs a TorchScript program as traced. Its optimizing executor splits every
    ``addmm`` into ``mm`` + ``add`` so that a fuser can take the add, but no fuser runs on
    the CPU: the split only costs one more pass over each layer's output."""

    def run(*inputs: torch.Tensor) -> Any:
        with torch.jit.optimized_execution(False):
            return traced(*inputs)

    run.traced = traced  # type: ignore[attr-defined]
    return run
