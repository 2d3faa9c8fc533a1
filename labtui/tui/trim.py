"""Hand the heap's free pages back to the OS while the lab stays open.

Why: torch's CPU tensors (KV caches that grow by a token per step, copies of
layers moving between the simulated accelerator and host memory) are allocated
with malloc; glibc keeps what they free in its arenas, so the process's RSS
creeps up with uptime although nothing the lab or the engine keeps grows
(engine/limits.py; tracemalloc over a soak: Python's own heap flat). Measured in
a 3-minute soak: RSS swung 615-709 MB between 30 s samples, and ``malloc_trim(0)``
brought each sample back to 615-687 MB in 0.1-9 ms. So a thread calls it every
``TRIM_PERIOD_S``, off the UI thread and off the engine's. A no-op where libc
has no malloc_trim (musl, macOS, Windows).

``tune_malloc`` runs once, before the engine's threads start: glibc's mmap
threshold is dynamic (it rises up to 32 MiB each time a large block is freed), so
after the first layer copy every multi-MB tensor (a block's weights moving
between host and accelerator memory, KV regrowth) is carved out of the heap, where
blocks freed out of order leave holes that malloc_trim cannot hand back. A fixed
threshold keeps those on their own mappings, returned to the OS when freed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading

TRIM_PERIOD_S = 10.0
MMAP_THRESHOLD = 4 << 20  # bytes: a block's weights and large KV buffers; not per-step activations
_M_MMAP_THRESHOLD = -3  # glibc malloc.h


def _libc_fn(name: str, argtypes: list, restype=ctypes.c_int):
    """A libc function by name, or None where this libc has none (musl, macOS, Windows)."""
    try:
        fn = getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), name)
    except (OSError, AttributeError):
        return None
    fn.argtypes = argtypes
    fn.restype = restype
    return fn


def tune_malloc(threshold: int = MMAP_THRESHOLD) -> bool:
    """Fix glibc's mmap threshold (see the module docstring); False where libc has no mallopt."""
    fn = _libc_fn("mallopt", [ctypes.c_int, ctypes.c_int])
    return fn is not None and bool(fn(_M_MMAP_THRESHOLD, int(threshold)))


class _MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


def heap_mb() -> dict | None:
    """glibc's view of the heap, in MB: ``in_use`` (malloc'd and not freed, what
    something still holds), ``free`` (freed but kept in the arenas: fragmentation),
    ``mmapped`` (blocks above the mmap threshold, each its own mapping). None where
    libc has no mallinfo2 (glibc before 2.33, musl, macOS, Windows)."""
    fn = _libc_fn("mallinfo2", [], _MallInfo2)
    if fn is None:
        return None
    mi = fn()
    return {"in_use": round(mi.uordblks / 2**20, 1), "free": round(mi.fordblks / 2**20, 1),
            "mmapped": round(mi.hblkhd / 2**20, 1)}


def _malloc_trim():
    return _libc_fn("malloc_trim", [ctypes.c_size_t])


class HeapTrimmer:
    """A daemon thread calling malloc_trim(0) every ``period`` seconds until stop()."""

    def __init__(self, period: float = TRIM_PERIOD_S) -> None:
        self.period = period
        self.trims = 0
        self._fn = _malloc_trim()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="labtui-heap-trim", daemon=True)

    @property
    def available(self) -> bool:
        return self._fn is not None

    def start(self) -> HeapTrimmer:
        if self._fn is not None:
            self._thread.start()
        return self

    def trim(self) -> None:
        if self._fn is not None:
            self._fn(0)
            self.trims += 1

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            self.trim()

    def stop(self) -> None:
        self._stop.set()
