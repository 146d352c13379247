from __future__ import annotations

import json
import math

import pyro
import pyro.distributions as dist
import pyro.optim
import pytest
import torch
from pyro.infer import TraceMeanField_ELBO

from pyro_gen.infer import (
    CheckpointError,
    LinearAnnealing,
    NonFiniteLossError,
    evaluate_elbo,
    fit,
)
from tests.infer.tiny_vae import TinyVAE, binary_data


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


def _train(tmp_path, epochs: int, seed: int = 0, **kw):
    pyro.set_rng_seed(seed)
    model = TinyVAE()
    result = fit(
        model,
        binary_data(),
        epochs=epochs,
        batch_size=32,
        progress=False,
        checkpoint_dir=tmp_path,
        clear_params=True,
        **kw,
    )
    return model, result


def test_fit_improves_the_elbo(tmp_path):
    data = binary_data()
    model = TinyVAE()
    before = evaluate_elbo(model, data, num_particles=10)
    fit(model, data, epochs=30, batch_size=32, progress=False, optim=pyro.optim.Adam({"lr": 1e-2}))
    after = evaluate_elbo(model, data, num_particles=10)
    assert after > before + 1.0


def test_resume_is_exact(tmp_path):
    straight, _ = _train(tmp_path / "a", epochs=2, eval_data=binary_data(seed=1))
    store_straight = pyro.param("logit_shift").detach().clone()
    _train(tmp_path / "b", epochs=1, eval_data=binary_data(seed=1))
    pyro.set_rng_seed(123)  # a fresh process would not share the first run's RNG state
    resumed = TinyVAE()
    result = fit(
        resumed,
        binary_data(),
        epochs=2,
        batch_size=32,
        progress=False,
        checkpoint_dir=tmp_path / "b",
        eval_data=binary_data(seed=1),
        clear_params=True,
    )
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    assert torch.equal(store_straight, pyro.param("logit_shift").detach())
    assert [r["epoch"] for r in result.history] == [1, 2]
    lines = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    assert "test_elbo" in json.loads(lines[-1])


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_checkpoint(tmp_path):
    model, _ = _train(tmp_path, epochs=1)
    saved = (tmp_path / "checkpoint.pt").read_bytes()
    data = binary_data()
    data[5, 0] = float("nan")
    pyro.enable_validation(False)  # let the NaN reach the loss rather than the validator
    with pytest.raises(NonFiniteLossError, match="at step"):
        fit(model, data, epochs=3, batch_size=32, progress=False, checkpoint_dir=tmp_path)
    assert (tmp_path / "checkpoint.pt").read_bytes() == saved
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_checkpoint_of_another_model_is_refused(tmp_path):
    _train(tmp_path, epochs=1)

    class Other(TinyVAE):
        pass

    with pytest.raises(CheckpointError, match="not a"):
        fit(
            Other(), binary_data(), epochs=2, progress=False, checkpoint_dir=tmp_path,
            clear_params=True,
        )  # fmt: skip


@pytest.mark.parametrize("compile", [None, False])
def test_step_callbacks_follow_each_update(compile):
    model, seen = TinyVAE(), []

    def record(step, gen_model):
        seen.append((step, next(gen_model.parameters()).detach().clone()))

    result = fit(
        model, binary_data(), epochs=2, batch_size=32, step_callbacks=[record],
        progress=False, compile=compile,
    )  # fmt: skip
    assert [s for s, _ in seen] == list(range(1, result.step + 1))
    # each call sees the parameters its step has just updated
    assert all(not a.equal(b) for (_, a), (_, b) in zip(seen, seen[1:]))
    assert seen[-1][1].equal(next(model.parameters()))


def test_compiled_loop_reads_losses_late_but_raises_and_keeps_parameters_finite():
    data = binary_data()
    data[40, 0] = float("nan")
    pyro.enable_validation(False)
    model = TinyVAE()
    with pytest.raises(NonFiniteLossError, match=r"at step \d+\b.*that update was skipped"):
        fit(model, data, epochs=1, batch_size=8, progress=False)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_annealing_scales_only_latent_sites():
    seen = []

    def record(record, model):
        seen.append(record["beta"])

    fit(
        TinyVAE(),
        binary_data(),
        epochs=3,
        batch_size=96,
        progress=False,
        annealing=LinearAnnealing(warmup_steps=4),
        callbacks=[record],
    )
    assert seen == [0.0, 0.25, 0.5]


def test_steps_and_grad_clip_and_meanfield_loss():
    result = fit(
        TinyVAE(),
        binary_data(),
        steps=5,
        batch_size=32,
        grad_clip=1.0,
        loss=TraceMeanField_ELBO(),
        progress=False,
    )
    assert result.step == 5
    assert math.isfinite(result.history[-1]["train_loss"])


def test_callback_can_stop_training():
    result = fit(
        TinyVAE(),
        binary_data(),
        epochs=10,
        batch_size=32,
        progress=False,
        callbacks=[lambda record, model: record["epoch"] >= 2],
    )
    assert result.epoch == 2


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"epochs": -1}, "non-negative"),
        ({"epochs": 1, "steps": 1}, "exactly one"),
        ({}, "exactly one"),
        ({"epochs": 1, "batch_size": 0}, "batch_size"),
        ({"epochs": 1, "device": "meta"}, "device='meta': cannot hold a trained model; use cpu"),
        ({"epochs": 1, "device": "gpu"}, "device='gpu' is not a device"),
        ({"epochs": 1, "device": "cuda:99"}, "device='cuda:99': (no CUDA|there are)"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        fit(TinyVAE(), binary_data(), progress=False, **kwargs)


@pytest.mark.parametrize(
    "data, named",
    [(torch.tensor(3.0), "argument 0"), ({"x": torch.ones(4), "w": torch.tensor(2.0)}, "'w'")],
)
def test_data_without_a_dimension_of_examples_is_named(data, named):
    # a 0-dim tensor has no size to read: it failed with IndexError before being named
    def model(x, w=None):
        pyro.sample("x", dist.Normal(pyro.param("m", torch.tensor(0.0)), 1.0), obs=x)

    with pytest.raises(ValueError, match=f"{named} is a 0-dim tensor: give one example as"):
        fit(model, data, guide=lambda x, w=None: None, epochs=1, progress=False)


def test_device_argument_moves_model_and_data(device):
    model = TinyVAE()
    fit(model, binary_data(), epochs=1, batch_size=32, device=device, progress=False)
    assert all(p.device.type == device.type for p in model.parameters())
