"""A Pyro user's own programs trained through ``LightningSVI`` and a ``Trainer``.

Checked against Pyro itself, bit for bit: plain model/guide functions with ``pyro.module``,
a ``PyroModule`` with an ``AutoNormal``, a global latent beside a subsampled plate, trained
on the user's own ``DataLoader`` ((x, y), (x, y, idx) and dict batches, shuffled) give the
param store that Pyro's ``SVI`` loop gives from the same seed on the same batches, with a
validation loader or without, and with the Trainer's ``gradient_clip_val`` the one that
``fit(grad_clip=)`` gives. Bit-exact, not merely close: both run the same Pyro ELBO graph on
the same draws and torch's Adam update per parameter (Pyro's ``Adam`` builds one torch Adam
per parameter), so any RNG draw moved (peeking at the first batch, validation) shows.

Also: ``val_loss``/``test_loss`` against the closed-form negative log-likelihood for a
subsampled plate; a learning-rate scheduler and a Lightning checkpoint resumed in a fresh
process-like state against Pyro's ``StepLR`` loop; a random ``transform=`` against Pyro's
loop transforming each batch; a callable loss (Pyro's ``EnergyDistance``) in the validation
loop against calling it. One clear error each for batches the model does not take, Pyro's
optimizer builders, an empty loader and a param store cleared under a trained module.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

lightning = pytest.importorskip("lightning")

from lightning.pytorch.callbacks import ModelCheckpoint  # noqa: E402

from pyro_gen.infer import fit  # noqa: E402
from pyro_gen.lightning import LightningSVI  # noqa: E402
from tests.lightning_trainer import quiet_lightning, quiet_trainer  # noqa: E402

N = 32
torch.manual_seed(0)
X = torch.randn(N, 3)
Y = X @ torch.tensor([1.0, -2.0, 0.5]) + 0.3 * torch.randn(N)


@pytest.fixture(autouse=True)
def _quiet() -> Iterator[None]:
    yield from quiet_lightning()


def _trainer(epochs: int, **kwargs: Any) -> lightning.Trainer:
    return quiet_trainer(max_epochs=epochs, **kwargs)


def _store() -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in pyro.get_param_store().items()}


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name, value in a.items():
        assert torch.equal(value, b[name]), name


def _adam(lr: float) -> Any:
    return functools.partial(torch.optim.Adam, lr=lr)


def _encoder_decoder() -> tuple[Any, Any]:
    """Plain functions, as in Pyro's tutorials: networks registered with pyro.module."""
    torch.manual_seed(1)
    enc, dec = torch.nn.Linear(3, 2), torch.nn.Linear(2, 1)

    def model(x: torch.Tensor, y: torch.Tensor) -> None:
        pyro.module("dec", dec)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
            pyro.sample("y", dist.Normal(dec(z).squeeze(-1) + x.sum(-1), 0.5), obs=y)

    def guide(x: torch.Tensor, y: torch.Tensor) -> None:
        pyro.module("enc", enc)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(enc(x), 1.0).to_event(1))

    return model, guide


def _pairs() -> DataLoader:
    return DataLoader(TensorDataset(X, Y), batch_size=8, shuffle=True)


def test_plain_functions_with_a_val_loader_train_as_pyros_svi_loop() -> None:
    """Before: 0.04 off after 2 epochs with no val loader (peeking at the first batch drew
    the DataLoader's seed from the global RNG) and another amount with one (validation's
    draws moved the training RNG, which fit's evaluation leaves alone)."""
    model, guide = _encoder_decoder()
    pyro.set_rng_seed(7)
    svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 0.01}), pyro.infer.Trace_ELBO())
    for _ in range(2):
        for x, y in _pairs():
            svi.step(x, y)
    expected = _store()

    pyro.clear_param_store()
    model, guide = _encoder_decoder()
    start = _store()
    pyro.set_rng_seed(7)
    trainer = _trainer(2)
    val = DataLoader(TensorDataset(X, Y), batch_size=16, shuffle=True)
    trainer.fit(LightningSVI(model, guide, optimizer=_adam(0.01)), _pairs(), val)
    _assert_same(expected, _store())
    assert set(expected) == {"enc$$$weight", "enc$$$bias", "dec$$$weight", "dec$$$bias"}
    assert not start  # the networks enter the store when the pair first runs
    assert "val_loss" in trainer.callback_metrics


