"""Replaying a recorded run of a Pyro model (:mod:`pyro_gen.gan.recorded_program`) in place
of the model: the observed sites from the program, the run's parameters announced as Pyro
param sites, for :class:`~pyro_gen.gan.recorded.RecordedRuns`."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import pyro
import torch
from pyro.poutine import runtime
from pyro.poutine.runtime import Message, am_i_wrapped, apply_stack
from pyro.poutine.trace_messenger import TraceMessenger

from pyro_gen.gan.observed import ObservedSite
from pyro_gen.gan.recorded_program import _Recording
from pyro_gen.infer.compiled_recording import (
    _Noise,
    _Unsupported,
    noise_rng_state,
    set_noise_rng_state,
)


class _NewParameters(Exception):
    """The param store holds other tensors than the recording's (a loaded param store)."""


def replay(prog: _Recording, data: list[torch.Tensor]) -> dict[str, ObservedSite]:
    """The observed sites from the recording.

    Raises:
        _NewParameters: the param store's tensors changed (record again).
        _Unsupported: a value the model branched on changed (this run must go through Pyro,
            and the noise generators are back where they were).

    Example:
        >>> import pyro.distributions as dist
        >>> from pyro_gen.gan.recorded_program import (
        ...     _Recording, compile_recording, finish_program, record_program)
        >>> def model(x):
        ...     loc = pyro.param("loc", torch.ones(2))
        ...     with pyro.plate("data", x.shape[0]):
        ...         pyro.sample("x", dist.Normal(loc, 1.0).to_event(1), obs=x)
        >>> x = torch.zeros(3, 2)
        >>> model(x)  # creates the parameter
        >>> params = param_sites(["loc"])
        >>> gm, seen = record_program(model, lambda x: None, (x,), {}, params, [x])
        >>> extras, guards = finish_program(gm, seen)
        >>> fn = compile_recording(gm, "fx", params, [x], extras, devices=[])
        >>> layout, sig, n_out = seen["layout"], seen["signature"], seen["n_out"]
        >>> prog = _Recording(fn, ["loc"], params, extras, layout, sig, guards, n_out, [])
        >>> site = replay(prog, [x])["x"]
        >>> site.value.shape, torch.equal(site.obs, x), site.event_dim
        (torch.Size([3, 2]), True, 1)
    """
    params = param_sites(prog.names)
    if params is None or any(p is not q for p, q in zip(params, prog.params)):
        raise _NewParameters
    rng = noise_rng_state(prog.devices) if prog.guards else None
    extras = [e.draw() if isinstance(e, _Noise) else e for e in prog.extras]
    out = prog.fn(*params, *data, *extras)
    for read, expected in zip(out[prog.n_out :], prog.guards):
        # One host read per value the model branched on (Pyro's argument checks).
        if read.item() != expected:
            set_noise_rng_state(rng, prog.devices)  # Pyro's run draws what this one drew
            raise _Unsupported(
                "a tensor value the model branched on changed "
                f"({expected!r} when recorded, {read.item()!r} now)"
            )
    return {
        site.name: ObservedSite(
            out[2 * i],
            out[2 * i + 1],
            site.event_dim,
            out[site.scale] if site.tensor_scale else site.scale,
            out[site.mask] if site.tensor_mask else site.mask,
            site.deterministic,
        )
        for i, site in enumerate(prog.layout)
    }


@contextmanager
def leaves_no_trace(prog: _Recording) -> Iterator[None]:
    """Around a replay that checks the recording: the noise it draws is drawn again by the
    Pyro run that follows, and the buffers it writes (running statistics) are put back."""
    buffers = [e for e in prog.extras if torch.is_tensor(e)]
    saved = [b.clone() for b in buffers]
    rng = noise_rng_state(prog.devices)
    try:
        yield
    finally:
        set_noise_rng_state(rng, prog.devices)
        with torch.no_grad():
            for b, v in zip(buffers, saved):
                b.copy_(v)


def only_param_capture() -> bool:
    """Whether the handlers around this call record param sites only (a replay may run)."""
    # SVI and fit record param sites only; any other handler must see the model's sites.
    return all(isinstance(m, TraceMessenger) and m.param_only for m in runtime._PYRO_STACK)


def param_sites(names: Sequence[str]) -> list[torch.Tensor] | None:
    """The unconstrained tensors of the named parameters, each announced as a param site as
    ``pyro.param(name)`` announces it (SVI and fit find what to update in these sites); None
    when one is missing from the param store (it was cleared)."""
    store = pyro.get_param_store()
    try:
        params = [store._params[name] for name in names]
    except KeyError:
        return None
    if am_i_wrapped():
        for name in names:
            # pyro.param's message, its value already looked up
            kwargs = {"constraint": store._constraints[name], "event_dim": None}
            msg = Message(
                type="param", name=name, fn=store.get_param, is_observed=False, args=(name,),
                kwargs=kwargs, value=store[name], scale=1.0, mask=None, cond_indep_stack=(),
                done=False, stop=False, continuation=None, infer={},
            )  # fmt: skip
            apply_stack(msg)
    return params


def differs(replayed: dict[str, ObservedSite], sites: dict[str, ObservedSite]) -> str | None:
    """The first site whose generated value differs between a replay and the Pyro run on the
    same noise (beyond the rounding of a compiled program), or None."""
    for name, site in sites.items():
        other = replayed.get(name)
        if other is None or not torch.allclose(other.value, site.value.detach(), 1e-4, 1e-6):
            return name
    return None
