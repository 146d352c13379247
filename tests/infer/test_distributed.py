"""Data-parallel fit on 2 CPU processes (gloo), against one process on the combined batches.

Two launches of two processes each (``torch.multiprocessing``, with the variables torchrun
sets, so ``fit`` initializes the process group itself). The first trains the comparison
runs, an uninterrupted checkpointed run, and a run that both processes kill (SIGKILL) after
a mid-epoch checkpoint; the second resumes the killed run. Every process records the files
it opened for writing (an audit hook), so the test sees that only rank 0 wrote.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import sys
import warnings
from pathlib import Path
from typing import Any

import pyro
import pyro.distributions as dist
import pytest
import torch
import torch.multiprocessing as mp

from pyro_gen.data.batching import Call, batch_calls
from pyro_gen.infer import CheckpointError, fit
from pyro_gen.infer.distributed import ShardedBatches, _plates, is_main_process
from pyro_gen.infer.program import program

F64 = torch.float64
NUM_DATA = 45  # combined batches of 10, the last of 5 (split 3 and 2 between the ranks)
BATCH = 5  # per process


class Regression(torch.nn.Module):
    """A tiny regression whose ELBO has no sampling noise unless ``latent``.

    With ``num_data`` the data plate subsamples (``subsample=idx``) and a global latent
    ``w`` with a Delta guide scales the outputs: its prior term counts once per step.
    """

    def __init__(self, num_data: int | None = None, latent: bool = False) -> None:
        super().__init__()
        self.net = torch.nn.Linear(3, 1).to(F64)
        self.enc = torch.nn.Linear(4, 2).to(F64) if latent else None
        self.num_data = num_data

    def _plate(self, x: torch.Tensor, idx: torch.Tensor) -> pyro.plate:
        if self.num_data is None:
            return pyro.plate("data", x.shape[0])
        return pyro.plate("data", self.num_data, subsample=idx)

    def model(self, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor) -> None:
        pyro.module("regression", self)
        w = torch.ones((), dtype=F64)
        if self.num_data is not None:
            w = pyro.sample("w", dist.Normal(torch.ones((), dtype=F64), 1.0))
        with self._plate(x, idx):
            mean = self.net(x).squeeze(-1) * w
            if self.enc is not None:
                zero = torch.zeros_like(y)
                mean = mean + pyro.sample("z", dist.Normal(zero, 1.0))
            pyro.sample("y", dist.Normal(mean, 0.5), obs=y)

    def guide(self, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor) -> None:
        pyro.module("regression", self)
        if self.num_data is not None:
            w_loc = pyro.param("w_loc", lambda: torch.tensor(0.5, dtype=F64))
            pyro.sample("w", dist.Delta(w_loc))
        if self.enc is not None:
            with self._plate(x, idx):
                loc, log_scale = self.enc(torch.cat([x, y[:, None]], -1)).unbind(-1)
                pyro.sample("z", dist.Normal(loc, log_scale.exp()))


def _data() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(NUM_DATA, 3, generator=g, dtype=F64)
    y = x @ torch.tensor([1.0, -2.0, 0.5], dtype=F64) + 0.3 * torch.randn(
        NUM_DATA, generator=g, dtype=F64
    )
    return {"x": x, "y": y, "idx": torch.arange(NUM_DATA)}


def _batches(batch_size: int) -> list[dict[str, torch.Tensor]]:
    """The first 40 examples as the user's own batches, in order."""
    data = _data()
    return [{k: v[i : i + batch_size] for k, v in data.items()} for i in range(0, 40, batch_size)]


def _sharded_loader(batch_size: int) -> Any:
    """A DataLoader already sharded by a DistributedSampler (rank r: rows r, r + 2, ...)."""
    data = _data()
    dataset = torch.utils.data.TensorDataset(*(data[k][:40] for k in ("x", "y", "idx")))
    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    sampler = torch.utils.data.DistributedSampler(
        dataset, num_replicas=world, rank=rank, shuffle=False
    )
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=sampler)


ADAM = {"optim": lambda: pyro.optim.Adam({"lr": 0.05})}
# The comparisons: (model options, fit options, data for a batch size). "sum" sums the
# ranks' gradients (the plate is the batch): compiled step, SGD (which, unlike Adam, sees
# the gradient's scale), clipping after the sum. "mean" weights them by batch size (a
# subsampling plate and a global latent): plain Pyro steps, SGD. "dealt": the user's
# batches, dealt out in turn; "sampler": a DataLoader that a DistributedSampler shards (one
# process reads it whole, with batches of 10); both with the compiled step and fused Adam.
CASES = {
    "sum": (
        {},
        {"optim": lambda: pyro.optim.SGD({"lr": 0.01}), "grad_clip": 5.0},
        lambda b: _data(),
    ),
    "mean": (
        {"num_data": NUM_DATA},
        {"optim": lambda: pyro.optim.SGD({"lr": 0.002}), "compile": False},
        lambda b: _data(),
    ),
    "dealt": ({}, ADAM, _batches),
    "sampler": ({}, ADAM, _sharded_loader),
}


