"""A user's networks made :class:`~pyro.nn.PyroModule` s inside the VAE family.

A ``PyroModule`` registers each parameter it reads under its own name; the families'
``pyro.module`` registered the same tensors again under theirs (``"decoder$$$net.0.weight"``
beside ``"net.0.weight"``), so the param store and every checkpoint held each weight twice.
Checked for each family: the param store holds each tensor once and as many as for the plain
``nn.Module`` networks; the PyroModule version trains to the same losses and weights (Pyro's
SVI and pyro_gen's fit, same seed); a resumed ``fit`` equals an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Callable

import pyro
import pytest
import torch
from pyro.distributions import constraints
from pyro.nn import PyroModule, PyroParam
from pyro.nn.module import to_pyro_module_

import pyro_gen.vae as V
from pyro_gen.vae.likelihoods import make_likelihood
from tests.nn.pyro_module_checks import (
    assert_each_tensor_once,
    assert_same_weights,
    fit_losses,
    resumed_state,
    svi_losses,
)
from tests.reliability.identical_state import assert_identical

pytestmark = pytest.mark.filterwarnings("ignore::pyro_gen.infer.batch_checks.UnscaledBatchWarning")

X = torch.randn(8, 4, generator=torch.Generator().manual_seed(0))
LABELS = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])


def _vae():
    return V.VAE((4,), z_dim=2, hidden_dim=5, likelihood="gaussian"), ("decoder", "posterior")


def _hierarchical():
    hvae = V.HierarchicalVAE((4,), z_dims=(3, 2), hidden_dim=5, likelihood="gaussian")
    return hvae, ("decoder", "encoders")


def _discrete():
    dvae = V.DiscreteVAE((4,), num_latents=2, num_categories=3, hidden_dims=(5,),
                         likelihood="gaussian")  # fmt: skip
    return dvae, ("decoder", "encoder")


def _semi_supervised():
    ssvae = V.SSVAE((4,), num_classes=3, z_dim=2, hidden_dims=(5,), likelihood="gaussian")
    return ssvae, ("decoder", "encoder", "classifier")


def _bayesian():
    # the decoder is a PyroModule with PyroSample weights on purpose; the user converts the
    # encoder the guide registers
    return V.BayesianVAE((4,), z_dim=2, hidden_dims=(5,), likelihood="gaussian"), ("encoder",)


FAMILIES: dict[str, Callable] = {
    "vae": _vae,
    "hierarchical": _hierarchical,
    "discrete": _discrete,
    "semi_supervised": _semi_supervised,
    "bayesian": _bayesian,
}


def build(kind: str, pyro_modules: bool):
    """The family's model from seed 0, its networks made PyroModules in place (the same
    tensors) when ``pyro_modules``."""
    torch.manual_seed(0)
    model, networks = FAMILIES[kind]()
    if pyro_modules:
        for name in networks:
            to_pyro_module_(getattr(model, name))
    return model


@pytest.mark.parametrize("kind", sorted(FAMILIES))
def test_pyro_modules_train_as_the_nn_modules_under_svi_with_each_tensor_stored_once(kind):
    kwargs = {"y": LABELS} if kind == "semi_supervised" else {}
    plain, converted = build(kind, False), build(kind, True)
    losses = svi_losses(plain, X, **kwargs)
    count = len(pyro.get_param_store())
    p_losses = svi_losses(converted, X, **kwargs)
    assert_each_tensor_once()
    assert len(pyro.get_param_store()) == count  # no second copy under the family's name
    assert p_losses == losses
    assert_same_weights(plain, converted)


@pytest.mark.parametrize("kind", ["vae", "hierarchical", "discrete"])
def test_fit_trains_pyro_modules_as_the_nn_modules_with_each_tensor_stored_once(kind):
    plain, converted = build(kind, False), build(kind, True)
    losses = fit_losses(plain, X)
    count = len(pyro.get_param_store())
    assert fit_losses(converted, X) == losses
    assert_each_tensor_once()
    assert len(pyro.get_param_store()) == count
    assert_same_weights(plain, converted)


def test_a_resumed_fit_of_a_pyro_module_vae_equals_one_run(tmp_path):
    straight = resumed_state(lambda: build("vae", True), X, tmp_path / "a", [4])
    resumed = resumed_state(lambda: build("vae", True), X, tmp_path / "b", [2, 4])
    assert_identical(straight, resumed)


class ScaledDecoder(PyroModule):
    """A user's decoder written as in Pyro's modules tutorial, with a positive gain."""

    def __init__(self) -> None:
        super().__init__()
        self.event_shape = (4,)
        self.likelihood = make_likelihood("gaussian")
        self.lin = PyroModule[torch.nn.Linear](2, 4)
        self.gain = PyroParam(torch.tensor(0.5), constraint=constraints.positive)

    def forward(self, z: torch.Tensor, context: torch.Tensor | None = None, **kwargs):
        return self.likelihood((self.gain * self.lin(z))[..., None], 1)


def test_a_user_pyro_module_decoder_with_a_pyro_param_is_stored_once_under_its_names(tmp_path):
    torch.manual_seed(0)
    vae = V.VAE((4,), z_dim=2, hidden_dim=5, likelihood="gaussian", decoder=ScaledDecoder())
    svi_losses(vae, X)
    store = pyro.get_param_store()
    assert {"gain", "lin.weight", "lin.bias"} <= set(store.keys())
    assert not [k for k in store if k.startswith("decoder$$$")]
    assert_each_tensor_once()
    gain = float(
        pyro.param("gain").detach()
    )  # trained, positive: the store's constraint is its own
    assert gain != 0.5 and gain > 0
    assert torch.equal(pyro.param("gain").detach(), vae.decoder.gain.detach())

    def make():
        torch.manual_seed(0)
        return V.VAE((4,), z_dim=2, hidden_dim=5, likelihood="gaussian",
                     decoder=ScaledDecoder())  # fmt: skip

    straight = resumed_state(make, X, tmp_path / "a", [4])
    assert_identical(straight, resumed_state(make, X, tmp_path / "b", [1, 4]))
