"""fit and the evaluation helpers on users' programs given what they cannot take: nonsense
arguments, data in another form, a guide in the data position or set up on other sizes,
guide sites that do not match the model, inconsistent batches, networks and data torch will
not mix, time-major sequences, callbacks fit cannot call, a param started outside its
constraint. Each is one clear error naming what was wrong and what to do, before training."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pyro.optim
import pyro.util
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoNormal

from pyro_gen.infer import evaluate_elbo, fit, iwae_log_likelihood
from tests.infer.regression_program import _regression_data, regression
from tests.infer.tiny_vae import TinyVAE, binary_data


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"epochs": 2.5}, "epochs must be a non-negative whole number"),
        ({"steps": -1}, "steps must be a non-negative whole number"),
        ({"epochs": 1, "batch_size": 0}, "batch_size must be a positive"),
        ({"epochs": 1, "grad_clip": -1.0}, "grad_clip must be a positive finite"),
        ({"epochs": 1, "grad_clip": 0.0}, "grad_clip must be a positive finite"),
        ({"epochs": 1, "optim": torch.optim.Adam}, "optim must be a pyro.optim.PyroOptim"),
        ({"epochs": 1, "checkpoint_every": 5}, "checkpoint_every= needs checkpoint_dir="),
        ({"epochs": 1, "eval_data": torch.zeros(0, 6)}, "no examples"),
        ({"epochs": 1, "loss": Trace_ELBO}, r"loss is the class Trace_ELBO, not called"),
    ],
)
def test_nonsense_arguments_are_refused_before_training(kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        fit(TinyVAE(), binary_data(), progress=False, **kwargs)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (binary_data().numpy(), r"numpy array of shape \(96, 6\).*torch.as_tensor"),
        (torch.utils.data.TensorDataset(binary_data()), "single examples.*DataLoader"),
    ],
    ids=["numpy", "TensorDataset"],
)
def test_data_in_a_form_fit_does_not_take_gets_one_clear_error(data, message):
    """A numpy array is iterable over its rows, so each row was taken as a batch and the
    model failed on it; a Dataset yields single examples."""
    with pytest.raises(TypeError, match=message):
        fit(TinyVAE(), data, epochs=1, progress=False)


def test_empty_data_is_refused_and_never_loops():
    with pytest.raises(ValueError, match="no examples"):
        fit(TinyVAE(), torch.zeros(0, 6), steps=5, progress=False)
    with pytest.raises(ValueError, match="yields no batches"):
        fit(TinyVAE(), [], epochs=3, progress=False)


def test_a_plain_model_without_a_guide_is_told_to_pass_one():
    with pytest.raises(TypeError, match="pass guide="):
        fit(regression, _regression_data(), epochs=1, progress=False)


def test_a_guide_in_the_data_position_is_named_as_such():
    """Pyro's order is ``SVI(model, guide, ...)``: ``fit(model, guide)`` took the guide for
    the data and said only "pass guide=", and the evaluation helpers did the same."""
    guide = AutoNormal(regression)
    message = r"data is '{}', a {} that takes arguments.*pass a guide as guide="
    for call in (fit, evaluate_elbo, iwae_log_likelihood):
        with pytest.raises(TypeError, match=message.format("AutoNormal", "module")):
            call(regression, guide)
        with pytest.raises(TypeError, match=message.format("<lambda>", "callable")):
            call(regression, lambda x, y: None)
    with pytest.raises(TypeError, match=message.format("AutoNormal", "module")):
        fit(TinyVAE(), guide, epochs=1, progress=False)  # a module with its own guide too


def test_a_guide_with_parameters_per_example_on_a_batch_names_the_plate_and_sizes():
    """Pyro's AutoNormal set up on 64 examples, then given batches of 16: Pyro failed at a
    log_prob ("Value is not broadcastable ... [16] vs [64]"), naming neither guide nor batch."""

    def local_model(x):
        shift = pyro.sample("shift", dist.Normal(0.0, 1.0))
        with pyro.plate("rows", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(shift + z, 1.0), obs=x)

    x = torch.randn(64)
    guide = AutoNormal(local_model)
    guide(x)  # set up on the whole data, as Pyro's SVI on it would
    message = r"plate 'rows' has size 16 on this batch.*guide's plate .* size 64.*batch_size=64"
    with pytest.raises(ValueError, match=message):
        fit(local_model, x, guide=guide, epochs=1, batch_size=16, progress=False)
    for call in (evaluate_elbo, iwae_log_likelihood):
        with pytest.raises(ValueError, match=message):
            call(local_model, x, guide=guide, batch_size=16)
    assert math.isfinite(evaluate_elbo(local_model, x, guide=guide, batch_size=64))


@pytest.mark.parametrize("loss", [Trace_ELBO, "elbo", 3], ids=["class", "str", "int"])
def test_evaluate_elbo_refuses_what_is_not_a_loss_as_fit_does(loss):
    """evaluate_elbo reads the training loss's particles and type; anything else was ignored."""
    x, y = _regression_data()
    message = "loss is the class Trace_ELBO|loss must be a Pyro"
    with pytest.raises(TypeError, match=message):
        fit(regression, (x, y), guide=AutoNormal(regression), loss=loss, epochs=1)
    with pytest.raises(TypeError, match=message):
        evaluate_elbo(regression, (x, y), guide=AutoNormal(regression), loss=loss)


