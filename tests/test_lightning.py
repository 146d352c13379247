"""The Lightning adapter: the same training as ``fit``, Pyro's param store, DDP on 2 processes."""

from __future__ import annotations

import functools
import logging
import os
import runpy
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path
from typing import Any

import pyro
import pyro.distributions as dist
import pytest
import torch

lightning = pytest.importorskip("lightning")

from pyro_gen.lightning import LightningSVI  # noqa: E402
from pyro_gen.vae import VAE  # noqa: E402
from pyro_gen.vae.objectives import iwae  # noqa: E402
from tests.lightning_trainer import quiet_trainer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

# A regression model with a pyro.module network and a constrained pyro.param that only the
# param store holds, and no latent sites: its loss and gradients are deterministic, so 2 DDP
# processes on the two halves of each batch can be compared exactly with one process.
WORKER = textwrap.dedent(
    """
    import functools, logging, sys, warnings
    import lightning, pyro, pyro.distributions as dist, torch
    from torch.utils.data import DataLoader, DistributedSampler, TensorDataset
    from pyro_gen.gan import Generator, NonSaturatingGAN
    from pyro_gen.lightning import LightningSVI
    from pyro_gen.nn import MLPDiscriminator, MLPGenerator

    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    torch.set_num_threads(1)


    def trainer(devices, steps):
        return lightning.Trainer(
            max_steps=steps, accelerator="cpu", devices=devices,
            strategy="ddp" if devices > 1 else "auto", logger=False,
            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        )


    def regression(devices, batch_size, lr):
        pyro.clear_param_store()
        torch.manual_seed(0)
        x = torch.randn(64, 3, dtype=torch.float64)
        y = x @ torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64) + 0.3 * torch.randn(64)
        net = torch.nn.Linear(3, 1).double()

        def model(x, y):
            pyro.module("net", net)
            scale = pyro.param("scale", torch.tensor(1.0, dtype=torch.float64),
                               constraint=dist.constraints.positive)
            with pyro.plate("data", x.shape[0]):
                pyro.sample("y", dist.Normal(net(x).squeeze(-1), scale), obs=y)

        svi = LightningSVI(model, lambda x, y: None,
                           optimizer=functools.partial(torch.optim.SGD, lr=lr))
        t = trainer(devices, 4)
        data = TensorDataset(x, y)
        # in order: process r takes examples r, r + 2, ... (Lightning's own sampler shuffles)
        order = DistributedSampler(data, t.world_size, t.global_rank, shuffle=False)
        t.fit(svi, DataLoader(data, batch_size=batch_size, sampler=order))
        return t.global_rank, {k: v.detach().clone() for k, v in svi.named_parameters()}


    def gan(devices):
        pyro.clear_param_store()
        torch.manual_seed(0)
        gen = Generator(MLPGenerator(2, (2,), hidden_dims=(8,)))
        loss = NonSaturatingGAN(MLPDiscriminator((2,), hidden_dims=(8,)))
        start = {k: v.clone() for k, v in loss.discriminator.state_dict().items()}
        t = trainer(devices, 2)
        t.fit(LightningSVI(gen, loss=loss), DataLoader(TensorDataset(torch.randn(32, 2)),
                                                       batch_size=8, shuffle=True))
        return start, loss.discriminator.state_dict()


    if __name__ == "__main__":
        rank, params = regression(2, 8, 0.01)
        start, disc = gan(2)
        torch.save({"params": params, "disc": disc, "start": start}, f"{sys.argv[1]}/{rank}.pt")
        torch.distributed.barrier()  # process 0, which the test waits for, ends last
    """
)


@pytest.fixture(autouse=True)
def _quiet() -> None:
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _trainer(steps: int, **kwargs) -> lightning.Trainer:
    return quiet_trainer(max_steps=steps, **kwargs)


def normal_model(x: torch.Tensor) -> None:
    """A Normal with a mean and a positive scale that only the param store holds."""
    loc = pyro.param("loc", torch.zeros(()))
    scale = pyro.param("scale", torch.ones(()), constraint=dist.constraints.positive)
    with pyro.plate("data", x.shape[0]):
        pyro.sample("obs", dist.Normal(loc, scale), obs=x)


