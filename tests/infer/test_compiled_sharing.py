"""One Pyro optimizer shared by CompiledSVI and other loops (Pyro's SVI, a second
CompiledSVI): every loop steps the same per-parameter state, so alternating them follows
the trajectory of plain SVI alone."""

from __future__ import annotations

import pyro
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO

from tests.infer.compiled_models import RTOL, make

# float64 throughout (tests/conftest.py, whose autouse fixture also clears the param store)
pytestmark = pytest.mark.usefixtures("float64_default")


OPTIMIZERS = {
    "adam": lambda: pyro.optim.Adam({"lr": 0.05}),  # fused in CompiledSVI
    "clipped_adam": lambda: pyro.optim.ClippedAdam({"lr": 0.05}),
    "adam_clip_args": lambda: pyro.optim.Adam({"lr": 0.05}, {"clip_norm": 1.0}),
    "scheduled_sgd": lambda: pyro.optim.ExponentialLR(
        {"optimizer": torch.optim.SGD, "optim_args": {"lr": 0.05}, "gamma": 0.9}
    ),
    # Adam under a scheduler: a fused stand-in once ignored the schedule.
    "scheduled_adam": lambda: pyro.optim.ExponentialLR(
        {"optimizer": torch.optim.Adam, "optim_args": {"lr": 0.05}, "gamma": 0.5}
    ),
}


def train(loops: str, optimizer: str = "adam", steps: int = 6):
    """Parameters and optimizer state after ``steps`` steps that take turns over the loops
    named in ``loops`` ("S": Pyro's SVI, "C"/"D": two CompiledSVI), one optimizer, one
    seed."""
    from pyro_gen.infer.compiled import CompiledSVI

    pyro.clear_param_store()
    gen, x = make("vae")
    optim = OPTIMIZERS[optimizer]()
    steppers = {
        "S": SVI(gen.model, gen.guide, optim, Trace_ELBO()),
        "C": CompiledSVI(gen.model, gen.guide, optim, backend="fx"),
        "D": CompiledSVI(gen.model, gen.guide, optim, backend="fx"),
    }
    pyro.set_rng_seed(3)
    for i in range(steps):
        steppers[loops[i % len(loops)]].step(x)
        if isinstance(optim, pyro.optim.PyroLRScheduler):
            optim.step()  # as Pyro's docs do it: the schedule advances between steps
    for name in "CD":
        assert steppers[name].compiled, steppers[name].fallback_reason
    params = {k: v.detach().clone() for k, v in pyro.get_param_store().items()}
    return params, optim.get_state()


@pytest.mark.parametrize(
    "loops, optimizer",
    [("SC", "adam"), ("CS", "adam"), ("SCC", "adam"), ("CDS", "adam")]
    + [("SC", name) for name in OPTIMIZERS if name != "adam"],
)
def test_loops_sharing_one_optimizer_follow_plain_svi(loops, optimizer):
    ref_params, ref_state = train("S", optimizer)
    params, state = train(loops, optimizer)
    for name in ref_params:
        torch.testing.assert_close(params[name], ref_params[name], rtol=RTOL, atol=1e-8)
    for name in ref_state:
        if optimizer == "scheduled_sgd":  # plain SGD keeps no state to compare
            continue
        if optimizer == "scheduled_adam":
            got, want = (
                state[name]["optimizer"]["state"][0],
                ref_state[name]["optimizer"]["state"][0],
            )
        else:
            got, want = state[name]["state"][0], ref_state[name]["state"][0]
        assert float(got["step"]) == float(want["step"]) == 6, name
        torch.testing.assert_close(got["exp_avg"], want["exp_avg"], rtol=RTOL, atol=1e-10)


def test_fit_and_svi_take_turns_over_one_optimizer():
    """Issue 10's report: a compiled fit, then Pyro's SVI, then fit again over one
    ``pyro.optim.Adam`` raised "a fused CompiledSVI optimizer cannot step one parameter".
    Now every loop steps one state per parameter: the step counts add up."""
    from pyro_gen.infer import fit

    gen, x = make("vae")
    optim = pyro.optim.Adam({"lr": 0.01})
    fit(gen, x, steps=4, batch_size=5, optim=optim, progress=False)
    svi = SVI(gen.model, gen.guide, optim, Trace_ELBO())
    for _ in range(3):
        svi.step(x)
    fit(gen, x, steps=4, batch_size=5, optim=optim, progress=False)
    state = optim.get_state()
    assert state and all(float(s["state"][0]["step"]) == 11 for s in state.values()), state
    assert all(torch.isfinite(p).all() for p in pyro.get_param_store().values())


