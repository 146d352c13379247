"""``PerExamplePosterior`` in a user's own guide: a misspelt ``idx=`` (``index=ids``) was
swallowed by ``**kwargs`` and the error told the user to call the guide with ``idx=``, which
they believed they had done. The error now names the keywords it got. Given ``idx=``, each
example's Normal is its own row of the parameters."""

from __future__ import annotations

import pyro.distributions as dist
import pytest
import torch

from pyro_gen.vae import PerExamplePosterior


def test_a_misspelt_idx_is_named_and_idx_picks_each_examples_row():
    q = PerExamplePosterior(5, 2)
    x, ids = torch.zeros(3, 4), torch.tensor([4, 0, 2])
    with pytest.raises(ValueError, match=r"as idx=.*got the keywords \['index'\]"):
        q(x, index=ids)
    with torch.no_grad():
        q.locs.copy_(torch.arange(10.0).reshape(5, 2))
    d = q(x, idx=ids)
    scale = torch.nn.functional.softplus(q.raw_scales[ids]) + 1e-5
    z = torch.ones(3, 2)
    expected = dist.Normal(q.locs[ids], scale).to_event(1).log_prob(z)
    assert torch.equal(d.mean, torch.tensor([[8.0, 9.0], [0.0, 1.0], [4.0, 5.0]]))
    assert torch.allclose(d.log_prob(z), expected)
