"""Host memory (ground floor): keep glibc's freed tensor memory in the process between steps.

glibc's malloc serves every allocation above its mmap threshold (at most 32 MiB) with a fresh
``mmap`` and returns it to the kernel on ``free``. A batched learned-sim step at batch 256
allocates and frees activations of 100-300 MiB per layer, so every step page-faults its
activations in again: on a 2-core AMD EPYC the kernel spent 10.7 s of 35 CPU seconds on it
in two world-model steps, and the env step ran at 15 steps/s. With mmap off and the heap kept
(``mallopt(M_MMAP_MAX, 0)``, ``M_TRIM_THRESHOLD`` high), freed blocks are reused: 0.01 s of
kernel time and 25 env steps/s (README "Learned simulator", *Host memory*). The price is a
resident size that stays at the process's peak, which a training job reaches anyway.

``tune()`` is called once by the ``drivegpt`` command (so every stage, and the DataLoader
workers it forks, run with it); ``DRIVEGPT_MALLOC=system`` keeps glibc's defaults. Elsewhere
(macOS, musl, Windows) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

M_TRIM_THRESHOLD = -1  # mallopt parameters (glibc's malloc.h)
M_MMAP_MAX = -4
TRIM_THRESHOLD = 2**31 - 1  # mallopt takes an int: 2 GiB of free heap top before any is returned

_state: dict = {}


def tune() -> dict:
    """Configure glibc's malloc for large, repeated tensor allocations (module docstring).
    Returns what was done: ``{"tuned": bool, "reason": str}``; idempotent."""
    if _state:
        return dict(_state)
    if os.environ.get("DRIVEGPT_MALLOC", "").lower() == "system":
        _state.update(tuned=False, reason="DRIVEGPT_MALLOC=system")
    elif platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        _state.update(tuned=False, reason=f"not glibc ({platform.system()} {platform.libc_ver()[0] or '?'})")
    else:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = all(libc.mallopt(p, v) == 1 for p, v in ((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, TRIM_THRESHOLD)))
        _state.update(tuned=ok, reason="mallopt" if ok else "mallopt refused a setting")
    return dict(_state)


__all__ = ["tune"]
