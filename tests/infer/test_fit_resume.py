"""Exact resume inside an epoch: steps=, checkpoint_every=, the user's own batches."""

from __future__ import annotations

import json

import pyro
import pytest
import torch

from pyro_gen.infer import CheckpointError, fit
from tests.infer.tiny_vae import TinyVAE, binary_data


def _run(tmp_path, *, seed: int = 0, data=None, batch_size: int = 16, **kwargs) -> TinyVAE:
    pyro.set_rng_seed(seed)
    model = TinyVAE()
    fit(
        model,
        binary_data() if data is None else data,
        batch_size=batch_size,  # 96 examples: 6 batches of 16 per epoch
        progress=False,
        checkpoint_dir=tmp_path,
        clear_params=True,
        **kwargs,
    )
    return model


def _assert_same(a: TinyVAE, b: TinyVAE) -> None:
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name


@pytest.mark.parametrize("compile", [None, False])
def test_steps_then_more_steps_equals_one_run(tmp_path, compile):
    straight = _run(tmp_path / "a", steps=15, compile=compile)
    shift = pyro.param("logit_shift").detach().clone()
    _run(tmp_path / "b", steps=4, compile=compile)  # stops inside the first epoch
    _run(tmp_path / "b", seed=99, steps=9, compile=compile)  # inside the second
    resumed = _run(tmp_path / "b", seed=7, steps=15, compile=compile)
    _assert_same(straight, resumed)
    assert torch.equal(shift, pyro.param("logit_shift").detach())
    records = [json.loads(r) for r in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    # completed epochs once each, then the partial third epoch
    assert [(r["epoch"], r.get("partial", False)) for r in records] == [
        (1, False),
        (2, False),
        (3, True),
    ]


def test_mid_epoch_checkpoints_resume_exactly(tmp_path):
    straight = _run(tmp_path / "a", epochs=2)
    _run(tmp_path / "b", steps=8, checkpoint_every=3)
    # a run killed after step 9 leaves the step-9 checkpoint; resuming from it is exact
    progress = json.loads((tmp_path / "b" / "metrics.jsonl").read_text().splitlines()[-1])
    assert progress["step"] == 8
    resumed = _run(tmp_path / "b", seed=5, epochs=2, checkpoint_every=3)
    _assert_same(straight, resumed)


def test_resume_with_a_shuffling_dataloader_is_exact(tmp_path):
    data = binary_data()

    def loader():
        return torch.utils.data.DataLoader(
            torch.utils.data.TensorDataset(data), batch_size=16, shuffle=True
        )

    straight = _run(tmp_path / "a", data=loader(), steps=10)
    _run(tmp_path / "b", data=loader(), steps=3)
    resumed = _run(tmp_path / "b", seed=3, data=loader(), steps=10)
    _assert_same(straight, resumed)


def test_a_fresh_run_does_not_append_to_old_metrics(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 7, "train_loss": 1.0}\n')
    _run(tmp_path, epochs=1)
    records = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["epoch"] for r in records] == [1]


def test_resume_is_exact_with_an_epoch_callback_stepping_a_scheduler(tmp_path):
    """The docstring's scheduler idiom, with a callback that also draws random numbers (as
    one saving sample images does): the checkpoint is written after the callbacks, so a
    resumed run has the scheduler's step and the RNG where the uninterrupted run had them
    (before, it resumed one learning-rate step behind)."""

    def run(directory, seed: int, epochs: int) -> tuple[TinyVAE, float]:
        optim = pyro.optim.ExponentialLR(
            {"optimizer": torch.optim.Adam, "optim_args": {"lr": 0.01}, "gamma": 0.5}
        )
        callbacks = [lambda record, model: optim.step(), lambda record, model: torch.rand(3)]
        model = _run(directory, seed=seed, epochs=epochs, optim=optim, callbacks=callbacks)
        return model, next(iter(optim.optim_objs.values())).get_last_lr()[0]

    straight, lr = run(tmp_path / "a", 0, epochs=3)
    run(tmp_path / "b", 0, epochs=2)
    resumed, resumed_lr = run(tmp_path / "b", 9, epochs=3)
    assert resumed_lr == lr == 0.01 * 0.5**3
    _assert_same(straight, resumed)