def _loader(*tensors: torch.Tensor, batch_size: int, shuffle: bool = True):
    data = torch.utils.data.TensorDataset(*tensors)
    return torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=shuffle)


def test_example_matches_fit_test_elbo() -> None:
    """The example's VAE on sklearn digits, 400 steps through the adapter and through
    ``fit`` from the same seed: the test ELBOs agree within 0.5 nats (they differ by ~0.1
    across seeds; 200 more steps of training move them by more than 0.5)."""
    example = runpy.run_path(str(ROOT / "examples" / "lightning_vae.py"))
    results = example["main"](["--steps", "400", "--compare-fit"])
    assert results["lightning_test_elbo"] == pytest.approx(results["fit_test_elbo"], abs=0.5)
    assert results["fit_test_elbo"] > -30  # trained: the untrained VAE scores about -45


def test_param_store_parameters_are_adopted_and_trained() -> None:
    """Plain ``pyro.param`` sites (one constrained) become module parameters that the
    optimizer trains and the param store still returns: maximum likelihood for a Normal."""
    data = 3.0 + 2.0 * torch.randn(512)

    adam = functools.partial(torch.optim.Adam, lr=0.1)
    svi = LightningSVI(normal_model, lambda x: None, optimizer=adam)
    _trainer(150).fit(svi, _loader(data, batch_size=512))
    assert sorted(name for name, _ in svi.named_parameters()) == [
        "pyro_params.loc",
        "pyro_params.scale",
    ]
    assert pyro.param("loc").item() == pytest.approx(data.mean().item(), abs=0.02)
    assert pyro.param("scale").item() == pytest.approx(data.std(unbiased=False).item(), abs=0.02)
    # the store's unconstrained leaf is the module's parameter, so a state_dict restores it
    state = {k: v.clone() for k, v in svi.state_dict().items()}
    with torch.no_grad():
        svi.pyro_params["scale"].fill_(0.0)
    assert pyro.param("scale").item() == pytest.approx(1.0)
    svi.load_state_dict(state)
    assert pyro.param("scale").item() == pytest.approx(data.std(unbiased=False).item(), abs=0.02)


def test_loss_and_grads_loss_gives_its_own_gradient() -> None:
    """A loss with only ``loss_and_grads`` (IWAE, Pyro's ``RenyiELBO``): the step's surrogate
    has exactly the gradient ``loss_and_grads`` leaves, on top of an accumulating one."""
    vae = VAE(event_shape=(4,), z_dim=2, hidden_dim=8)
    x = torch.rand(16, 4).round()
    svi = LightningSVI(vae, loss=iwae(num_particles=3), example_batch=[x])
    params = svi.configure_optimizers().param_groups[0]["params"]
    assert {id(p) for p in params} == {id(p) for p in vae.parameters()}
    pyro.set_rng_seed(1)
    iwae(num_particles=3).loss_and_grads(vae.model, vae.guide, x)
    expected = [p.grad.clone() for p in params]
    for p in params:
        p.grad = torch.ones_like(p)  # a gradient being accumulated
    pyro.set_rng_seed(1)
    svi._loss(svi._call([x])).backward()
    for p, g in zip(params, expected):
        torch.testing.assert_close(p.grad, g + 1)


def test_adversarial_loss_trains_generator_and_discriminator() -> None:
    from pyro_gen.gan import Generator, NonSaturatingGAN
    from pyro_gen.nn import MLPDiscriminator, MLPGenerator

    gen = Generator(MLPGenerator(2, (2,), hidden_dims=(8,)))
    loss = NonSaturatingGAN(MLPDiscriminator((2,), hidden_dims=(8,)))
    before = [p.clone() for p in [*gen.parameters(), *loss.parameters()]]
    svi = LightningSVI(gen, loss=loss)
    _trainer(3).fit(svi, _loader(torch.randn(32, 2), batch_size=8))
    # the optimizer trains the generator only; the loss's own optimizer the discriminator
    trained = svi.configure_optimizers().param_groups[0]["params"]
    assert {id(p) for p in trained} == {id(p) for p in gen.parameters()}
    after = [*gen.parameters(), *loss.parameters()]
    assert all(not torch.equal(a, b) for a, b in zip(after, before))
    assert "pyro_modules.loss._extra_state" in svi.state_dict()  # its optimizer's state


