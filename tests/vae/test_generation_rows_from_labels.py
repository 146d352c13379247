"""``VAE.model(None, y=...)`` and ``SSVAE.model(None, y=...)`` generate one example per label
(or context row) of ``y``. Two defects, both shown here:

- a ``num_samples`` other than the number of labels was silently ignored
  (``vae.model(None, y=three_labels, num_samples=7)`` drew 3); it is one clear error now;
- the rows were ``y.shape[0]``: under ``Predictive(parallel=True)``, with ``y`` computed from
  a latent of the user's program, ``y`` carries the samples' dim on the left (a context
  ``(S, N, C)``, labels ``(S, N)``), the VAE's plate became ``pyro.plate("data", S)`` and
  the draw failed ("Attempting to broadcast a dimension of length N"); the SSVAE refused the
  labels ("y must hold one label per example, shape (S,), got (S, N)").

The Predictive check is exact in distribution: the decoder's mean is ``100 *`` the first two
context features (scale 0.1), so each draw lies within 1 of its own sample's context, and a
draw made with another sample's context would be off by about 100.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Predictive

from pyro_gen.vae import SSVAE, VAE
from pyro_gen.vae.decoders import Decoder
from pyro_gen.vae.likelihoods import GaussianLikelihood

SHIFT, C, N, S = 100.0, 3, 5, 4


class ContextDecoder(Decoder):
    """:math:`p(x \\mid z, y) = \\mathcal{N}(100\\, y_{:2}, 0.1^2)`, whatever ``z``."""

    event_shape = (2,)

    def __init__(self) -> None:
        super().__init__()
        self.likelihood = GaussianLikelihood(0.1)

    def params(self, z: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        loc = SHIFT * context[..., :2] + 0.0 * z.sum(-1, keepdim=True)
        return loc.unsqueeze(-1)


def _vae() -> VAE:
    return VAE((2,), z_dim=2, hidden_dim=8, decoder=ContextDecoder(), num_classes=C)


@pytest.mark.parametrize("parallel", [False, True], ids=["sequential", "parallel"])
def test_each_draw_follows_its_own_samples_context(parallel: bool) -> None:
    torch.manual_seed(0)
    vae = _vae()

    def program(n: int) -> torch.Tensor:
        w = pyro.sample("w", dist.Normal(0.0, 1.0))
        return vae.model(None, y=w.unsqueeze(-1) * torch.ones(n, C))  # a context row each

    out = Predictive(program, num_samples=S, parallel=parallel, return_sites=["w", "x"])(N)
    w, x = out["w"].reshape(S, 1, 1), out["x"]
    assert x.shape == (S, N, 2)
    assert (x - SHIFT * w).abs().max() < 1.0


def _ssvae() -> SSVAE:
    m2 = SSVAE((2,), num_classes=C, z_dim=2, hidden_dims=(8,))
    m2.decoder = ContextDecoder()
    return m2


MODELS = {"vae": _vae, "ssvae": _ssvae}


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("parallel", [False, True], ids=["sequential", "parallel"])
def test_each_draw_follows_its_own_samples_label(parallel: bool, name: str) -> None:
    torch.manual_seed(0)
    m = MODELS[name]()

    def program(n: int) -> torch.Tensor:
        k = pyro.sample("k", dist.Categorical(logits=torch.zeros(C)))
        return m.model(None, y=k * torch.ones(n, dtype=torch.long))  # a label each

    out = Predictive(program, num_samples=S, parallel=parallel, return_sites=["k", "x"])(N)
    k, x = out["k"].reshape(S, 1), out["x"]
    assert x.shape == (S, N, 2)
    expected = SHIFT * torch.nn.functional.one_hot(k, C)[..., :2].float()
    assert (x - expected).abs().max() < 1.0
    assert k.unique().numel() > 1  # the samples' labels differ, so a mix-up would show


@pytest.mark.parametrize("name", sorted(MODELS))
def test_a_num_samples_other_than_the_labels_is_one_error(name: str) -> None:
    m = MODELS[name]()
    labels = torch.tensor([0, 2, 1])
    for num_samples in (None, 1, 3):  # not given, the default, or the rows: one per label
        assert m.model(None, y=labels, num_samples=num_samples).shape == (3, 2)
    with pytest.raises(ValueError, match=r"holds 3: leave num_samples out \(or pass 3\)"):
        m.model(None, y=labels, num_samples=7)


def test_a_single_context_row_is_one_error_not_one_example_per_feature() -> None:
    """A context of shape (C,) drew C examples (its first dim taken for rows)."""
    with pytest.raises(ValueError, match=r"one example: y.unsqueeze\(0\)"):
        _vae().model(None, y=torch.tensor([1.0, 0.0, 0.0]))
    assert _vae().model(None, y=torch.tensor([[1.0, 0.0, 0.0]])).shape == (1, 2)