def test_guide_sites_that_do_not_match_the_model_are_named():
    x, y = _regression_data()

    def typo_guide(x, y=None):
        pyro.sample("w", dist.Normal(0.0, 1.0))
        pyro.sample("bias", dist.Normal(0.0, 1.0))

    with pytest.raises(ValueError, match=r"samples \['bias'\].*unguided latent sites are \['b'\]"):
        fit(regression, (x, y), guide=typo_guide, epochs=1, progress=False)

    def partial_guide(x, y=None):
        pyro.sample("w", dist.Normal(0.0, 1.0))
        pyro.sample("bias", dist.Normal(0.0, 1.0), infer={"is_auxiliary": True})

    with pytest.raises(ValueError, match=r"latent sites \['b'\] have no counterpart"):
        fit(regression, (x, y), guide=partial_guide, epochs=1, progress=False)


def test_inconsistent_batches_are_named():
    x, y = _regression_data()
    batches = [{"x": x[:8], "y": y[:8]}, {"x": x[8:16], "target": y[8:16]}]
    with pytest.raises(ValueError, match=r"batch 1 of data has keywords 'target', 'x'.*model"):
        fit(regression, batches, guide=AutoNormal(regression), epochs=1, progress=False)


@pytest.mark.parametrize("where", ["device", "dtype", "integers"])
def test_networks_and_data_that_torch_will_not_mix_are_named(where):
    """A decoder left on another device than the data ("meta" stands in for CUDA here),
    float64 data (numpy's) given to float32 networks, or uint8 images (MNIST's raw pixels)
    given to an encoder: torch's message named neither the network nor the batch."""
    encoder, decoder = torch.nn.Linear(6, 2), torch.nn.Linear(2, 6)
    x = torch.rand(32, 6).round()
    if where == "integers":
        x = (x * 255).to(torch.uint8)
        message = (
            r"\(mat1 and mat2 must have the same dtype, but got Byte and Float\): the batch "
            r"holds uint8 values where a network takes floats \(Linear holds float32\)\. "
            r"Convert them before the model sees them: x\.float\(\) \(images of 0-255: "
        )
    elif where == "device":
        decoder = decoder.to("meta")
        message = r"on the first batch \(.*\): the batch is on cpu, Linear on meta\. Put the"
    else:
        x = x.double()
        message = (
            r"the batch is float64, Linear holds float32\. Convert the data "
            r"\(x.to\(torch.float32\); numpy arrays arrive as float64\) or the networks "
            r"\(module.double\(\)\)"
        )

    def model(x):
        pyro.module("decoder", decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=decoder(z)).to_event(1), obs=x)

    def guide(x):
        pyro.module("encoder", encoder)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(encoder(x), 1.0).to_event(1))

    with pytest.raises(RuntimeError, match=message):
        fit(model, x, guide=guide, steps=1, progress=False)
    with pytest.raises(RuntimeError, match=message):
        evaluate_elbo(model, x, guide=guide)


