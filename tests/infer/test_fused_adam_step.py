"""fused_adam_step against torch's own ``optimizer.step()``: the same parameters and the
same state tensors, bit for bit, after every step, in every case it takes; torch's own
step in every case it leaves to torch."""

from __future__ import annotations

import copy

import pytest
import torch

from pyro_gen.infer.fused_adam_step import _kernel_calls, fused_adam_step

CASES = {
    "adam": (torch.optim.Adam, {"lr": 1e-2}),
    "adamw": (torch.optim.AdamW, {"lr": 1e-2, "weight_decay": 0.1}),
    "adam_l2_amsgrad_maximize": (
        torch.optim.Adam,
        {"lr": 3e-3, "weight_decay": 0.05, "amsgrad": True, "maximize": True},
    ),
    "adam_betas_eps": (torch.optim.Adam, {"lr": 1e-2, "betas": (0.5, 0.9), "eps": 1e-4}),
}


def _params(seed: int, dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shapes = [(5, 3), (3,), (7,), (2, 2, 2)]
    return [torch.randn(s, generator=g, dtype=dtype).requires_grad_() for s in shapes]


def _grads(params: list[torch.Tensor], step: int, unused: bool = True) -> list:
    g = torch.Generator().manual_seed(1000 + step)
    grads = [torch.randn(p.shape, generator=g, dtype=p.dtype) for p in params]
    # With ``unused``, the second parameter is unused on every third step (no gradient:
    # not stepped).
    return [None if (unused and i == 1 and step % 3 == 0) else gr for i, gr in enumerate(grads)]


def _state(opt: torch.optim.Optimizer, params: list[torch.Tensor]) -> list[dict]:
    return [{k: v.clone() for k, v in opt.state[p].items()} for p in params]


def _assert_same(a: list[torch.Tensor], b: list[torch.Tensor], sa: list, sb: list) -> None:
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    for x, y in zip(sa, sb):
        assert x.keys() == y.keys()
        for k in x:
            assert torch.equal(x[k], y[k]), k


def _pair(case: str, dtype: torch.dtype = torch.float32):
    ctor, kwargs = CASES[case]
    mine, theirs = _params(0, dtype), _params(0, dtype)
    opt_mine = ctor(mine[:2], fused=True, **kwargs)
    opt_theirs = ctor(theirs[:2], fused=True, **kwargs)
    # a second group with another learning rate (as fuse() adds parameters later)
    opt_mine.add_param_group({"params": mine[2:], **kwargs, "lr": kwargs["lr"] / 2})
    opt_theirs.add_param_group({"params": theirs[2:], **kwargs, "lr": kwargs["lr"] / 2})
    return mine, theirs, opt_mine, opt_theirs


def _step_and_compare(mine, opt_mine, theirs, opt_theirs, step, only=None) -> None:
    """One step with the same gradients: ``mine`` through fused_adam_step, ``theirs``
    through torch's step(); ``only``: the index of the one parameter given a gradient."""
    for ps in (mine, theirs):
        for i, (p, g) in enumerate(zip(ps, _grads(ps, step, unused=False))):
            p.grad = g.clone() if only in (None, i) else None
    fused_adam_step(opt_mine)
    opt_theirs.step()
    _assert_same(mine, theirs, _state(opt_mine, mine), _state(opt_theirs, theirs))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", sorted(CASES))
def test_steps_are_torchs_to_the_bit(case, dtype):
    mine, theirs, opt_mine, opt_theirs = _pair(case, dtype)
    for step in range(12):
        for ps in (mine, theirs):
            for p, g in zip(ps, _grads(ps, step)):
                p.grad = None if g is None else g.clone()
        took = _kernel_calls(opt_mine) is not None
        # the first step (torch makes the state) and the first step of the parameter that
        # was unused on step 0 go through torch; every other step through the kernel
        assert took == (step >= 2), step
        fused_adam_step(opt_mine)
        opt_theirs.step()
        _assert_same(mine, theirs, _state(opt_mine, mine), _state(opt_theirs, theirs))


def test_a_raised_found_inf_skips_the_update_and_keeps_the_count():
    mine, theirs, opt_mine, opt_theirs = _pair("adam")
    for step in range(6):
        found = torch.tensor(float(step == 4))
        for ps in (mine, theirs):
            for p, g in zip(ps, _grads(ps, step, unused=False)):  # every parameter used
                p.grad = g.clone()
        before = [p.detach().clone() for p in mine]
        fused_adam_step(opt_mine, found_inf=found)
        opt_theirs.found_inf = found
        opt_theirs.step()
        opt_theirs.found_inf = None
        _assert_same(mine, theirs, _state(opt_mine, mine), _state(opt_theirs, theirs))
        if step == 4:
            assert all(torch.equal(a, b) for a, b in zip(mine, before))
    assert int(opt_mine.state[mine[0]]["step"]) == 5


def test_state_loaded_between_steps_is_the_state_stepped():
    mine, theirs, opt_mine, opt_theirs = _pair("adamw")
    for step in range(3):
        _step_and_compare(mine, opt_mine, theirs, opt_theirs, step)
    saved = copy.deepcopy(opt_theirs.state_dict())
    for step in range(3, 5):  # mine moves on, then is put back to theirs
        for p, g in zip(mine, _grads(mine, step, unused=False)):
            p.grad = g.clone()
        fused_adam_step(opt_mine)
    opt_mine.load_state_dict(saved)
    with torch.no_grad():
        for a, b in zip(mine, theirs):
            a.copy_(b)
    for step in range(5, 8):
        _step_and_compare(mine, opt_mine, theirs, opt_theirs, step)


def test_what_it_does_not_take_goes_through_torchs_step():
    w = torch.zeros(3, requires_grad=True)
    w.grad = torch.ones(3)
    unfused = torch.optim.Adam([w], lr=0.1, foreach=True)
    unfused.step()
    assert _kernel_calls(unfused) is None
    fused = torch.optim.Adam([w], lr=0.1, fused=True)
    fused.step()
    assert _kernel_calls(fused) is not None
    calls = []
    handle = fused.register_step_post_hook(lambda *a: calls.append(1))
    assert _kernel_calls(fused) is None
    fused_adam_step(fused)  # the hook runs: torch's step ran
    assert calls == [1]
    handle.remove()
    tensor_lr = torch.optim.Adam([w], lr=torch.tensor(0.1), fused=True)
    tensor_lr.step()
    assert _kernel_calls(tensor_lr) is None


def test_the_compiled_step_updates_through_the_kernel_as_torch_would(monkeypatch):
    """A compiled step's update takes this path in steady state (torch's ``step()`` runs
    only for the parameters' first step) and moves the parameters exactly as torch's
    step does."""
    import pyro
    import pyro.distributions as dist
    from pyro import poutine

    from pyro_gen.infer import compiled_update
    from pyro_gen.infer.compiled import CompiledSVI

    def model(x):
        loc = pyro.param("loc", torch.zeros(3))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(loc, 1.0).to_event(1), obs=x)

    def guide(x):
        pass

    x = torch.randn(16, 3) + 2.0
    finals = {}
    for how in ("kernel", "torch"):
        pyro.clear_param_store()
        torch_steps = []
        real_step = torch.optim.Adam.step

        def counted(self, *args, real_step=real_step, torch_steps=torch_steps, **kwargs):
            torch_steps.append(1)
            return real_step(self, *args, **kwargs)

        with monkeypatch.context() as m:
            m.setattr(torch.optim.Adam, "step", counted)
            if how == "torch":
                m.setattr(
                    compiled_update, "fused_adam_step", lambda opt, found_inf=None: opt.step()
                )
            svi = CompiledSVI(model, poutine.block(guide), pyro.optim.Adam({"lr": 0.1}))
            for _ in range(10):
                svi.step(x)
        assert svi.compiled, svi.fallback_reason
        assert len(torch_steps) == (1 if how == "kernel" else 10)
        finals[how] = pyro.param("loc").detach().clone()
    assert torch.equal(finals["kernel"], finals["torch"])


