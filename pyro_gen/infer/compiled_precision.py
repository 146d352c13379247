"""Mixed precision for an SVI step: networks in bfloat16, densities and the loss in float32.

:func:`torch.autocast` around a whole Pyro step would also run the distributions'
log-densities and the ELBO's sums in low precision wherever an input came out of a network.
Here autocast is open only inside calls of ``torch.nn.Module`` s (the networks that
``pyro.module`` registers: encoders, decoders, coupling conditioners, U-Nets), and every
module call returns its floating outputs in float32: the matrix products and convolutions
(autocast's low-precision ops) run in bfloat16, what a module computes from its layers'
outputs runs in float32. A network that returns a distribution (a decoder returning its
likelihood) thus builds it from float32 parameters, and Pyro's distributions, the
transforms' log-determinants and the loss see float32 tensors, as without mixed precision;
the parameters and their gradients stay float32 (autocast casts a copy). A
``TransformModule`` is called as a ``Transform`` (its own ``__call__``), so only the
networks inside it run in low precision.

bfloat16 keeps float32's exponent range, so no loss scaling is needed (float16 would).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import torch
from torch.utils import _pytree as pytree

__all__ = ["check_precision", "check_trained_dtypes", "networks_in"]


def check_precision(dtype: Any) -> torch.dtype | None:
    """``dtype`` if it is a precision the step can run its networks in, else a clear error.

    Example:
        >>> check_precision(torch.bfloat16), check_precision(None)
        (torch.bfloat16, None)
    """
    if dtype is None or dtype == torch.bfloat16:
        return dtype
    raise ValueError(
        f"mixed_precision must be None or torch.bfloat16, got {dtype!r} (float16 would need "
        "loss scaling; bfloat16 has float32's range and needs none)"
    )


def check_trained_dtypes(dtype: torch.dtype | None, named: dict[str, torch.Tensor]) -> None:
    """Refuses mixed precision for a model trained in float64: autocast casts float32
    inputs only, so its networks would run in float64 as before, with nothing said.

    Example:
        >>> check_trained_dtypes(torch.bfloat16, {"w": torch.zeros(2)})  # float32: runs
        >>> check_trained_dtypes(torch.bfloat16, {"w": torch.zeros(2, dtype=torch.float64)})
        Traceback (most recent call last):
        ...
        ValueError: mixed_precision=torch.bfloat16 runs float32 networks ... float64: ['w']. ...
    """
    if dtype is None:
        return
    wide = sorted(name for name, t in named.items() if t.dtype == torch.float64)
    if wide:
        shown = wide[:5] + (["..."] if len(wide) > 5 else [])
        raise ValueError(
            f"mixed_precision={dtype} runs float32 networks in {dtype}, and autocast leaves "
            f"float64 ones as they are; these parameters are float64: {shown}. Cast the model "
            "to float32 (.float()) or drop mixed_precision"
        )


@contextmanager
def networks_in(dtype: torch.dtype | None, device_type: str) -> Iterator[None]:
    """While open, ``torch.nn.Module`` calls run under ``torch.autocast(device_type, dtype)``
    and every module call returns its ``dtype`` outputs as float32. Does nothing when
    ``dtype`` is None.

    Example:
        >>> class Net(torch.nn.Linear):
        ...     def forward(self, x):
        ...         self.inner = torch.nn.functional.linear(x, self.weight, self.bias).dtype
        ...         return super().forward(x)
        >>> net = Net(3, 2)
        >>> with networks_in(torch.bfloat16, "cpu"):
        ...     y = net(torch.ones(1, 3))
        ...     outside = torch.ones(2) @ torch.ones(2)
        >>> net.inner, y.dtype, outside.dtype, net.weight.dtype
        (torch.bfloat16, torch.float32, torch.float32, torch.float32)
    """
    if dtype is None:
        yield
        return
    depth = 0
    contexts = ExitStack()

    def enter(module: torch.nn.Module, args: Any) -> None:
        nonlocal depth
        if depth == 0:
            # No cache: a recording must see each cast as an op of its own.
            contexts.enter_context(torch.autocast(device_type, dtype=dtype, cache_enabled=False))
        depth += 1

    def leave(module: torch.nn.Module, args: Any, output: Any) -> Any:
        nonlocal depth
        depth -= 1
        if depth == 0:
            contexts.close()
        return pytree.tree_map(
            lambda t: t.float() if torch.is_tensor(t) and t.dtype == dtype else t, output
        )

    pre = torch.nn.modules.module.register_module_forward_pre_hook(enter)
    post = torch.nn.modules.module.register_module_forward_hook(leave, always_call=True)
    try:
        yield
    finally:
        pre.remove()
        post.remove()
        contexts.close()
