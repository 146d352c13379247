"""Faults in checkpoint files: crafted pickles, flipped bytes, truncation, leftovers.

Every entry point that reads a checkpoint (``pyro_gen.load``, ``pyro-gen evaluate``,
``sample`` and ``train``'s resume) is given a file whose unpickling would create a marker
file; none may execute it. Damaged files must be refused by name, and the state that a
valid checkpoint restores must come back bit for bit.
"""

from __future__ import annotations

import builtins
import fcntl
import hashlib
import io
import json
import os
import pickle
import random
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyro
import pyro.optim
import pytest
import torch
from pyro.distributions import constraints

import pyro_gen
from pyro_gen.infer.checkpoint import (
    MAGIC,
    CheckpointError,
    load_checkpoint,
    restore_checkpoint,
    restore_modules,
    run_lock,
    save_checkpoint,
)
from pyro_gen.infer.files import remove_stale_temporaries
from tests.reliability.run_fixtures import assert_one_line_error, cli, trained_run


class _Payload:
    """Unpickling this creates ``marker``: the stand-in for arbitrary code."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return builtins.open, (self.marker, "w")


def _crafted(kind: str, marker: str) -> bytes:
    if kind == "pickle":
        return pickle.dumps(_Payload(marker))
    buffer = io.BytesIO()
    torch.save({"format": 2, "modules": _Payload(marker)}, buffer)
    if kind == "torch_zip":
        return buffer.getvalue()
    # Our own header with a correct checksum: an attacker can compute one too.
    data = buffer.getvalue()
    header = {"format": 2, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    return MAGIC + json.dumps(header).encode() + b"\n" + data


KINDS = ["pickle", "torch_zip", "checksummed"]


def test_the_payload_is_live_when_unpickled_unsafely(tmp_path):
    # Without this, "the marker never appears" could hold for a payload that does nothing.
    marker = tmp_path / "marker"
    pickle.loads(_crafted("pickle", str(marker)))
    assert marker.exists()
    marker.unlink()
    torch.load(io.BytesIO(_crafted("torch_zip", str(marker))), weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("entry", ["pyro_gen.load", "evaluate", "sample", "train"])
def test_a_crafted_checkpoint_never_runs(entry, kind, tmp_path, capsys):
    run = trained_run(tmp_path)
    marker = tmp_path / "marker"
    (run / "checkpoint.pt").write_bytes(_crafted(kind, str(marker)))
    if entry == "pyro_gen.load":
        with pytest.raises(CheckpointError, match="not loaded"):
            pyro_gen.load(run)
    else:
        args = {
            "evaluate": ["evaluate", run, "--k", "2"],
            "sample": ["sample", run, "-n", "2"],
            "train": [
                "train",
                "vae",
                "--data",
                "digits",
                "--epochs",
                "2",
                "--out",
                run,
                "--no-progress",
            ],  # fmt: skip
        }[entry]
        status, _, err = cli(capsys, *args)
        assert_one_line_error(status, err, "checkpoint.pt", "not loaded")
    assert not marker.exists()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", ["config.json", "metrics.jsonl"])
def test_a_crafted_pickle_in_the_other_run_files_never_runs(name, kind, tmp_path, capsys):
    run = trained_run(tmp_path)
    marker = tmp_path / "marker"
    (run / name).write_bytes(_crafted(kind, str(marker)))
    for args in (["evaluate", run, "--k", "2"], ["sample", run, "-n", "2"],
                 ["train", "vae", "--data", "digits", "--epochs", "2", "--out", run,
                  "--no-progress"]):  # fmt: skip
        status, _, err = cli(capsys, *args)
        if name == "config.json":
            assert_one_line_error(status, err, "config.json is not valid JSON")
        else:  # metrics are only ever written: fit rewrites them from the checkpoint
            assert status == 0, err
    assert not marker.exists()


def _checkpoint(tmp_path):
    net = torch.nn.Linear(3, 2)
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, modules={"model": net}, optim=pyro.optim.Adam({}), progress={"e": 1})
    return path, net


@pytest.mark.parametrize("where", ["magic", "header", "payload_start", "payload_middle", "last"])
def test_a_flipped_byte_is_refused(where, tmp_path):
    path, _ = _checkpoint(tmp_path)
    raw = bytearray(path.read_bytes())
    header_end = raw.index(b"\n", len(MAGIC))
    index = {
        "magic": 3,
        "header": header_end - 5,  # inside the recorded digest
        "payload_start": header_end + 1,
        "payload_middle": (header_end + len(raw)) // 2,
        "last": len(raw) - 1,
    }[where]
    raw[index] ^= 0x01
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="not loaded") as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("keep", [0, 10, 0.5, -1])
def test_a_truncated_checkpoint_is_refused(keep, tmp_path):
    path, _ = _checkpoint(tmp_path)
    raw = path.read_bytes()
    cut = raw[: int(len(raw) * keep)] if isinstance(keep, float) else raw[:keep]
    path.write_bytes(cut)
    with pytest.raises(CheckpointError, match="not loaded"):
        load_checkpoint(path)


def test_a_damaged_checkpoint_via_the_cli_names_the_file_and_the_rebuild(tmp_path, capsys):
    run = trained_run(tmp_path)
    raw = bytearray((run / "checkpoint.pt").read_bytes())
    for i in range(len(raw) // 2, len(raw) // 2 + 32):  # 32 flipped bytes in tensor data
        raw[i] ^= 0xFF
    (run / "checkpoint.pt").write_bytes(bytes(raw))
    status, _, err = cli(capsys, "evaluate", run, "--k", "2")
    assert_one_line_error(status, err, str(run / "checkpoint.pt"), "damaged", "pyro-gen train vae")
    assert "delete" not in err


def test_loading_a_run_hashes_its_checkpoint_once(tmp_path, monkeypatch):
    """``pyro_gen.load`` (``evaluate``, ``sample``) read and hashed the checkpoint three
    times: twice to trust its size as a bound on the config's options, once to load it.
    The load's own check is enough; the size bound hashes only where it refuses a size."""
    run = trained_run(tmp_path)
    calls = []
    real = hashlib.sha256
    monkeypatch.setattr(hashlib, "sha256", lambda *a: calls.append(1) or real(*a))
    pyro_gen.load(run)
    assert len(calls) == 1


