"""fit on users' own Pyro programs: plain callables, swapped guides, every data form."""

from __future__ import annotations

import math
import warnings

import pyro
import pyro.distributions as dist
import pyro.optim
import pyro.util
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoNormal

from pyro_gen.infer import NonFiniteLossError, evaluate_elbo, fit, iwae_log_likelihood
from pyro_gen.infer.batch_checks import NothingObservedWarning, UnscaledBatchWarning
from tests.infer.tiny_vae import TinyVAE, binary_data

LOC = torch.tensor([1.0, -2.0])


def _regression_data(n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, generator=g)
    return x, 3.0 * x + 0.5 + 0.1 * torch.randn(n, generator=g)


def regression(x: torch.Tensor, y: torch.Tensor | None = None) -> None:
    w = pyro.sample("w", dist.Normal(0.0, 10.0))
    b = pyro.sample("b", dist.Normal(0.0, 10.0))
    with pyro.plate("N", x.shape[0]):
        pyro.sample("y", dist.Normal(w * x + b, 0.1), obs=y)


def _posterior_mean(guide: AutoNormal) -> dict[str, float]:
    return {k: float(v) for k, v in guide.median().items()}


def test_plain_function_with_an_autoguide_matches_pyros_svi():
    """compile=False is Pyro's own SVI step: the same seed gives the same parameters."""
    x, y = _regression_data()
    optim = pyro.optim.Adam({"lr": 0.05})
    pyro.set_rng_seed(1)
    guide = AutoNormal(regression)
    fit(regression, (x, y), guide=guide, steps=30, batch_size=64, optim=optim, progress=False,
        compile=False)  # fmt: skip
    ours = {k: v.detach().clone() for k, v in pyro.get_param_store().items()}

    pyro.clear_param_store()
    pyro.set_rng_seed(1)
    guide = AutoNormal(regression)
    # fit builds a lazy guide in a warm-up call that leaves the RNG where it was
    rng = pyro.util.get_rng_state()
    guide(x, y)
    pyro.util.set_rng_state(rng)
    svi = SVI(regression, guide, pyro.optim.Adam({"lr": 0.05}), Trace_ELBO())
    # fit draws each epoch's shuffle order first; a single full batch is that permutation
    for _ in range(30):
        perm = torch.randperm(64)
        svi.step(x[perm], y[perm])
    theirs = dict(pyro.get_param_store().items())
    assert ours.keys() == theirs.keys()
    for name in ours:
        torch.testing.assert_close(ours[name], theirs[name].detach(), msg=name)


def banana() -> None:
    """An unnormalized density written as a model without arguments (Pyro's NeuTra example)."""
    x = pyro.sample("x", dist.Normal(0.0, 1.0))
    pyro.sample("y", dist.Normal(x**2 / 2, 0.5))


def test_a_model_without_data_trains_as_svi_step_does_with_pyros_flow_autoguide():
    """data=() calls model() at every step, as ``svi.step()``; AutoIAFNormal keeps one
    parameter under two names, which fit's compiled step updates once, as Pyro does."""
    from pyro.infer.autoguide import AutoIAFNormal

    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        runs = []
        for use_fit in (True, False):
            pyro.clear_param_store()
            pyro.set_rng_seed(2)
            guide = AutoIAFNormal(banana, hidden_dim=[8], num_transforms=2)
            optim = pyro.optim.Adam({"lr": 0.05})
            if use_fit:
                result = fit(banana, (), guide=guide, steps=110, optim=optim, progress=False)
                # 100 steps an epoch: records after step 100 and the last
                assert [r["step"] for r in result.history] == [100, 110]
            else:
                rng = pyro.util.get_rng_state()  # fit's warm-up call leaves the RNG as it was
                guide()
                pyro.util.set_rng_state(rng)
                svi = SVI(banana, guide, optim, Trace_ELBO())
                for _ in range(110):
                    svi.step()
            runs.append({k: v.detach().clone() for k, v in pyro.get_param_store().items()})
    finally:
        torch.set_default_dtype(old)
    assert runs[0].keys() == runs[1].keys()
    for name in runs[0]:
        torch.testing.assert_close(runs[0][name], runs[1][name], rtol=1e-6, atol=1e-9, msg=name)


