"""The link: every byte that crosses between host and accelerator goes through here.

One copy per unit (a block's weights are packed in one flat buffer, so a move is a
single DMA, as fast offloaders do) or per KV tensor, always into a destination that
exists before the copy is timed: units keep their host buffer for life and take
accelerator buffers from the device (pre-faulted on sim), KV moves allocate and
touch their destination first. Nothing is allocated and no page is faulted inside
a timed copy.

Memory: keeping every unit's host buffer for life means host RAM holds all the
weights, resident or not, as offloading runtimes do with their pinned staging
copies (pinning on cuda is slow and must not happen per move). The ledger keeps
both meanings apart: ``host_weights`` is weights whose live copy is on the host
(what the layer map shows as offloaded), ``host_staging`` the host copies held for
resident units. A move to the host still copies the weights back over the link
into that buffer: the lab measures moves, and the buffer is only trusted once a
copy into it has arrived (so a failed copy never corrupts a live copy).

Pacing on ``sim`` runs in virtual time, per direction (PCIe is full duplex): a copy
asked for at ``now`` is scheduled at ``start = max(now, busy_until)`` and finishes
at ``start + latency + bytes / bandwidth``, which becomes the direction's new
``busy_until``. The real memcpy runs at once (on the caller's thread, or on the
link's copy thread for prefetch); the caller then sleeps until the finish time
(sleeping releases the GIL: nothing spins). ``Moved`` reports the transfer time
(``seconds``: from ``start`` until the caller saw the data, so a memcpy or a wake-up
slower than the link shows) and ``wait_s``, the time the copy queued behind
earlier copies in its direction. ``Link.pacing`` is the one place the link's
bandwidth and latency are read: from the device's LinkSpec, or from a model's
hardware-profile ``Pacing`` (time dilation, profiles.py) when its copies pass one;
``LinkView`` is a model's view of the shared link that passes its pacing (the
schedule stays shared: models still queue behind each other's copies).

On ``cuda`` copies are ``non_blocking`` from pinned memory; asynchronous ones
(prefetch) run on a side stream and the consumer waits on an event, so prefetch
overlaps compute the way CUDA streams overlap copies and kernels. The hardware
paces itself there: ``wait_s`` is 0 (queueing is inside the stream).
"""

from __future__ import annotations

import ctypes
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from labtui.engine.devices import Device, touch

H2D = "h2d"
D2H = "d2h"


@dataclass
class Moved:
    tensor: torch.Tensor
    nbytes: int
    seconds: float  # transfer time: the link's start of this copy until it arrived
    wait_s: float = 0.0  # time queued behind earlier copies in the same direction

    @property
    def gbps(self) -> float:
        return self.nbytes / self.seconds / 1e9 if self.seconds > 0 else 0.0


@dataclass
class _Slot:
    """A copy's place on the link's schedule (perf_counter seconds)."""

    asked: float
    start: float
    finish: float


class Pending:
    """A copy in flight; ``wait()`` returns the moved tensor (ready to use)."""

    def __init__(self, future: Future | None = None, moved: Moved | None = None, event=None,
                 link: Link | None = None, slot: _Slot | None = None, direction: str = H2D):
        self._future = future
        self._moved = moved
        self._event = event
        self._link, self._slot, self._direction = link, slot, direction

    def wait(self) -> Moved:
        if self._future is not None:
            if self._moved is None:
                dst, nbytes = self._future.result()  # the memcpy itself
                self._moved = self._link._arrive(dst, nbytes, self._slot, self._direction)
            return self._moved
        assert self._moved is not None
        if self._event is not None:  # cuda: order the compute stream after the copy
            torch.cuda.current_stream().wait_event(self._event)
        return self._moved

    def done(self) -> bool:
        if self._future is not None:
            return self._future.done() and time.perf_counter() >= self._slot.finish
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


_slack = threading.local()


def _fine_timer_slack() -> None:
    """Linux wakes a sleeping thread up to 50 us late by default (timer slack), 3% of
    a block's copy at 8 GB/s: ask for 1 us on each thread that waits for the link."""
    if getattr(_slack, "set", False):
        return
    _slack.set = True
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None).prctl(29, 1, 0, 0, 0)  # PR_SET_TIMERSLACK, 1 ns
        except (OSError, AttributeError):
            pass


def _sleep_until(t: float) -> float:
    _fine_timer_slack()
    while (left := t - time.perf_counter()) > 0:
        time.sleep(left)
    return time.perf_counter()


