"""The compiled step's update: one fused optimizer per Pyro optimizer, whose state Pyro's
optimizer (and so any other SVI loop sharing it) can still read, write and step, and the
on-device guard that skips an update with a non-finite loss or gradient."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pyro
import pyro.optim
import torch

from pyro_gen.infer.checkpoint_read import PARAM_SHAPED
from pyro_gen.infer.fused_adam_step import fused_adam_step

# Where the fused optimizer lives on the Pyro optimizer it stands for: every CompiledSVI
# (and every plain loop) given that Pyro optimizer then steps one state per parameter.
_FUSED_ATTR = "_pyro_gen_fused"


class OptimizerStateError(ValueError):
    """Optimizer state given for a parameter it does not fit (a moment of another shape).

    Example:
        >>> w = torch.zeros(3, requires_grad=True)
        >>> fused = fuse(pyro.optim.Adam({"lr": 0.1}), [w])
        >>> state = {"state": {0: {"exp_avg": torch.zeros(7)}}}
        >>> try:
        ...     _FusedParamView(fused, w).load_state_dict(state)
        ... except OptimizerStateError as e:
        ...     print(str(e)[:68])
        optimizer state 'exp_avg' of shape (7,) given for a parameter of sha
    """


class _FusedParamView:
    """Stands in Pyro's ``optim_objs`` for one parameter of the fused optimizer, so that
    ``PyroOptim.get_state()/set_state()`` (and so checkpoints) see per-parameter state in
    the format Pyro writes, and a plain ``SVI`` loop over the same Pyro optimizer steps the
    parameter with the same state."""

    def __init__(self, optimizer: torch.optim.Optimizer, param: torch.Tensor) -> None:
        self.optimizer_ = optimizer
        self.param = param

    def _group(self) -> dict[str, Any]:
        return next(
            g for g in self.optimizer_.param_groups if any(q is self.param for q in g["params"])
        )

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        """This parameter's group, as Pyro's per-parameter optimizer has one: a learning
        rate set by hand (``o.param_groups[0]["lr"] *= 0.5`` for each ``o`` in
        ``optim.optim_objs.values()``, a common Pyro idiom) changes this parameter's alone.
        The first read moves the parameter into a group of its own in the fused optimizer
        (one more kernel call a step for each parameter so moved); its state stays."""
        group = self._group()
        if len(group["params"]) > 1:
            group["params"] = [q for q in group["params"] if q is not self.param]
            hyper = {k: v for k, v in group.items() if k != "params"}
            self.optimizer_.add_param_group({**hyper, "params": [self.param]})
            group = self.optimizer_.param_groups[-1]
        return [group]

    def state_dict(self) -> dict[str, Any]:
        hyper = {k: v for k, v in self._group().items() if k != "params"}
        hyper.update(fused=None, foreach=None)
        state = self.optimizer_.state.get(self.param, {})
        state = {k: v.clone() if torch.is_tensor(v) else v for k, v in state.items()}
        return {"state": {0: state} if state else {}, "param_groups": [{**hyper, "params": [0]}]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Takes a per-parameter state as Pyro saves it (dtype and device converted).

        Raises:
            OptimizerStateError: for a moment of another shape than the parameter. The fused kernel,
                called directly, does not check shapes: it would read past the moment's end.
        """
        state = state_dict.get("state", {}).get(0)
        if state:
            p = self.param
            for key, value in state.items():
                if key in PARAM_SHAPED and torch.is_tensor(value) and value.shape != p.shape:
                    raise OptimizerStateError(
                        f"optimizer state {key!r} of shape {tuple(value.shape)} given for a "
                        f"parameter of shape {tuple(p.shape)}: it was saved for another "
                        "parameter (a set_state or checkpoint of another model)"
                    )
            self.optimizer_.state[p] = {
                k: (v.to(p.device, torch.float32) if k == "step" else v.to(p.device, p.dtype))
                if torch.is_tensor(v)
                else v
                for k, v in state.items()
            }

    def step(self, closure: Any = None) -> None:
        """Updates this parameter alone (as Pyro's per-parameter optimizers do), with the
        fused optimizer's state for it: the other parameters' gradients are hidden from it
        for the call."""
        hidden = [
            (q, q.grad)
            for group in self.optimizer_.param_groups
            for q in group["params"]
            if q is not self.param and q.grad is not None
        ]
        for q, _ in hidden:
            q.grad = None
        try:
            fused_adam_step(self.optimizer_)
        finally:
            for q, grad in hidden:
                q.grad = grad


def _fusable(optim: pyro.optim.PyroOptim) -> bool:
    # A learning-rate scheduler (pyro.optim.ExponentialLR, OneCycleLR, ...) keeps Pyro's own
    # per-parameter optimizers: its step() walks them, and a fused stand-in would leave the
    # rate where it started without a word.
    ctor = getattr(optim, "pt_optim_constructor", None)
    return (
        ctor in (torch.optim.Adam, torch.optim.AdamW)
        and isinstance(optim.pt_optim_args, dict)
        and not optim.pt_clip_args
        and not isinstance(optim, pyro.optim.PyroLRScheduler)
    )


