"""JSON nested past Python's recursion limit (``[[[[...``) in every JSON text pyro-gen
reads: ``config.json``, ``metrics.jsonl``, a checkpoint's header and its record of the
optimizer's arguments. ``json.loads`` raises ``RecursionError`` there, which no reader
caught: ``pyro-gen sample`` on a run without a checkpoint ended in a traceback, as did a
crafted checkpoint (with a valid checksum) on resume. Each is now one line naming the file.
"""

from __future__ import annotations

import hashlib
import io
import json

import pyro
import pyro.distributions as dist
import pyro.optim
import pytest
import torch

import pyro_gen
from pyro_gen.infer import CheckpointError, fit
from pyro_gen.infer.checkpoint import MAGIC, write_payload
from pyro_gen.runs import RunError
from tests.reliability.run_fixtures import assert_one_line_error, cli, run_files, trained_run

pytestmark = pytest.mark.filterwarnings("ignore::pyro_gen.infer.batch_checks.UnscaledBatchWarning")

DEEP = "[" * 100_000 + "]" * 100_000
X = torch.randn(16, 3)


def model(x: torch.Tensor) -> None:
    loc = pyro.sample("loc", dist.Normal(torch.zeros(3), 1.0).to_event(1))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("x", dist.Normal(loc, 1.0).to_event(1), obs=x)


def guide(x: torch.Tensor) -> None:
    pyro.sample("loc", dist.Normal(pyro.param("q_loc", torch.zeros(3)), 1.0).to_event(1))


def train(run, epochs: int) -> None:  # noqa: ANN001
    pyro.clear_param_store()
    fit(model, X, guide=guide, batch_size=4, epochs=epochs, progress=False, compile=False,
        optim=pyro.optim.Adam({"lr": 0.01}), checkpoint_dir=run)  # fmt: skip


def test_a_deep_metrics_file_is_refused_by_fit_as_not_its_own(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(DEEP + "\n")
    with pytest.raises(CheckpointError, match="line 1 is not JSON"):
        train(tmp_path, 1)
    assert (tmp_path / "metrics.jsonl").read_text() == DEEP + "\n"


def test_sample_reads_a_deep_metrics_file_as_no_records(tmp_path, capsys):
    run = trained_run(tmp_path)
    (run / "checkpoint.pt").unlink()
    (run / "metrics.jsonl").write_text(DEEP + "\n")
    status, _, err = cli(capsys, "sample", run, "-n", "4", "--out", tmp_path / "s.png")
    assert_one_line_error(status, err, "has no checkpoint.pt", "no epoch has finished")


def test_a_deep_config_is_not_json_to_every_reader(tmp_path, capsys):
    run = trained_run(tmp_path)
    (run / "config.json").write_text(DEEP)
    before = run_files(run)
    for args in (["sample", run, "-n", "4", "--out", tmp_path / "s.png"], ["evaluate", run]):
        status, _, err = cli(capsys, *args)
        assert_one_line_error(status, err, "config.json is not valid JSON", "nested too deeply")
    with pytest.raises(RunError, match="nested too deeply"):
        pyro_gen.load(str(run))
    assert run_files(run) == before


def test_a_deep_checkpoint_header_is_damaged(tmp_path):
    train(tmp_path, 1)
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(MAGIC + b"[" * 3000 + b"\n" + path.read_bytes().split(b"\n", 2)[2])
    with pytest.raises(CheckpointError, match="damaged header"):
        train(tmp_path, 2)


def test_a_checksummed_checkpoint_with_deep_optimizer_arguments_is_refused(tmp_path):
    train(tmp_path, 1)
    path = tmp_path / "checkpoint.pt"
    data = path.read_bytes().split(b"\n", 2)[2]  # the torch.save bytes behind the header
    payload = torch.load(io.BytesIO(data), weights_only=True)
    assert json.loads(payload["optim_args"])  # a JSON text, as written
    payload["optim_args"] = DEEP
    write_payload(path, payload)  # a valid header and checksum: only the record is crafted
    assert hashlib.sha256(path.read_bytes().split(b"\n", 2)[2]).hexdigest() in path.read_text(
        errors="replace"
    )
    before = path.read_bytes()
    with pytest.raises(CheckpointError, match="optimizer arguments is damaged"):
        train(tmp_path, 2)
    assert path.read_bytes() == before