def test_a_bare_state_dict_is_refused_as_not_ours(tmp_path, capsys):
    run = trained_run(tmp_path)
    torch.save(torch.nn.Linear(2, 2).state_dict(), run / "checkpoint.pt")
    status, _, err = cli(capsys, "sample", run)
    assert_one_line_error(status, err, "plain torch.save", "not loaded")


def test_state_round_trips_exactly_and_params_are_restored_in_place(tmp_path):
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    pyro.module("net", net)
    pyro.param("scale", torch.ones(2), constraint=constraints.positive)
    pyro.param("width", torch.full((2,), 0.5), constraint=constraints.interval(0.0, 2.0))
    pyro.param("rows", torch.ones(2, 2), constraint=constraints.independent(constraints.real, 1))
    optim = pyro.optim.Adam({"lr": 0.1})
    params = [v for _, v in pyro.get_param_store().named_parameters()]
    for p in params:
        p.grad = torch.randn_like(p)
    optim(params)
    saved_store = {n: v.detach().clone() for n, v in pyro.get_param_store().named_parameters()}
    saved_net = {k: v.clone() for k, v in net.state_dict().items()}
    rng = pyro.util.get_rng_state()
    save_checkpoint(tmp_path / "c.pt", modules={"model": net}, optim=optim, progress={"rng": rng})
    expected = (torch.rand(3), np.random.rand(), random.random())

    scale = dict(pyro.get_param_store().named_parameters())["scale"]

    def step(optimizer):  # one more Adam step: its result depends on the optimizer state
        for p in params:
            p.grad = torch.ones_like(p)
        optimizer(params)
        return [p.detach().clone() for p in params]

    reference = step(optim)
    optim2 = pyro.optim.Adam({"lr": 0.1})
    progress = restore_checkpoint(
        load_checkpoint(tmp_path / "c.pt"), modules={"model": net}, optim=optim2
    )
    assert torch.equal(torch.rand(3), expected[0])
    assert (np.random.rand(), random.random()) == expected[1:]
    store = dict(pyro.get_param_store().named_parameters())
    assert store["scale"] is scale  # copied in place: optimizers keep their references
    for name, value in saved_store.items():
        assert torch.equal(store[name], value), name
    for name, value in saved_net.items():
        assert torch.equal(net.state_dict()[name], value), name
    assert progress["rng"]["numpy"][1].dtype == np.uint32
    assert isinstance(progress["rng"]["random"], tuple)
    for a, b in zip(step(optim2), reference):
        assert torch.equal(a, b)

    # Into an empty store: entries are created with their recorded constraints.
    pyro.clear_param_store()
    restore_modules(load_checkpoint(tmp_path / "c.pt"), {"model": net})
    constraints_now = pyro.get_param_store().get_state()["constraints"]
    assert constraints_now["scale"] is constraints.positive
    assert constraints_now["width"].upper_bound == 2.0
    restored = dict(pyro.get_param_store().named_parameters())
    assert torch.equal(restored["width"], saved_store["width"])