def test_time_major_sequences_are_refused_before_fit_cuts_them_along_time():
    """PyTorch's RNNs take (T, N, D) by default. fit cuts tensors along the first dimension:
    spans of 8 time steps were trained on as batches of examples, without a word."""
    rnn, out = torch.nn.GRU(3, 4), torch.nn.Linear(4, 3)

    def model(x):
        pyro.module("rnn", rnn)
        pyro.module("out", out)
        with pyro.plate("sequences", x.shape[1]):
            h, _ = rnn(x)
            pyro.sample("x", dist.Normal(out(h).transpose(0, 1), 1.0).to_event(2),
                        obs=x.transpose(0, 1))  # fmt: skip

    x = torch.randn(20, 30, 3)
    message = r"this batch has 8 rows, but the model's data plate 'sequences' has size 30"
    with pytest.raises(ValueError, match=message + r".*x.transpose\(0, 1\)"):
        fit(model, x, guide=lambda x: None, steps=1, batch_size=8, progress=False)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"callbacks": [lambda: None]}, r"callbacks\[0\] \(.*<lambda>\) cannot be called as "
                                        r"callback\(record, model\)"),
        ({"step_callbacks": [lambda model: None]}, r"step_callbacks\[0\] .* cannot be called as "
                                                   r"callback\(step, model\)"),
        ({"callbacks": lambda record, model: None}, r"callbacks takes a list of callables"),
        ({"callbacks": [None]}, r"callbacks\[0\] is a NoneType, not callable"),
    ],
)  # fmt: skip
def test_a_callback_fit_cannot_call_is_refused_before_the_first_step(kwargs, message):
    """A callback with the wrong parameters failed only after the first epoch had trained
    (Python's bare "takes 0 positional arguments but 2 were given"): here no step runs."""
    model = TinyVAE()
    pyro.clear_param_store()
    with pytest.raises(TypeError, match=message):
        fit(model, binary_data(16), epochs=1, batch_size=8, progress=False, **kwargs)
    assert not pyro.get_param_store().keys()  # nothing ran: no parameter was made


def test_callbacks_that_take_more_or_keyword_parameters_are_called():
    """Defaults, *args and a callable object bind; each is called once per epoch."""
    calls = []

    class Counter:
        def __call__(self, record, model):
            calls.append("object")

    def with_default(record, model, extra="default"):
        calls.append(extra)

    fit(TinyVAE(), binary_data(16), epochs=2, batch_size=8, progress=False,
        callbacks=[Counter(), with_default, lambda *args: calls.append(len(args))])  # fmt: skip
    assert calls == ["object", "default", 2] * 2


@pytest.mark.parametrize("init, where", [(-1.0, "outside"), (0.0, "on the edge of")])
def test_a_param_started_outside_its_constraint_is_named(init, where):
    """Pyro stores log(init) for a positive param: -1 gives NaN, 0 gives -inf. Pyro's own
    error comes from the distribution, naming neither the param nor its start."""

    def model(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(0.0, 1.0))

    def guide(x):
        sigma = pyro.param("sigma", torch.tensor(init), constraint=dist.constraints.positive)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(0.0, sigma))

    x = torch.zeros(8)
    pyro.clear_param_store()
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.1}), Trace_ELBO())
    with pytest.raises(ValueError) as pyros:
        svi.step(x)
    assert "sigma" not in str(pyros.value).split("Trace Shapes")[0]
    pyro.clear_param_store()
    with pytest.raises(ValueError, match=rf"pyro.param\('sigma'\) was given an initial value "
                       rf"{where} its constraint GreaterThan\(lower_bound=0.0\)"):  # fmt: skip
        fit(model, x, guide=guide, steps=1, progress=False)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"annealing": 0.5}, r"annealing must be a function of the step number .* got the "
                             r"float 0\.5"),  # was "'float' object is not callable", at step 1
        ({"compile": "no"}, r"compile must be None, True or False; got the str 'no'"),  # truthy
        ({"transform": 255}, r"transform must be a function of a batch tensor"),
        ({"plate_name": 0}, r"plate_name must be a pyro.plate's name"),  # matched no plate
        ({"checkpoint_dir": 7}, r"checkpoint_dir must be a directory path"),
        ({"clear_params": "no"}, r"clear_params must be True or False; got the str 'no'"),
    ],
)  # fmt: skip
def test_an_argument_of_the_wrong_kind_is_refused_before_anything_runs(kwargs, message):
    pyro.clear_param_store()
    with pytest.raises(TypeError, match=message):
        fit(TinyVAE(), binary_data(16), epochs=1, batch_size=8, progress=False, **kwargs)
    assert not pyro.get_param_store().keys()


@pytest.mark.parametrize("evaluate", [evaluate_elbo, iwae_log_likelihood])
def test_evaluation_flags_must_be_true_or_false(evaluate):
    # per_example="no" is truthy: a tensor came back where the caller expected a float
    vae = TinyVAE()
    with pytest.raises(TypeError, match=r"per_example must be True or False; got the str 'no'"):
        evaluate(vae, binary_data(8), per_example="no")
    with pytest.raises(TypeError, match=r"progress must be True or False; got the str 'off'"):
        evaluate(vae, binary_data(8), progress="off")
    assert isinstance(evaluate(vae, binary_data(8), per_example=0), float)  # 0 and 1 are flags