class Link:
    def __init__(self, device: Device):
        self.device = device
        self._sched = threading.Lock()  # held for arithmetic only, never over a copy
        self._busy_until = {H2D: 0.0, D2H: 0.0}
        self._pool: ThreadPoolExecutor | None = None
        self._side_stream = None
        self.bytes_moved = {H2D: 0, D2H: 0}
        self.seconds_busy = {H2D: 0.0, D2H: 0.0}
        self.seconds_waited = {H2D: 0.0, D2H: 0.0}

    # -- pacing ----------------------------------------------------------------------
    def pacing(self, direction: str, pacing=None) -> tuple[float, float]:
        """(bytes per second, latency per copy) for ``direction``: the one place the
        link's parameters are read. ``pacing`` (a profiles.Pacing) wins over the
        device's LinkSpec: a model under a hardware profile is paced in its own
        dilated clock."""
        if pacing is not None:
            gbps = pacing.h2d_gbps if direction == H2D else pacing.d2h_gbps
            return gbps * 1e9, pacing.copy_latency_s
        return self.device.link.pacing(direction)

    def _schedule(self, nbytes: int, direction: str, pacing=None) -> _Slot:
        bw, lat = self.pacing(direction, pacing)
        with self._sched:
            now = time.perf_counter()
            start = max(now, self._busy_until[direction])
            finish = start + lat + nbytes / bw
            self._busy_until[direction] = finish
        return _Slot(now, start, finish)

    def _arrive(self, dst: torch.Tensor, nbytes: int, slot: _Slot, direction: str) -> Moved:
        """Wait for the copy's finish time; account it."""
        end = _sleep_until(slot.finish)
        with self._sched:
            # a memcpy slower than the link holds the link until it is really done
            self._busy_until[direction] = max(self._busy_until[direction], end)
            self.bytes_moved[direction] += nbytes
            self.seconds_busy[direction] += end - slot.start
            self.seconds_waited[direction] += slot.start - slot.asked
        return Moved(dst, nbytes, end - slot.start, slot.start - slot.asked)

    def busy_until(self, direction: str) -> float:
        return self._busy_until[direction]

    # -- destinations -------------------------------------------------------------
    def empty_like(self, src: torch.Tensor, direction: str) -> torch.Tensor:
        """A destination for ``src`` on the other side, allocated and touched now,
        before any timed copy (KV moves and activations)."""
        if direction == H2D:
            if self.device.simulated:
                with torch.inference_mode(False):
                    return touch(torch.empty(src.shape, dtype=src.dtype))
            return torch.empty(src.shape, dtype=src.dtype, device=self.device.accel)
        if self.device.simulated:
            return touch(torch.empty(src.shape, dtype=src.dtype))
        return torch.empty(src.shape, dtype=src.dtype, pin_memory=True)

    # -- synchronous ---------------------------------------------------------
    def copy(self, src: torch.Tensor, direction: str, out: torch.Tensor | None = None, pacing=None) -> Moved:
        """Copy ``src`` across the link into ``out`` (allocated first if None); blocks
        until it has arrived."""
        dev = self.device
        dst = self.empty_like(src, direction) if out is None else out
        nbytes = src.numel() * src.element_size()
        if dev.simulated:
            slot = self._schedule(nbytes, direction, pacing)
            _engine_copy(dst, src)
            return self._arrive(dst, nbytes, slot, direction)
        t0 = time.perf_counter()
        dst.copy_(src, non_blocking=True)
        torch.cuda.current_stream(dev.accel).synchronize()
        dt = time.perf_counter() - t0
        self.bytes_moved[direction] += nbytes
        self.seconds_busy[direction] += dt
        return Moved(dst, nbytes, dt)

    # -- asynchronous (prefetch) -------------------------------------------------
    def copy_async(self, src: torch.Tensor, direction: str = H2D, out: torch.Tensor | None = None,
                   pacing=None) -> Pending:
        dev = self.device
        dst = self.empty_like(src, direction) if out is None else out
        nbytes = src.numel() * src.element_size()
        if dev.simulated:
            if self._pool is None:
                # One copy thread, as one copy engine: it only runs the memcpy (which
                # releases the GIL); the consumer waits for the finish time.
                self._pool = ThreadPoolExecutor(1, thread_name_prefix="labtui-link")
            slot = self._schedule(nbytes, direction, pacing)
            fut = self._pool.submit(_copied, dst, src, nbytes)
            return Pending(future=fut, link=self, slot=slot, direction=direction)
        if self._side_stream is None:
            self._side_stream = torch.cuda.Stream(dev.accel)
        t0 = time.perf_counter()
        self._side_stream.wait_stream(torch.cuda.current_stream(dev.accel))
        with torch.cuda.stream(self._side_stream):
            dst.copy_(src, non_blocking=True)
            ev = torch.cuda.Event()
            ev.record(self._side_stream)
        # The caching allocator must not reuse dst's memory for the compute stream
        # before the copy is done.
        dst.record_stream(torch.cuda.current_stream(dev.accel))
        self.bytes_moved[direction] += nbytes
        return Pending(moved=Moved(dst, nbytes, time.perf_counter() - t0), event=ev)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def move_activation(self, t: torch.Tensor, direction: str, pacing=None) -> torch.Tensor:
        """Small tensors that cross when execution changes side (host-mode blocks)."""
        if not self.device.simulated:
            target = self.device.accel if direction == H2D else self.device.host
            return t.to(target, non_blocking=False)
        return self.copy(t, direction, pacing=pacing).tensor

    def view(self, pacing) -> Link | LinkView:
        """This link as one model sees it: paced by ``pacing`` (None: the link itself)."""
        return self if pacing is None else LinkView(self, pacing)


class LinkView:
    """The shared link with one model's ``Pacing`` passed into every copy it makes;
    everything else (schedule, counters, destinations) is the shared link's."""

    def __init__(self, link: Link, pacing):
        self.base, self.pacing_of_model = link, pacing

    def copy(self, src, direction, out=None):
        return self.base.copy(src, direction, out=out, pacing=self.pacing_of_model)

    def copy_async(self, src, direction=H2D, out=None):
        return self.base.copy_async(src, direction, out=out, pacing=self.pacing_of_model)

    def move_activation(self, t, direction):
        return self.base.move_activation(t, direction, pacing=self.pacing_of_model)

    def pacing(self, direction, pacing=None):
        return self.base.pacing(direction, pacing or self.pacing_of_model)

    def view(self, pacing):
        return self.base.view(pacing)

    def __getattr__(self, name):  # empty_like, busy_until, counters, close
        return getattr(self.base, name)


def _copied(dst: torch.Tensor, src: torch.Tensor, nbytes: int) -> tuple[torch.Tensor, int]:
    _engine_copy(dst, src)
    return dst, nbytes