def _train(case: str, batch_size: int, **kwargs: Any) -> dict[str, torch.Tensor]:
    options, fit_options, data = CASES[case]
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    model = Regression(**options)
    fit_options = {**fit_options, "optim": fit_options["optim"](), **kwargs}
    fit(model, data(batch_size), batch_size=batch_size, epochs=1, progress=False, **fit_options)
    return {k: v.detach().clone() for k, v in pyro.get_param_store().items()}


def _checkpointed(run: Path, **kwargs: Any) -> dict[str, torch.Tensor]:
    """Two epochs of the noisy model (a per-example latent), a checkpoint every 2 steps."""
    pyro.clear_param_store()
    pyro.set_rng_seed(3)
    model = Regression(latent=True)
    fit(
        model,
        _data(),
        batch_size=BATCH,
        epochs=2,
        checkpoint_dir=run,
        checkpoint_every=2,
        optim=pyro.optim.Adam({"lr": 0.05}),
        eval_data=_data(),
        compile=False,  # the compiled step's resume is tested in one process (test_fit_resume)
        **kwargs,
    )
    return {k: v.detach().clone() for k, v in pyro.get_param_store().items()}


def _kill_at(step: int):  # noqa: ANN202 - a step callback
    def callback(taken: int, model: Any) -> None:
        if taken == step:
            os.kill(os.getpid(), signal.SIGKILL)

    return callback


