"""A first batch that torch refuses beside the user's networks: on another device, or of
another floating dtype (numpy data arrive as float64, networks are float32).

Torch's messages ("Expected all tensors to be on the same device", "mat1 and mat2 must have
the same dtype, but got Double and Float") name neither the batch nor the network. Where the
batch's tensors and the networks the run called differ in device or floating dtype, the error
says which and what to do; any other error goes through untouched.
"""

from __future__ import annotations

import torch

from pyro_gen.data.batching import Call

__all__ = ["BatchMismatchError", "explain_mismatch"]

# What torch's refusals of mixed devices or dtypes say (linear, conv and the dispatcher's).
_MENTIONS = ("device", "dtype", "type")


class BatchMismatchError(RuntimeError):
    """The first batch and the networks of the model or guide differ in device or dtype."""


def _own_state(module: torch.nn.Module) -> torch.Tensor | None:
    return next(iter([*module.parameters(recurse=False), *module.buffers(recurse=False)]), None)


def explain_mismatch(error: RuntimeError, call: Call, called: list[torch.nn.Module]) -> None:
    """Raises :class:`BatchMismatchError` from ``error`` when the batch of ``call`` and the
    modules ``called`` on it differ in device, or in floating dtype; else returns.

    Example:
        >>> net, x = torch.nn.Linear(2, 1), torch.zeros(3, 2, dtype=torch.float64)
        >>> try:
        ...     net(x)
        ... except RuntimeError as e:
        ...     explain_mismatch(e, Call((x,)), [net])
        Traceback (most recent call last):
        ...
        pyro_gen.infer.tensor_mismatch.BatchMismatchError: ... the batch is float64, Linear ...
    """
    text = str(error)
    if not any(word in text for word in _MENTIONS):
        return
    data = call.tensors()
    devices = {str(t.device) for t in data}
    floats = {t.dtype for t in data if t.is_floating_point()}
    other_device, other_dtype = set(), set()
    for module in called:
        state = _own_state(module)
        if state is None:
            continue
        if str(state.device) not in devices:
            other_device.add(f"{type(module).__name__} on {state.device}")
        if state.is_floating_point() and floats and state.dtype not in floats:
            other_dtype.add(f"{type(module).__name__} holds {str(state.dtype)[6:]}")
    if not (other_device or other_dtype):
        return
    first_line = text.splitlines()[0]
    if other_device:
        where, fix = (
            f"the batch is on {', '.join(sorted(devices))}, {', '.join(sorted(other_device))}",
            "Put the networks (module.to(device)) and the data (or fit's device=) on one device",
        )
    else:
        kinds = ", ".join(sorted(str(d)[6:] for d in floats))
        net_dtype = next(s.dtype for m in called if (s := _own_state(m)) is not None
                         and s.is_floating_point() and s.dtype not in floats)  # fmt: skip
        data_dtype = next(iter(floats))
        to_module = {torch.float32: "float()", torch.float64: "double()"}.get(
            data_dtype, f"to({data_dtype})"
        )
        numpy = "; numpy arrays arrive as float64" if data_dtype == torch.float64 else ""
        where, fix = (
            f"the batch is {kinds}, {', '.join(sorted(other_dtype))}",
            f"Convert the data (x.to({net_dtype}){numpy}) or the networks (module.{to_module})",
        )
    raise BatchMismatchError(
        f"the model or guide could not run on the first batch ({first_line}): {where}. {fix}"
    ) from error
