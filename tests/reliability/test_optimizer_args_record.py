"""A checkpoint's record of its optimizer arguments, damaged or crafted, is refused by the
parse itself (``changed_args``), in one line, whoever calls it.

Before, ``changed_args`` parsed the record unprotected and only its caller on resume
caught ``ValueError``/``TypeError``/``KeyError``/``RecursionError``; a record whose
per-parameter arguments were not objects (``{"params": {"q_loc": "lr"}}``) escaped that
catch as ``AttributeError: 'str' object has no attribute 'get'`` from a resume.
"""

from __future__ import annotations

import io

import pyro
import pyro.distributions as dist
import pyro.optim
import pytest
import torch

from pyro_gen.infer import CheckpointError, fit
from pyro_gen.infer.checkpoint import write_payload
from pyro_gen.infer.optim_args import changed_args, optimizer_args

pytestmark = pytest.mark.filterwarnings("ignore::pyro_gen.infer.batch_checks.UnscaledBatchWarning")

X = torch.randn(8, 2)


def model(x: torch.Tensor) -> None:
    loc = pyro.sample("loc", dist.Normal(torch.zeros(2), 1.0).to_event(1))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("x", dist.Normal(loc, 1.0).to_event(1), obs=x)


def guide(x: torch.Tensor) -> None:
    pyro.sample("loc", dist.Normal(pyro.param("q_loc", torch.zeros(2)), 1.0).to_event(1))


# record -> what the one line says was wrong with it
DAMAGED = {
    "not a string": (b'{"params": {}}', "a bytes, not JSON text"),
    "not JSON": ('{"params": {', "not JSON"),
    "nested too deeply": ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    "a list": ('["params"]', "a JSON list, not an object"),
    "params a list": ('{"params": ["q_loc"], "scheduler": null}', "params is not a dict"),
    "params a string": ('{"params": "q_loc", "scheduler": null}', "params is not a dict"),
    "arguments a string": ('{"params": {"q_loc": "lr"}, "scheduler": null}', "dict of dicts"),
    "no scheduler": ('{"params": {"q_loc": {"lr": 0.1}}}', "scheduler is missing"),
    "scheduler a number": ('{"params": {}, "scheduler": 3}', "scheduler is missing or not"),
}


def _adam_with_state(lr: float) -> pyro.optim.PyroOptim:
    pyro.clear_param_store()
    adam = pyro.optim.Adam({"lr": lr})
    adam([pyro.param("q_loc", torch.zeros(2)).unconstrained()])
    return adam


@pytest.mark.parametrize("case", list(DAMAGED))
def test_a_damaged_record_is_one_line_from_the_parse(case):
    record, what = DAMAGED[case]
    with pytest.raises(CheckpointError) as info:
        changed_args(record, _adam_with_state(0.1))
    message = str(info.value)
    assert "\n" not in message and "optimizer arguments is damaged" in message
    assert what in message, message


def test_sound_records_are_still_compared():
    recorded = optimizer_args(_adam_with_state(0.1))
    changes = changed_args(recorded, _adam_with_state(0.01))
    assert [(c.param, c.name, c.recorded, c.given) for c in changes] == [("q_loc", "lr", 0.1, 0.01)]
    assert changed_args(recorded, _adam_with_state(0.1)) == []
    assert changed_args(None, _adam_with_state(0.1)) == []  # nothing recorded
    # the flat record of checkpoints before per-parameter records: nothing to compare
    assert changed_args('{"lr": 0.1}', _adam_with_state(0.01)) == []


def test_a_resume_refuses_a_crafted_record_and_keeps_the_checkpoint(tmp_path):
    def train(epochs: int) -> None:
        pyro.clear_param_store()
        fit(model, X, guide=guide, batch_size=8, epochs=epochs, progress=False, compile=False,
            optim=pyro.optim.Adam({"lr": 0.01}), checkpoint_dir=tmp_path)  # fmt: skip

    train(1)
    path = tmp_path / "checkpoint.pt"
    payload = torch.load(io.BytesIO(path.read_bytes().split(b"\n", 2)[2]), weights_only=True)
    # a valid header and checksum: only the record is crafted
    payload["optim_args"] = DAMAGED["arguments a string"][0]
    write_payload(path, payload)
    before = path.read_bytes()
    with pytest.raises(CheckpointError, match="dict of dicts"):
        train(2)
    assert path.read_bytes() == before
