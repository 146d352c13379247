"""The step function ``fit`` trains with: the compiled step, or Pyro's own SVI step where the
loss or ``compile=False`` asks for it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pyro.optim
import torch
from pyro.infer import ELBO

from pyro_gen.infer.annealing import kl_scale_pair
from pyro_gen.infer.compiled import CompiledSVI, supports
from pyro_gen.infer.distributed import GradReducer
from pyro_gen.infer.loss_value import loss_name
from pyro_gen.infer.program import Program

logger = logging.getLogger("pyro_gen")


def _step_function(
    prog: Program,
    optim: pyro.optim.PyroOptim,
    loss: Any,
    grad_clip: float | None,
    annealing: Callable[[int], float] | None,
    beta: list[float],
    compile: bool | None,
    reducer: GradReducer | None,
    mixed_precision: torch.dtype | None,
) -> Callable[..., torch.Tensor]:
    model, guide = prog.model, prog.guide
    if annealing is not None:
        model, guide = kl_scale_pair(model, guide, lambda: beta[0])
    # backend="pyro" is Pyro's SVI step with the same guard, clipping and optimizer handling;
    # the compiled program falls back to it by itself (one log line saying why) when the
    # model's structure changes between steps or a site is unsupported.
    if compile is False or not supports(loss):
        backend = "pyro"
        # Said for an ELBO or a callable loss (SVI's other kind) the default would compile,
        # and for any loss compile=True asks to compile: never a silent plain step. A loss
        # object of another kind (an adversarial objective) runs its own step, by design.
        elbo_like = isinstance(loss, ELBO) or not hasattr(loss, "loss_and_grads")
        if compile or (compile is None and elbo_like):
            logger.log(
                logging.WARNING if compile else logging.INFO,
                "pyro_gen: %s is not supported by the compiled step (Trace_ELBO, "
                "TraceMeanField_ELBO, TraceEnum_ELBO, JitTrace_ELBO and JitTraceEnum_ELBO "
                "are): training with Pyro's own SVI step",
                loss_name(loss),
            )
    else:
        backend = "inductor" if compile else "auto"
    if reducer is not None:  # clipping then applies to the summed gradient
        grad_clip = None
    return CompiledSVI(
        model,
        guide,
        optim,
        loss,
        grad_clip=grad_clip,
        backend=backend,
        grad_reducer=reducer,
        mixed_precision=mixed_precision,
        # compile=False is Pyro's SVI step bit for bit; otherwise the plain step (a loss
        # the program does not support, a fallback) takes the fused update
        fused_update=compile is not False,
    )
