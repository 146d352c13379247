"""A flow model whose transforms (or variational dequantizer) a user made PyroModules.

``FlowModel.model`` sent its flow through ``pyro.module`` and its guide the dequantizer, which
stored every weight a PyroModule had already registered under its own name a second time
(``"flow$$$transforms.0.conditioner..."`` beside ``"transforms.0.conditioner..."``).
Checked: each tensor is stored once, as many as for the plain modules; the PyroModule
version trains to the plain version's losses and weights under Pyro's SVI and pyro_gen's
fit; a resumed ``fit`` equals one run.
"""

from __future__ import annotations

import pyro
import pytest
import torch
from pyro.nn.module import to_pyro_module_

from pyro_gen.flows import FlowModel
from pyro_gen.transforms import affine_coupling
from tests.nn.pyro_module_checks import (
    assert_each_tensor_once,
    assert_same_weights,
    fit_losses,
    resumed_state,
    svi_losses,
)
from tests.reliability.identical_state import assert_identical

X = torch.randn(16, 2, generator=torch.Generator().manual_seed(0))
# 2x2 images of 4 levels, for the dequantizer's guide
IMAGES = torch.randint(0, 4, (16, 2, 2), generator=torch.Generator().manual_seed(0)).float()


def flow(pyro_module: bool) -> FlowModel:
    torch.manual_seed(0)
    model = FlowModel((2,), [affine_coupling(2, hidden_dims=[4]),
                             affine_coupling(2, parity=1, hidden_dims=[4])])  # fmt: skip
    if pyro_module:
        to_pyro_module_(model.flow)
    return model


def dequantized(pyro_module: bool) -> FlowModel:
    torch.manual_seed(0)
    model = FlowModel((2, 2), [], dequantization="variational", num_bins=4)
    if pyro_module:
        # one coupling's conditioner (two converted apart would both be named "layers...")
        to_pyro_module_(model.dequantization.couplings[0].nn)
    return model


@pytest.mark.parametrize("make, x", [(flow, X), (dequantized, IMAGES)], ids=["flow", "deq"])
def test_pyro_modules_train_as_the_nn_modules_under_svi_with_each_tensor_stored_once(make, x):
    plain, converted = make(False), make(True)
    losses = svi_losses(plain, x)
    count = len(pyro.get_param_store())
    p_losses = svi_losses(converted, x)
    assert_each_tensor_once()
    assert len(pyro.get_param_store()) == count
    assert p_losses == losses
    assert_same_weights(plain, converted)


def test_fit_trains_a_pyro_module_flow_as_the_nn_module_with_each_tensor_stored_once():
    plain, converted = flow(False), flow(True)
    losses = fit_losses(plain, X)
    count = len(pyro.get_param_store())
    assert fit_losses(converted, X) == losses
    assert_each_tensor_once()
    assert len(pyro.get_param_store()) == count
    assert_same_weights(plain, converted)


def test_a_resumed_fit_of_a_pyro_module_flow_equals_one_run(tmp_path):
    straight = resumed_state(lambda: flow(True), X, tmp_path / "a", [4])
    assert_identical(straight, resumed_state(lambda: flow(True), X, tmp_path / "b", [2, 4]))