class _Regression(pyro.nn.PyroModule):
    """A Bayesian linear layer (PyroSample weight) and a PyroParam-like noise scale."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = pyro.nn.PyroModule[torch.nn.Linear](3, 1)
        self.lin.weight = pyro.nn.PyroSample(dist.Normal(0.0, 1.0).expand([1, 3]).to_event(2))

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        sigma = pyro.param("sigma", torch.tensor(1.0), constraint=dist.constraints.positive)
        mean = self.lin(x).squeeze(-1)  # the weight's site outside the data plate
        with pyro.plate("data", x.shape[0]):
            pyro.sample("obs", dist.Normal(mean, sigma), obs=y)


def _dicts() -> DataLoader:
    rows = [{"x": X[i], "y": Y[i]} for i in range(N)]
    return DataLoader(rows, batch_size=8, shuffle=True)


def test_pyro_module_autoguide_dict_batches_and_gradient_clipping_equal_fit() -> None:
    """The Trainer's gradient_clip_val (norm over all parameters) is fit's grad_clip; the
    clip is active (an unclipped fit ends elsewhere)."""

    def run(clip: float | None, lightning_trainer: bool) -> dict[str, torch.Tensor]:
        pyro.clear_param_store()
        torch.manual_seed(5)
        model = _Regression()
        guide = pyro.infer.autoguide.AutoNormal(model)
        pyro.set_rng_seed(1)
        if lightning_trainer:
            svi = LightningSVI(model, guide, optimizer=_adam(0.05))
            _trainer(2, gradient_clip_val=clip).fit(svi, _dicts())
        else:
            optim = pyro.optim.Adam({"lr": 0.05})
            fit(model, _dicts(), guide=guide, optim=optim, epochs=2, grad_clip=clip, progress=False)
        return _store()

    clipped = run(0.1, lightning_trainer=True)
    # to float rounding: the Trainer and fit sum the squared norms in other orders
    by_fit = run(0.1, lightning_trainer=False)
    assert by_fit.keys() == clipped.keys()
    for name, value in by_fit.items():
        torch.testing.assert_close(clipped[name], value, rtol=1e-6, atol=1e-7)
    assert not all(torch.equal(v, clipped[k]) for k, v in run(None, True).items())
    assert "lin.bias" in clipped and "AutoNormal.locs.lin.weight" in clipped


def _global_and_local(x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor) -> None:
    w = pyro.sample("w", dist.Normal(0.0, 1.0).expand([3]).to_event(1))
    with pyro.plate("data", N, subsample=idx):
        pyro.sample("y", dist.Normal(x @ w, 0.3), obs=y)


def test_global_latent_beside_a_subsampled_plate_trains_as_pyros_svi_loop() -> None:
    data = TensorDataset(X, Y, torch.arange(N))

    def loader() -> DataLoader:
        return DataLoader(data, batch_size=8, shuffle=True)

    guide = pyro.infer.autoguide.AutoNormal(_global_and_local)
    # LightningSVI (as fit) builds the autoguide in a warm-up that leaves the RNG alone;
    # Pyro's first step builds it with draws from the prior: build it first here too
    guide(X[:8], Y[:8], torch.arange(8))
    pyro.set_rng_seed(3)
    svi = pyro.infer.SVI(
        _global_and_local, guide, pyro.optim.Adam({"lr": 0.05}), pyro.infer.Trace_ELBO()
    )
    for _ in range(3):
        for batch in loader():
            svi.step(*batch)
    expected = _store()

    pyro.clear_param_store()
    pyro.set_rng_seed(3)
    guide = pyro.infer.autoguide.AutoNormal(_global_and_local)
    trainer = _trainer(3)
    trainer.fit(LightningSVI(_global_and_local, guide, optimizer=_adam(0.05)), loader())
    _assert_same(expected, _store())
    assert trainer.global_step == 12


def _subsampled_mean(x: torch.Tensor, idx: torch.Tensor) -> None:
    loc = pyro.param("loc", torch.tensor(0.0))
    with pyro.plate("data", N, subsample=idx):
        pyro.sample("obs", dist.Normal(loc, 1.0), obs=x)


def test_val_and_test_loss_of_a_subsampled_plate_are_per_example() -> None:
    """Before: N/B = 2 times the negative log-likelihood per example (the batch's value,
    which Pyro scales up to all N examples, was divided by B)."""
    data = TensorDataset(2.0 + torch.randn(N), torch.arange(N))
    svi = LightningSVI(_subsampled_mean, lambda x, idx: None, optimizer=_adam(0.1))
    trainer = _trainer(2)
    trainer.fit(svi, DataLoader(data, batch_size=8, shuffle=True), DataLoader(data, batch_size=16))
    exact = -dist.Normal(pyro.param("loc").detach(), 1.0).log_prob(data.tensors[0]).mean()
    assert trainer.callback_metrics["val_loss"].item() == pytest.approx(exact.item(), rel=1e-5)
    (result,) = trainer.test(svi, DataLoader(data, batch_size=16), verbose=False)
    assert result["test_loss"] == pytest.approx(exact.item(), rel=1e-5)


def _linear() -> Any:
    torch.manual_seed(1)
    net = torch.nn.Linear(3, 1)

    def model(x: torch.Tensor, y: torch.Tensor) -> None:
        pyro.module("net", net)
        s = pyro.param("s", torch.tensor(1.0), constraint=dist.constraints.positive)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("y", dist.Normal(net(x).squeeze(-1), s), obs=y)

    return model


class _Halving(LightningSVI):
    """A user's scheduler, as the docstring says: configure_optimizers overridden."""

    def configure_optimizers(self) -> dict[str, Any]:
        opt = super().configure_optimizers()
        return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, 1, 0.5)}


