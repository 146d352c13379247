"""Where a compiled step waits for the device: each operation of the recorded program that
synchronizes with the host, and the Python stack of each synchronizing call in whole steps.

``tests/cuda/test_compiled.py`` only says *that* a steady-state step synchronized (under
``torch.cuda.set_sync_debug_mode("error")``); this says *where*. The recorded FX graph is run
node by node under ``"error"`` (a TorchScript or Inductor program is one opaque call), then
one step is taken under ``"error"`` and the stack of its first synchronizing call printed.
For a session lent a GPU:

    python3 benchmarks/cuda_sync_sites.py ddpm auto     # a model of tests/infer/test_host_reads
"""

from __future__ import annotations

import sys
import traceback
from pathlib import Path

import pyro
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pyro_gen.infer.compiled import CompiledSVI  # noqa: E402
from tests.infer.test_host_reads import MODELS  # noqa: E402


class _SyncingNodes(torch.fx.Interpreter):
    """Runs each node under ``"error"`` (the C++ warning of ``"warn"`` does not reach
    Python's warnings): a node that raises is named, then run again with the mode off."""

    def run_node(self, n: torch.fx.Node) -> object:
        torch.cuda.set_sync_debug_mode("error")
        try:
            return super().run_node(n)
        except RuntimeError as exc:
            if "synchroniz" not in str(exc):
                raise
            print("graph node syncs:", n.format_node()[:400], flush=True)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        return super().run_node(n)


def main(name: str = "ddpm", backend: str = "auto") -> None:
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    module, loss, x = MODELS[name]()
    module, x = module.cuda(), x.cuda()
    svi = CompiledSVI(module.model, module.guide, pyro.optim.Adam({"lr": 1e-3}), loss,
                      backend=backend)  # fmt: skip
    for _ in range(6):  # plain step, recording, structure re-checks
        svi.step(x)
    print(f"{name} [{backend}]: compiled {svi.compiled}, fallback {svi.fallback_reason}")
    torch.cuda.synchronize()
    for prog in svi._programs.values():
        with torch.no_grad():
            _SyncingNodes(prog.gm).run(*svi._example_inputs(prog, [x]))
    torch.cuda.set_sync_debug_mode("error")
    try:  # the first synchronizing call of a whole step, with its Python stack
        svi.step(x)
    except RuntimeError:
        print("step syncs at:\n" + traceback.format_exc(limit=-14))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    print("done")


if __name__ == "__main__":
    main(*sys.argv[1:])
