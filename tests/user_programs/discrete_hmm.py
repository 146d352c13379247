"""A discrete hidden Markov model as in Pyro's ``examples/hmm.py``: each sequence's hidden
states are enumerated by ``TraceEnum_ELBO`` along a ``pyro.markov`` chain (which reuses
enumeration dims) inside the ``sequences`` plate, Gaussian emissions, optionally with a
per-sequence emission scale that the guide samples. Without the scale, each sequence's
evidence is given by the forward algorithm (:func:`forward_log_likelihood`).
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro.ops.indexing import Vindex

STEPS = 5
INIT = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
TRANS = torch.tensor([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.1, 0.2, 0.7]], dtype=torch.float64)
LOCS = torch.tensor([-2.0, 0.0, 2.0], dtype=torch.float64)


def sequences(num: int = 4, seed: int = 0) -> torch.Tensor:
    """Observations ``(num, STEPS)`` (float64) drawn from the model."""
    g = torch.Generator().manual_seed(seed)
    x = torch.multinomial(INIT, num, True, generator=g)
    out = []
    for _ in range(STEPS):
        out.append(LOCS[x] + torch.randn(num, generator=g, dtype=torch.float64))
        x = torch.multinomial(TRANS[x], 1, generator=g).squeeze(-1)
    return torch.stack(out, -1)


def _chain(seqs: torch.Tensor, scale: torch.Tensor | float, locs: torch.Tensor = LOCS) -> None:
    x = None
    for t in pyro.markov(range(STEPS)):
        probs = INIT if x is None else Vindex(TRANS)[x]
        x = pyro.sample(f"x_{t}", dist.Categorical(probs), infer={"enumerate": "parallel"})
        pyro.sample(f"y_{t}", dist.Normal(Vindex(locs)[x], scale), obs=seqs[:, t])


def model(seqs: torch.Tensor) -> None:
    with pyro.plate("sequences", seqs.shape[0], dim=-1):
        _chain(seqs, 1.0)


def learned_model(seqs: torch.Tensor) -> None:
    """The emission means are a ``pyro.param`` (maximum likelihood, no guide needed)."""
    locs = pyro.param("locs", lambda: torch.tensor([-0.5, 0.0, 0.5], dtype=seqs.dtype))
    with pyro.plate("sequences", seqs.shape[0], dim=-1):
        _chain(seqs, 1.0, locs)


def scaled_model(seqs: torch.Tensor) -> None:
    """Each sequence's emission scale is latent (LogNormal)."""
    with pyro.plate("sequences", seqs.shape[0], dim=-1):
        scale = pyro.sample("scale", dist.LogNormal(torch.zeros((), dtype=seqs.dtype), 0.5))
        _chain(seqs, scale)


def scale_guide(seqs: torch.Tensor) -> None:
    with pyro.plate("sequences", seqs.shape[0], dim=-1):
        pyro.sample("scale", dist.LogNormal(torch.full((), 0.3, dtype=seqs.dtype), 0.3))


def forward_log_likelihood(seqs: torch.Tensor, locs: torch.Tensor = LOCS) -> torch.Tensor:
    """Each sequence's ``log p(y)`` by the forward algorithm (emission scale 1)."""
    emission = dist.Normal(locs, 1.0)
    alpha = INIT.log() + emission.log_prob(seqs[:, :1])
    for t in range(1, STEPS):
        alpha = torch.logsumexp(alpha[:, :, None] + TRANS.log(), 1)
        alpha = alpha + emission.log_prob(seqs[:, t : t + 1])
    return alpha.logsumexp(-1)
