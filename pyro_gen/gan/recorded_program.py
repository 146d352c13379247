"""Recording one unconditioned run of a Pyro model as a tensor program, for
:class:`~pyro_gen.gan.recorded.RecordedRuns`.

The program takes the parameters, the data tensors and (once lifted by
:func:`~pyro_gen.infer.compiled_recording._lift_inputs`) the noise draws and buffers, and
returns the observed sites' tensors (value and data of each, then the scales and masks that
are tensors) followed by the tensor values the model's Python branched on.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

import torch
from torch.fx.experimental.proxy_tensor import make_fx
from torch.utils import _pytree as pytree

from pyro_gen.gan.observed import ObservedSite, observed_sites, unconditioned_traces
from pyro_gen.infer.compiled_backends import compile_program
from pyro_gen.infer.compiled_elbo import _signature
from pyro_gen.infer.compiled_recording import _GuardMode, _lift_inputs, _Noise, _Unsupported

logger = logging.getLogger("pyro_gen")

#: the backends a replay runs on: TorchScript, the recorded fx program, torch.compile, or
#: never recorded (every run through Pyro)
BACKENDS = ("auto", "jit", "fx", "inductor", "pyro")


@dataclasses.dataclass
class _Layout:
    """Where each observed site's tensors are among a program's outputs."""

    name: str
    event_dim: int
    deterministic: bool
    scale: Any  # a number, or the index of its output
    mask: Any  # None, or the index of its output
    tensor_scale: bool
    tensor_mask: bool


@dataclasses.dataclass
class _Recording:
    fn: Callable[..., Any]
    names: list[str]  # the param sites, in the order the run visits them
    params: list[torch.Tensor]  # their unconstrained tensors, as recorded
    extras: list[_Noise | torch.Tensor]
    layout: list[_Layout]
    signature: tuple
    guards: list[Any]
    n_out: int
    devices: list[int]  # CUDA devices whose generators the noise draws use
    calls: int = 0


def record_program(
    model: Callable[..., Any],
    guide: Callable[..., Any],
    args: tuple,
    kwargs: dict,
    params: list[torch.Tensor],
    data: list[torch.Tensor],
) -> tuple[torch.fx.GraphModule, dict[str, Any]]:
    """Records ``model`` against ``guide`` on these inputs with ``make_fx``.

    Returns:
        the program, and what its recording run saw: the run's ``"signature"``, its observed
        ``"sites"`` (a complete Pyro run), the ``"guards"`` (the values the model branched
        on), the ``"layout"`` of the sites among the outputs and their number ``"n_out"``.

    Example:
        >>> import pyro
        >>> import pyro.distributions as dist
        >>> def model(x):
        ...     pyro.sample("x", dist.Normal(torch.zeros(2), 1.0).to_event(1), obs=x)
        >>> x = torch.zeros(2)
        >>> gm, seen = record_program(model, lambda x: None, (x,), {}, [], [x])
        >>> list(seen["sites"]), seen["n_out"]  # the site's generated value and its data
        (['x'], 2)

        :func:`~pyro_gen.gan.recorded_replay.replay` shows a recording made, compiled and
        replayed.
    """
    flat, spec = pytree.tree_flatten((args, kwargs))
    slots = [i for i, v in enumerate(flat) if torch.is_tensor(v)]
    n_p = len(params)
    seen: dict[str, Any] = {}

    def program(*inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        leaves = list(flat)
        for i, t in zip(slots, inputs[n_p:]):
            leaves[i] = t
        a, k = pytree.tree_unflatten(leaves, spec)
        guard = _GuardMode()
        with guard:
            model_trace, guide_trace = unconditioned_traces(model, guide, a, k)
        seen["signature"] = _signature(model_trace, guide_trace)
        seen["sites"] = sites = observed_sites(model_trace)
        seen["guards"] = [value for _, value in guard.reads]
        outputs, layout = _outputs(sites)
        seen["layout"], seen["n_out"] = layout, len(outputs)
        return (*outputs, *(t for t, _ in guard.reads))

    return make_fx(program)(*params, *data), seen


def finish_program(
    gm: torch.fx.GraphModule, seen: dict[str, Any]
) -> tuple[list[_Noise | torch.Tensor], list[Any]]:
    """Lifts the noise draws and buffers out of a recorded program as inputs and removes what
    it need not compute.

    Returns:
        its extra inputs (noise to draw, buffers) and the recorded values of the reads it
        still returns.
    """
    extras = _lift_inputs(gm)
    varying = _drop_constant_reads(gm, seen["n_out"])
    guards = [seen["guards"][i] for i in varying]
    _prune(gm)
    return extras, guards


def compile_recording(
    gm: torch.fx.GraphModule,
    backend: str,
    params: list[torch.Tensor],
    data: list[torch.Tensor],
    extras: list[_Noise | torch.Tensor],
    devices: list[int],
) -> Callable[..., Any]:
    """The function a replay calls: ``gm`` compiled by ``backend`` (one of
    :data:`BACKENDS` but ``"pyro"``), or ``gm`` itself where ``"auto"`` cannot compile it."""
    chosen = "jit" if backend == "auto" else backend
    if chosen == "fx":
        return gm

    def example_inputs() -> list[torch.Tensor]:
        # Copies of data and buffers: a warm-up leaves running statistics alone.
        out = [*params, *(t.clone() for t in data)]
        return out + [e.draw() if isinstance(e, _Noise) else e.clone() for e in extras]

    device = (params or data or [torch.zeros(())])[0].device
    try:
        return compile_program(
            gm,
            chosen,
            device,
            example_inputs,
            lambda: torch.random.fork_rng(devices),
            what="the generating run",
        )
    except Exception as exc:  # noqa: BLE001 - the recorded program still works
        if backend != "auto":
            raise _Unsupported(f"{chosen} could not compile the recording: {exc}") from exc
        logger.info("pyro_gen: TorchScript could not take the recorded run (%s)", exc)
        return gm


def _drop_constant_reads(gm: torch.fx.GraphModule, n_out: int) -> list[int]:
    """Removes from the program's results the values read by Python that depend on no input
    (Pyro's checks of constants, such as a Delta's zero log-density): they cannot change.

    Returns:
        the indices, among the reads, of those kept.
    """
    output = next(n for n in gm.graph.nodes if n.op == "output")
    results = list(output.args[0])
    kept = [i for i, node in enumerate(results[n_out:]) if _reads_input(node)]
    output.args = (tuple(results[:n_out] + [results[n_out + i] for i in kept]),)
    gm.recompile()
    return kept


def _reads_input(node: Any) -> bool:
    todo, seen = [node], set()
    while todo:
        n = todo.pop()
        if not isinstance(n, torch.fx.Node) or n in seen:
            continue
        if n.op == "placeholder":
            return True
        seen.add(n)
        todo.extend(n.all_input_nodes)
    return False


def _outputs(sites: dict[str, ObservedSite]) -> tuple[list[torch.Tensor], list[_Layout]]:
    """The tensors a program returns for ``sites`` (value and data of each, then the
    scales and masks that are tensors) and where each site finds them."""
    outputs = [t for site in sites.values() for t in (site.value, site.obs)]
    layout = []
    for name, site in sites.items():
        tensor_scale, tensor_mask = torch.is_tensor(site.scale), torch.is_tensor(site.mask)
        scale, mask = site.scale, site.mask
        if tensor_scale:
            scale = len(outputs)
            outputs.append(site.scale)
        if tensor_mask:
            mask = len(outputs)
            outputs.append(site.mask)
        flags = (site.deterministic, scale, mask, tensor_scale, tensor_mask)
        layout.append(_Layout(name, site.event_dim, *flags))
    return outputs, layout


def _prune(gm: torch.fx.GraphModule) -> None:
    """Removes the recording's unused results (Pyro's subsample indices, autograd's
    detaches), keeping every input and every op that writes (running statistics)."""
    gm.graph.eliminate_dead_code()  # keeps placeholders and ops FX knows to be impure
    gm.graph.lint()
    gm.recompile()