def test_tuple_and_dict_data_reach_the_model_by_position_and_by_name():
    x, y = _regression_data()
    guide = AutoNormal(regression)
    fit(regression, (x, y), guide=guide, steps=400, batch_size=16, progress=False,
        optim=pyro.optim.Adam({"lr": 0.05}))  # fmt: skip
    assert _posterior_mean(guide) == pytest.approx({"w": 3.0, "b": 0.5}, abs=0.1)
    pyro.clear_param_store()
    guide = AutoNormal(regression)
    fit(regression, {"x": x, "y": y}, guide=guide, steps=400, batch_size=16, progress=False,
        optim=pyro.optim.Adam({"lr": 0.05}))  # fmt: skip
    assert _posterior_mean(guide) == pytest.approx({"w": 3.0, "b": 0.5}, abs=0.1)


def test_the_users_own_batches_a_generator_function_and_a_dataloader():
    x, y = _regression_data()

    def batches():
        for i in range(0, 64, 16):
            yield {"x": x[i : i + 16], "y": y[i : i + 16]}

    guide = AutoNormal(regression)
    result = fit(regression, batches, guide=guide, epochs=100, progress=False,
                 optim=pyro.optim.Adam({"lr": 0.05}))  # fmt: skip
    assert result.step == 400
    assert _posterior_mean(guide) == pytest.approx({"w": 3.0, "b": 0.5}, abs=0.1)

    pyro.clear_param_store()
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, y), batch_size=16, shuffle=True
    )
    guide = AutoNormal(regression)
    fit(regression, loader, guide=guide, epochs=100, progress=False,
        optim=pyro.optim.Adam({"lr": 0.05}))  # fmt: skip
    assert _posterior_mean(guide) == pytest.approx({"w": 3.0, "b": 0.5}, abs=0.1)


def test_a_loader_of_image_label_pairs_for_a_model_of_images_is_told_how_to_drop_labels():
    """Pyro's VAE tutorial iterates ``for x, _ in train_loader``: given that loader, ``fit``
    named the mismatch but not the fix, and the evaluation helpers gave the guide's own
    "takes 1 positional argument but 2 were given". The advised data then run."""
    pyro.clear_param_store()
    vae = TinyVAE()
    x = binary_data(32)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, torch.zeros(32, dtype=torch.long)), batch_size=8
    )
    advice = r"batch 0 of data has 2 positional .*data=lambda: \(batch\[:1\] for batch in"
    for run in (
        lambda data: fit(vae, data, epochs=1, progress=False),
        lambda data: evaluate_elbo(vae, data),
        lambda data: iwae_log_likelihood(vae, data, num_samples=2),
    ):
        with pytest.raises(ValueError, match=advice):
            run(loader)
        run(lambda: (batch[0] for batch in loader))  # as the message advises


def test_a_packed_sequence_batch_is_one_positional_argument():
    seqs = [torch.randn(n, 1) + 2.0 for n in (5, 3, 2)]
    packed = torch.nn.utils.rnn.pack_sequence(seqs)
    loc = torch.nn.Parameter(torch.zeros(()))

    def model(sequences: torch.nn.utils.rnn.PackedSequence) -> None:
        pyro.module("m", torch.nn.ParameterList([loc]))
        with pyro.plate("steps", sequences.data.shape[0]):
            pyro.sample("obs", dist.Normal(loc, 1.0), obs=sequences.data[:, 0])

    fit(model, [packed], guide=lambda s: None, epochs=200, progress=False,
        optim=pyro.optim.Adam({"lr": 0.05}))  # fmt: skip
    assert loc.item() == pytest.approx(torch.cat(seqs).mean().item(), abs=0.05)


def test_a_swapped_guide_leaves_the_modules_own_guide_untouched():
    vae = TinyVAE()
    guide = AutoNormal(pyro.poutine.block(vae.model, hide=["x"]))
    encoder_before = [p.detach().clone() for p in vae.encoder.parameters()]
    fit(vae, binary_data(), guide=guide, epochs=1, batch_size=32, progress=False)
    assert any(name.startswith("AutoNormal") for name in pyro.get_param_store())
    assert all(a.equal(b) for a, b in zip(encoder_before, vae.encoder.parameters()))


