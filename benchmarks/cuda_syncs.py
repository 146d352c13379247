"""Host synchronisations per step on CUDA, counted with the CUDA profiler (issue 14).

A CUDA call that makes the host wait for the device (a stream or device synchronize, a
synchronous copy, a device-to-host copy of a value) stalls the step and breaks CUDA graphs.
For the MNIST VAE, an 8x8 image RealNVP and an 8x8 image DDPM, each with fit's compiled step
(``CompiledSVI``, backend ``auto``: the TorchScript program, and ``inductor``: Inductor with
CUDA graphs), this script warms the step up, then records ``--steps`` steady-state steps
with :mod:`torch.profiler` (CPU and CUDA activities) and counts the runtime calls that
block the host and the device-to-host copies, per step (target: 0). It then counts the same
over a whole ``fit`` call of ``--fit-steps`` steps, whose loop reads the losses back every
``READBACK_EVERY`` steps by design.

Usage (on a machine with a GPU)::

    python3 benchmarks/cuda_syncs.py --steps 20 --fit-steps 40 > syncs.md
"""

from __future__ import annotations

import argparse
import datetime
from collections import Counter
from collections.abc import Callable
from typing import Any

import pyro
import torch
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO
from torch.profiler import ProfilerActivity, profile

from pyro_gen.diffusion import build_ddpm
from pyro_gen.flows import build as build_flow
from pyro_gen.infer import fit
from pyro_gen.infer.compiled import CompiledSVI
from pyro_gen.infer.fit import READBACK_EVERY
from pyro_gen.vae import build_vae

#: CUDA runtime and driver calls that block the host until the device has caught up
BLOCKING = (
    "cudaStreamSynchronize",
    "cudaDeviceSynchronize",
    "cudaEventSynchronize",
    "cudaMemcpy",  # the synchronous copy (cudaMemcpyAsync is listed apart)
    "cuStreamSynchronize",
    "cuCtxSynchronize",
    "cuEventSynchronize",
)


def models(device: torch.device) -> dict[str, Callable[[], tuple[Any, Any, torch.Tensor]]]:
    def vae():
        x = torch.bernoulli(torch.rand(128, 28, 28, device=device))
        return build_vae((28, 28)), Trace_ELBO(), x

    def realnvp():
        flow = build_flow("realnvp", (8, 8), dequantization="uniform", num_bins=17,
                          num_layers=2, num_levels=1, hidden_channels=8, num_blocks=1)  # fmt: skip
        return flow, Trace_ELBO(), torch.randint(0, 17, (128, 8, 8), device=device).float()

    def ddpm():
        model = build_ddpm((8, 8), timesteps=100, base_channels=8, num_bins=17)
        return model, TraceMeanField_ELBO(), torch.rand(128, 8, 8, device=device)

    return {
        "vae (MNIST, 784-400-50)": vae,
        "realnvp (8x8 image)": realnvp,
        "ddpm (8x8 image)": ddpm,
    }


def count(fn: Callable[[], Any]) -> Counter:
    """Blocking calls and device-to-host copies while ``fn`` runs."""
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()  # the profiler's own: subtracted below
    found: Counter = Counter()
    for event in prof.events():
        name = event.name
        if name in BLOCKING:
            found[name] += 1
        elif name.startswith("Memcpy DtoH"):
            found["Memcpy DtoH"] += 1
    for name in ("cudaDeviceSynchronize", "cuCtxSynchronize"):
        if found[name]:
            found[name] -= 1  # the synchronize above, which closes the recording
            break
    return found


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="steady-state steps recorded")
    parser.add_argument("--warmup", type=int, default=30, help="steps before recording")
    parser.add_argument("--fit-steps", type=int, default=2 * READBACK_EVERY)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("cuda_syncs.py counts CUDA synchronisations: it needs a GPU")
    device = torch.device("cuda")
    pyro.enable_validation(False)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    title = (
        f"**Host synchronisations per step on {torch.cuda.get_device_name()} ({stamp}, torch "
        f"{torch.__version__}, pyro {pyro.__version__}), batch 128: blocking CUDA calls and "
        "device-to-host copies counted by torch.profiler; target 0 per compiled step**"
    )
    print(title + "\n")
    print("| model | step | per step | what was counted |")
    print("|---|---|---:|---|")
    for label, make in models(device).items():
        for backend in ("auto", "inductor"):
            pyro.clear_param_store()
            pyro.set_rng_seed(0)
            module, loss, x = make()
            module.to(device)
            svi = CompiledSVI(module.model, module.guide, pyro.optim.Adam({"lr": 1e-3}), loss,
                              backend=backend)  # fmt: skip
            for _ in range(args.warmup):
                svi.step(x)
            note = "" if svi.compiled else f" (fell back: {svi.fallback_reason})"
            found = count(lambda svi=svi, x=x: [svi.step(x) for _ in range(args.steps)])
            per = sum(found.values()) / args.steps
            print(f"| {label} | CompiledSVI [{backend}]{note} | {per:.2f} | {dict(found)} |")
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        module, loss, x = make()
        data = x.repeat(args.fit_steps, *([1] * (x.dim() - 1)))  # fit_steps batches of 128
        found = count(lambda module=module, loss=loss, data=data, size=x.shape[0]: fit(
            module, data, steps=args.fit_steps, batch_size=size, loss=loss,
            device=device, progress=False))  # fmt: skip
        per = sum(found.values()) / args.fit_steps
        print(f"| {label} | fit, {args.fit_steps} steps from cold (read-back every "
              f"{READBACK_EVERY}) | {per:.2f} | {dict(found)} |")  # fmt: skip


if __name__ == "__main__":
    main()
