"""Load time of an MNIST-VAE-sized checkpoint: pyro_gen's format against safetensors + JSON.

A: :func:`pyro_gen.infer.checkpoint.load_checkpoint` (read, SHA-256, ``torch.load`` with
``weights_only=True``, decoding RNG states and constraints).
B: the same state as safetensors (every tensor, flattened by name) plus a JSON file for the
rest (optimizer hyper-parameters, RNG states, progress), loaded with
``safetensors.torch.load_file`` + ``json.loads`` and reassembled; B+ adds the SHA-256 that
safetensors lacks, so that both refuse flipped bytes. safetensors maps the file and reads
pages only when a tensor is used, so every variant ends by reading every tensor once (as
restoring a model and its optimizer does).

Interleaved A B A B, one torch thread, median and standard error over repeats. Needs
``safetensors`` (not a pyro_gen dependency): ``pip install --target DIR safetensors`` and
``PYTHONPATH=DIR``.

Usage: ``python benchmarks/checkpoint_load.py [--repeats 200]``
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import pyro
import pyro.optim
import pyro.util
import torch
from safetensors.torch import load_file, save_file

from pyro_gen.infer.checkpoint import load_checkpoint, save_checkpoint
from pyro_gen.infer.state_codec import decode, encode


def _trained_state() -> tuple[torch.nn.Module, pyro.optim.PyroOptim]:
    # The networks of ``pyro-gen train vae --data mnist`` (z 50, hidden 400, one hidden
    # layer each way), registered and stepped once with Adam so the optimizer has state.
    vae = torch.nn.ModuleDict(
        {
            "encoder": torch.nn.Sequential(torch.nn.Linear(784, 400), torch.nn.Linear(400, 100)),
            "decoder": torch.nn.Sequential(torch.nn.Linear(50, 400), torch.nn.Linear(400, 784)),
        }
    )
    pyro.module("vae", vae)
    optim = pyro.optim.Adam({"lr": 1e-3})
    for p in vae.parameters():
        p.grad = torch.randn_like(p)
    optim(list(vae.parameters()))
    return vae, optim


def _save_safetensors(directory: Path, vae: torch.nn.Module, optim: Any) -> None:
    tensors = {f"model.{k}": v.contiguous() for k, v in vae.state_dict().items()}
    rest: dict[str, Any] = {"optim": {}}
    for name, state in optim.get_state().items():
        rest["optim"][name] = {"param_groups": state["param_groups"], "state": {}}
        for index, slots in state["state"].items():
            for slot, value in slots.items():
                tensors[f"optim.{name}.{index}.{slot}"] = value.contiguous()
                rest["optim"][name]["state"].setdefault(str(index), []).append(slot)
    rng = encode(pyro.util.get_rng_state())
    tensors["rng.torch"] = rng.pop("torch")
    rest["rng"] = rng
    rest["progress"] = {"epoch": 1, "step": 469}
    save_file(tensors, directory / "state.safetensors")
    (directory / "state.json").write_text(json.dumps(rest))


def _load_safetensors(directory: Path, checksum: bool) -> dict[str, Any]:
    if checksum:
        hashlib.sha256((directory / "state.safetensors").read_bytes()).hexdigest()
    tensors = load_file(directory / "state.safetensors")
    rest = json.loads((directory / "state.json").read_text())
    optim = {}
    for name, state in rest["optim"].items():
        slots = {
            int(i): {s: tensors[f"optim.{name}.{i}.{s}"] for s in names}
            for i, names in state["state"].items()
        }
        optim[name] = {"param_groups": state["param_groups"], "state": slots}
    model = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
    return {
        "model": model,
        "optim": optim,
        "rng": decode(rest["rng"]),
        "progress": rest["progress"],
    }


def _touch(value: Any) -> float:
    """Reads every tensor in ``value`` once."""
    if isinstance(value, torch.Tensor):
        return float(value.double().sum()) if value.is_floating_point() else 0.0
    if isinstance(value, dict):
        return sum(_touch(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_touch(v) for v in value)
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()
    torch.set_num_threads(1)
    pyro.set_rng_seed(0)
    vae, optim = _trained_state()
    directory = Path(tempfile.mkdtemp())
    save_checkpoint(directory / "checkpoint.pt", modules={"model": vae}, optim=optim,
                    progress={"epoch": 1, "step": 469})  # fmt: skip
    _save_safetensors(directory, vae, optim)
    loaders = {
        "A pyro_gen (sha256 + weights_only)": lambda: load_checkpoint(directory / "checkpoint.pt"),
        "B safetensors + JSON": lambda: _load_safetensors(directory, checksum=False),
        "B+ safetensors + JSON + sha256": lambda: _load_safetensors(directory, checksum=True),
    }
    times: dict[str, list[float]] = {name: [] for name in loaders}
    for _ in range(args.repeats):
        for name, load in loaders.items():
            start = time.perf_counter()
            _touch(load())
            times[name].append(time.perf_counter() - start)
    size = (directory / "checkpoint.pt").stat().st_size
    st_size = (directory / "state.safetensors").stat().st_size
    print(f"checkpoint.pt {size / 1e6:.2f} MB; safetensors {st_size / 1e6:.2f} MB + JSON")
    base = statistics.median(times["A pyro_gen (sha256 + weights_only)"])
    for name, values in times.items():
        median = statistics.median(values)
        se = statistics.stdev(values) / len(values) ** 0.5
        ratio = median / base
        print(f"{name}: median {median * 1e3:.2f} ms (s.e. {se * 1e3:.2f}), {ratio:.2f}x A")


if __name__ == "__main__":
    main()