def test_state_that_would_need_pickled_code_is_refused_when_written(tmp_path):
    net = torch.nn.Linear(2, 2)
    with pytest.raises(CheckpointError, match=r"progress\['bad'\] is a .*Fraction"):
        from fractions import Fraction

        save_checkpoint(tmp_path / "c.pt", modules={"model": net}, optim=pyro.optim.Adam({}),
                        progress={"bad": Fraction(1, 3)})  # fmt: skip
    assert not (tmp_path / "c.pt").exists()

    class Odd(constraints.Constraint):
        def check(self, value):
            return value > 0

    pyro.param("odd", torch.ones(1), constraint=constraints.positive)
    pyro.get_param_store()._constraints["odd"] = Odd()  # a constraint without a public name
    with pytest.raises(CheckpointError, match="constraint of param 'odd'"):
        save_checkpoint(tmp_path / "c.pt", modules={"model": net}, optim=pyro.optim.Adam({}))


def test_a_module_that_does_not_fit_is_refused_strictly(tmp_path):
    path, _ = _checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="does not fit"):
        restore_modules(load_checkpoint(path), {"model": torch.nn.Linear(3, 5)})
    with pytest.raises(CheckpointError, match="modules"):
        restore_checkpoint(
            load_checkpoint(path),
            modules={"model": torch.nn.Linear(3, 2), "guide": torch.nn.Linear(1, 1)},
            optim=pyro.optim.Adam({}),
        )


def test_leftover_temporaries_are_removed_when_a_run_starts_but_live_ones_kept(tmp_path):
    dead = tmp_path / ".checkpoint.pt.ab12cd34.tmp"
    dead.write_bytes(b"half a checkpoint")
    live = tmp_path / ".config.json.zz99yy88.tmp"
    live.write_bytes(b"being written")
    unrelated = tmp_path / "notes.tmp"
    unrelated.write_text("mine")
    with open(live, "rb") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # a writer that is still alive (another descriptor)
        with run_lock(tmp_path):
            pass
        assert live.exists()
    assert not dead.exists()
    assert unrelated.read_text() == "mine"
    assert remove_stale_temporaries(tmp_path) == [live]
    assert sorted(os.listdir(tmp_path)) == [".pyro-gen.lock", "notes.tmp"]


_WRITER = """
import os, sys, time, pyro.optim, torch
from pyro_gen.infer.checkpoint import save_checkpoint
real_fsync = os.fsync
def slow_fsync(fd):  # a slow disk: the kill lands while a temporary file is being written
    print("fsync", flush=True)
    time.sleep(0.5)
    real_fsync(fd)
os.fsync = slow_fsync
net = torch.nn.Linear(10, 20)
for i in range(100):
    save_checkpoint(sys.argv[1], modules={"model": net}, optim=pyro.optim.Adam({}),
                    progress={"i": i})
    print(i, flush=True)
"""


