"""Calling a user's denoising / score network: the one place where what it was given and what
it returned are checked, so a mistake gets a message naming the network and the fix instead
of torch's error from deep inside it (``mat1 and mat2 must have the same dtype``) or from the
code after it (``'tuple' object has no attribute 'dim'``)."""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["call_network"]


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
