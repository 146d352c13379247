"""What recording a compiled SVI step costs, with make_fx given one fake-tensor mode and
without (how it ran before: a ``FakeTensorMode`` per recorded value, each capturing the
whole Python stack).

Each repetition builds the model afresh and records its step in a new ``CompiledSVI``
(``backend="fx"``: the recording alone, no TorchScript trace), taking ``compile_time_s``;
the two variants take turns (A B, B A, ...) on one thread, after one warm-up recording of
each (the first recording in a process pays one-time imports). Reported: median seconds per
recording of each and the median of the per-repetition ratios.

Run:  .venv/bin/python benchmarks/recording_time.py --reps 5
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import statistics
import sys
import unittest.mock
from collections.abc import Callable
from pathlib import Path

import pyro
import torch

sys.path.insert(0, str(Path(__file__).parent))
import step_time  # noqa: E402  (the benchmarks' own MNIST VAE and 2-D RealNVP)

from pyro_gen.flows import ResidualFlow  # noqa: E402
from pyro_gen.infer import compiled_step_recorder  # noqa: E402
from pyro_gen.infer.compiled import CompiledSVI  # noqa: E402

MODELS: dict[str, tuple[Callable[[str], torch.nn.Module], Callable[[], torch.Tensor]]] = {
    "vae (MNIST, 784-400-50)": (
        step_time.PyroVAE,
        lambda: torch.bernoulli(torch.full((128, 784), 0.13)),
    ),
    "realnvp (2-D, 4 layers)": (step_time.realnvp, lambda: torch.randn(256, 2)),
    "residual flow (2-D, 6 layers)": (
        lambda name: ResidualFlow((2,), num_layers=6, hidden_dims=(64, 64), name=name),
        lambda: torch.randn(256, 2),
    ),
}


def record_once(make: Callable[[str], torch.nn.Module], x: torch.Tensor, one_mode: bool) -> float:
    """Seconds ``CompiledSVI`` spent recording one model's step."""
    pyro.clear_param_store()
    model = make("rec")
    svi = CompiledSVI(model.model, model.guide, pyro.optim.Adam({"lr": 1e-3}), backend="fx")
    patch = (
        contextlib.nullcontext()
        if one_mode
        else unittest.mock.patch.object(
            compiled_step_recorder, "_one_fake_mode", contextlib.nullcontext
        )
    )
    with patch:
        for _ in range(3):  # the plain first step, then the recording
            svi.step(x)
    assert svi.compiled, svi.fallback_reason
    return svi.compile_time_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    print(
        f"torch {torch.__version__}, pyro {pyro.__version__}, "
        f"{platform.processor() or '?'}, 1 thread, {args.reps} repetitions"
    )
    print("\n| model | one fake mode, s | a mode per value, s | ratio (median) |")
    print("|---|---:|---:|---:|")
    for name, (make, data) in MODELS.items():
        x = data()
        for one_mode in (True, False):  # warm-up
            record_once(make, x, one_mode)
        times: dict[bool, list[float]] = {True: [], False: []}
        for rep in range(args.reps):
            for one_mode in (True, False) if rep % 2 == 0 else (False, True):
                times[one_mode].append(record_once(make, x, one_mode))
        ratio = statistics.median(a / b for a, b in zip(times[True], times[False], strict=True))
        print(
            f"| {name} | {statistics.median(times[True]):.2f} "
            f"| {statistics.median(times[False]):.2f} | {ratio:.2f} |"
        )


if __name__ == "__main__":
    main()
