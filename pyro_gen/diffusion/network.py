"""Calling a user's denoising / score network: the one place where what it was given and what
it returned are checked, so a mistake gets a message naming the network and the fix instead
of torch's error from deep inside it (``mat1 and mat2 must have the same dtype``) or from the
code after it (``'tuple' object has no attribute 'dim'``)."""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import Tensor, nn

from pyro_gen.nn.registration import register_module  # re-exported: its first home

__all__ = ["call_network", "check_output", "register_module"]


def _parameter_dtype(net: nn.Module) -> torch.dtype | None:
    params = net.parameters() if isinstance(net, nn.Module) else ()
    return next((p.dtype for p in params if p.is_floating_point()), None)


def _accepts(net: Any, x: Tensor, t: Tensor, context: dict) -> bool:
    fn = net.forward if isinstance(net, nn.Module) else net
    try:
        inspect.signature(fn).bind(x, t, **context)
    except TypeError:
        return False
    except ValueError:  # no signature to read (a builtin): assume it does
        return True
    return True


def call_network(net: nn.Module, x: Tensor, t: Tensor, owner: str, **context: Any) -> Tensor:
    """``net(x, t, **context)``, checked: data of another floating dtype than the network's
    parameters, and an output that is not one tensor, each get one error saying what to do.

    Raises:
        TypeError: for those two mistakes (other errors of the network pass unchanged).

    Example:
        >>> class Net(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.lin = nn.Linear(2, 2)
        ...     def forward(self, x, t):
        ...         return self.lin(x)
        >>> call_network(Net(), torch.zeros(3, 2), torch.ones(3), "DDPM").shape
        torch.Size([3, 2])
        >>> call_network(Net().double(), torch.zeros(3, 2), torch.ones(3), "DDPM")
        Traceback (most recent call last):
        ...
        TypeError: the DDPM's network has float64 parameters but was given float32 data; ...
    """
    try:
        out = net(x, t, **context)
    except TypeError as err:
        if _accepts(net, x, t, context):
            raise
        # a network without a time input (or without the labels' keyword) failed on the call
        # itself: "forward() takes 2 positional arguments but 3 were given"
        names = "".join(f", {k}=..." for k in context)
        raise TypeError(
            f"the {owner} calls its network as net(x, t{names}) (t: one time per row of x), "
            f"and {type(net).__name__} does not take those arguments: {err}"
        ) from err
    except RuntimeError as err:
        want = _parameter_dtype(net)
        if want is None or want == x.dtype:
            raise
        raise TypeError(
            f"the {owner}'s network has {str(want).removeprefix('torch.')} parameters but was "
            f"given {str(x.dtype).removeprefix('torch.')} data; make them agree: convert the "
            f"data (x.to({want})) or the model (model.to({x.dtype}))"
        ) from err
    if not torch.is_tensor(out):
        raise TypeError(
            f"the {owner}'s network returned a {type(out).__name__}, not a tensor; it must "
            "return one tensor shaped like its input x (a network with several outputs needs a "
            "wrapper module returning the prediction alone)"
        )
    return out


def check_output(out: Tensor, flat: Tensor, *, learned: bool) -> None:
    """Refuses a network output that is not the prediction for ``flat`` (the network's input
    rows): another size, or the right number of values in another layout; with ``learned``
    (variance="learned_range") twice the channels.

    Example:
        >>> check_output(torch.zeros(4, 3), torch.zeros(4, 3), learned=False)  # fine: None
        >>> check_output(torch.zeros(4, 8, 8, 3), torch.zeros(4, 3, 8, 8), learned=False)
        Traceback (most recent call last):
        ...
        ValueError: the DDPM's network returned shape (4, 8, 8, 3) for x_t of shape ...: ...
    """
    # A wrong output size met torch's "shape '[1, 8, 2]' is invalid for input of size 8"
    # in a reshape, naming neither the network nor the learned variances' extra channels.
    N, C = flat.shape[0], (flat.shape[1] if flat.dim() > 1 else 1)  # scalar data: (N,)
    ok = (
        out.dim() >= 2 and out.shape[:2] == (N, 2 * C) and out.numel() == 2 * flat.numel()
        if learned
        else out.dim() >= 1 and out.shape[0] == N and out.numel() == flat.numel()
    )
    if ok and not learned and out.shape != flat.shape and out.dim() > 2:
        # the right number of values in another arrangement: a channels-last image
        # network's (N, H, W, C) for (N, C, H, W) was reshaped silently into scrambled
        # pixels; flattened rows (N, C*H*W) and size-1 dims dropped or added keep the order
        squeeze = [d for d in out.shape[1:] if d != 1] == [d for d in flat.shape[1:] if d != 1]
        if not squeeze:
            raise ValueError(
                f"the DDPM's network returned shape {tuple(out.shape)} for x_t of shape "
                f"{tuple(flat.shape)}: the right number of values in another layout; "
                f"return them as {tuple(flat.shape)} (channels first: permute a "
                "channels-last output with .permute(0, 3, 1, 2))"
            )
    if not ok:
        want = (N, 2 * C, *flat.shape[2:]) if learned else tuple(flat.shape)
        why = (
            ": variance='learned_range' needs the prediction and the variance output, twice "
            "the channels (features) of x_t; give the network twice the outputs or use "
            "variance='fixed_small'"
            if learned
            else ""
        )
        raise ValueError(
            f"the DDPM's network returned shape {tuple(out.shape)} for x_t of shape "
            f"{tuple(flat.shape)}; expected {want}{why}"
        )
