"""Keeps XLA:CPU's per-step scratch memory mapped between steps (glibc malloc settings).

XLA:CPU allocates one scratch ("preallocated temp") buffer per executable run, about
1 GB for the S/8 train step at batch 16, and frees it at the end. glibc serves an
allocation that large with a fresh mmap (always so from the worker threads' arenas,
whose heaps are capped at 64 MB), and frees it with munmap, so every step page-faults
the whole buffer in again: 250k faults, ~0.45 s of kernel time per 1.1 s step on the
2-core machine in benchmarks/vs_reference.py. One arena, no mmap for large blocks and
a high trim threshold make glibc hand the same pages back step after step: the step
drops to ~0.9 s with no faults. The price is that freed memory stays in the process
(resident size stays at its peak, which the step reaches every time anyway).

Only for computations on the CPU backend, and only where the C library is glibc. It
must run before JAX creates its CPU client (its threads pick their arenas at their
first allocation); console.quiet_start() calls it. PIXNERD_KEEP_FREED_MEMORY=0 turns it
off.
"""

import ctypes
import os
import platform

ENV = "PIXNERD_KEEP_FREED_MEMORY"
# glibc's mallopt parameter numbers (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
# mallopt takes an int: the largest trim threshold it can set (2 GiB).
_TRIM_THRESHOLD = 2**31 - 1

_applied = False


def keep_freed_memory() -> bool:
  """Applies the settings once; True if they are in effect (now or from before)."""
  global _applied
  if _applied:
    return True
  if os.environ.get(ENV, "1") == "0" or platform.system() != "Linux":
    return False
  if platform.libc_ver()[0] != "glibc":
    return False
  try:
    libc = ctypes.CDLL(None)
    mallopt = libc.mallopt
  except (OSError, AttributeError):
    return False
  mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
  ok = all(mallopt(param, value) == 1 for param, value in (
      (_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)))
  _applied = ok
  return ok


def release_free_memory() -> bool:
  """Returns the heap's free pages to the system once (glibc malloc_trim(0)).

  With the settings above nothing freed is ever given back, so the resident size stays
  at the process's high-water mark, which XLA's compile sets, well above what a step
  needs. Called once after the first step, it drops that; the step's own scratch is
  faulted in again on the next step and then stays. True if it ran.
  """
  if not _applied:
    return False
  try:
    trim = ctypes.CDLL(None).malloc_trim
  except (OSError, AttributeError):
    return False
  trim.argtypes, trim.restype = (ctypes.c_size_t,), ctypes.c_int
  trim(0)
  return True


def for_cpu_backend(platforms: str | None) -> bool:
  """keep_freed_memory() when `platforms` (JAX's comma-separated platform list, or None
  for JAX's default choice) puts the CPU first; JAX's default choice counts as CPU only
  when no TPU or GPU is there (the caller knows; see console.quiet_start)."""
  if not platforms or platforms.split(",")[0].strip() != "cpu":
    return False
  return keep_freed_memory()
