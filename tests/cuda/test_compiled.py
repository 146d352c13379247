"""The compiled step's device branches on CUDA: Inductor with CUDA graphs, the step guard
computed in the program and fused Adam's ``found_inf``, no host synchronisation in steady
state, the same loss and gradients as Pyro, and exact resume of ``fit`` on the device."""

from __future__ import annotations

import math

import pyro
import pytest
import torch
from pyro.infer import Trace_ELBO

from pyro_gen.infer import NonFiniteLossError, fit
from pyro_gen.infer.compiled import CompiledSVI
from tests.cuda.tier import DEVICE, MARKS, capture, compiled_step_ran, messages
from tests.infer.test_compiled_guard import Poisonable, assert_same_state, snapshot
from tests.infer.test_host_reads import MODELS
from tests.infer.tiny_vae import TinyVAE, binary_data

pytestmark = MARKS

on_cuda_only = pytest.mark.skipif(
    DEVICE.type != "cuda", reason="Inductor and CUDA graphs: minutes to compile on the CPU"
)


def _build(name: str):
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    module, loss, x = MODELS[name]()
    return module.to(DEVICE), loss, x.to(DEVICE)


@on_cuda_only
@pytest.mark.parametrize("name", sorted(MODELS))
def test_fit_compiles_with_inductor_and_cuda_graphs(name, caplog):
    """``compile=True``: Inductor with CUDA graphs from the first recorded step (the branch
    ``auto`` takes after 500 steps), for the VAE, an image RealNVP and an image DDPM."""
    module, loss, x = _build(name)
    before = {k: v.detach().clone() for k, v in module.state_dict().items()}
    capture(caplog)
    result = fit(module, x, steps=8, batch_size=8, loss=loss, compile=True, progress=False)
    compiled_step_ran(caplog)
    assert any("compiled the ELBO step (inductor)" in m for m in messages(caplog))
    assert result.step == 8 and math.isfinite(result.history[-1]["train_loss"])
    after = module.state_dict()
    assert any(not torch.equal(after[k], v) for k, v in before.items())
    assert all(torch.isfinite(v).all() for v in after.values() if v.is_floating_point())


@pytest.mark.parametrize("backend", ["auto", "inductor"])
@pytest.mark.parametrize("poison", ["loss", "grad"])
def test_non_finite_step_is_skipped_on_the_device(poison, backend):
    """On CUDA the program computes the guard's flag and fused Adam skips the update through
    ``found_inf`` (no host read): parameters and optimizer state stay exactly as they were."""
    if backend == "inductor" and DEVICE.type != "cuda":
        pytest.skip("Inductor takes minutes to compile on the CPU")
    pyro.clear_param_store()
    gen = Poisonable(poison).to(DEVICE)
    optim = pyro.optim.Adam({"lr": 0.1})
    # "auto" on CUDA: the TorchScript program (Inductor only after 500 steps)
    svi = CompiledSVI(gen.model, gen.guide, optim, backend=backend)
    x = torch.randn(8, 2, device=DEVICE) + 1.0
    for _ in range(4):  # a plain step, the recording, compiled replays: Adam has state
        assert torch.isfinite(svi.step(x))
    assert svi.compiled, svi.fallback_reason
    assert all(p.guarded for p in svi._programs.values())
    params, state = snapshot(optim)
    gen.poison.fill_(math.inf)
    for _ in range(2):
        assert not torch.isfinite(svi.step(x))
    after_params, after_state = snapshot(optim)
    for name, value in params.items():
        assert torch.equal(after_params[name], value), name
    assert_same_state(state, after_state)
    gen.poison.zero_()
    assert torch.isfinite(svi.step(x))
    assert not torch.equal(pyro.param("poisonable$$$loc"), params["poisonable$$$loc"])


def test_fit_reports_a_skipped_step_at_its_read_back():
    pyro.clear_param_store()
    gen = Poisonable("grad").to(DEVICE)
    gen.poison.fill_(math.inf)
    x = torch.randn(32, 2, device=DEVICE)
    with pytest.raises(NonFiniteLossError, match="step 0"):
        fit(gen, x, steps=4, batch_size=8, progress=False)
    assert all(torch.isfinite(p).all() for p in gen.parameters())


