"""``grad_clip`` with a user's own program on the plain path (``compile=False``).

Known defect (reported, not fixed here: the file is lead-owned):
``CompiledSVI._plain_loss_and_grads`` in ``pyro_gen/infer/compiled_fallback.py`` collects
the step's parameters as ``list({... set ...})``, an order set by the tensors' memory
addresses, and ``clip_grad_norm_`` sums their norms in that order: the clip coefficient
differs in its last bits between processes, and a resumed run (whose tensors sit
elsewhere) drifts from the straight one (SGD-momentum buffers 3e-8 apart after 8 steps
of a four-param program, Adam's parameters 3e-8; it depends on where the tensors land, so
the drift itself shows only sometimes). The fix: ``list(dict.fromkeys(...))`` (trace
order); the strict xfail below then passes and should lose its mark.
"""

from __future__ import annotations

from typing import Any

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_gen.infer import fit

X = torch.randn(8, 3)


@pytest.mark.xfail(
    reason="compiled_fallback.py clips the gradients of a set of params (memory-address "
    "order): reported to the lead, whose file it is",
    strict=True,
)
def test_grad_clip_sums_the_norms_in_the_programs_order(monkeypatch):
    """The norms are summed in the order the program registers its params (so the clip
    coefficient is the same number in every process), not in the order of a set of
    tensors: 8 params make a chance match 1 in 40,320 for a random order."""
    names = [f"p{i}" for i in range(8)]

    def many(x: torch.Tensor) -> None:
        loc = sum(pyro.param(n, torch.full((3,), 0.1 * i)) for i, n in enumerate(names))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(loc, 1.0).to_event(1), obs=x)

    seen: list[list[str]] = []
    clip = torch.nn.utils.clip_grad_norm_

    def recording(params: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        params = list(params)
        store = pyro.get_param_store()
        seen.append([store.param_name(p) for p in params])
        return clip(params, *args, **kwargs)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", recording)
    pyro.clear_param_store()
    fit(many, X, guide=lambda x: None, batch_size=4, steps=3, grad_clip=1.0,
        progress=False, compile=False)  # fmt: skip
    assert seen == [names] * 3
