"""A first batch that torch refuses beside the user's networks: on another device, of
another floating dtype (numpy data arrive as float64, networks are float32), or integers
where a network takes floats (MNIST's images arrive as uint8).

Torch's messages ("Expected all tensors to be on the same device", "mat1 and mat2 must have
the same dtype, but got Double and Float") name neither the batch nor the network. Where the
batch's tensors and the networks the run called differ in device or floating dtype, or the
refusal names the integer dtype of one of the batch's tensors, the error says which and what
to do; any other error goes through untouched.
"""

from __future__ import annotations

import re

import torch

from pyro_gen.data.batching import Call

__all__ = ["BatchMismatchError", "explain_mismatch"]

# What torch's refusals of mixed devices or dtypes say (linear, conv and the dispatcher's).
_MENTIONS = ("device", "dtype", "type", "implemented for")
# How torch's refusals name an integer dtype they were given: "but got Byte and Float",
# "but got: float != long int", "Input type (unsigned char) and bias type (float)",
# "not implemented for 'Byte'".
_INTEGER_NAMES = {
    torch.uint8: r"Byte|unsigned char|torch\.uint8",
    torch.int8: r"Char|signed char|torch\.int8",
    torch.int16: r"Short|short int|torch\.int16",
    torch.int32: r"Int|\(int\)|torch\.int32",
    torch.int64: r"Long|long int|torch\.int64",
}


def _given(text: str) -> str:
    """The part of torch's message that names what it was given: after "got" where the
    message also says what it expected ("to have one of the following scalar types: Long,
    Int; but got torch.FloatTensor": an embedding given floats, not integers given to
    floats)."""
    return text.split("got", 1)[1] if "got" in text else text


class BatchMismatchError(RuntimeError):
    """The first batch and the networks of the model or guide differ in device or dtype."""


def _own_state(module: torch.nn.Module) -> torch.Tensor | None:
    return next(iter([*module.parameters(recurse=False), *module.buffers(recurse=False)]), None)


def explain_mismatch(error: RuntimeError, call: Call, called: list[torch.nn.Module]) -> None:
    """Raises :class:`BatchMismatchError` from ``error`` when the batch of ``call`` and the
    modules ``called`` on it differ in device or in floating dtype, or when ``error`` names the
    integer dtype of a batch tensor while a network called holds floats; else returns.

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
    first_line = text.splitlines()[0]
    # Integer data are often meant (labels, indices): only those the refusal names count.
    integers = sorted(
        str(t.dtype)[6:]
        for t in data
        if t.dtype in _INTEGER_NAMES
        and re.search(rf"(?<!\w)(?:{_INTEGER_NAMES[t.dtype]})(?!\w)", _given(first_line))
    )
    float_nets = sorted(
        f"{type(m).__name__} holds {str(s.dtype)[6:]}"
        for m in called
        if (s := _own_state(m)) is not None and s.is_floating_point()
    )
    if not (other_device or other_dtype or (integers and float_nets)):
        return
    if integers and float_nets and not other_device:
        where, fix = (
            f"the batch holds {', '.join(dict.fromkeys(integers))} values where a network takes "
            f"floats ({', '.join(dict.fromkeys(float_nets))})",
            "Convert them before the model sees them: x.float() (images of 0-255: "
            "x.float() / 255), or fit's transform=; a label for a network goes in one-hot "
            "(torch.nn.functional.one_hot(y, n).float())",
        )
    elif other_device:
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
