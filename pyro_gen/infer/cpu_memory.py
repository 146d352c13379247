"""Keeping freed CPU memory in the process for reuse, as PyTorch's CUDA allocator does on GPU.

A training step allocates and frees the same large temporaries (activations, gradients)
at every step. On the GPU, PyTorch's caching allocator keeps freed blocks for the next
step. On the CPU, PyTorch calls the C library's ``malloc``, and glibc hands large freed
blocks back to the operating system (``munmap``, or trimming the top of the heap); the
next step then takes a page fault for every 4 KiB it touches again. For the 784-400-50
VAE at batch 1024 that was about 6,000 faults per step for the recorded ELBO program
(1,700 for hand-written eager PyTorch), some 10-15% of the step's time; with freed memory
kept, both take none.

:func:`retain_freed_cpu_memory` sets the two glibc tunables that control this, the same
ones as the ``MALLOC_TRIM_THRESHOLD_`` and ``MALLOC_MMAP_THRESHOLD_`` environment
variables. The process then keeps, rather than returns, memory up to its own peak use:
the trade every caching allocator makes. It affects the whole process (every allocation
after the call) and cannot be undone; elsewhere than glibc it does nothing. To keep
glibc's defaults, set ``PYRO_GEN_RETAIN_CPU_MEMORY=0`` in the environment (for ``fit``) or
pass ``CompiledSVI(..., retain_cpu_memory=False)``.

References:
    glibc manual, "Memory Allocation Tunables" (``glibc.malloc.trim_threshold``,
    ``glibc.malloc.mmap_threshold``) and mallopt(3).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys

logger = logging.getLogger("pyro_gen")

__all__ = ["retain_freed_cpu_memory"]

_M_TRIM_THRESHOLD = -1  # from glibc's <malloc.h>
_M_MMAP_THRESHOLD = -3
# glibc's ceiling for the mmap threshold on 64-bit systems (DEFAULT_MMAP_THRESHOLD_MAX):
# blocks up to 32 MiB come from the heap and are reused; larger ones are still mapped.
_MMAP_THRESHOLD = 32 << 20
_TRIM_THRESHOLD = 1 << 30

_done: bool | None = None


def retain_freed_cpu_memory() -> bool:
    """Asks glibc's ``malloc`` to keep freed memory for reuse instead of returning it.

    Called by :class:`~pyro_gen.infer.compiled.CompiledSVI` before it records a program
    on the CPU. Safe to call many times: the first call decides, later ones return its
    answer.

    Returns:
        True when the setting took effect (Linux with glibc), False where it does
        nothing (other C libraries, other systems, or ``PYRO_GEN_RETAIN_CPU_MEMORY=0``).

    Example:
        >>> retain_freed_cpu_memory() in (True, False)
        True
    """
    global _done
    if _done is None:
        opted_out = os.environ.get("PYRO_GEN_RETAIN_CPU_MEMORY", "1").strip() == "0"
        _done = False if opted_out else _set_glibc_thresholds()
        if _done:
            logger.info(
                "pyro_gen: glibc malloc keeps freed memory up to 32 MiB blocks for reuse "
                "(no page faults on each step's temporaries)"
            )
    return _done


def _set_glibc_thresholds() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mallopt returns 1 on success and 0 when glibc refuses the value.
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)
    )
