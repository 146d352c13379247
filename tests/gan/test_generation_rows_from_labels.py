"""``Generator.model(None, y=...)`` generates one example per label (or context row) of
``y``, as the VAEs' and flows' programs do (tests/vae/test_generation_rows_from_labels.py).
Two defects, both shown here:

- a ``num_samples`` other than the number of labels was silently ignored
  (``gen.model(None, y=three_labels, num_samples=7)`` drew 3); it is one clear error now;
- the rows were ``y.shape[0]``: under ``Predictive(parallel=True)``, with ``y`` computed from
  a latent of the user's program, ``y`` carries the samples' dim on the left (labels
  ``(S, N)``, a context ``(S, N, C)``), and the generator's plate became
  ``pyro.plate("data", S)``.

The Predictive checks are exact: the network's output is ``100 *`` the first two context
features plus ``0.01 * z``, so each draw lies within 1 of its own sample's context, and a
draw made with another sample's context would be off by about 100.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Predictive
from torch import nn

from pyro_gen.gan import Generator

SHIFT, C, N, S = 100.0, 3, 5, 4


class ContextNet(nn.Module):
    """A user's conditional network ``net(z, context)``: ``100 * context[:2] + 0.01 * z``."""

    latent_dim, event_shape = 2, (2,)

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(0.01))

    def forward(self, z: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return SHIFT * context[..., :2] + self.scale * z


def _gen() -> Generator:
    return Generator(ContextNet(), num_classes=C)


@pytest.mark.parametrize("parallel", [False, True], ids=["sequential", "parallel"])
def test_each_draw_follows_its_own_samples_label(parallel: bool) -> None:
    torch.manual_seed(0)
    gen = _gen()

    def program(n: int) -> torch.Tensor:
        k = pyro.sample("k", dist.Categorical(logits=torch.zeros(C)))
        return gen.model(None, y=k * torch.ones(n, dtype=torch.long))  # a label each

    out = Predictive(program, num_samples=S, parallel=parallel, return_sites=["k", "x"])(N)
    k, x = out["k"].reshape(S, 1), out["x"]
    assert x.shape == (S, N, 2)
    expected = SHIFT * torch.nn.functional.one_hot(k, C)[..., :2].float()
    assert (x - expected).abs().max() < 1.0
    assert k.unique().numel() > 1  # the samples' labels differ, so a mix-up would show


@pytest.mark.parametrize("parallel", [False, True], ids=["sequential", "parallel"])
def test_each_draw_follows_its_own_samples_context(parallel: bool) -> None:
    torch.manual_seed(0)
    gen = _gen()

    def program(n: int) -> torch.Tensor:
        w = pyro.sample("w", dist.Normal(0.0, 1.0))
        return gen.model(None, y=w.unsqueeze(-1) * torch.ones(n, C))  # a context row each

    out = Predictive(program, num_samples=S, parallel=parallel, return_sites=["w", "x"])(N)
    w, x = out["w"].reshape(S, 1, 1), out["x"]
    assert x.shape == (S, N, 2)
    assert (x - SHIFT * w).abs().max() < 1.0


def test_a_num_samples_other_than_the_labels_is_one_error() -> None:
    gen = _gen()
    labels = torch.tensor([0, 2, 1])
    for num_samples in (None, 1, 3):  # not given, the default, or the rows: one per label
        assert gen.model(None, y=labels, num_samples=num_samples).shape == (3, 2)
    with pytest.raises(ValueError, match=r"holds 3: leave num_samples out \(or pass 3\)"):
        gen.model(None, y=labels, num_samples=7)


def test_a_single_context_row_is_one_error_not_one_example_per_feature() -> None:
    """A context of shape (C,) drew C examples (its first dim taken for rows)."""
    with pytest.raises(ValueError, match=r"one example: y.unsqueeze\(0\)"):
        _gen().model(None, y=torch.tensor([1.0, 0.0, 0.0]))
    assert _gen().model(None, y=torch.tensor([[1.0, 0.0, 0.0]])).shape == (1, 2)
