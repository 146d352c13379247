"""How often ``fit`` runs a user's model and guide, as its docstring states: with
``compile=False`` once per step and particle as Pyro's ``SVI.step`` (after two checking
runs); the compiled step calls them only while recording, then replays its program."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO

from pyro_gen.infer import evaluate_elbo, fit


def _counted():
    calls = {"model": 0, "guide": 0}

    def model(x):
        calls["model"] += 1
        loc = pyro.param("loc", torch.zeros(()))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("obs", dist.Normal(loc, 1.0), obs=x)

    def guide(x):
        calls["guide"] += 1

    return model, guide, calls


@pytest.mark.parametrize("particles", [1, 3])
def test_plain_step_runs_model_and_guide_once_per_step_and_particle(particles):
    pyro.clear_param_store()
    model, guide, calls = _counted()
    loss = Trace_ELBO(num_particles=particles)
    fit(model, torch.randn(100), guide=guide, loss=loss, steps=10, batch_size=10,
        compile=False, progress=False)  # fmt: skip
    # two checking runs before training: one traced, one with gradients on
    assert calls == {"model": 2 + 10 * particles, "guide": 2 + 10 * particles}


def test_compiled_step_stops_calling_them_once_recorded():
    pyro.clear_param_store()
    model, guide, calls = _counted()
    fit(model, torch.randn(100), guide=guide, steps=10, batch_size=10, progress=False)
    recorded = dict(calls)
    fit(model, torch.randn(100), guide=guide, steps=30, batch_size=10, progress=False)
    # a second fit records again (a new step object) but 20 more steps add no calls
    assert calls["model"] - recorded["model"] == recorded["model"]
    assert recorded["model"] < 10


def _held_out_counted(batches):
    """A held-out batch function that counts its calls (a user's may be costly or
    stateful: a generator factory, a counter)."""
    calls = []

    def eval_batches():
        calls.append(1)
        return iter(batches)

    return eval_batches, calls


def _callable_elbo(model, guide, x):
    return Trace_ELBO().differentiable_loss(model, guide, x)


@pytest.mark.parametrize(("epochs", "eval_every", "evaluations"), [(3, 1, 3), (4, 2, 2), (2, 5, 1)])
@pytest.mark.parametrize("loss", [Trace_ELBO(), _callable_elbo], ids=["elbo", "callable"])
def test_a_held_out_batch_function_is_called_once_per_evaluation(
    epochs, eval_every, evaluations, loss
):
    # fit read one batch of it up front to check it and threw that pass away: one call
    # more than evaluations (4 for 3)
    pyro.clear_param_store()
    model, guide, _ = _counted()
    eval_batches, calls = _held_out_counted(torch.randn(40).split(10))
    result = fit(model, torch.randn(100), guide=guide, loss=loss, epochs=epochs,
                 batch_size=50, eval_data=eval_batches, eval_every=eval_every,
                 progress=False)  # fmt: skip
    key = "test_elbo" if loss is not _callable_elbo else "test_loss"
    assert sum(key in record for record in result.history) == evaluations
    assert len(calls) == evaluations


def test_a_held_out_function_yielding_nothing_is_refused_before_training():
    pyro.clear_param_store()
    model, guide, _ = _counted()
    eval_batches, calls = _held_out_counted([])
    steps = []
    with pytest.raises(ValueError, match=r"eval_data \(the held-out data\): data yields no"):
        fit(model, torch.randn(100), guide=guide, epochs=1, batch_size=50,
            eval_data=eval_batches, step_callbacks=[lambda step, m: steps.append(step)],
            progress=False)  # fmt: skip
    assert steps == [] and len(calls) == 1


def test_a_held_out_iterator_is_scored_whole_once_and_refused_where_read_twice():
    """Its first batch was read to check it and lost: the test ELBO was that of the other
    batches; a second evaluation failed after an epoch's training."""
    pyro.clear_param_store()
    model, guide, _ = _counted()
    held_out = torch.randn(40) + 2.0
    result = fit(model, torch.randn(100), guide=guide, epochs=1, batch_size=50,
                 eval_data=iter(held_out.split(10)), progress=False)  # fmt: skip
    whole = evaluate_elbo(model, held_out, guide=guide)
    assert result.history[-1]["test_elbo"] == pytest.approx(whole, rel=1e-12)
    steps = []
    with pytest.raises(ValueError, match=r"eval_data is an iterator.*evaluates 2 times"):
        fit(model, torch.randn(100), guide=guide, epochs=2, batch_size=50,
            eval_data=iter(held_out.split(10)),
            step_callbacks=[lambda step, m: steps.append(step)], progress=False)  # fmt: skip
    assert steps == []
    # with steps= the number of evaluations is not known up front: the second one says why
    with pytest.raises(ValueError, match=r"eval_data is an iterator, used up by the first"):
        fit(model, torch.randn(100), guide=guide, steps=4, batch_size=50,
            eval_data=iter(held_out.split(10)), progress=False)  # fmt: skip