def test_scheduler_and_checkpoint_resume_equal_pyros_step_lr_loop(tmp_path: Path) -> None:
    """3 epochs with a val loader and a checkpoint each epoch; resuming the first epoch's
    checkpoint under another seed with an emptied store gives the same store, which is
    Pyro's StepLR loop's."""
    model = _linear()
    pyro.set_rng_seed(2)
    step_lr = pyro.optim.StepLR(
        {"optimizer": torch.optim.Adam, "optim_args": {"lr": 0.1}, "step_size": 1, "gamma": 0.5}
    )
    svi = pyro.infer.SVI(model, lambda x, y: None, step_lr, pyro.infer.Trace_ELBO())
    for _ in range(3):
        for batch in _pairs():
            svi.step(*batch)
        step_lr.step()
    expected = _store()

    def run(ckpt_path: Path | None, seed: int) -> dict[str, torch.Tensor]:
        pyro.clear_param_store()
        model = _linear()
        pyro.set_rng_seed(seed)
        every_epoch = ModelCheckpoint(dirpath=tmp_path, save_top_k=-1)
        trainer = _trainer(3, enable_checkpointing=True, callbacks=[every_epoch])
        val = DataLoader(TensorDataset(X, Y), batch_size=16)
        svi = _Halving(model, lambda x, y: None, optimizer=_adam(0.1))
        trainer.fit(svi, _pairs(), val, ckpt_path=ckpt_path)
        assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.1 / 8)
        return _store()

    _assert_same(expected, run(None, 2))
    (first,) = tmp_path.glob("epoch=0-*.ckpt")
    _assert_same(expected, run(first, 123))


def _bernoulli(x: torch.Tensor) -> None:
    loc = pyro.param("loc", torch.zeros(4))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("x", dist.Normal(loc, 1.0).to_event(1), obs=x)


@pytest.mark.parametrize("where", ["train", "val"])
def test_image_label_batches_for_a_model_of_x_give_one_clear_error(where: str) -> None:
    """Before: TypeError: model() takes 1 positional argument but 2 were given, from inside
    Pyro's handlers."""
    x = torch.randn(16, 4)
    pairs = DataLoader(TensorDataset(x, torch.zeros(16)), batch_size=8)
    single = DataLoader(TensorDataset(x), batch_size=8)
    train, val = (pairs, single) if where == "train" else (single, pairs)
    svi = LightningSVI(_bernoulli, lambda x: None)
    with pytest.raises(ValueError, match=r"2 positional arguments.*yield only what the model"):
        _trainer(1).fit(svi, train, val)


