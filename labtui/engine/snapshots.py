"""Building snapshots: the immutable views (types in snapshot.py) that the worker
publishes for frontends, at most every ``SNAPSHOT_PERIOD_S`` unless forced, plus
the per-model residency history. Mixed into ``Engine``; runs on the worker thread.
"""

from __future__ import annotations

import time

from labtui.engine.hosted import STREAM
from labtui.engine.snapshot import (
    CELL_RESIDENT,
    DeviceSnapshot,
    EngineSnapshot,
    Ledger,
    ModelSnapshot,
    WorkloadSnapshot,
)
from labtui.engine.state import ModelState

SNAPSHOT_PERIOD_S = 0.1  # 10 Hz: the lab polls at 4+ Hz
HISTORY_PERIOD_S = 0.25


class SnapshotBuilder:
    """Snapshot publishing and residency records."""

    def _record_residency(self, ms: ModelState) -> None:
        hm = ms.hm
        entry = {"t": round(self.now(), 4), "residency": round(hm.residency, 4), "resident_layers": len(hm.resident_set()), "mode": hm.mode}
        ms.residency_history.append(entry)
        self._emit("residency", model=ms.id, residency=entry["residency"], resident_layers=sorted(hm.resident_set()), mode=hm.mode)

    def _publish_moving(self) -> None:
        self._publish(force=True)

    def _publish(self, force: bool = False) -> None:
        now = time.perf_counter()
        if not force and now - self._last_pub < SNAPSHOT_PERIOD_S:
            return
        self._last_pub = now
        if now - self._last_hist >= HISTORY_PERIOD_S:
            self._last_hist = now
            for ms in list(self._models.values()):
                ms.metrics.history.append(ms.metrics.served_tok_s(now) or 0.0)
        self._snapshot = self._build_snapshot()

    def _build_snapshot(self) -> EngineSnapshot:
        now = time.perf_counter()
        probe = self.device.probe()
        dev = self.device
        d = DeviceSnapshot(
            kind=dev.kind, name=dev.name, simulated=dev.simulated, budget_bytes=dev.budget_bytes,
            used_bytes=dev.used if dev.simulated else probe.used_bytes, total_bytes=probe.total_bytes,
            link=dev.link.label, link_gbps=dev.link.gbps, link_latency_us=dev.link.latency_s * 1e6,
            host_slowdown=dev.host_slowdown, allocator_allocated=probe.allocator_allocated,
            allocator_reserved=probe.allocator_reserved, process_rss=probe.process_rss,
            host_used=probe.host_used, host_total=probe.host_total, reserved_bytes=dev.reserved,
        )
        models = []
        for ms in list(self._models.values()):
            hm = ms.hm
            m = ms.metrics
            rows = list(ms.batch.rows) if ms.batch else []
            if ms.last_ids is not None:  # a request finished since the last publish
                if hm is not None and hm.tokenizer is not None:
                    from labtui.models.text import display_text  # no broken UTF-8 at the ends

                    ms.last_text = display_text(hm.tokenizer, ms.last_ids)
                ms.last_ids = None
            pct = m.percentiles()
            served, decode, gbps = m.rates(now)
            pin = self._pin_of(ms.id)
            cells = hm.layer_cells() if hm else ""
            models.append(
                ModelSnapshot(
                    id=ms.id, source=ms.source, family=hm.family if hm else "?", params=hm.params if hm else 0,
                    n_layers=hm.n_layers if hm else 0, state=ms.state, mode=hm.mode if hm else STREAM,
                    prefetch=hm.prefetch if hm else True, priority=ms.priority, max_batch=ms.max_batch,
                    # residency as the cells show it: 0 while preempted (the placement,
                    # restored on resume, is in the residency events)
                    residency=cells.count(CELL_RESIDENT) / len(cells) if cells else 0.0, layer_cells=cells,
                    ledger=hm.ledger() if hm else _EMPTY_LEDGER, queued=len(ms.queue), running=len(rows),
                    completed=m.completed, cancelled=m.cancelled, tokens_generated=m.tokens,
                    # a preempted model is not decoding: no decode rate ("-"); its served
                    # rate falls with the wall time it loses
                    served_tok_s=served,
                    decode_tok_s=None if ms.state == "preempted" else decode,
                    served_tok_s_history=tuple(m.history),
                    ttft_p50=pct[0], ttft_p95=pct[1], tpot_p50=pct[2], tpot_p95=pct[3],
                    achieved_gbps=0.0 if ms.state == "preempted" else gbps,
                    bytes_per_token=m.bytes_per_token,
                    last_text=ms.last_text, last_preemption=ms.last_preemption,
                    decode_tokens=m.decode_tokens, decode_s=m.decode_s,
                    waiting_reason=ms.waiting_reason, reserved_bytes=hm._hold if hm else 0,
                    profile=hm.pacing.profile if hm and hm.pacing else None,
                    dilation=hm.pacing.dilation if hm and hm.pacing else None,
                    pin=pin[0], min_residency=pin[1], plan=self._plan_of(ms.id),
                )
            )
        wls = tuple(_workload_snapshot(w) for w in list(self._workloads.values()))
        self._snap_seq += 1
        return EngineSnapshot(
            t=self.now(), seq=self._snap_seq, device=d, models=tuple(models), workloads=wls,
            policy=self.policy.name, busy=self._busy, events_total=self._seq, note=self._note,
            errors=tuple(self._errors),
        )


_EMPTY_LEDGER = Ledger()


def _workload_snapshot(w) -> WorkloadSnapshot:
    """A workload's view, rebuilt only when its counts changed (a submit or a finish):
    most publishes see the same counts as the last one."""
    key = (w.submitted, w.completed, w.cancelled, w.done)
    cached = w.snap_cache
    if cached is None or cached[0] != key:
        cached = w.snap_cache = (key, WorkloadSnapshot(w.id, w.model, w.cmd.kind, *key[:3], w.total, w.done))
    return cached[1]
