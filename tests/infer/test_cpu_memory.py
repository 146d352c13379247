"""Freed CPU memory kept for reuse instead of being handed back to the operating system.

The glibc setting is process-wide and cannot be undone, so each case runs in a fresh
interpreter. What is checked is the mechanism, which is deterministic: after 200 MB of
heap blocks are freed, glibc's releasable top of the heap (``mallinfo2().keepcost``) is
trimmed by default (its dynamic trim threshold never exceeds 64 MiB) and kept once
:func:`~pyro_gen.infer.cpu_memory.retain_freed_cpu_memory` has run. The page faults this
saves are measured by ``benchmarks/step_time.py``, not here.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

_WORKLOAD = """
import ctypes, sys
from pyro_gen.infer.cpu_memory import retain_freed_cpu_memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
libc.mallinfo2.restype = MallInfo2
took = retain_freed_cpu_memory() if sys.argv[1] == "retain" else None
blocks = [libc.malloc(1 << 20) for _ in range(200)]  # 1 MiB each: below any mmap threshold
for block in reversed(blocks):
    libc.free(block)
print(took, libc.mallinfo2().keepcost)
"""


def _keepcost(mode: str, **env: str) -> tuple[str, int]:
    out = subprocess.run(
        [sys.executable, "-c", _WORKLOAD, mode],
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
