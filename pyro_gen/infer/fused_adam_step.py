r"""One step of a fused torch Adam/AdamW straight into torch's fused kernel.

``torch.optim.Adam(fused=True).step()`` spends most of a small model's update in Python:
per parameter it walks the state, checks gradients and dtypes, groups tensors by device
and enters the profiler, about 110 us for 24 small parameters on a CPU core, against
24 us for the kernel itself (a 2-D RealNVP's compiled step: 1.46 ms with torch's step,
1.29 ms with this one; benchmarks/RESULTS.md, session 14). :func:`fused_adam_step`
collects the same tensors in one pass and calls the same kernel with the same arguments,
so the update is torch's to the bit (tests/infer/test_fused_adam_step.py compares
parameters and every state tensor after each step).

Anything this pass does not handle goes through ``optimizer.step()`` unchanged: a group
that is not fused, capturable or differentiable, a tensor learning rate, a parameter
whose state torch has not made yet (its first step), complex or sparse gradients, and
registered optimizer step hooks (which only ``step()`` runs).
"""

from __future__ import annotations

import operator

import torch
from torch.optim import optimizer as torch_optimizer

__all__ = ["fused_adam_step"]

# Where the step counts of each kernel call are kept as one tensor (_count_step).
_COUNTERS = "_pyro_gen_step_counts"
# The hyperparameters a fused kernel call takes: groups that agree on them (and on device
# and dtype) share one call.
_HYPER = ("lr", "betas", "eps", "weight_decay", "amsgrad", "maximize")


def fused_adam_step(
    optimizer: torch.optim.Optimizer, found_inf: torch.Tensor | None = None
) -> None:
    """``optimizer.step()`` for a fused ``torch.optim.Adam``/``AdamW``, with
    ``found_inf`` as :class:`torch.amp.GradScaler` sets it (1: skip the update and leave
    the step counts as they were).

    Example:
        >>> w = torch.zeros(3, requires_grad=True)
        >>> opt = torch.optim.Adam([w], lr=0.1, fused=True)
        >>> w.grad = torch.ones(3)
        >>> opt.step()  # torch makes the state on the first step
        >>> fused_adam_step(opt)
        >>> [round(v, 4) for v in w.tolist()], int(opt.state[w]["step"])
        ([-0.2, -0.2, -0.2], 2)
    """
    calls = _kernel_calls(optimizer)
    if calls is None:
        _torch_step(optimizer, found_inf)
        return
    with torch.no_grad():
        for key, tensors in calls.items():
            tensors[5] = _count_step(optimizer, key, tensors[0], tensors[5])
            _run(key[0], key[1], tensors, found_inf)


def _count_step(
    optimizer: torch.optim.Optimizer,
    key: tuple,
    params: list[torch.Tensor],
    steps: list[torch.Tensor],
) -> list[torch.Tensor]:
    """Adds 1 to the step count of each parameter of one kernel call; returns the counts.

    torch keeps one 0-dim tensor per parameter and adds to them with ``_foreach_add_``,
    one op per tensor on the CPU (about 50 us for 24 parameters, twice the kernel). Here,
    after the first such add, a call's counts become the elements of one tensor, each
    parameter's ``state["step"]`` a 0-dim view of its own element (values kept), and one
    ``add_`` counts them all. To torch's ``step()``, ``state_dict()`` and to pickling a
    view is an ordinary 0-dim tensor; state loaded in its place (new objects) is taken up
    the same way on the next step.
    """
    counters = optimizer.__dict__.setdefault(_COUNTERS, {})
    held = counters.get(key)
    if held is not None and len(held[0]) == len(steps) and all(map(operator.is_, held[0], steps)):
        held[1].add_(1)
        return steps
    torch._foreach_add_(steps, 1)
    if any(s.dim() != 0 for s in steps) or len({(s.device, s.dtype) for s in steps}) != 1:
        return steps
    counts = torch.stack(steps)
    views = list(counts.unbind(0))
    for p, view in zip(params, views):
        optimizer.state[p]["step"] = view
    counters[key] = (views, counts)
    return views


