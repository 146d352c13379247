"""What recording a compiled SVI step costs, as the recorder runs now and with either of two
savings taken out (how it ran before session 17):

* ``one fake mode``: make_fx is given one fake-tensor mode; without it, it builds a
  ``FakeTensorMode`` per recorded value, each capturing the whole Python stack;
* ``one recompile``: the graph passes after make_fx regenerate the program's Python code
  once; without it, once per pass.

Each repetition builds the model afresh and records its step in a new ``CompiledSVI``
(``backend="fx"``: the recording alone, no TorchScript trace), taking ``compile_time_s``;
the variants take turns in a rotating order on one thread, after one warm-up recording of
each (the first recording in a process pays one-time imports). Reported: median seconds per
recording of each, and the median of the per-repetition ratios now / without both.

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
import step_models  # noqa: E402  (the benchmarks' own MNIST VAE and 2-D RealNVP)

from pyro_gen.flows import ResidualFlow  # noqa: E402
from pyro_gen.infer import compiled_step_recorder  # noqa: E402
from pyro_gen.infer.compiled import CompiledSVI  # noqa: E402

MODELS: dict[str, tuple[Callable[[str], torch.nn.Module], Callable[[], torch.Tensor]]] = {
    "vae (MNIST, 784-400-50)": (
        step_models.PyroVAE,
        lambda: torch.bernoulli(torch.full((128, 784), 0.13)),
    ),
    "realnvp (2-D, 4 layers)": (step_models.realnvp, lambda: torch.randn(256, 2)),
    "residual flow (2-D, 6 layers)": (
        lambda name: ResidualFlow((2,), num_layers=6, hidden_dims=(64, 64), name=name),
        lambda: torch.randn(256, 2),
    ),
}


# what each variant takes out of the recorder
VARIANTS: dict[str, tuple[str, ...]] = {
    "now": (),
    "without one fake mode": ("_one_fake_mode",),
    "without one recompile": ("_one_recompile",),
    "without both": ("_one_fake_mode", "_one_recompile"),
}


def record_once(make: Callable[[str], torch.nn.Module], x: torch.Tensor, variant: str) -> float:
    """Seconds ``CompiledSVI`` spent recording one model's step."""
    pyro.clear_param_store()
    model = make("rec")
    svi = CompiledSVI(model.model, model.guide, pyro.optim.Adam({"lr": 1e-3}), backend="fx")
    with contextlib.ExitStack() as stack:
        for name in VARIANTS[variant]:
            stack.enter_context(
                unittest.mock.patch.object(
                    compiled_step_recorder, name, lambda *_: contextlib.nullcontext()
                )
            )
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
    names = list(VARIANTS)
    print("\n| model | " + " | ".join(f"{v}, s" for v in names) + " | now / without both |")
    print("|---|" + "---:|" * (len(names) + 1))
    for name, (make, data) in MODELS.items():
        x = data()
        for variant in names:  # warm-up
            record_once(make, x, variant)
        times: dict[str, list[float]] = {v: [] for v in names}
        for rep in range(args.reps):
            for variant in names[rep % len(names) :] + names[: rep % len(names)]:
                times[variant].append(record_once(make, x, variant))
        pairs = zip(times["now"], times["without both"], strict=True)
        ratio = statistics.median(a / b for a, b in pairs)
        medians = " | ".join(f"{statistics.median(times[v]):.2f}" for v in names)
        print(f"| {name} | {medians} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
