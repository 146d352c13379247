"""The check that a trained module survives ``torch.save``/``torch.load`` and ``deepcopy``."""

from __future__ import annotations

import copy
import io

import torch
from torch import nn


def assert_survives_pickling(module: nn.Module) -> None:
    """``module`` saved and loaded (and deep-copied) has the same state, name for name."""
    buf = io.BytesIO()
    torch.save(module, buf)
    buf.seek(0)
    for copied in (torch.load(buf, weights_only=False), copy.deepcopy(module)):
        assert copied.state_dict().keys() == module.state_dict().keys()
        for (name, a), b in zip(copied.state_dict().items(), module.state_dict().values()):
            torch.testing.assert_close(a, b, msg=name)