def test_transform_can_target_any_argument_by_name_or_position():
    seen = []

    def model(a, b):
        seen.append((a.max().item(), b.min().item()))

    data = (torch.zeros(8, 1), torch.zeros(8, 1))
    fit(model, data, guide=lambda a, b: None, steps=1, batch_size=8, progress=False,
        transform={1: lambda t: t + 7}, compile=False)  # fmt: skip
    assert seen[-1] == (0.0, 7.0)
    fit(model, {"a": data[0], "b": data[1]}, guide=lambda a, b: None, steps=1, batch_size=8,
        progress=False, transform={"a": lambda t: t - 1}, compile=False)  # fmt: skip
    assert seen[-1] == (-1.0, 0.0)


def test_the_param_store_is_the_users():
    pyro.param("unrelated", torch.ones(3))
    vae = TinyVAE()
    fit(vae, binary_data(), epochs=1, batch_size=32, progress=False)
    assert "unrelated" in pyro.get_param_store()
    # a second fit of the same model continues with the same tensors
    fit(vae, binary_data(), epochs=1, batch_size=32, progress=False)


def test_a_stale_module_entry_is_refused_and_clear_params_starts_fresh():
    fit(TinyVAE(), binary_data(), epochs=1, batch_size=32, progress=False)
    fresh = TinyVAE()
    with pytest.raises(ValueError, match=r"already holds '(en|de)coder\$\$\$.*clear_params=True"):
        fit(fresh, binary_data(), epochs=1, batch_size=32, progress=False)
    before = fresh.decoder[0].weight.detach().clone()
    fit(fresh, binary_data(), epochs=1, batch_size=32, progress=False, clear_params=True)
    assert not fresh.decoder[0].weight.detach().equal(before)  # the module itself trained


def test_a_store_loaded_the_pyro_way_continues_through_the_advised_registration(tmp_path):
    """The stale-entry error's advice for a store restored with ``load``: register each
    named module with ``update_module_params=True``, after which fit trains the loaded
    values (the module computes with them)."""
    trained = TinyVAE()
    fit(trained, binary_data(), epochs=1, batch_size=32, progress=False)
    pyro.get_param_store().save(tmp_path / "params.pt")
    pyro.clear_param_store()
    pyro.get_param_store().load(tmp_path / "params.pt")
    fresh = TinyVAE()
    with pytest.raises(ValueError, match=r"pyro.module\('(en|de)coder', <that module>, update"):
        fit(fresh, binary_data(), epochs=1, batch_size=32, progress=False)
    pyro.module("encoder", fresh.encoder, update_module_params=True)
    pyro.module("decoder", fresh.decoder, update_module_params=True)
    assert fresh.decoder[0].weight.equal(trained.decoder[0].weight)
    fit(fresh, binary_data(), epochs=1, batch_size=32, progress=False)
    assert not fresh.decoder[0].weight.equal(trained.decoder[0].weight)  # trained on


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


@pytest.mark.parametrize("compile", [None, False])
def test_a_nan_gradient_skips_the_update_and_names_the_step(compile):
    """A finite loss with a NaN gradient (sqrt at 0) must not reach the parameters."""
    w = torch.nn.Parameter(torch.tensor([1.0]))

    def model(x):
        pyro.module("w", torch.nn.ParameterList([w]))
        with pyro.plate("data", x.shape[0]):
            # d/dw sqrt(w^2 - 1) is inf at w = 1: a finite loss, a non-finite gradient
            pyro.sample("x", dist.Normal(torch.sqrt(w**2 - 1.0), 1.0), obs=x)

    pyro.enable_validation(False)
    with pytest.raises(NonFiniteLossError, match="at step 1"):
        fit(model, torch.zeros(8), guide=lambda x: None, steps=3, batch_size=8, progress=False,
            compile=compile)  # fmt: skip
    assert w.item() == 1.0


def test_a_callable_loss_trains_as_in_pyros_svi_and_reports_a_test_loss():
    """EnergyDistance has no loss_and_grads; Pyro's SVI differentiates it, and so does fit."""
    from pyro.infer import EnergyDistance

    loc = torch.nn.Parameter(torch.zeros(2))

    def implicit(x):
        pyro.module("gen", torch.nn.ParameterList([loc]))
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            pyro.sample("x", dist.Delta(z + loc, event_dim=1), obs=x)

    data = torch.randn(256, 2) + LOC
    pyro.enable_validation(False)  # EnergyDistance warns that z has no guide site, by design
    result = fit(implicit, data, guide=lambda x: None, epochs=60, batch_size=64, progress=False,
                 loss=EnergyDistance(num_particles=4), optim=pyro.optim.Adam({"lr": 0.05}),
                 eval_data=data[:64])  # fmt: skip
    torch.testing.assert_close(loc.detach(), LOC, atol=0.25, rtol=0)
    assert "test_elbo" not in result.history[-1]
    assert math.isfinite(result.history[-1]["test_loss"])
    with pytest.raises(TypeError, match="loss must be a Pyro loss"):
        fit(implicit, data, guide=lambda x: None, epochs=1, loss=3.0, progress=False)


