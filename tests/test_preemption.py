"""Preemption: paused at any point with any KV/weights policy, with another model
running in between, a greedy generation continues with exactly the tokens of the
uninterrupted run; the four phases are timed and the pause shows in token times."""

from __future__ import annotations

import time

import pytest

from labtui.engine import Engine
from labtui.errors import LabError

PROMPT = "Preemption pauses a model to free the accelerator for another"


def _wait_tokens(req, n):
    while len(req.out_ids) < n and not req.done.is_set():
        time.sleep(0.0005)
    assert not req.done.is_set(), "finished before the pause point"


@pytest.fixture(scope="module")
def eng():
    # Slow-ish link so steps are long enough to pause between them reliably.
    e = Engine(device="sim", memory_gib=2, link=4.0, host_slowdown=1.0)
    e.load("zoo:llama-5m", id="a", residency=0.5, offload="stream")
    e.load("zoo:qwen3-10m", id="b", residency=1.0)
    yield e
    e.close()


@pytest.fixture(scope="module")
def baseline(eng):
    ids = eng._models["a"].hm.tokenizer(PROMPT)["input_ids"]
    return ids, eng.generate("a", ids, max_new_tokens=48).token_ids, eng.generate("b", ids, max_new_tokens=24).token_ids


@pytest.mark.parametrize("kv", ["keep", "swap", "drop"])
@pytest.mark.parametrize("weights", ["host", "disk"])
@pytest.mark.parametrize("at", [1, 17])
def test_preempted_generation_matches_uninterrupted(eng, baseline, kv, weights, at):
    ids, want_a, want_b = baseline
    req = eng.submit("a", ids, max_new_tokens=48)
    _wait_tokens(req, at)
    rep = eng.preempt("a", kv=kv, weights=weights)
    assert rep.at_tokens >= at
    assert rep.freed_bytes > 0
    paused_at = len(req.out_ids)
    # another model runs while A is paused
    assert eng.generate("b", ids, max_new_tokens=24).token_ids == want_b
    time.sleep(0.05)
    assert len(req.out_ids) == paused_at, "a preempted model must not decode"
    eng.check_invariants()
    done = eng.resume("a")
    assert done.complete
    assert done.reload_bytes > 0 and done.reload_s > 0
    if kv == "swap":
        assert done.kv_out_bytes > 0 and done.kv_in_bytes == done.kv_out_bytes
    if kv == "drop":
        assert done.recompute_tokens == len(ids) + paused_at - 1
    assert req.done.wait(60)
    assert req.out_ids == want_a
    gaps = [b - a for a, b in zip(req.token_times, req.token_times[1:], strict=False)]
    assert max(gaps) >= done.paused_s * 0.9, "the pause must show in the token times"
    eng.check_invariants()


def test_preemption_refusals(eng):
    with pytest.raises(LabError, match="not preempted"):
        eng.resume("b")
    eng.preempt("b", kv="swap", weights="host")
    with pytest.raises(LabError, match="already preempted"):
        eng.preempt("b")
    with pytest.raises(LabError, match="resume it"):
        eng.set_residency("b", 0.5)
    # requests for a preempted model queue up and run after resume
    r = eng.submit("b", [5, 6, 7], max_new_tokens=4)
    deadline = time.time() + 10
    while eng.snapshot().model("b").queued != 1 and time.time() < deadline:
        time.sleep(0.01)
    assert eng.snapshot().model("b").queued == 1
    time.sleep(0.1)
    assert not r.done.is_set()
    eng.resume("b")
    assert r.done.wait(30) and len(r.out_ids) == 4
    refused = [e for e in eng.events_since(0) if e.kind == "refused"]
    assert len(refused) >= 3


def test_disk_preemption_really_releases_and_rereads(eng, baseline):
    ids, want_a, _ = baseline
    hm = eng._models["a"].hm
    before = eng.snapshot().model("a").ledger
    eng.preempt("a", kv="swap", weights="disk")
    led = eng.snapshot().model("a").ledger
    assert led.accel_weights == 0 and led.host_weights < before.host_weights // 10
    assert all(u.host_buf is None for u in hm.blocks)
    rep = eng.resume("a")
    assert rep.reload_bytes == before.accel_weights
    assert eng.generate("a", ids, max_new_tokens=48).token_ids == want_a