@on_cuda_only
@pytest.mark.parametrize("backend", ["auto", "inductor"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_steady_state_steps_do_not_synchronize(name, backend):
    """Between loss read-backs a CUDA step must not wait for the device: any synchronizing
    CUDA call (a value read, a device-to-host copy, a data-dependent shape) raises under
    ``torch.cuda.set_sync_debug_mode("error")``."""
    module, loss, x = _build(name)
    svi = CompiledSVI(module.model, module.guide, pyro.optim.Adam({"lr": 1e-3}), loss,
                      backend=backend)  # fmt: skip
    for _ in range(6):  # plain step, recording, structure re-checks (check_steps=2)
        svi.step(x)
    assert svi.compiled, svi.fallback_reason
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        losses = [svi.step(x) for _ in range(20)]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert all(math.isfinite(v) for v in torch.stack(losses).tolist())


def test_compiled_step_gives_pyros_loss_and_gradients():
    """Same seed, same draws: the recorded program's loss and gradients on the device are
    Pyro's ``Trace_ELBO`` ones (the noise is drawn on the device by the same calls)."""
    module, loss, x = _build("vae")
    svi = CompiledSVI(module.model, module.guide, pyro.optim.Adam({"lr": 1e-3}), loss,
                      backend="auto")  # fmt: skip
    params = None
    for seed in (1, 2, 3):  # the first call runs plain Pyro, the next ones the program
        pyro.set_rng_seed(seed)
        got = svi.loss_and_grads(x)
        params = [p for p in module.parameters() if p.grad is not None]
        grads = [p.grad.clone() for p in params]
        module.zero_grad(set_to_none=True)
        pyro.set_rng_seed(seed)
        expected = Trace_ELBO().loss_and_grads(module.model, module.guide, x)
        assert float(got) == pytest.approx(expected, rel=1e-5)
        for p, g in zip(params, grads):
            torch.testing.assert_close(g, p.grad, rtol=1e-4, atol=1e-5)
        module.zero_grad(set_to_none=True)
    assert svi.compiled and params, svi.fallback_reason


def test_fit_resumes_exactly_on_the_device(tmp_path):
    """4 steps, then a resume to 15 (inside the third epoch), from a fresh model and another
    seed, equal 15 steps in one call: the checkpoint must hold every random stream the
    device draws from (the shuffle order and the noise are drawn on CUDA)."""
    data = binary_data().to(DEVICE)

    def run(directory, seed: int, steps: int) -> TinyVAE:
        pyro.set_rng_seed(seed)
        model = TinyVAE()
        fit(model, data, steps=steps, batch_size=16, progress=False, checkpoint_dir=directory,
            clear_params=True, device=DEVICE)  # fmt: skip
        return model

    straight = run(tmp_path / "a", 0, 15)
    run(tmp_path / "b", 0, 4)
    resumed = run(tmp_path / "b", 7, 15)
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert a.device.type == DEVICE.type
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7, msg=name)


@pytest.mark.parametrize("compile", [False, True])
def test_a_plain_pyro_program_trains_where_its_data_and_networks_are(compile):
    """A model function registering its decoder with ``pyro.module``, decoder and data moved
    to the device by the user as in Pyro's VAE example, no ``device=``: fit knows the
    networks only once the model runs, so it keeps the data where the user put them (it
    moved them to the CPU, and the model failed with torch's device mismatch)."""
    pyro.clear_param_store()
    decoder = torch.nn.Linear(2, 6).to(DEVICE)
    encoder = torch.nn.Linear(6, 4).to(DEVICE)

    def model(x):
        pyro.module("decoder", decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", pyro.distributions.Normal(0.0, 1.0).expand([2]).to_event(1))
            logits = decoder(z)
            pyro.sample("x", pyro.distributions.Bernoulli(logits=logits).to_event(1), obs=x)

    def guide(x):
        pyro.module("encoder", encoder)
        with pyro.plate("data", x.shape[0]):
            loc, log_scale = encoder(x).chunk(2, -1)
            pyro.sample("z", pyro.distributions.Normal(loc, log_scale.exp()).to_event(1))

    before = decoder.weight.detach().clone()
    result = fit(model, binary_data().to(DEVICE), guide=guide, steps=5, batch_size=16,
                 progress=False, compile=compile)  # fmt: skip
    assert math.isfinite(result.history[-1]["train_loss"])
    assert decoder.weight.device.type == DEVICE.type
    assert not torch.equal(before, decoder.weight)