def test_bad_arguments_are_refused() -> None:
    vae = VAE(event_shape=(4,), z_dim=2, hidden_dim=8)
    with pytest.raises(TypeError, match="torch optimizer"):
        LightningSVI(vae, optimizer=pyro.optim.Adam({"lr": 1e-3}))
    with pytest.raises(TypeError, match="loss must be a Pyro loss"):
        LightningSVI(vae, loss=3)
    with pytest.raises(ValueError, match="register no parameters"):
        LightningSVI(lambda x: None, lambda x: None, example_batch=[torch.zeros(2)])


def test_ddp_on_two_cpu_processes(tmp_path: Path) -> None:
    """``strategy="ddp"`` with 2 CPU processes (gloo): 4 SGD steps with each process on half
    of each batch equal 4 steps of one process on the whole batches, as in ``fit``'s
    data-parallel training, for the network and for the param-store-only parameter; an
    adversarial loss's discriminator stays the same on both processes."""
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    subprocess.run(
        [sys.executable, str(script), str(tmp_path)],
        cwd=tmp_path,
        env=env,
        check=True,
        timeout=120,
        capture_output=True,
    )
    ranks = [torch.load(tmp_path / f"{r}.pt", weights_only=True) for r in (0, 1)]
    _, reference = runpy.run_path(str(script))["regression"](1, 16, 0.01)
    # the network the model function closes over is a module of its own (its buffers
    # would be in Lightning's checkpoints); the plain pyro.param is adopted by name
    assert sorted(reference) == ["pyro_modules.pyro/module:net.bias",
                                 "pyro_modules.pyro/module:net.weight",
                                 "pyro_params.scale"]  # fmt: skip
    for rank in ranks:
        for name, value in reference.items():
            torch.testing.assert_close(rank["params"][name], value, rtol=1e-10, atol=1e-10)
        for name, value in ranks[0]["disc"].items():
            torch.testing.assert_close(rank["disc"][name], value, rtol=0, atol=0)
    assert any(not torch.equal(ranks[0]["disc"][k], v) for k, v in ranks[0]["start"].items())


def test_lightning_checkpoint_restores_the_param_store(tmp_path: Path) -> None:
    """``Trainer.fit(..., ckpt_path=)`` into a fresh module and an emptied param store: the
    plain ``pyro.param`` values come back into the store Pyro reads."""
    data = 3.0 + 2.0 * torch.randn(256)
    adam = functools.partial(torch.optim.Adam, lr=0.05)
    trainer = _trainer(20)
    svi = LightningSVI(normal_model, lambda x: None, optimizer=adam)
    trainer.fit(svi, _loader(data, batch_size=64))
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    saved = {name: pyro.param(name).item() for name in ("loc", "scale")}
    assert saved["loc"] > 0.5  # trained
    pyro.clear_param_store()
    fresh = _trainer(20)  # as many steps as the checkpoint: restore only
    svi = LightningSVI(normal_model, lambda x: None, optimizer=adam)
    fresh.fit(svi, _loader(data, batch_size=64), ckpt_path=tmp_path / "last.ckpt")
    assert fresh.global_step == 20
    for name, value in saved.items():
        assert pyro.param(name).item() == pytest.approx(value, rel=1e-6)


def test_buffers_of_networks_a_function_closes_over_are_in_its_state() -> None:
    from tests.infer.test_closure_modules import DATA, vae_functions

    pyro.clear_param_store()
    model, guide, encoder = vae_functions()
    svi = LightningSVI(model, guide, example_batch=DATA[:16])
    state = svi.state_dict()
    assert torch.equal(state["pyro_modules.pyro/module:encoder.1.running_mean"],
                       encoder[1].running_mean)  # fmt: skip
    assert int(encoder[1].num_batches_tracked) == 0  # tracing it counted no batch


def test_trainer_test_logs_the_test_loss() -> None:
    """``Trainer.test`` runs (it raised: no ``test_step``) and logs ``test_loss``, the
    negative log-likelihood per example for this model without latents (closed form)."""
    data = 3.0 + 2.0 * torch.randn(64)
    trainer = _trainer(5)
    svi = LightningSVI(normal_model, lambda x: None)
    trainer.fit(svi, _loader(data, batch_size=32))
    (result,) = trainer.test(svi, _loader(data, batch_size=32, shuffle=False), verbose=False)
    exact = -dist.Normal(pyro.param("loc"), pyro.param("scale")).log_prob(data).mean()
    assert result["test_loss"] == pytest.approx(exact.item(), rel=1e-5)