def test_validation_of_a_callable_loss_calls_it() -> None:
    """Pyro's EnergyDistance has a ``loss`` that raises NotImplementedError; validation now
    calls the loss as training does. Its value on a batch is checked against calling it
    from the same RNG state."""
    x = torch.randn(16, 4)
    loss = pyro.infer.EnergyDistance(num_particles=4)
    svi = LightningSVI(_bernoulli, lambda x: None, loss=loss)
    trainer = _trainer(1)
    trainer.fit(svi, DataLoader(TensorDataset(x), batch_size=8))
    pyro.set_rng_seed(4)
    (result,) = trainer.validate(svi, DataLoader(TensorDataset(x), batch_size=16), verbose=False)
    pyro.set_rng_seed(4)
    iter(DataLoader(TensorDataset(x), batch_size=16))  # the draw of the loop's own iterator
    with torch.no_grad():
        expected = loss(_bernoulli, lambda x: None, x) / 16
    assert result["val_loss"] == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("builder", [pyro.optim.Adam, pyro.optim.ClippedAdam])
def test_a_pyro_optim_builder_is_refused_when_built(builder: Any) -> None:
    """Before: accepted, then AssertionError: optim_args must be function that returns
    defaults or a defaults dictionary, from inside Pyro when training started."""
    with pytest.raises(TypeError, match=rf"not Pyro's pyro.optim.{builder.__name__}, which"):
        LightningSVI(_bernoulli, lambda x: None, optimizer=builder)
    # Pyro's torch optimizer class is a torch optimizer, and builds one
    clipped = pyro.optim.clipped_adam.ClippedAdam
    svi = LightningSVI(
        _bernoulli, lambda x: None, optimizer=clipped, example_batch=torch.zeros(2, 4)
    )
    assert isinstance(svi.configure_optimizers(), clipped)


def test_an_empty_training_loader_is_named() -> None:
    """Before: "could not read a first training batch ... ()", the empty StopIteration."""
    svi = LightningSVI(_bernoulli, lambda x: None)
    with pytest.raises(ValueError, match="the training DataLoader yields no batches"):
        _trainer(1).fit(svi, DataLoader(TensorDataset(torch.zeros(0, 4)), batch_size=8))


def test_a_random_transform_draws_as_in_pyros_svi_loop() -> None:
    """Dynamic binarization (``transform=torch.bernoulli``) on the user's loader with a
    pyro_gen VAE and example_batch=: Pyro's loop binarizes each batch before its step.
    Before: 0.06 off, the trace on the example batch drew a binarization of its own."""
    from pyro_gen.vae import VAE

    x = torch.rand(32, 4)

    def vae_and_loader() -> tuple[VAE, DataLoader]:
        pyro.clear_param_store()
        torch.manual_seed(3)
        vae = VAE(event_shape=(4,), z_dim=2, hidden_dim=8)
        pyro.set_rng_seed(1)
        return vae, DataLoader(TensorDataset(x), batch_size=8, shuffle=True)

    vae, loader = vae_and_loader()
    svi = pyro.infer.SVI(
        vae.model, vae.guide, pyro.optim.Adam({"lr": 0.01}), pyro.infer.Trace_ELBO()
    )
    for _ in range(2):
        for (batch,) in loader:
            svi.step(torch.bernoulli(batch))
    expected = {k: v.clone() for k, v in vae.state_dict().items()}

    vae, loader = vae_and_loader()
    svi = LightningSVI(vae, optimizer=_adam(0.01), transform=torch.bernoulli, example_batch=[x[:8]])
    _trainer(2).fit(svi, loader)
    _assert_same(expected, vae.state_dict())


def test_a_cleared_param_store_between_fits_is_named() -> None:
    """A second Trainer.fit after pyro.clear_param_store(): the model's pyro.param made a
    fresh tensor that the loss used while the optimizer stepped the adopted one. Before: it
    ran, and the store's 'loc' stayed at its initial 0.0 (nothing trained, silently)."""
    data = DataLoader(TensorDataset(3.0 + torch.randn(16, 4)), batch_size=8)
    svi = LightningSVI(_bernoulli, lambda x: None, optimizer=_adam(0.1))
    _trainer(2).fit(svi, data)
    trained = pyro.param("loc").detach().clone()
    _trainer(2).fit(svi, data)  # the store left alone: training continues
    assert not torch.equal(pyro.param("loc"), trained)
    pyro.clear_param_store()
    with pytest.raises(RuntimeError, match="no longer holds 'loc'.*Build a new LightningSVI"):
        _trainer(2).fit(svi, data)
    with pytest.raises(RuntimeError, match="no longer holds 'loc'"):  # it scored loc = 0
        _trainer(2).validate(svi, data, verbose=False)
