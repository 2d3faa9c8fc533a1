"""Preemption and resume, in the study's four phases.

preempt: ``kv_out`` (KV cache: keep on the accelerator | swap to the host | drop),
then ``release`` (weights: copied to host RAM | freed, to be read from disk).
resume: ``reload`` (weights back to the accelerator, from host RAM or the
checkpoint files), then ``kv_in`` (swapped KV copied back) and, for ``drop``,
``recompute`` (prefill of prompt + generated tokens). Each phase is timed with
the device synchronised, and its bytes counted.
"""

from __future__ import annotations

import time
from dataclasses import replace

from labtui.engine.decode import Batch
from labtui.engine.hosted import HostedModel
from labtui.engine.placement import HOST, RESIDENT
from labtui.engine.snapshot import PhaseReport
from labtui.errors import LabError


def check_preempt(hm: HostedModel, weights: str) -> None:
    if weights == "disk":
        why = hm.disk_reload_supported()
        if why:
            raise LabError(f"cannot preempt {hm.id} with weights=disk: {why}; use weights=host")


def preempt(hm: HostedModel, batch: Batch, kv: str, weights: str) -> PhaseReport:
    check_preempt(hm, weights)
    before = hm.ledger().accel_total
    at_tokens = sum(len(r.out_ids) for r in batch.rows)
    for r in batch.rows:
        r.state = "paused"
    hm.drain_prefetch()
    hm.device.synchronize()
    t0 = time.perf_counter()
    kv_b = 0
    if kv == "swap":
        kv_b, _ = hm.swap_kv(to_host=True, reason="preempt")
    elif kv == "drop":
        kv_b = batch.drop_kv()
    hm.device.synchronize()
    t1 = time.perf_counter()
    try:
        rel_b, _ = hm.release_weights(weights, reason="preempt")
    except BaseException:
        # release_weights rolled the weights back; bring a swapped KV back too, so
        # the model serves on as if the preemption had never started
        if kv == "swap":
            hm.swap_kv(to_host=False, reason="rollback")
        for r in batch.rows:
            r.state = "running"
        raise
    t2 = time.perf_counter()
    hm.sync_reservation()
    return PhaseReport(
        model=hm.id,
        kv=kv,
        weights=weights,
        kv_out_s=t1 - t0,
        kv_out_bytes=kv_b,
        release_s=t2 - t1,
        release_bytes=rel_b,
        freed_bytes=before - hm.ledger().accel_total,
        at_tokens=at_tokens,
    )


def resume_cost(hm: HostedModel, report: PhaseReport, resident: set[int] | None = None, mode: str | None = None) -> int:
    """Accelerator bytes a resume will take: the placement it had (or ``resident`` in
    ``mode``: a resume to another placement), its KV back (kept KV never left; swapped
    KV comes back; dropped KV is recomputed) and the admitted requests' reservation,
    released while preempted (reservation.py)."""
    if resident is None:
        resident = hm.resident_set()
    return hm.claim_bytes(resident, mode or hm.mode) - hm.ledger().accel_total


def _retarget(hm: HostedModel, resident: set[int], mode: str) -> list[tuple[int, bool]]:
    """While the weights are off the accelerator: return to ``resident``/``mode``
    instead of the placement it was preempted from. Returns the KV moves the new
    placement needs, (block, to_accel): each block's KV lives where it executes."""
    was_host = [hm.kv_on_host(i) or hm._kv_swapped for i in range(hm.n_layers)]
    hm.placement = [RESIDENT if i in resident else mode for i in range(hm.n_layers)]
    hm.mode = mode
    hm._kv_swapped = False
    return [(i, hm.placement[i] != HOST) for i in range(hm.n_layers) if was_host[i] != (hm.placement[i] == HOST)]


def resume(hm: HostedModel, batch: Batch, report: PhaseReport, t_preempt: float,
           resident: set[int] | None = None, mode: str | None = None) -> PhaseReport:
    """Weights back (reload), KV back (kv_in), dropped KV recomputed; to the placement
    it had, or to ``resident``/``mode`` (a pipelined resume's first placement)."""
    hm.device.check_fits(resume_cost(hm, report, resident, mode), f"resuming {hm.id}")
    hm.device.synchronize()
    t0 = time.perf_counter()
    if hm.weights_released and report.weights == "disk":
        hm._read_checkpoint()  # first: a damaged file leaves the model preempted, unchanged
        hm.weights_released = False
    kv_moves = _retarget(hm, resident, mode or hm.mode) if resident is not None else []
    rel_b, _ = hm.reload_weights(report.weights, reason="resume")
    hm.device.synchronize()
    t1 = time.perf_counter()
    kv_b = 0
    if report.kv == "swap" and hm._kv_swapped:
        kv_b, _ = hm.swap_kv(to_host=False, reason="resume")
    for i, to_accel in kv_moves:
        kv_b += hm._move_kv(i, to_accel=to_accel, reason="resume")[0]
    hm.device.synchronize()
    t2 = time.perf_counter()
    rec_tokens = batch.recompute() if batch.needs_recompute else 0
    hm.device.synchronize()
    t3 = time.perf_counter()
    paused = t3 - t_preempt
    for r in batch.rows:
        r.state = "running"
        r.paused_s += paused
    hm.sync_reservation()
    return replace(
        report,
        reload_s=t1 - t0,
        reload_bytes=rel_b,
        kv_in_s=t2 - t1,
        kv_in_bytes=kv_b,
        recompute_s=t3 - t2,
        recompute_tokens=rec_tokens,
        paused_s=paused,
        complete=True,
    )