def fuse(
    optim: pyro.optim.PyroOptim, params: Sequence[torch.Tensor]
) -> torch.optim.Optimizer | None:
    """Adds ``params`` to the one fused optimizer that stands for ``optim``.

    A parameter that ``optim`` has already stepped on its own (a plain ``SVI`` loop ran
    first, or ``set_state`` gave it state) brings that state along, so loops that share the
    Pyro optimizer continue one trajectory.

    Returns:
        the fused optimizer, or None when ``optim`` cannot be fused (see ``_fusable``).

    Example:
        >>> w = torch.zeros(3, requires_grad=True)
        >>> optim = pyro.optim.Adam({"lr": 0.1})
        >>> fused = fuse(optim, [w])
        >>> w.grad = torch.ones(3)
        >>> optim([w])  # Pyro's per-parameter call steps the fused state
        >>> [round(v, 3) for v in w.tolist()], int(fused.state[w]["step"])
        ([-0.1, -0.1, -0.1], 1)
    """
    if not _fusable(optim):
        return None
    fused: torch.optim.Optimizer | None = optim.__dict__.get(_FUSED_ATTR)
    new = [p for p in params if not isinstance(optim.optim_objs.get(p), _FusedParamView)]
    if not new:
        return fused
    args = dict(optim.pt_optim_args)
    if fused is None:
        ctor = optim.pt_optim_constructor
        try:
            fused = ctor(new, **{**args, "fused": True})
        except (RuntimeError, ValueError, TypeError):  # e.g. a device without fused kernels
            fused = ctor(new, **{**args, "foreach": True})
        setattr(optim, _FUSED_ATTR, fused)
    else:
        fused.add_param_group({"params": new, **args})
    for p in new:
        view = _FusedParamView(fused, p)
        held = optim.optim_objs.get(p)
        if held is not None:
            view.load_state_dict(held.state_dict())
        optim.optim_objs[p] = view
        optim.grad_clip[p] = None
    return fused


def in_layout_of(grad: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """``grad`` laid out as ``param`` is (the same strides), copied only when it is not.

    Autograd's own accumulation into ``.grad`` does this; a recorded program's gradient is
    whatever its last op made: the gradient of ``w.sum()`` is one value expanded to ``w``'s
    shape, that of ``x @ w.t()`` may be transposed. Torch's fused Adam walks a gradient's
    memory as if laid out like its parameter, so it read past an expanded gradient's one
    element (garbage, NaN at times) and permuted a transposed one.

    Example:
        >>> w = torch.zeros(2, 3)
        >>> g = in_layout_of(torch.ones(()).expand(2, 3), w)
        >>> g.stride(), g.tolist()
        ((3, 1), [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]])
    """
    strides = zip(grad.stride(), param.stride(), param.shape)
    if all(a == b for a, b, size in strides if size > 1):  # a size-1 dim's stride is moot
        return grad
    out = torch.empty_strided(param.shape, param.stride(), dtype=grad.dtype, device=grad.device)
    return out.copy_(grad)


def takes_found_inf(optimizer: torch.optim.Optimizer | None) -> bool:
    """Whether ``optimizer.step()`` reads a ``found_inf`` flag (the fused kernels do)."""
    return optimizer is not None and all(g.get("fused") for g in optimizer.param_groups)


def flag_tensors(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The two 0-dim float32 tensors :func:`non_finite` works with: the flag and a 1."""
    return (
        torch.zeros((), dtype=torch.float32, device=device),
        torch.ones((), dtype=torch.float32, device=device),
    )


def non_finite(
    tensors: Sequence[torch.Tensor],
    flags: tuple[torch.Tensor, torch.Tensor] | None = None,
    *,
    reset: bool = True,
) -> torch.Tensor:
    """A 0-dim float32 flag on the device, 1 when any of ``tensors`` (the loss and the
    gradients) holds a NaN or an infinity, else 0; nothing is read back to the host.

    One pass over each tensor, as :class:`torch.amp.GradScaler` checks gradients. The
    tensors are multiplied in place by 1 (exact); one whose elements share memory (the
    gradient of ``w.sum()`` is a 1 expanded to ``w``'s shape) is checked through a copy,
    since an in-place write into it is an error.

    Args:
        tensors: on one device.
        flags: :func:`flag_tensors` kept between calls (the flag is reset and returned);
            made afresh when not given.
        reset: with ``False``, a kept flag is not cleared first: the check only ever
            raises it, and whoever reads it raised clears it (a recorded step then makes
            and clears no flag: three ops fewer a step).

    Example:
        >>> non_finite([torch.tensor(1.0), torch.tensor([0.0, float("inf")])])
        tensor(1.)
    """
    found, one = flags if flags is not None else flag_tensors(tensors[0].device)
    if reset and flags is not None:  # fresh flags are zeros already
        found.zero_()
    checked = [t.contiguous() if shares_elements(t) else t for t in tensors]
    torch._amp_foreach_non_finite_check_and_unscale_(checked, found, one)
    return found


def shares_elements(t: torch.Tensor) -> bool:
    # A stride of 0 over more than one element: an expanded tensor (what autograd gives for
    # a sum's input); other layouts that overlap do not come out of a backward pass.
    return any(stride == 0 and size > 1 for stride, size in zip(t.stride(), t.shape))


def guarded_loss(
    loss: torch.Tensor, grads: Sequence[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The loss to report and the flag of :func:`non_finite` for one step, without a
    host read: a step whose gradient alone is not finite reports a NaN loss, so that
    whoever reads losses back sees every skipped step (a non-finite loss stays as it is).

    Example:
        >>> guarded_loss(torch.tensor(2.0), [torch.tensor([1.0, float("nan")])])
        (tensor(nan), tensor(1.))
    """
    found = non_finite([loss, *grads])
    return torch.where((found > 0) & torch.isfinite(loss), math.nan, loss), found


def skipped_loss(loss: torch.Tensor) -> torch.Tensor:
    """What a skipped step reports (read on the host): the loss if it is not finite, else
    NaN (a gradient was not finite).

    Example:
        >>> skipped_loss(torch.tensor(2.0)), skipped_loss(torch.tensor(float("inf")))
        (tensor(nan), tensor(inf))
    """
    return loss if not torch.isfinite(loss) else torch.full_like(loss, math.nan)