def test_a_failing_callback_loses_no_training(tmp_path):
    """A callback that raises after an epoch (a plot that fails) still leaves that epoch's
    checkpoint and metrics record behind, and a resume from it equals the run without the
    failure."""

    def fails_in_epoch_2(record, model):
        if record["epoch"] == 2:
            raise OSError("disk full while saving a figure")

    with pytest.raises(OSError, match="disk full"):
        _run(tmp_path / "b", seed=0, epochs=3, callbacks=[fails_in_epoch_2])
    records = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").open()]
    assert [r["epoch"] for r in records] == [1, 2]
    resumed = _run(tmp_path / "b", seed=9, epochs=3)
    straight = _run(tmp_path / "a", seed=0, epochs=3)
    _assert_same(straight, resumed)


def _loader(batch_size: int) -> torch.utils.data.DataLoader:
    dataset = torch.utils.data.TensorDataset(binary_data())
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True)


def test_mid_epoch_resume_refuses_another_batch_layout(tmp_path):
    """A checkpoint 4 batches into an epoch holds its place in that epoch's shuffled order
    in batches of 16: resumed with batch_size=32 it skipped 4 batches of 32, past the end of
    the 3-batch epoch, and closed the epoch with 32 of its examples never trained, silently.
    Refused before anything is restored, naming both sizes; the same size resumes exactly."""
    straight = _run(tmp_path / "a", steps=10)
    _run(tmp_path / "b", steps=4)
    with pytest.raises(CheckpointError, match=r"batch_size=16.*batch_size=32.*epochs=1"):
        _run(tmp_path / "b", steps=10, batch_size=32)
    _run(tmp_path / "b", steps=0, batch_size=32)  # restoring only, training nothing: taken
    _assert_same(straight, _run(tmp_path / "b", seed=3, steps=10))
    # the user's own batches: a DataLoader of another batch size has another number of them
    _run(tmp_path / "c", data=_loader(16), steps=3)
    with pytest.raises(CheckpointError, match=r"6 batches an epoch.*3 batches an epoch"):
        _run(tmp_path / "c", data=_loader(32), steps=10)


def test_epoch_boundary_resume_takes_another_batch_size(tmp_path):
    """At an epoch boundary no epoch is half done, so, as in Lightning, a resume may change
    the batch size: it continues as one process would that trained an epoch with 16 and
    then went on with 32 (same Adam state, same random numbers)."""
    _run(tmp_path / "a", epochs=1)
    resumed = _run(tmp_path / "a", seed=4, epochs=2, batch_size=32)
    pyro.set_rng_seed(0)
    pyro.clear_param_store()
    optim = pyro.optim.Adam({"lr": 1e-3})
    straight = TinyVAE()
    for batch_size in (16, 32):
        fit(straight, binary_data(), batch_size=batch_size, epochs=1, optim=optim, progress=False)
    _assert_same(straight, resumed)
    records = [json.loads(r) for r in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [6, 6 + 3]


@pytest.mark.parametrize("compile", [False, None])
def test_rerun_after_an_interrupt_with_the_same_optimizer_is_exact(tmp_path, compile):
    """A notebook user interrupts fit (step 8, last checkpoint at step 6) and reruns the
    cell with the same model and optimizer objects. Pyro's optimizer keeps its per-param
    torch optimizers and loads restored state only into new ones, so the plain path went on
    with Adam's moments of step 8 beside the weights of step 6 (0.014 off a straight run)."""
    optim = pyro.optim.Adam({"lr": 0.01})
    straight = _run(tmp_path / "a", steps=12, optim=optim, compile=compile)

    def interrupt(step: int, model: TinyVAE) -> None:
        if step == 8:
            raise KeyboardInterrupt

    optim = pyro.optim.Adam({"lr": 0.01})
    pyro.set_rng_seed(0)
    model = TinyVAE()
    run = dict(batch_size=16, steps=12, optim=optim, progress=False, compile=compile)
    with pytest.raises(KeyboardInterrupt):
        fit(model, binary_data(), checkpoint_dir=tmp_path / "b", checkpoint_every=3,
            step_callbacks=[interrupt], clear_params=True, **run)  # fmt: skip
    fit(model, binary_data(), checkpoint_dir=tmp_path / "b", checkpoint_every=3, **run)
    _assert_same(straight, model)