def test_an_elbo_without_a_loss_estimate_is_refused_clearly():
    # Pyro's TraceTailAdaptive_ELBO returns inf at every step by design; fit's guard would
    # take it for a divergence at step 0 and stop with a misleading error.
    from pyro.infer import TraceTailAdaptive_ELBO

    def model(x):
        loc = pyro.sample("loc", dist.Normal(0.0, 1.0))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(loc, 1.0), obs=x)

    loss = TraceTailAdaptive_ELBO(num_particles=2, vectorize_particles=True)
    with pytest.raises(ValueError, match="TraceTailAdaptive_ELBO estimates no loss"):
        fit(model, torch.zeros(4), guide=AutoNormal(model), steps=1, loss=loss, progress=False)


def _subsampled_regression(x: torch.Tensor, y: torch.Tensor) -> None:
    """``regression`` with the data plate told the data set's size (Pyro's svi_lightning)."""
    w = pyro.sample("w", dist.Normal(0.0, 10.0))
    b = pyro.sample("b", dist.Normal(0.0, 10.0))
    with pyro.plate("N", 64, subsample_size=x.shape[0]):
        pyro.sample("y", dist.Normal(w * x + b, 0.1), obs=y)


def test_global_latents_beside_a_batch_sized_plate_are_warned_about():
    """Pyro's regression tutorial model (``pyro.plate("N", len(x))``, global w and b) on
    batches: each step weighs the prior against one batch, so the posterior is that of 16
    examples. Nothing said so; the warning names the sites, both sizes and the fix."""
    x, y = _regression_data(64)
    message = (
        r"latents outside its data plate 'N' \('w', 'b'\).*batch's size \(16\).*from 64 "
        r"examples.*pyro.plate\('N', 64, subsample_size=len\(batch\)\).*batch_size=64"
    )
    with pytest.warns(UserWarning, match=message):
        fit(
            regression, (x, y), guide=AutoNormal(regression), steps=1, batch_size=16, progress=False
        )
    # the user's own DataLoader: its batch size is not fit's to change
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    pyro.clear_param_store()
    with pytest.warns(UserWarning, match=r"batch's size \(16\).*give all the examples in one"):
        fit(regression, loader, guide=AutoNormal(regression), steps=1, progress=False)


@pytest.mark.parametrize(
    "model, batch_size",
    [(_subsampled_regression, 16), (regression, 64)],
    ids=["plate-told-the-full-size", "one-batch-of-all"],
)
def test_a_scaled_or_whole_batch_is_not_warned_about(model, batch_size):
    x, y = _regression_data(64)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnscaledBatchWarning)
        fit(model, (x, y), guide=AutoNormal(model), steps=2, batch_size=batch_size, progress=False)


