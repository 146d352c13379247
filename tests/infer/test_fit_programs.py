"""fit on users' own Pyro programs: plain callables that take Pyro's SVI steps (with an
autoguide, without data), tuple, dict, generator and DataLoader data, swapped guides,
transforms of any argument, and the param store left the user's."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pyro.optim
import pyro.util
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoNormal

from pyro_gen.infer import evaluate_elbo, fit, iwae_log_likelihood
from tests.infer.regression_program import _posterior_mean, _regression_data, regression
from tests.infer.tiny_vae import TinyVAE, binary_data


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