class _Fallbacks(logging.Handler):
    """Collects the compiled step's messages that it fell back to plain Pyro."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if "compiled SVI step off" in record.getMessage():
            self.messages.append(record.getMessage())


def _worker(rank: int, port: int, out: str, launch: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        WORLD_SIZE="2",
        RANK=str(rank),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    out_dir = Path(out)
    written: list[str] = []

    def audit(event: str, args: tuple) -> None:
        if event == "open" and isinstance(args[0], str | bytes | os.PathLike):
            mode, flags = args[1], args[2]
            writes = (mode is not None and any(c in str(mode) for c in "wax+")) or (
                mode is None and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)
            )
            if writes and str(out_dir) in os.fsdecode(args[0]):
                written.append(os.fsdecode(args[0]))

    results: dict[str, Any] = {}
    with open(out_dir / f"stderr{rank}.txt", "w") as err:  # noqa: PTH123 - before the hook
        sys.stderr = err
        sys.addaudithook(audit)
        if launch == "first":
            fallbacks = _Fallbacks()
            logging.getLogger("pyro_gen").addHandler(fallbacks)
            for case in CASES:
                results[case] = _train(case, BATCH)
                results[f"{case} fallbacks"], fallbacks.messages = fallbacks.messages, []
            results["straight"] = _checkpointed(out_dir / "straight")
            results["main"] = is_main_process()
            results["written"] = list(written)
            torch.save(results, out_dir / f"rank{rank}.pt")
            written.clear()
            _checkpointed(out_dir / "killed", step_callbacks=[_kill_at(7)], progress=True)
        else:
            results["resumed"] = _checkpointed(out_dir / "killed", progress=True)
            results["written"] = list(written)
            torch.save(results, out_dir / f"resumed{rank}.pt")


def _launch(tmp_path: Path, launch: str) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # Forked from this process, the workers start with everything imported, the lazy
    # imports of a first compiled step and a first optimizer included (a spawned worker
    # spends seconds importing torch and Pyro again on a busy machine). Forking a process
    # that holds no threads but torch's single intra-op one is safe on the CPU.
    mp.start_processes(_worker, args=(port, str(tmp_path), launch), nprocs=2, start_method="fork")


def test_two_gloo_processes(tmp_path):
    """One test, so that xdist does not run the launches once per worker."""
    single = {case: _train(case, 2 * BATCH) for case in CASES}  # one process, batches of 10
    with pytest.raises(mp.ProcessExitedException) as killed:
        _launch(tmp_path, "first")
    assert killed.value.signal_name == "SIGKILL"
    records = (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["epoch"] for r in records] == [1]  # killed at step 7 of 10
    _launch(tmp_path, "resume")
    for case in CASES:
        _one_epoch_equals_one_process_on_combined_batches(tmp_path, single[case], case)
    _only_rank_0_writes(tmp_path)
    _killed_run_resumes_exactly(tmp_path)
    _resume_under_another_world_size_is_refused(tmp_path)


def _one_epoch_equals_one_process_on_combined_batches(runs, single, case):
    ranks = [torch.load(runs / f"rank{r}.pt") for r in range(2)]
    assert set(single) == set(ranks[0][case]), case
    pyro.set_rng_seed(0)
    start = Regression(**CASES[case][0]).state_dict()
    for name, value in single.items():
        for rank in ranks:
            torch.testing.assert_close(rank[case][name], value, rtol=0, atol=1e-6, msg=case)
        assert torch.equal(ranks[0][case][name], ranks[1][case][name]), case  # one model
    if CASES[case][1].get("compile") is not False:  # the all-reduce ran in the compiled step
        assert ranks[0][f"{case} fallbacks"] == ranks[1][f"{case} fallbacks"] == [], case
    # the runs trained: the comparison is not between untouched parameters
    assert not torch.allclose(single["regression$$$net.weight"], start["net.weight"]), case


def _only_rank_0_writes(runs):
    ranks = [torch.load(runs / f"rank{r}.pt") for r in range(2)]
    assert [r["main"] for r in ranks] == [True, False]
    run = runs / "straight"
    names = {Path(p).name for p in ranks[0]["written"]}
    assert "metrics.jsonl" in names and any("checkpoint.pt" in n for n in names)
    assert ranks[1]["written"] == []
    records = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]  # one record per epoch, not one per rank
    assert all("test_elbo" in r for r in records)
    resumed = [torch.load(runs / f"resumed{r}.pt") for r in range(2)]
    assert resumed[1]["written"] == [] and resumed[0]["written"]
    # the progress bar and epoch lines are rank 0's
    assert "epoch 2" in (runs / "stderr0.txt").read_text()
    assert (runs / "stderr1.txt").read_text() == ""


def _killed_run_resumes_exactly(runs):
    straight = torch.load(runs / "rank0.pt")["straight"]
    for rank in range(2):
        resumed = torch.load(runs / f"resumed{rank}.pt")["resumed"]
        assert set(resumed) == set(straight)
        for name, value in straight.items():
            assert torch.equal(resumed[name], value), name
    a = (runs / "straight" / "metrics.jsonl").read_text().splitlines()
    b = (runs / "killed" / "metrics.jsonl").read_text().splitlines()
    drop = ("time_s", "examples_per_s")
    assert [{k: v for k, v in json.loads(r).items() if k not in drop} for r in a] == [
        {k: v for k, v in json.loads(r).items() if k not in drop} for r in b
    ]


def _resume_under_another_world_size_is_refused(runs):
    pyro.clear_param_store()
    model = Regression(latent=True)
    with pytest.raises(CheckpointError, match="written by 2 process"):
        fit(model, _data(), batch_size=BATCH, epochs=3, checkpoint_dir=runs / "straight")


def test_shards_are_the_combined_batch_split():
    """Without processes: every rank's share of a step, put together, is the batch one
    process takes with batch_size * world_size, in the same shuffled order."""
    data = _data()
    world = 3
    pyro.set_rng_seed(4)
    combined = [c.kwargs for c in batch_calls(data, 4 * world, shuffle=True).epoch()]
    shares = []
    for rank in range(world):
        pyro.set_rng_seed(4)  # every rank holds the same shared stream
        sharded = ShardedBatches(data, 4, rank, world, torch.device("cpu"))
        assert len(sharded) == len(combined)  # 45 = 3 * 12 + 9: the last split 3, 3, 3
        shares.append(list(sharded.epoch()))
    for step, batch in enumerate(combined):
        parts = [shares[rank][step][0].kwargs for rank in range(world)]
        assert all(shares[rank][step][1] == batch["x"].shape[0] for rank in range(world))
        for key in batch:
            assert torch.equal(torch.cat([p[key] for p in parts]), batch[key])


def test_plates_tell_summed_from_subsampled_models():
    for options, subsampled, global_sites in [
        ({}, False, []),
        ({"num_data": NUM_DATA}, True, ["w"]),
    ]:
        model = Regression(**options)
        prog = program(model)
        call = Call((), {k: v[:5] for k, v in _data().items()}, 5)
        assert _plates(prog, call) == (subsampled, global_sites)