@pytest.mark.parametrize("halve", ["all", "one"])
def test_learning_rates_set_by_hand_through_optim_objs(halve):
    """Pyro's idiom ``for o in optim.optim_objs.values(): o.param_groups[0]["lr"] *= 0.5``
    after a compiled fit (whose fused optimizer stands in ``optim_objs``) had no
    ``param_groups`` to change; each parameter's rate is now its own, as with Pyro's own
    per-parameter optimizers: halved once each (not once per parameter), or for one
    parameter alone. The runs equal Pyro's SVI to rounding."""
    from pyro_gen.infer import fit

    def run(loop):
        gen, x = make("vae")
        optim = pyro.optim.Adam({"lr": 0.01})
        svi = SVI(gen.model, gen.guide, optim, Trace_ELBO())
        pyro.set_rng_seed(0)
        if loop == "fit":
            fit(gen, x, steps=3, batch_size=len(x), optim=optim, progress=False)
        else:
            for _ in range(3):
                svi.step(x)
        views = list(optim.optim_objs.values())
        for o in views if halve == "all" else views[:1]:
            o.param_groups[0]["lr"] *= 0.5
        rates = [o.param_groups[0]["lr"] for o in views]
        if loop == "fit":
            fit(gen, x, steps=3, batch_size=len(x), optim=optim, progress=False)
        else:
            for _ in range(3):
                svi.step(x)
        return rates, {k: v.detach().clone() for k, v in pyro.get_param_store().items()}

    rates, ours = run("fit")
    expected_rates, theirs = run("svi")
    assert rates == expected_rates
    assert rates.count(0.005) == (len(rates) if halve == "all" else 1)
    for name, value in theirs.items():
        torch.testing.assert_close(ours[name], value, rtol=RTOL, atol=1e-6)


def test_fit_follows_a_pyro_learning_rate_schedule():
    """A Pyro scheduler stepped from fit's callback, as Pyro's docs step it between epochs,
    gives SVI's trajectory (the rate halves each epoch)."""
    from pyro_gen.infer import fit

    def run(use_fit: bool) -> torch.Tensor:
        pyro.clear_param_store()

        def model(x):
            loc = pyro.param("loc", torch.zeros(2))
            with pyro.plate("data", x.shape[0]):
                pyro.sample("obs", pyro.distributions.Normal(loc, 1.0).to_event(1), obs=x)

        def guide(x):
            pass

        x = torch.full((8, 2), 3.0)
        sched = pyro.optim.ExponentialLR(
            {"optimizer": torch.optim.Adam, "optim_args": {"lr": 0.1}, "gamma": 0.5}
        )
        if use_fit:
            fit(model, x, guide=guide, optim=sched, epochs=3, batch_size=8, progress=False,
                callbacks=[lambda record, module: sched.step()])  # fmt: skip
        else:
            svi = SVI(model, guide, sched, Trace_ELBO())
            for _ in range(3):
                svi.step(x)
                sched.step()
        return pyro.param("loc").detach().clone()

    want = run(use_fit=False)
    # Adam moves about lr a step: 0.1 + 0.05 + 0.025 (not exactly: the gradient changes)
    torch.testing.assert_close(want, torch.full((2,), 0.175), rtol=0, atol=1e-3)
    torch.testing.assert_close(run(use_fit=True), want, rtol=RTOL, atol=1e-8)


@pytest.mark.parametrize("fused", [False, True])
def test_a_plain_step_with_fused_update_is_pyros_step_up_to_rounding(fused):
    """backend="pyro" is Pyro's SVI bit for bit; with fused_update it updates every
    parameter with one fused Adam (what fit's default does for a loss the program cannot
    take), equal to Pyro's per-parameter Adam up to float rounding, in the state Pyro reads."""
    from pyro_gen.infer.compiled import CompiledSVI
    from pyro_gen.infer.compiled_optim import _FUSED_ATTR

    runs = {}
    for name in ("svi", "plain"):
        pyro.clear_param_store()
        gen, x = make("vae")
        optim = pyro.optim.Adam({"lr": 0.05})
        if name == "svi":
            stepper = SVI(gen.model, gen.guide, optim, Trace_ELBO())
        else:
            stepper = CompiledSVI(gen.model, gen.guide, optim, backend="pyro", fused_update=fused)
        pyro.set_rng_seed(3)
        for _ in range(5):
            stepper.step(x)
        runs[name] = {k: v.detach().clone() for k, v in pyro.get_param_store().items()}
        state = optim.get_state()
    assert (_FUSED_ATTR in optim.__dict__) == fused
    assert all(int(s["state"][0]["step"]) == 5 for s in state.values())
    for k, v in runs["svi"].items():
        if fused:
            torch.testing.assert_close(runs["plain"][k], v, rtol=RTOL, atol=1e-8)
        else:
            assert torch.equal(runs["plain"][k], v), k


def test_optimizer_state_of_another_shape_is_refused_not_stepped():
    """Adam moments of another shape set with ``set_state`` reached the fused kernel, which
    torch calls without a shape check: the process crashed (a segmentation fault, found
    resuming a crafted checkpoint). The state is now refused where it enters."""
    import pyro.distributions as dist

    from pyro_gen.infer import fit
    from pyro_gen.infer.compiled_optim import OptimizerStateError

    def model(x):
        loc = pyro.param("loc", torch.zeros(3))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(loc, 1.0).to_event(1), obs=x)

    pyro.clear_param_store()
    x = torch.randn(8, 3)
    optim = pyro.optim.Adam({"lr": 0.1})
    fit(model, x, guide=lambda x: None, optim=optim, steps=2, batch_size=8, progress=False)
    state = optim.get_state()
    for key in ("exp_avg", "exp_avg_sq"):
        state["loc"]["state"][0][key] = torch.zeros(7)
    again = pyro.optim.Adam({"lr": 0.1})
    again.set_state(state)
    with pytest.raises(OptimizerStateError, match=r"'exp_avg' of shape \(7,\).*shape \(3,\)"):
        fit(model, x, guide=lambda x: None, optim=again, steps=3, batch_size=8, progress=False)
