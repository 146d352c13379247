"""pyro.param initial values outside their constraint, against Pyro's own store: -1 under
``positive`` is stored as log(-1) = NaN, 0 as -inf; unconstrained params keep what the user
wrote, -inf included."""

from __future__ import annotations

import math

import pyro
import pytest
import torch
from torch.distributions import constraints

from pyro_gen.infer.param_values import ParamInitError, check_param_values, explain_param_values


@pytest.fixture(autouse=True)
def _store():
    pyro.clear_param_store()
    yield
    pyro.clear_param_store()


def test_a_nan_preimage_is_refused_when_the_run_did_not_fail():
    pyro.param("rate", torch.tensor([2.0, -1.0]), constraint=constraints.positive)
    assert torch.isnan(pyro.get_param_store()._params["rate"][1])  # Pyro's own storage
    with pytest.raises(ParamInitError, match=r"pyro.param\('rate'\) was given an initial value "
                       r"outside its constraint GreaterThan\(lower_bound=0.0\)"):  # fmt: skip
        check_param_values(["rate"])


def test_an_edge_is_named_only_as_the_cause_of_a_failure():
    pyro.param("p", torch.tensor(0.0), constraint=constraints.positive)  # log(0) = -inf
    check_param_values(["p"])  # infinite, not NaN: a run that did not fail is left alone
    with pytest.raises(ParamInitError, match=r"on the edge of its constraint GreaterThan") as info:
        explain_param_values(ValueError("the distribution's own error"), ["p"])
    assert str(info.value.__cause__) == "the distribution's own error"


def test_unconstrained_params_and_other_runs_params_are_left_alone():
    pyro.param("logits", torch.tensor([0.0, -math.inf]))
    pyro.param("w", torch.tensor(math.nan))
    pyro.param("old", torch.tensor(-1.0), constraint=constraints.positive)
    check_param_values(["logits", "w", "missing"])
    assert explain_param_values(ValueError("x"), ["logits", "w"]) is None  # "old" not this run's
