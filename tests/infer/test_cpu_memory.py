"""Freed CPU memory kept for reuse instead of being handed back to the operating system.

The glibc setting is process-wide and cannot be undone, so each case runs in a fresh
interpreter. That interpreter loads ``pyro_gen/infer/cpu_memory.py`` by its path: the
module imports only the standard library, and importing the package (torch, pyro) cost
each case seconds of start-up for nothing the check reads. What is checked is the
mechanism, which is deterministic: after 200 MB of heap blocks are freed, glibc's
releasable top of the heap (``mallinfo2().keepcost``) is trimmed by default (its dynamic
trim threshold never exceeds 64 MiB) and kept once
:func:`~pyro_gen.infer.cpu_memory.retain_freed_cpu_memory` has run. The page faults this
saves are measured by ``benchmarks/step_time.py``, not here.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import pyro_gen.infer.cpu_memory

_MODULE = pyro_gen.infer.cpu_memory.__file__

_WORKLOAD = """
import ctypes, importlib.util, sys
spec = importlib.util.spec_from_file_location("cpu_memory", sys.argv[2])
cpu_memory = importlib.util.module_from_spec(spec)
spec.loader.exec_module(cpu_memory)
retain_freed_cpu_memory = cpu_memory.retain_freed_cpu_memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
libc.mallinfo2.restype = MallInfo2
took = retain_freed_cpu_memory() if sys.argv[1] == "retain" else None
# A freed 2 MiB mapping raises glibc's dynamic mmap threshold past 1 MiB (as in any process
# that has freed a large buffer, one that imported torch say): the blocks below then come
# from the heap in both cases, so the default case checks trimming, not munmap. The list is
# made first so that no allocation of its own lands between the blocks and splits the top.
libc.free(libc.malloc(2 << 20))
blocks = [0] * 200
for i in range(200):
    blocks[i] = libc.malloc(1 << 20)  # 1 MiB each: below the mmap threshold
for block in reversed(blocks):
    libc.free(block)
print(took, libc.mallinfo2().keepcost)
"""


def _keepcost(mode: str, **env: str) -> tuple[str, int]:
    out = subprocess.run(
        [sys.executable, "-c", _WORKLOAD, mode, _MODULE],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
    )
    if out.returncode != 0:
        pytest.skip(f"no glibc mallinfo2 here: {out.stderr.strip().splitlines()[-1]}")
    took, keep = out.stdout.split()
    return took, int(keep)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc tunables")
def test_freed_heap_is_kept_rather_than_returned():
    took, kept = _keepcost("retain")
    if took != "True":
        pytest.skip("not glibc: the setting is a documented no-op")
    _, default = _keepcost("default")
    assert default < 64 << 20  # trimmed back to the OS
    assert kept >= 200 << 20  # all 200 MiB kept for the next allocations


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc tunables")
def test_the_environment_can_keep_glibc_defaults():
    took, kept = _keepcost("retain", PYRO_GEN_RETAIN_CPU_MEMORY="0")
    assert took == "False" and kept < 64 << 20


def test_repeated_calls_give_the_first_answer():
    from pyro_gen.infer.cpu_memory import retain_freed_cpu_memory

    assert retain_freed_cpu_memory() is retain_freed_cpu_memory()