def _latent_mean_model(x: torch.Tensor) -> None:
    loc = pyro.sample("loc", dist.Normal(0.0, 10.0))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("obs", dist.Normal(loc, 1.0), obs=x)


def test_resume_from_a_lightning_checkpoint_continues_exactly(tmp_path: Path) -> None:
    """2 epochs, a checkpoint, and ``Trainer.fit(ckpt_path=)`` to 4 epochs in a fresh module
    and store equals 4 epochs in one go, bit for bit: the checkpoint carries the RNG states
    (the shuffle and the guide's draws), which Lightning's checkpoints leave out."""
    data = 3.0 + torch.randn(32)

    def run(epochs: int, ckpt_path: Path | None = None, seed: int = 0) -> tuple[dict, Any]:
        pyro.clear_param_store()
        lightning.seed_everything(seed, verbose=False)
        guide = pyro.infer.autoguide.AutoNormal(_latent_mean_model)
        svi = LightningSVI(_latent_mean_model, guide, optimizer=_adam_lr_01)
        trainer = _trainer(-1, max_epochs=epochs)
        trainer.fit(svi, _loader(data, batch_size=8), ckpt_path=ckpt_path)
        return {k: v.detach().clone() for k, v in pyro.get_param_store().items()}, trainer

    whole, _ = run(4)
    _, first = run(2)
    first.save_checkpoint(tmp_path / "epoch2.ckpt")
    # another seed, as a new process would have: the checkpoint's states replace it
    resumed, _ = run(4, tmp_path / "epoch2.ckpt", seed=123)
    assert whole.keys() == resumed.keys()
    for name, value in whole.items():
        assert torch.equal(value, resumed[name]), name


_adam_lr_01 = functools.partial(torch.optim.Adam, lr=0.1)


def test_load_from_checkpoint_says_to_pass_an_example_batch(tmp_path: Path) -> None:
    """The pair's lazily created parameters do not exist before a trace: loading without
    ``example_batch=`` says so (it was torch's list of unexpected keys), and with it the
    store gets the trained values."""
    data = 3.0 + torch.randn(32)
    trainer = _trainer(4)
    svi = LightningSVI(_latent_mean_model, pyro.infer.autoguide.AutoNormal(_latent_mean_model))
    trainer.fit(svi, _loader(data, batch_size=8))
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    trained = {k: v.detach().clone() for k, v in pyro.get_param_store().items()}
    pyro.clear_param_store()

    def load(**kwargs: Any) -> LightningSVI:
        guide = pyro.infer.autoguide.AutoNormal(_latent_mean_model)
        return LightningSVI.load_from_checkpoint(
            tmp_path / "last.ckpt", model=_latent_mean_model, guide=guide, **kwargs
        )

    with pytest.raises(RuntimeError, match="example_batch=batch"):
        load()
    load(example_batch=[data[:8]])
    for name, value in trained.items():
        assert torch.equal(pyro.param(name).detach(), value), name


def test_fit_leaves_no_gradients_on_the_users_parameters() -> None:
    """After ``Trainer.fit`` the user's network and param-store tensors hold no gradient, so
    a later Pyro ``SVI``/``fit`` step on them is not added to the last Lightning step's
    (0.39 off in one SGD step of a 3x3 network, /tmp/lightprobe/stale_grad_fit.py)."""
    net = torch.nn.Linear(1, 1)

    def model(x: torch.Tensor) -> None:
        pyro.module("net", net)
        scale = pyro.param("scale", torch.ones(()), constraint=dist.constraints.positive)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("obs", dist.Normal(net(x[:, None])[:, 0], scale), obs=x)

    _trainer(2).fit(LightningSVI(model, lambda x: None), _loader(torch.randn(16), batch_size=8))
    assert net.weight.grad is None and net.bias.grad is None
    assert pyro.get_param_store().get_param("scale").unconstrained().grad is None


