"""An init value of a subsampled data plate's full size: Pyro's ``AutoNormal`` keeps it as
the locs of every example of the data set (each call reads those of the examples it takes),
and ``AutoAmortizedNormal`` refused it as misshapen. Each example now takes the value at its
index in the plate, and the encoder's location head is fitted to them: to every example
where the model is given the full data, to the call's examples where it is given a
minibatch with its indices. Compared with ``AutoNormal`` on models it accepts (a local site
nothing in the plate depends on: with dependents its prototype run fails on the
full-size value) and shown working on a model with dependents."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoNormal, init_to_value

from pyro_gen.vae import AutoAmortizedNormal

N, B = 12, 4
DATA = torch.randn(N, 3, generator=torch.Generator().manual_seed(0))
FULL = torch.randn(N, 2, generator=torch.Generator().manual_seed(1))  # one value per example
POSITIVE = torch.linspace(0.5, 3.0, N)


def inside_leaf(x):
    # given the full data, subsamples it; z, s are leaves (AutoNormal accepts full values)
    with pyro.plate("data", N, subsample_size=B) as idx:
        pyro.sample("z", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
        pyro.sample("s", dist.Gamma(2.0, 1.0))
        pyro.sample("x", dist.Normal(0.0, 1.0).expand([3]).to_event(1), obs=x[idx])


def inside(x):
    # the same, with x depending on z: the usual model
    scale = pyro.sample("scale", dist.LogNormal(0.0, 1.0))
    with pyro.plate("data", N, subsample_size=B) as idx:
        z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
        loc = z.sum(-1, keepdim=True).expand(-1, 3)
        pyro.sample("x", dist.Normal(loc, scale).to_event(1), obs=x[idx])


def minibatch_leaf(x, idx):
    with pyro.plate("data", N, subsample=idx):
        pyro.sample("z", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
        pyro.sample("s", dist.Gamma(2.0, 1.0))
        pyro.sample("x", dist.Normal(0.0, 1.0).expand([3]).to_event(1), obs=x)


INIT = init_to_value(values={"z": FULL, "s": POSITIVE})


def test_given_the_full_data_every_example_starts_at_its_value_as_with_autonormal():
    pyro.clear_param_store()
    normal = AutoNormal(inside_leaf, init_loc_fn=INIT)
    normal(DATA)
    pyro.clear_param_store()
    amortized = AutoAmortizedNormal(inside_leaf, hidden_dims=(16,), init_loc_fn=INIT)
    amortized(DATA)
    want, got = normal.median(DATA), amortized.median(DATA)
    assert torch.equal(want["z"], FULL) and torch.allclose(want["s"], POSITIVE)
    # fitted over all 12 examples, not only the 4 the first call took
    assert torch.allclose(got["z"], want["z"], atol=2e-3)
    assert torch.allclose(got["s"], want["s"], rtol=2e-3)


def test_given_a_minibatch_and_its_indices_the_call_starts_where_autonormal_does():
    idx = torch.tensor([5, 0, 9, 2])
    x = DATA[idx]
    pyro.clear_param_store()
    normal = AutoNormal(
        minibatch_leaf,
        init_loc_fn=INIT,
        create_plates=lambda x, idx: pyro.plate("data", N, subsample=idx),
    )
    trace = poutine.trace(normal).get_trace(x, idx)
    want = trace.nodes["z_unconstrained"]["fn"].base_dist.loc
    assert torch.equal(want, FULL[idx])
    pyro.clear_param_store()
    amortized = AutoAmortizedNormal(minibatch_leaf, hidden_dims=(16,), init_loc_fn=INIT)
    got = amortized.median(x, idx)
    assert torch.allclose(got["z"], want, atol=1e-4)
    assert torch.allclose(got["s"], POSITIVE[idx], rtol=1e-4)


def test_a_model_whose_sites_depend_on_the_value_starts_there_and_trains():
    init = init_to_value(values={"z": FULL, "scale": 2.0})
    pyro.clear_param_store()
    with pytest.raises(ValueError, match="Shape mismatch inside plate"):
        AutoNormal(inside, init_loc_fn=init)(DATA)  # Pyro's prototype run breaks
    pyro.clear_param_store()
    guide = AutoAmortizedNormal(inside, hidden_dims=(16,), init_loc_fn=init)
    start = guide.median(DATA)
    assert torch.allclose(start["z"], FULL, atol=2e-3)
    assert start["scale"].item() == pytest.approx(2.0)
    svi = SVI(inside, guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
    assert all(torch.isfinite(torch.tensor(svi.step(DATA))) for _ in range(3))


def test_random_indices_around_a_minibatch_are_refused_saying_what_to_pass():
    # the plate's random indices do not say which examples the minibatch's rows are
    def minibatch(x):
        with pyro.plate("data", N, subsample_size=x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
            pyro.sample("x", dist.Normal(z.sum(-1, keepdim=True), 1.0).to_event(1), obs=x)

    guide = AutoAmortizedNormal(minibatch, init_loc_fn=init_to_value(values={"z": FULL}))
    with pytest.raises(ValueError, match=r"\['z'\] one value per example of the data set.*"
                       r"at random.*subsample=<the minibatch's indices"):  # fmt: skip
        guide(DATA[:B, :1])


def test_a_value_of_neither_size_names_both_sizes():
    guide = AutoAmortizedNormal(
        inside, init_loc_fn=init_to_value(values={"z": torch.zeros(N - 1, 2)})
    )
    with pytest.raises(ValueError, match=r"shape \(4, 2\).*data set \(\(12, 2\)\)") as error:
        guide(DATA)
    assert "\n" not in str(error.value)


def test_a_global_site_under_another_subsampled_plate_keeps_autonormals_meaning():
    """A global site (outside the data plate) goes to the guide's AutoNormal, which keeps a
    full-size value whole as the locs of every group, as Pyro's AutoNormal alone does."""
    groups = torch.linspace(-1.0, 1.0, 6)

    def grouped(x):
        with pyro.plate("groups", 6, subsample_size=2):
            pyro.sample("g", dist.Normal(0.0, 1.0))
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z.unsqueeze(-1), 1.0).to_event(1), obs=x)

    init = init_to_value(values={"g": groups})
    pyro.clear_param_store()
    normal = AutoNormal(grouped, init_loc_fn=init)
    normal(DATA)
    want = normal.median(DATA)["g"]
    pyro.clear_param_store()
    got = AutoAmortizedNormal(grouped, hidden_dims=(4,), init_loc_fn=init).median(DATA)["g"]
    assert torch.equal(want, groups) and torch.equal(got, want)
