"""fit's warnings about batches on users' programs: global latents beside a data plate of
the batch's size (checked against the closed-form mean-field optimum), a guide plate of the
batch's size beside a full-size model plate, and a batch without the observations; none
where the scale is right or only local latents are involved."""

from __future__ import annotations

import math
import warnings

import pyro
import pyro.distributions as dist
import pyro.optim
import pyro.util
import pytest
import torch
from pyro.infer.autoguide import AutoNormal

from pyro_gen.infer import fit
from pyro_gen.infer.batch_checks import NothingObservedWarning, UnscaledBatchWarning
from tests.infer.regression_program import _regression_data, regression
from tests.infer.tiny_vae import TinyVAE, binary_data


def _subsampled_regression(x: torch.Tensor, y: torch.Tensor) -> None:
    """``regression`` with the data plate told the data set's size (Pyro's svi_lightning)."""
    w = pyro.sample("w", dist.Normal(0.0, 10.0))
    b = pyro.sample("b", dist.Normal(0.0, 10.0))
    with pyro.plate("N", 64, subsample_size=x.shape[0]):
        pyro.sample("y", dist.Normal(w * x + b, 0.1), obs=y)


def test_global_latents_beside_a_batch_sized_plate_are_warned_about():
    """Pyro's regression tutorial model (``pyro.plate("N", len(x))``, global w and b) on
    batches: each step weighs the prior against one batch, so the posterior is that of 16
    examples. Nothing said so; the warning names the sites, both sizes and the fix."""
    x, y = _regression_data(64)
    message = (
        r"latents outside its data plate 'N' \('w', 'b'\).*batch's size \(16\).*from 64 "
        r"examples.*pyro.plate\('N', 64, subsample_size=len\(batch\)\).*batch_size=64"
    )
    with pytest.warns(UserWarning, match=message):
        fit(
            regression, (x, y), guide=AutoNormal(regression), steps=1, batch_size=16, progress=False
        )
    # the user's own DataLoader: its batch size is not fit's to change
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    pyro.clear_param_store()
    with pytest.warns(UserWarning, match=r"batch's size \(16\).*give all the examples in one"):
        fit(regression, loader, guide=AutoNormal(regression), steps=1, progress=False)


@pytest.mark.parametrize(
    "model, batch_size",
    [(_subsampled_regression, 16), (regression, 64)],
    ids=["plate-told-the-full-size", "one-batch-of-all"],
)
def test_a_scaled_or_whole_batch_is_not_warned_about(model, batch_size):
    x, y = _regression_data(64)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnscaledBatchWarning)
        fit(model, (x, y), guide=AutoNormal(model), steps=2, batch_size=batch_size, progress=False)


def test_local_latents_alone_are_not_warned_about():
    """The scale changes a VAE's loss, not its optimum: nothing to warn about."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnscaledBatchWarning)
        fit(TinyVAE(), binary_data(64), steps=2, batch_size=16, progress=False)


def test_a_guide_plate_of_the_batchs_size_beside_a_full_size_model_plate_is_named():
    """The model's plate told the data set's size (as the unscaled-batch warning advises),
    the guide's left at the batch's: Pyro scaled the model's local sites by N/B and the
    guide's by 1, silently; the error was the per-example guide's, which misled."""
    encoder = torch.nn.Linear(1, 2)

    def model(x):
        with pyro.plate("rows", 64, subsample_size=x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide(x, full_size=False):
        pyro.module("encoder", encoder)
        size = 64 if full_size else x.shape[0]
        with pyro.plate("rows", size, subsample_size=x.shape[0]):
            loc, log_scale = encoder(x[:, None]).unbind(-1)
            pyro.sample("z", dist.Normal(loc, log_scale.exp()))

    x = torch.randn(64)
    message = (
        r"model's plate 'rows' has the data set's size 64 \(subsampling 16\), but the guide's "
        r"plate of that name has the batch's size 16.*pyro.plate\('rows', 64, "
        r"subsample_size=len\(batch\)\)"
    )
    with pytest.raises(ValueError, match=message):
        fit(model, x, guide=guide, steps=1, batch_size=16, progress=False)
    full = lambda x: guide(x, full_size=True)  # noqa: E731
    assert math.isfinite(fit(model, x, guide=full, steps=2, batch_size=16, progress=False)
                         .history[-1]["train_loss"])  # fmt: skip


@pytest.mark.parametrize("model", [regression, _subsampled_regression], ids=["batch-sized", "full"])
def test_the_unscaled_batch_warnings_claim_against_the_closed_form(model):
    """What the warning says, checked: for a Gaussian posterior the mean-field optimum has
    standard deviations ``1 / sqrt(diag(precision))``. With the plate at the batch's size B
    the data term counts B/N of its weight, so ``fit`` finds ``sqrt(N/B)`` = 2 times those;
    told the full size, the optimum itself (within 15%: the stochastic steps' noise)."""
    x, y = _regression_data(64)
    design = torch.stack([x, torch.ones(64)], 1).double()
    precision = design.T @ design / 0.1**2 + torch.eye(2, dtype=torch.float64) / 10.0**2
    counted = 1.0 if model is _subsampled_regression else 16 / 64
    expected = (1 / (precision.diag() * counted).sqrt()).tolist()
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnscaledBatchWarning)
        fit(model, (x, y), guide=AutoNormal(model), steps=3000, batch_size=16,
            optim=pyro.optim.ClippedAdam({"lr": 0.05, "lrd": 0.999}), progress=False)  # fmt: skip
    found = [float(pyro.param(f"AutoNormal.scales.{site}")) for site in ("w", "b")]
    assert found == pytest.approx(expected, rel=0.15)


def test_a_batch_without_the_observations_is_warned_about():
    """regression(x, y=None) given x alone: y becomes one more latent, nothing is observed,
    and Pyro's SVI fits the guide to the prior without a word: w's mean stays near the
    prior's 0 instead of moving to the data's slope, 3."""
    x, y = _regression_data(64)
    pyro.clear_param_store()
    with pytest.warns(NothingObservedWarning, match=r"observed nothing on the first batch "
                      r"\(1 positional; latent 'w', 'b', 'y'\)"):  # fmt: skip
        fit(regression, x, guide=AutoNormal(regression), steps=300, batch_size=64,
            optim=pyro.optim.Adam({"lr": 0.05}), progress=False)  # fmt: skip
    assert abs(pyro.param("AutoNormal.locs.w").item()) < 1.0
    pyro.clear_param_store()
    with warnings.catch_warnings():
        warnings.simplefilter("error", NothingObservedWarning)
        fit(regression, (x, y), guide=AutoNormal(regression), steps=300, batch_size=64,
            optim=pyro.optim.Adam({"lr": 0.05}), progress=False)  # fmt: skip
    assert pyro.param("AutoNormal.locs.w").item() == pytest.approx(3.0, abs=0.1)