def _torch_step(optimizer: torch.optim.Optimizer, found_inf: torch.Tensor | None) -> None:
    if found_inf is None:
        optimizer.step()
        return
    optimizer.found_inf = found_inf  # type: ignore[attr-defined]
    try:
        optimizer.step()
    finally:
        optimizer.found_inf = None  # type: ignore[attr-defined]


def _kernel_calls(optimizer: torch.optim.Optimizer) -> dict[tuple, list[list]] | None:
    """The tensors of each kernel call, keyed by its hyperparameters, device and dtype; None
    when some part of the step is not one this pass takes (see the module docstring)."""
    if (
        optimizer._optimizer_step_pre_hooks
        or optimizer._optimizer_step_post_hooks
        or torch_optimizer._global_optimizer_pre_hooks
        or torch_optimizer._global_optimizer_post_hooks
        or getattr(optimizer, "grad_scale", None) is not None
        or getattr(optimizer, "found_inf", None) is not None
    ):
        return None
    default_decoupled = isinstance(optimizer, torch.optim.AdamW)
    state = optimizer.state
    calls: dict[tuple, list[list]] = {}
    for group in optimizer.param_groups:
        if not group.get("fused") or group.get("capturable") or group.get("differentiable"):
            return None
        hyper = tuple(group[k] for k in _HYPER)
        if torch.is_tensor(hyper[0]) or any(map(torch.is_tensor, hyper[1])):
            return None
        decoupled = group.get("decoupled_weight_decay", default_decoupled)
        amsgrad = group["amsgrad"]
        where, tensors = None, []
        for p in group["params"]:
            grad = p.grad
            if grad is None:
                continue
            s = state.get(p)
            if not s or grad.is_sparse or p.dtype.is_complex:
                return None  # torch makes the state (and refuses what it refuses)
            if where != (p.device, p.dtype):  # a group's parameters nearly always share one
                where = (p.device, p.dtype)
                tensors = calls.setdefault((hyper, decoupled, *where), [[], [], [], [], [], []])
            tensors[0].append(p)
            tensors[1].append(grad)
            tensors[2].append(s["exp_avg"])
            tensors[3].append(s["exp_avg_sq"])
            if amsgrad:
                tensors[4].append(s["max_exp_avg_sq"])
            tensors[5].append(s["step"])
    return calls


def _run(
    hyper: tuple, decoupled: bool, tensors: list[list], found_inf: torch.Tensor | None
) -> None:
    lr, (beta1, beta2), eps, weight_decay, amsgrad, maximize = hyper
    params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps = tensors
    if found_inf is not None:
        found_inf = found_inf.to(params[0].device, non_blocking=True)
    # As torch's _fused_adam: the step counted (_count_step), update (the kernel skips
    # when found_inf is 1), and take the count back for a skipped update.
    kernel = torch._fused_adamw_ if decoupled else torch._fused_adam_
    kernel(
        params,
        grads,
        exp_avgs,
        exp_avg_sqs,
        max_exp_avg_sqs,
        steps,
        amsgrad=amsgrad,
        lr=lr,
        beta1=beta1,
        beta2=beta2,
        weight_decay=weight_decay,
        eps=eps,
        maximize=maximize,
        grad_scale=None,
        found_inf=found_inf,
    )
    if found_inf is not None:
        torch._foreach_sub_(steps, [found_inf] * len(steps))
    # The kernel writes the parameters without bumping their version counters, as an
    # in-place update does: a flow's cached result, valid while they are unchanged, then
    # scored the same data tensor with the last step's graph at the next plain step (SVI
    # after fit on the same optimizer: "backward through the graph a second time").
    torch.autograd.graph.increment_version(params)