def test_step_counts_shared_as_one_tensor_save_load_and_step_one_at_a_time(tmp_path):
    """The counts of one kernel call become views of one tensor; the state still saves and
    loads as torch's, and torch stepping one parameter alone (as Pyro's per-parameter
    optimizers do through the fused one) counts that parameter alone."""
    mine, theirs, opt_mine, opt_theirs = _pair("adam")
    mine, theirs = mine[:2], theirs[:2]  # the first group only
    opt_mine.param_groups.pop(), opt_theirs.param_groups.pop()

    def both(step: int, only: int | None = None) -> None:
        _step_and_compare(mine, opt_mine, theirs, opt_theirs, step, only)

    for step in range(3):
        both(step)
    counts = [opt_mine.state[p]["step"] for p in mine]
    assert counts[0]._base is not None and all(c._base is counts[0]._base for c in counts)
    both(3, only=0)  # one parameter alone, through torch's step
    assert [int(opt_mine.state[p]["step"]) for p in mine] == [4, 3]
    both(4)
    torch.save(opt_mine.state_dict(), tmp_path / "opt.pt")
    restored_params = [p.detach().clone().requires_grad_() for p in mine]
    restored = torch.optim.Adam(restored_params, fused=True, **CASES["adam"][1])
    restored.load_state_dict(torch.load(tmp_path / "opt.pt", weights_only=True))
    for step in range(5, 8):
        _step_and_compare(restored_params, restored, theirs, opt_theirs, step)