def test_local_latents_alone_are_not_warned_about():
    """The scale changes a VAE's loss, not its optimum: nothing to warn about."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnscaledBatchWarning)
        fit(TinyVAE(), binary_data(64), steps=2, batch_size=16, progress=False)


def test_a_guide_plate_of_the_batchs_size_beside_a_full_size_model_plate_is_named():
    """The model's plate told the data set's size (as the unscaled-batch warning advises),
    the guide's left at the batch's: Pyro scaled the model's local sites by N/B and the
    guide's by 1, silently; the error was the per-example guide's, which misled."""
    encoder = torch.nn.Linear(1, 2)

    def model(x):
        with pyro.plate("rows", 64, subsample_size=x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide(x, full_size=False):
        pyro.module("encoder", encoder)
        size = 64 if full_size else x.shape[0]
        with pyro.plate("rows", size, subsample_size=x.shape[0]):
            loc, log_scale = encoder(x[:, None]).unbind(-1)
            pyro.sample("z", dist.Normal(loc, log_scale.exp()))

    x = torch.randn(64)
    message = (
        r"model's plate 'rows' has the data set's size 64 \(subsampling 16\), but the guide's "
        r"plate of that name has the batch's size 16.*pyro.plate\('rows', 64, "
        r"subsample_size=len\(batch\)\)"
    )
    with pytest.raises(ValueError, match=message):
        fit(model, x, guide=guide, steps=1, batch_size=16, progress=False)
    full = lambda x: guide(x, full_size=True)  # noqa: E731
    assert math.isfinite(fit(model, x, guide=full, steps=2, batch_size=16, progress=False)
                         .history[-1]["train_loss"])  # fmt: skip


@pytest.mark.parametrize("model", [regression, _subsampled_regression], ids=["batch-sized", "full"])
def test_the_unscaled_batch_warnings_claim_against_the_closed_form(model):
    """What the warning says, checked: for a Gaussian posterior the mean-field optimum has
    standard deviations ``1 / sqrt(diag(precision))``. With the plate at the batch's size B
    the data term counts B/N of its weight, so ``fit`` finds ``sqrt(N/B)`` = 2 times those;
    told the full size, the optimum itself (within 15%: the stochastic steps' noise)."""
    x, y = _regression_data(64)
    design = torch.stack([x, torch.ones(64)], 1).double()
    precision = design.T @ design / 0.1**2 + torch.eye(2, dtype=torch.float64) / 10.0**2
    counted = 1.0 if model is _subsampled_regression else 16 / 64
    expected = (1 / (precision.diag() * counted).sqrt()).tolist()
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnscaledBatchWarning)
        fit(model, (x, y), guide=AutoNormal(model), steps=3000, batch_size=16,
            optim=pyro.optim.ClippedAdam({"lr": 0.05, "lrd": 0.999}), progress=False)  # fmt: skip
    found = [float(pyro.param(f"AutoNormal.scales.{site}")) for site in ("w", "b")]
    assert found == pytest.approx(expected, rel=0.15)


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


def test_structural_minus_infinity_logits_of_a_real_param_train_as_in_pyro():
    """An unconstrained param may hold -inf on purpose (a transition that cannot happen):
    it is not refused, and fit takes Pyro's steps."""

    def model(y):
        logits = pyro.param("logits", torch.tensor([0.0, 0.0, -math.inf]))
        with pyro.plate("data", y.shape[0]):
            pyro.sample("y", dist.Categorical(logits=logits), obs=y)

    y = torch.tensor([0, 0, 1, 0])
    pyro.clear_param_store()
    fit(model, y, guide=lambda y: None, steps=5, batch_size=4, progress=False,
        optim=pyro.optim.Adam({"lr": 0.1}), compile=False)  # fmt: skip
    ours = pyro.param("logits").detach().clone()
    pyro.clear_param_store()
    svi = SVI(model, lambda y: None, pyro.optim.Adam({"lr": 0.1}), Trace_ELBO())
    for _ in range(5):
        svi.step(y)
    assert torch.equal(ours, pyro.param("logits").detach())
    assert ours[2] == -math.inf


def test_a_batch_without_the_observations_is_warned_about():
    """regression(x, y=None) given x alone: y becomes one more latent, nothing is observed,
    and Pyro's SVI fits the guide to the prior without a word: w's mean stays near the
    prior's 0 instead of moving to the data's slope, 3."""
    x, y = _regression_data(64)
    pyro.clear_param_store()
    with pytest.warns(NothingObservedWarning, match=r"observed nothing on the first batch "
                      r"\(1 positional; latent 'w', 'b', 'y'\)"):  # fmt: skip
        fit(regression, x, guide=AutoNormal(regression), steps=300, batch_size=64,
            optim=pyro.optim.Adam({"lr": 0.05}), progress=False)  # fmt: skip
    assert abs(pyro.param("AutoNormal.locs.w").item()) < 1.0
    pyro.clear_param_store()
    with warnings.catch_warnings():
        warnings.simplefilter("error", NothingObservedWarning)
        fit(regression, (x, y), guide=AutoNormal(regression), steps=300, batch_size=64,
            optim=pyro.optim.Adam({"lr": 0.05}), progress=False)  # fmt: skip
    assert pyro.param("AutoNormal.locs.w").item() == pytest.approx(3.0, abs=0.1)


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