class _LocalMean(pyro.nn.PyroModule):
    """Pyro's examples/svi_lightning.py pattern: a PyroModule under module_local_params,
    whose params live in the module and never in the param store."""

    def __init__(self) -> None:
        super().__init__()
        self.loc = pyro.nn.PyroSample(dist.Normal(0.0, 10.0))
        self.scale = pyro.nn.PyroParam(torch.tensor(1.0), constraint=dist.constraints.positive)

    def forward(self, data: torch.Tensor) -> None:
        loc = self.loc
        with pyro.plate("data", len(data)):
            pyro.sample("obs", dist.Normal(loc, self.scale), obs=data)


def test_module_local_params_train_and_resume_as_in_pyros_lightning_example(
    tmp_path: Path,
) -> None:
    """Before, tracing the parameters looked every param site up in the (empty) global
    store: ``KeyError: 'AutoNormal.locs.loc'`` before the first step."""
    data = 3.0 + torch.randn(64)

    def run(epochs: int, ckpt_path: Path | None = None) -> tuple[dict, Any]:
        lightning.seed_everything(0, verbose=False)
        model = _LocalMean()
        guide = pyro.infer.autoguide.AutoNormal(model)
        svi = LightningSVI(model, guide, optimizer=_adam_lr_01)
        trainer = _trainer(-1, max_epochs=epochs)
        trainer.fit(svi, _loader(data, batch_size=16), ckpt_path=ckpt_path)
        assert len(pyro.get_param_store()) == 0  # the params stayed the modules' own
        return {k: v.detach().clone() for k, v in svi.named_parameters()}, trainer

    with pyro.settings.context(module_local_params=True):
        whole, _ = run(30)
        assert len(whole) == 3  # the guide's loc and scale of "loc", the model's scale
        median = next(v for k, v in whole.items() if "locs" in k)
        assert median.item() == pytest.approx(data.mean().item(), abs=0.15)
        _, first = run(15)
        first.save_checkpoint(tmp_path / "half.ckpt")
        resumed, _ = run(30, tmp_path / "half.ckpt")
    for name, value in whole.items():
        assert torch.equal(value, resumed[name]), name


def test_a_network_the_model_does_not_register_is_warned_about() -> None:
    """As in fit: a decoder without ``pyro.module`` is no parameter of the LightningModule,
    so no optimizer would step it."""
    from pyro_gen.infer.unregistered_params import UnregisteredParameterWarning
    from tests.infer.test_unregistered_params import X, _decoder, _vae

    pyro.clear_param_store()
    model = _vae(False, _decoder())
    guide = pyro.infer.autoguide.AutoNormal(model)
    with pytest.warns(UnregisteredParameterWarning, match=r"a Sequential \(parameters of"):
        LightningSVI(model, guide, example_batch=X)


def test_a_batch_without_the_observations_is_warned_about() -> None:
    """As in fit: regression(x, y=None) given x alone observes nothing."""
    from pyro_gen.infer.batch_checks import NothingObservedWarning
    from tests.infer.test_fit_programs import _regression_data, regression

    pyro.clear_param_store()
    x, y = _regression_data(16)
    guide = pyro.infer.autoguide.AutoNormal(regression)
    with pytest.warns(NothingObservedWarning, match=r"\(1 positional; latent 'w', 'b', 'y'\)"):
        LightningSVI(regression, guide, example_batch=x)
    pyro.clear_param_store()
    with warnings.catch_warnings():
        warnings.simplefilter("error", NothingObservedWarning)
        LightningSVI(regression, pyro.infer.autoguide.AutoNormal(regression), example_batch=(x, y))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"loss": pyro.infer.Trace_ELBO}, r"loss is the class Trace_ELBO, not called"),
        ({"annealing": 0.5}, r"annealing must be a function of the step number"),
    ],
)
def test_a_loss_class_or_a_number_for_annealing_is_refused_as_fit_refuses_it(kwargs, message):
    """The constructor took Trace_ELBO not called (the class has a differentiable_loss
    attribute, so it passed for a loss) and annealing=0.5, which fit refuses."""
    from tests.infer.test_fit_programs import regression

    with pytest.raises(TypeError, match=message):
        LightningSVI(regression, pyro.infer.autoguide.AutoNormal(regression), **kwargs)
