"""The link: virtual-time pacing per direction, copies into preallocated buffers, and
moves that fail part-way leaving every block consistent (the token oracle holds)."""

from __future__ import annotations

import time

import pytest
import torch

from labtui.engine import Engine
from labtui.engine import transfer as T
from labtui.engine.devices import LinkSpec, SimDevice, touch
from labtui.engine.transfer import D2H, H2D, Link

PROMPT = "The link between host and accelerator decides how fast tokens arrive"
MB = 10**6


def _link(gbps=1.0, latency=0.0, **kw) -> Link:
    return Link(SimDevice(2**30, LinkSpec("test", gbps, latency, **kw)))


def _bufs(n):
    return torch.ones(n, dtype=torch.uint8), touch(torch.empty(n, dtype=torch.uint8))


def test_one_copy_takes_latency_plus_bytes_over_bandwidth():
    link = _link(1.0, 0.002)
    src, dst = _bufs(20 * MB)
    t0 = time.perf_counter()
    m = link.copy(src, H2D, out=dst)
    wall = time.perf_counter() - t0
    assert m.tensor is dst and torch.equal(dst, src)
    assert 0.022 <= m.seconds < 0.022 * 1.5 and wall >= 0.022
    assert m.wait_s < 0.002


def test_back_to_back_copies_queue_in_one_direction_and_overlap_across():
    link = _link(1.0)
    (a, da), (b, db) = _bufs(20 * MB), _bufs(20 * MB)
    t0 = time.perf_counter()
    p1, p2 = link.copy_async(a, H2D, out=da), link.copy_async(b, H2D, out=db)
    _, m2 = p1.wait(), p2.wait()
    same = time.perf_counter() - t0
    assert same >= 0.040, "two 20 ms copies in one direction must take 2x"
    # the second copy starts on the link when the first finishes, and says how long it queued
    assert p2._slot.start == p1._slot.finish
    assert m2.wait_s == pytest.approx(p1._slot.finish - p2._slot.asked) and m2.wait_s > 0.005
    assert 0.019 <= m2.seconds < 0.040, "transfer time excludes the queueing"
    assert link.seconds_waited[H2D] >= m2.wait_s
    t0 = time.perf_counter()
    p1, p2 = link.copy_async(a, H2D, out=da), link.copy_async(b, D2H, out=db)
    _, m2 = p1.wait(), p2.wait()
    both = time.perf_counter() - t0
    assert p2._slot.start == p2._slot.asked and m2.wait_s == 0, "opposite directions are full duplex"
    assert both < 0.035


def test_directions_paced_separately_and_read_from_one_place():
    link = _link(1.0, h2d_gbps=2.0, d2h_gbps=0.5)
    assert link.pacing(H2D) == (2e9, 0.0) and link.pacing(D2H) == (0.5e9, 0.0)
    src, dst = _bufs(10 * MB)
    up = link.copy(src, H2D, out=dst).seconds
    down = link.copy(src, D2H, out=dst).seconds
    assert 0.005 <= up < 0.010 and 0.020 <= down < 0.030


@pytest.fixture
def eng():
    with Engine(device="sim", memory_gib=2, link=20.0, host_slowdown=1.0) as e:
        yield e


def _load(eng, residency=1.0, mode="stream"):
    m = eng.load("zoo:llama-5m", residency=residency, offload=mode)
    hm = eng._models[m].hm
    ids = hm.tokenizer(PROMPT)["input_ids"]
    return m, hm, ids


def test_moves_copy_into_preallocated_buffers(eng, monkeypatch):
    m, hm, ids = _load(eng)
    host_ptrs = {u.name: u.host_buf.data_ptr() for u in [hm.rest, *hm.blocks]}
    accel_ptrs = {b.accel_buf.data_ptr() for b in hm.blocks}
    dsts = []
    real = T._engine_copy
    monkeypatch.setattr(T, "_engine_copy", lambda d, s: (dsts.append(d.data_ptr()), real(d, s)))
    for _ in range(2):
        eng.set_residency(m, 0.0, mode="stream")
        eng.set_residency(m, 1.0, mode="stream")
    # every unit kept its host buffer; the accelerator side reused the pre-faulted ones
    assert host_ptrs == {u.name: u.host_buf.data_ptr() for u in [hm.rest, *hm.blocks]}
    assert {b.accel_buf.data_ptr() for b in hm.blocks} == accel_ptrs
    assert len(dsts) == 4 * hm.n_layers and set(dsts) <= set(host_ptrs.values()) | accel_ptrs
    moves = [e for e in eng.events_since(0) if e.kind == "layer_move" and e.data["reason"] == "residency"]
    assert moves and all("wait_s" in e.data and e.data["seconds"] > 0 for e in moves)
    eng.check_invariants()


