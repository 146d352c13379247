"""MADE's saved state: one name per tensor, and state dicts of earlier versions (which named
the output layer twice) still load, directly, inside a transform and through Pyro's param
store."""

from __future__ import annotations

import io

import pyro
import pyro.distributions as dist
import torch

from pyro_gen.infer.checkpoint import (
    load_checkpoint,
    restore_modules,
    save_checkpoint,
)
from pyro_gen.nn import MADE
from pyro_gen.nn.legacy_keys import upgrade_state_dict
from pyro_gen.transforms import inverse_autoregressive


def _randomized(made: MADE) -> MADE:
    with torch.no_grad():
        for p in made.parameters():
            p.normal_()
    return made


def _with_legacy_keys(state: dict[str, torch.Tensor], prefix: str, index: int) -> dict:
    """The state dict as earlier versions wrote it: the output layer also under ``net.<i>``."""
    old = dict(state)
    for key, value in state.items():
        if key.startswith(prefix + "output."):
            old[prefix + f"net.{index}." + key[len(prefix + "output.") :]] = value
    return old


def test_state_dict_names_each_tensor_once() -> None:
    made = MADE(3, [8, 8], 2)
    state = made.state_dict(keep_vars=True)
    assert len({id(t) for t in state.values()}) == len(state)
    assert [k for k in state if k.startswith("output.")] == [
        "output.weight",
        "output.bias",
        "output.mask",
    ]


def test_state_dict_of_earlier_versions_loads() -> None:
    saved = _randomized(MADE(3, [8, 8], 2, context_dim=2))
    old = _with_legacy_keys(saved.state_dict(), "", 4)
    assert "net.4.weight" in old  # as written before, with both names
    buffer = io.BytesIO()
    torch.save(old, buffer)
    buffer.seek(0)
    fresh = MADE(3, [8, 8], 2, context_dim=2)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))  # strict: no key left over
    x, c = torch.randn(5, 3), torch.randn(5, 2)
    assert torch.equal(fresh(x, c), saved(x, c))
    # a dict holding the output layer under the old name only loads too
    only_old = {k: v for k, v in old.items() if not k.startswith("output.")}
    fresh = MADE(3, [8, 8], 2, context_dim=2)
    fresh.load_state_dict(only_old)
    assert torch.equal(fresh(x, c), saved(x, c))


def test_earlier_state_dict_loads_inside_a_transform() -> None:
    saved = inverse_autoregressive(3, [8])
    _randomized(saved.made)
    old = _with_legacy_keys(saved.state_dict(), "made.", 2)
    fresh = inverse_autoregressive(3, [8])
    fresh.load_state_dict(old)
    z = torch.randn(4, 3)
    assert torch.equal(fresh(z), saved(z))


def _model(x: torch.Tensor) -> None:
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(torch.zeros(x.shape[0], 3), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)


def _iaf_guide(iaf: torch.nn.Module, update_module_params: bool = False):
    def guide(x: torch.Tensor) -> None:
        pyro.module("iaf", iaf, update_module_params=update_module_params)
        with pyro.plate("data", x.shape[0]):
            base = dist.Normal(torch.zeros(x.shape[0], 3), 1.0).to_event(1)
            pyro.sample("z", dist.TransformedDistribution(base, [iaf]))

    return guide


def test_param_store_round_trip_of_an_iaf_guide(tmp_path) -> None:
    iaf, x = inverse_autoregressive(3, [8]), torch.randn(16, 3) + 2.0
    svi = pyro.infer.SVI(
        _model, _iaf_guide(iaf), pyro.optim.Adam({"lr": 0.05}), pyro.infer.Trace_ELBO()
    )
    for _ in range(3):
        svi.step(x)
    store = pyro.get_param_store()
    # the names stores saved by earlier versions hold too: the output layer as ``output``
    names = sorted(store.keys())
    assert names == sorted(f"iaf$$${n}" for n, _ in iaf.named_parameters())
    assert "iaf$$$made.output.weight" in names
    assert iaf.made.output.weight.abs().sum() > 0  # trained away from its zero start
    store.save(tmp_path / "params.pt")
    z = torch.randn(5, 3)
    expected = iaf(z)

    pyro.clear_param_store()
    store.load(tmp_path / "params.pt")
    fresh = inverse_autoregressive(3, [8])
    # pyro.module puts the stored tensors, found by name, into the fresh module
    _iaf_guide(fresh, update_module_params=True)(x)
    assert torch.equal(fresh(z), expected)
    for name, param in fresh.named_parameters():
        assert torch.equal(param, store[f"iaf$$${name}"])


def test_upgrade_state_dict_renames_as_loading_does() -> None:
    """What a key check before loading compares (pyro_gen's checkpoints check first)."""
    flow = inverse_autoregressive(3, [8])
    old = _with_legacy_keys(flow.state_dict(), "made.", 2)
    upgraded = upgrade_state_dict(flow, old)
    assert list(upgraded) == list(flow.state_dict())
    assert all(torch.equal(upgraded[k], v) for k, v in flow.state_dict().items())
    assert "made.net.2.weight" in old  # the caller's dict is left as it was


def test_a_checkpoint_written_before_the_fix_restores(tmp_path) -> None:
    saved = inverse_autoregressive(3, [8])
    _randomized(saved.made)
    pyro.module("flow", saved)
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, modules={"model": saved}, optim=pyro.optim.Adam({"lr": 0.1}))
    ckpt = load_checkpoint(path)
    entry = ckpt["modules"]["model"]
    entry["state_dict"] = _with_legacy_keys(entry["state_dict"], "made.", 2)
    pyro.clear_param_store()
    fresh = inverse_autoregressive(3, [8])
    restore_modules(ckpt, {"model": fresh})
    z = torch.randn(4, 3)
    assert torch.equal(fresh(z), saved(z))


def test_mlp_names_each_tensor_once_and_loads_earlier_state_dicts() -> None:
    """MLP held its output layer twice as MADE did (``output`` and the last entry of
    ``net``); a coupling layer's state dict written that way still loads."""
    from pyro_gen.nn import MLP
    from pyro_gen.transforms import affine_coupling

    state = MLP(3, [8, 8], 2).state_dict(keep_vars=True)
    assert len({id(t) for t in state.values()}) == len(state)
    saved = affine_coupling(4, hidden_dims=[8, 8])
    with torch.no_grad():
        for p in saved.parameters():
            p.normal_()
    (prefix,) = {k[: -len("output.weight")] for k in saved.state_dict() if "output.weight" in k}
    old = _with_legacy_keys(saved.state_dict(), prefix, 4)
    assert any(k.startswith(prefix + "net.4.") for k in old)  # as written before
    fresh = affine_coupling(4, hidden_dims=[8, 8])
    fresh.load_state_dict(old)  # strict: no key left over
    x = torch.randn(5, 4)
    assert torch.equal(fresh(x), saved(x))
