"""``grad_clip`` with a user's own program on the plain path (``compile=False``).

``CompiledSVI._plain_loss_and_grads`` (``pyro_gen/infer/compiled_fallback.py``) collected
the step's parameters as a set, in an order set by the tensors' memory addresses, and
``clip_grad_norm_`` sums their norms in that order: the clip coefficient differed in its last
bits between processes, and a resumed run (whose tensors sit elsewhere) drifted from the
straight one (SGD-momentum buffers 3e-8 apart after 8 steps of a four-param program). It
now keeps the trace's order.
"""

from __future__ import annotations

from typing import Any

import pyro
import pyro.distributions as dist
import torch

from pyro_gen.infer import fit

X = torch.randn(8, 3)


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