def _fail_on(monkeypatch, obj, name, n, exc=RuntimeError("injected failure")):
    """Make ``obj.name`` raise on its ``n``-th call (1-based), then behave again."""
    real = getattr(obj, name)
    calls = {"n": 0}

    def wrapper(*a, **kw):
        calls["n"] += 1
        if calls["n"] == n:
            raise exc
        return real(*a, **kw)

    monkeypatch.setattr(obj, name, wrapper)
    return calls


@pytest.mark.parametrize("start,target,mode", [(1.0, 0.0, "stream"), (0.0, 1.0, "stream"), (1.0, 0.0, "host"), (0.0, 1.0, "host")])
def test_set_placement_failing_on_the_third_copy_stays_consistent(eng, monkeypatch, start, target, mode):
    m, hm, ids = _load(eng, start, mode)
    want = eng.generate(m, ids, max_new_tokens=16).token_ids  # an unmoved run
    calls = _fail_on(monkeypatch, eng.link, "copy", 3)
    with pytest.raises(Exception, match="injected"):
        eng.set_residency(m, target, mode=mode)
    assert calls["n"] >= 3
    eng.check_invariants()
    snap = eng.snapshot().model(m)
    assert "M" not in snap.layer_cells
    assert eng.generate(m, ids, max_new_tokens=16).token_ids == want
    eng.check_invariants()
    monkeypatch.undo()
    eng.set_residency(m, target, mode=mode)  # the retry completes the move
    eng.check_invariants()
    assert hm.residency == target
    assert eng.generate(m, ids, max_new_tokens=16).token_ids == want


def test_out_of_memory_on_the_third_block_load(eng, monkeypatch):
    m, hm, ids = _load(eng, 0.0, "stream")
    want = eng.generate(m, ids, max_new_tokens=16).token_ids
    oom = torch.OutOfMemoryError("CUDA out of memory (injected)")
    _fail_on(monkeypatch, eng.device, "accel_empty", 3, oom)
    with pytest.raises(Exception, match="out of memory"):
        eng.set_residency(m, 1.0, mode="stream")
    eng.check_invariants()
    assert 0 < hm.residency < 1
    assert eng.generate(m, ids, max_new_tokens=16).token_ids == want
    eng.check_invariants()


def test_release_failing_part_way_rolls_back_and_serves(eng, monkeypatch):
    m, hm, ids = _load(eng, 1.0)
    want = eng.generate(m, ids, max_new_tokens=16).token_ids
    req = eng.submit(m, ids, max_new_tokens=16)
    _fail_on(monkeypatch, eng.link, "copy", 3)
    with pytest.raises(Exception, match="injected"):
        eng.preempt(m, kv="swap", weights="host")
    monkeypatch.undo()
    eng.check_invariants()
    req.done.wait(60)
    assert eng.fresh_snapshot().model(m).state in ("idle", "serving")
    assert eng.generate(m, ids, max_new_tokens=16).token_ids == want
    eng.check_invariants()


@pytest.mark.parametrize("weights", ["host", "disk"])
def test_reload_failing_part_way_stays_preempted_then_resumes(eng, monkeypatch, weights):
    m, hm, ids = _load(eng, 1.0)
    want = eng.generate(m, ids, max_new_tokens=16).token_ids
    eng.preempt(m, kv="keep", weights=weights)
    _fail_on(monkeypatch, eng.link, "copy", 3)
    with pytest.raises(Exception, match="injected"):
        eng.resume(m)
    monkeypatch.undo()
    eng.check_invariants()
    assert eng.fresh_snapshot().model(m).state == "preempted"
    assert 0 < hm.ledger().accel_weights < hm.weight_bytes()  # two units came back
    eng.resume(m)
    eng.check_invariants()
    assert eng.generate(m, ids, max_new_tokens=16).token_ids == want
