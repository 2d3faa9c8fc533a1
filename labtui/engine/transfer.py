"""The link: every byte that crosses between host and accelerator goes through here.

One copy per unit (a block's weights are packed in one flat buffer, so a move is a
single DMA, as fast offloaders do) or per KV tensor. On ``sim`` a copy is a real
``copy_`` into a separate allocation, then paced: the link is held until
``latency + bytes / bandwidth`` has passed, one copy at a time per direction
(PCIe is full duplex). On ``cuda`` copies are ``non_blocking`` from pinned memory;
asynchronous ones (prefetch) run on a side stream and the consumer waits on an
event, so prefetch overlaps compute the way CUDA streams overlap copies and kernels.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from labtui.engine.devices import Device

H2D = "h2d"
D2H = "d2h"
_SPIN_S = 150e-6


@dataclass
class Moved:
    tensor: torch.Tensor
    nbytes: int
    seconds: float

    @property
    def gbps(self) -> float:
        return self.nbytes / self.seconds / 1e9 if self.seconds > 0 else 0.0


class Pending:
    """A copy in flight; ``wait()`` returns the moved tensor (ready to use)."""

    def __init__(self, future: Future | None = None, moved: Moved | None = None, event=None):
        self._future = future
        self._moved = moved
        self._event = event

    def wait(self) -> Moved:
        if self._future is not None:
            return self._future.result()
        assert self._moved is not None
        if self._event is not None:  # cuda: order the compute stream after the copy
            torch.cuda.current_stream().wait_event(self._event)
        return self._moved

    def done(self) -> bool:
        if self._future is not None:
            return self._future.done()
        return self._event is None or self._event.query()


def _engine_copy(dst: torch.Tensor, src: torch.Tensor) -> None:
    """The simulated copy engine: one single-threaded memcpy, as one DMA engine.

    torch's ``copy_`` would start an OpenMP team on the link's thread and fight the
    compute threads for the cores; numpy's copy is single-threaded and releases
    the GIL, so it overlaps compute the way a GPU's copy engine does.
    """
    try:
        np.copyto(dst.numpy(), src.numpy(), casting="no")
    except (TypeError, RuntimeError):  # dtypes numpy lacks (bfloat16): torch it is
        dst.copy_(src)


class Link:
    def __init__(self, device: Device):
        self.device = device
        self._locks = {H2D: threading.Lock(), D2H: threading.Lock()}
        self._pool: ThreadPoolExecutor | None = None
        self._side_stream = None
        self.bytes_moved = {H2D: 0, D2H: 0}
        self.seconds_busy = {H2D: 0.0, D2H: 0.0}

    # -- synchronous ---------------------------------------------------------
    def copy(self, src: torch.Tensor, direction: str, out: torch.Tensor | None = None) -> Moved:
        """Copy ``src`` across the link into ``out`` (or a new tensor); blocks until it
        has arrived."""
        dev = self.device
        nbytes = src.numel() * src.element_size()
        with self._locks[direction]:
            t0 = time.perf_counter()
            if dev.simulated:
                dst = torch.empty_like(src) if out is None else out
                _engine_copy(dst, src)
                self._pace(t0, nbytes)
            else:
                dst = self._alloc_like(src, direction) if out is None else out
                dst.copy_(src, non_blocking=True)
                torch.cuda.current_stream(dev.accel).synchronize()
            dt = time.perf_counter() - t0
            self.bytes_moved[direction] += nbytes
            self.seconds_busy[direction] += dt
        return Moved(dst, nbytes, dt)

    # -- asynchronous (prefetch) -------------------------------------------------
    def copy_async(self, src: torch.Tensor, direction: str = H2D, out: torch.Tensor | None = None) -> Pending:
        dev = self.device
        if dev.simulated:
            if self._pool is None:
                # One worker: a real link moves one prefetch at a time; the worker
                # sleeps while "on the wire", so it overlaps the compute thread.
                self._pool = ThreadPoolExecutor(1, thread_name_prefix="labtui-link")
            return Pending(future=self._pool.submit(self.copy, src, direction, out))
        if self._side_stream is None:
            self._side_stream = torch.cuda.Stream(dev.accel)
        nbytes = src.numel() * src.element_size()
        t0 = time.perf_counter()
        self._side_stream.wait_stream(torch.cuda.current_stream(dev.accel))
        with torch.cuda.stream(self._side_stream):
            dst = self._alloc_like(src, direction) if out is None else out
            dst.copy_(src, non_blocking=True)
            ev = torch.cuda.Event()
            ev.record(self._side_stream)
        if out is None:
            # The caching allocator must not reuse dst's memory for the compute
            # stream before the copy is done.
            dst.record_stream(torch.cuda.current_stream(dev.accel))
        self.bytes_moved[direction] += nbytes
        return Pending(moved=Moved(dst, nbytes, time.perf_counter() - t0), event=ev)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    # -- helpers ----------------------------------------------------------------
    def _alloc_like(self, src: torch.Tensor, direction: str) -> torch.Tensor:
        if direction == H2D:
            return torch.empty(src.shape, dtype=src.dtype, device=self.device.accel)
        if src.dtype == torch.uint8 and src.dim() == 1:
            return self.device.host_empty(src.numel())  # pinned flat buffer
        return torch.empty(src.shape, dtype=src.dtype, pin_memory=not self.device.simulated)

    def _pace(self, t0: float, nbytes: int) -> None:
        link = self.device.link
        end = t0 + link.latency_s + nbytes / (link.gbps * 1e9)
        # time.sleep overshoots by ~0.1 ms here, 4% of a typical block copy: sleep
        # short of the deadline, then spin the rest on this (the link's) thread.
        remaining = end - time.perf_counter()
        if remaining > _SPIN_S:
            time.sleep(remaining - _SPIN_S)
        while time.perf_counter() < end:
            time.sleep(0)  # yields the GIL to the compute thread while spinning

    def move_activation(self, t: torch.Tensor, direction: str) -> torch.Tensor:
        """Small tensors that cross when execution changes side (host-mode blocks)."""
        if not self.device.simulated:
            target = self.device.accel if direction == H2D else self.device.host
            return t.to(target, non_blocking=False)
        return self.copy(t, direction).tensor