def test_a_writer_killed_mid_write_leaves_the_last_checkpoint_intact_and_no_leftovers(tmp_path):
    path = tmp_path / "checkpoint.pt"
    writer = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(path)],
        cwd=Path(__file__).resolve().parents[2],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        for line in writer.stdout:
            if line.strip() == "0":  # checkpoint 0 is complete
                break
        assert writer.stdout.readline().strip() == "fsync"  # checkpoint 1 is being written
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()
    leftovers = [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]
    assert len(leftovers) == 1 and leftovers[0].startswith(".checkpoint.pt.")
    assert load_checkpoint(path)["progress"]["i"] == 0  # the last complete write, whole
    with run_lock(tmp_path):  # the next run cleans up after the killed writer
        pass
    assert sorted(os.listdir(tmp_path)) == [".pyro-gen.lock", "checkpoint.pt"]


def test_an_old_format_checkpoint_converts_only_when_trusted_and_then_resumes(tmp_path, capsys):
    run = trained_run(tmp_path)
    current = load_checkpoint(run / "checkpoint.pt")
    # What save_checkpoint wrote before format 2: one torch.save pickle.
    torch.save(
        {
            "model_class": current["modules"]["model"]["class"],
            "model_state": current["modules"]["model"]["state_dict"],
            "param_store": {"params": {}, "constraints": {}},
            "optim_state": current["optim"],
            "rng_state": current["rng"],
            "progress": current["progress"],
        },
        run / "checkpoint.pt",
    )
    old_bytes = (run / "checkpoint.pt").read_bytes()
    status, _, err = cli(capsys, "sample", run)
    assert_one_line_error(status, err, "not loaded", f"convert-checkpoint {run} --trust-pickle")
    status, _, err = cli(capsys, "convert-checkpoint", run)
    assert_one_line_error(status, err, "--trust-pickle")
    assert (run / "checkpoint.pt").read_bytes() == old_bytes

    status, out, err = cli(capsys, "convert-checkpoint", run, "--trust-pickle")
    assert status == 0, err
    assert (run / "checkpoint.pt.legacy").read_bytes() == old_bytes
    model = pyro_gen.load(run)
    for name, value in current["modules"]["model"]["state_dict"].items():
        assert torch.equal(model.state_dict()[name], value), name
    status, _, err = cli(capsys, "train", "vae", "--data", "digits", "--epochs", "2", "--out",
                         run, "--no-progress")  # fmt: skip
    assert status == 0, err
    assert load_checkpoint(run / "checkpoint.pt")["progress"]["epoch"] == 2


def test_cuda_generators_are_saved_and_restored_once_cuda_is_in_use(tmp_path, monkeypatch):
    # No GPU here: torch.cuda's generator functions stand in for two devices' generators.
    states = [torch.randint(0, 255, (16,), dtype=torch.uint8) for _ in range(2)]
    restored: list[list[torch.Tensor]] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [s.clone() for s in states])
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", restored.append)
    net = torch.nn.Linear(2, 2)
    optim = pyro.optim.Adam({"lr": 0.1})
    save_checkpoint(tmp_path / "c.pt", modules={"model": net}, optim=optim)
    expected = torch.rand(3)  # the CPU stream continues from the save as before
    restore_checkpoint(load_checkpoint(tmp_path / "c.pt"), modules={"model": net}, optim=optim)
    assert torch.equal(torch.rand(3), expected)
    assert len(restored) == 1 and all(map(torch.equal, restored[0], states))
    # On a machine with another number of GPUs the CPU streams are restored, CUDA's left.
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    restore_checkpoint(load_checkpoint(tmp_path / "c.pt"), modules={"model": net}, optim=optim)
    assert torch.equal(torch.rand(3), expected) and len(restored) == 1
