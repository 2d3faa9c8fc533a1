"""Admission reserves memory, so the accelerator budget holds (reservation.py).

Each admitted request reserves its projected KV (prompt + max_new_tokens, from the
model config before anything was measured) and the step's workspace, across all
models; the reservation is released as requests finish. What does not fit waits,
visibly (``waiting_reason``, one ``admission_wait`` event), or is refused at submit
when it could never fit. Residency changes, prefetch, loads and resumes count the
reservations too, and the priority policy's make-room frees them.
"""

from __future__ import annotations

import functools
import threading
import time

import pytest
import torch

from labtui.engine import Engine
from labtui.errors import LabError

MiB = 1024**2
TIE = 1e-4  # batched (left-padded) rows may flip a token only where the logits tie


@functools.cache
def _hf(name: str):
    from transformers import AutoModelForCausalLM

    from labtui.models.zoo import path

    return AutoModelForCausalLM.from_pretrained(str(path(name)), dtype=torch.float32).eval()


def assert_same_as_alone(name: str, prompt: list[int], got: list[int], alone: list[int]) -> None:
    """``got`` (batched with others) equals ``alone`` (batch 1), but for a near-tie
    flipped by float rounding at the first difference."""
    if got == alone:
        return
    k = next((i for i, (a, b) in enumerate(zip(got, alone, strict=False)) if a != b), None)
    assert k is not None, f"same tokens, different length: {got} vs {alone}"
    with torch.inference_mode():
        logits = _hf(name)(torch.tensor([prompt + alone[:k]])).logits[0, -1].float()
    lag = float(logits.max() - logits[got[k]])
    assert lag <= TIE, f"token {k}: {got[k]} batched, {alone[k]} alone (logit gap {lag:.3g})"


def _sample_every_step(eng: Engine) -> list[tuple[int, int, int]]:
    """(used, reserved, budget) of the device after every step, read on the worker."""
    samples: list[tuple[int, int, int]] = []
    step = eng._step

    def sampled(ms, action):
        step(ms, action)
        d = eng.device
        samples.append((d.used, d.reserved, d.budget_bytes))

    eng._step = sampled  # the worker calls self._step
    return samples


def _record_requests(eng: Engine) -> list:
    reqs: list = []
    enqueue = eng._enqueue

    def rec(req):
        reqs.append(req)
        enqueue(req)

    eng._enqueue = rec
    return reqs


def test_two_models_admitting_at_once_never_exceed_the_budget():
    """The bug: two llama-5m admitting at once went ~0.6 MB over a tight budget, since
    admission compared with free memory and reserved nothing. Here two closed
    workloads run concurrently on a budget just above both models' weights: after
    every step used + reserved <= budget, requests that did not fit waited (an
    admission_wait event each) and then completed with the greedy tokens they give
    alone."""
    from labtui.engine import commands as C

    # round_robin steps both models in turn, so both admit at once (with the old
    # admission this setup went 0.34 MB over the budget in 165 of 720 steps)
    with Engine(device="sim", memory_gib=1.0, link=20.0, host_slowdown=1.0, policy="round_robin") as eng:
        eng.load("zoo:llama-5m", id="a", max_batch=4)
        eng.load("zoo:llama-5m", id="b", max_batch=4)
        weights = eng.device.used
        budget = weights + int(1.25 * MiB)  # room for one long row at a time, not four
        eng.set_device_options(memory_gib=budget / 1024**3)
        samples = _sample_every_step(eng)
        reqs = _record_requests(eng)
        futs = [  # queued together: applied in the same tick, nothing measured yet
            eng.submit_command(C.LaunchWorkload(model=mid, kind="closed", concurrency=2, requests=3,
                                                prompt_tokens=16, max_new_tokens=120, seed=3))
            for mid in ("a", "b")
        ]
        for f in futs:
            f.result(30)
        assert eng.wait_idle(300)
        eng.check_invariants()
        evs = eng.events_since(0)
        waits = [e for e in evs if e.kind == "admission_wait"]
        fin = {e.data["request"]: e.data for e in evs if e.kind == "request_finish"}
        eng.set_device_options(memory_gib=1.0)
        reqs = list(reqs)  # the requests of the workloads, not of the runs alone below
        alone = {r.id: eng.generate(r.model, r.prompt_ids, max_new_tokens=r.max_new_tokens).token_ids for r in reqs}

    assert samples, "no step sampled"
    over = [(u, r, b) for u, r, b in samples if u + r > b]
    assert not over, f"{len(over)} steps over the budget, e.g. used {over[0][0]} + reserved {over[0][1]} > {over[0][2]}"
    assert max(u for u, _, _ in samples) <= budget
    assert max(r for _, r, _ in samples) > 0, "nothing was ever reserved"
    assert len(reqs) == 6 and all(fin[r.id]["reason"] in ("eos", "length") for r in reqs)
    waited = {e.data["request"] for e in waits}
    assert waited, "no request had to wait: the budget is not tight enough to test anything"
    assert len(waits) == len(waited), "admission_wait must be emitted once per waiting request"
    assert waited <= {r.id for r in reqs}
    for r in reqs:
        assert_same_as_alone("llama-5m", r.prompt_ids, r.out_ids, alone[r.id])


def test_config_estimate_is_the_measured_kv_per_token():
    """Before the first prefill nothing is measured; admission uses the config's
    estimate, which must be what the first prefill then measures."""
    with Engine(device="sim", memory_gib=0.25, link=20.0) as eng:
        for name in ("llama-5m", "qwen3-10m", "gpt2-10m"):
            eng.load(f"zoo:{name}", id=name)
            hm = eng._models[name].hm
            est = list(hm.kv_bytes_per_token)
            assert not hm.kv_measured and all(b > 0 for b in est)
            eng.generate(name, [5, 6, 7, 8], max_new_tokens=2)
            assert hm.kv_measured and hm.kv_bytes_per_token == est, (name, est, hm.kv_bytes_per_token)


def test_first_request_that_could_never_fit_is_refused_at_submit():
    """The first request of a model was not checked at all. One that could never fit,
    even with the other models' KV gone, is refused at once with one line saying
    what it needs and what can be free; the engine is unchanged."""
    with Engine(device="sim", memory_gib=1.0, link=20.0) as eng:
        eng.load("zoo:llama-5m", id="a")
        eng.load("zoo:llama-5m", id="b")
        eng.set_device_options(memory_gib=(eng.device.used + 1 * MiB) / 1024**3)
        with pytest.raises(LabError) as ei:
            eng.submit("a", [5] * 16, max_new_tokens=4000)  # 4016 tokens x 6 KiB: 24 MiB of KV
        msg = str(ei.value)
        assert "\n" not in msg and "needs" in msg and "can be free" in msg and "budget" in msg, msg
        with pytest.raises(LabError, match="refused: a request of 16"):
            eng.launch_workload("a", kind="closed", requests=2, prompt_tokens=16, max_new_tokens=4000)
        assert eng.device.reserved == 0 and eng.wait_idle(10)
        r = eng.generate("a", [5] * 16, max_new_tokens=20)  # a short one fits
        assert len(r.token_ids) == 20
        eng.check_invariants()


def test_a_request_that_does_not_fit_yet_waits_visibly_then_runs():
    """While another model's admitted request holds its reservation, a request that
    would fit alone waits: queued, the reason in the snapshot, one admission_wait;
    it runs once the reservation is released."""
    with Engine(device="sim", memory_gib=1.0, link=20.0, host_slowdown=1.0) as eng:
        eng.load("zoo:llama-5m", id="a")
        eng.load("zoo:llama-5m", id="b")
        eng.set_device_options(memory_gib=(eng.device.used + int(3.5 * MiB)) / 1024**3)
        long = eng.submit("a", [5] * 8, max_new_tokens=300)  # ~1.9 MiB of KV at its longest
        while not long.out_ids:
            time.sleep(0.005)
        held = eng.fresh_snapshot().device.reserved_bytes
        assert held > 0 and eng.snapshot().model("a").reserved_bytes == held
        waiting = eng.submit("b", [6] * 8, max_new_tokens=300)
        deadline = time.monotonic() + 10
        while not eng.snapshot().model("b").waiting_reason and time.monotonic() < deadline:
            time.sleep(0.01)
        snap = eng.fresh_snapshot()
        if long.done.is_set():
            pytest.skip("the long request finished before the second was checked (slow machine)")
        mb = snap.model("b")
        assert mb.queued == 1 and mb.running == 0
        assert "waits for accelerator memory" in mb.waiting_reason and waiting.id in mb.waiting_reason
        assert long.done.wait(60) and waiting.done.wait(60)
        assert waiting.state == "done" and len(waiting.out_ids) == 300
        waits = [e for e in eng.events_since(0) if e.kind == "admission_wait"]
        assert [e.data["request"] for e in waits] == [waiting.id]
        assert waits[0].data["need_bytes"] > waits[0].data["free_bytes"]
        assert eng.wait_idle(10) and eng.snapshot().model("b").waiting_reason == ""
        assert eng.device.reserved == 0
        eng.check_invariants()


def _hold_a_reservation(eng: Engine, model: str, max_new: int = 2000):
    """Start a long request on ``model`` and wait until it runs (its reservation held)."""
    req = eng.submit(model, [5] * 8, max_new_tokens=max_new)
    while not req.out_ids:
        time.sleep(0.005)
    return req


def test_residency_prefetch_load_and_budget_respect_reservations():
    """Commands that take memory compare with budget - used - reserved: a placement,
    prefetch, load or budget that fits what is used but not what is reserved is
    refused, and changes nothing."""
    with Engine(device="sim", memory_gib=1.0, link=20.0, host_slowdown=1.0) as eng:
        eng.load("zoo:llama-5m", id="a")
        eng.load("zoo:gpt2-10m", id="g", residency=0.0, offload="stream", prefetch=False)
        req = _hold_a_reservation(eng, "a", max_new=2000)  # ~12 MiB of projected KV
        snap = eng.fresh_snapshot()
        used, held = snap.device.used_bytes, snap.device.reserved_bytes
        assert held > 10 * MiB
        # a budget with room for what is used, not for what is reserved
        with pytest.raises(LabError, match="reserved for admitted requests"):
            eng.set_device_options(memory_gib=(used + held // 2) / 1024**3)
        eng.set_device_options(memory_gib=(used + held + 2 * MiB) / 1024**3)
        g_full = eng._models["g"].hm.placement_bytes(set(range(6)), "stream")
        assert eng.device.free < g_full - eng.device.used + held  # would fit without the reservation
        with pytest.raises(LabError, match="needs .* reserved for admitted requests"):
            eng.set_residency("g", 1.0)
        with pytest.raises(LabError):
            eng.load("zoo:qwen3-10m", id="q")
        eng.check_invariants()
        assert not req.done.is_set(), "the request ended before the checks (slow machine?)"
        assert eng.snapshot().model("g").residency == 0.0 and "q" not in [m.id for m in eng.snapshot().models]
        eng.unload("a")  # cancels the request: its reservation goes with it
        assert eng.device.reserved == 0
        eng.set_residency("g", 1.0)
        eng.check_invariants()


def test_preemption_releases_the_reservation_and_resume_takes_it_back():
    """A preempted model holds no reservation (nothing of it runs); resuming it needs
    its admitted requests' reservation again, and is refused when that is taken."""
    with Engine(device="sim", memory_gib=1.0, link=20.0, host_slowdown=1.0) as eng:
        eng.load("zoo:llama-5m", id="a")
        eng.load("zoo:llama-5m", id="b")
        req = _hold_a_reservation(eng, "a", max_new=1500)
        held_a = eng.fresh_snapshot().model("a").reserved_bytes
        assert held_a > 5 * MiB
        eng.preempt("a", kv="swap", weights="host")
        assert eng.fresh_snapshot().model("a").reserved_bytes == 0 and eng.device.reserved == 0
        eng.check_invariants()
        # b's request takes the room a's resume would need for its reservation
        eng.set_device_options(memory_gib=(eng.device.used + eng._models["a"].hm.weight_bytes() + held_a + 3 * MiB) / 1024**3)
        other = _hold_a_reservation(eng, "b", max_new=800)
        with pytest.raises(LabError, match="resuming a needs"):
            eng.resume("a")
        assert eng.snapshot().model("a").state == "preempted"
        eng.check_invariants()
        assert other.done.wait(120)
        eng.resume("a")
        assert eng.fresh_snapshot().model("a").reserved_bytes > 0 or req.done.is_set()
        assert req.done.wait(120) and req.state == "done"
        eng.check_invariants()


def test_priority_make_room_counts_the_victims_reservations():
    """Under the priority policy a resume makes room by preempting a lower-priority
    model; what that frees includes its reservation. When the room is there only
    with the victim's reservation counted, the victim is preempted and the resume
    goes ahead (counting its ledger alone, nobody would be preempted: refused)."""
    with Engine(device="sim", memory_gib=1.0, link=20.0, host_slowdown=1.0, policy="priority") as eng:
        eng.load("zoo:llama-5m", id="hi", priority=2)
        eng.load("zoo:llama-5m", id="lo", priority=0)
        eng.preempt("hi", kv="swap", weights="host")
        req = _hold_a_reservation(eng, "lo", max_new=2500)
        snap = eng.fresh_snapshot()
        lo = snap.model("lo")
        need = eng._models["hi"].hm.placement_bytes(set(range(6)), "stream")
        # the budget: hi's resume fits only if lo's ledger and its reservation both go
        budget = lo.ledger.accel_total + lo.reserved_bytes + need - lo.reserved_bytes // 2
        assert budget >= eng.device.used + eng.device.reserved
        # hi has work waiting, so it is no idle model the rebalance may take back from
        mine = eng.submit("hi", [7] * 8, max_new_tokens=200)
        eng.set_device_options(memory_gib=budget / 1024**3)
        eng.resume("hi")
        snap = eng.fresh_snapshot()
        assert snap.model("hi").state in ("idle", "serving") and snap.model("lo").state == "preempted"
        assert mine.done.wait(120) and mine.state == "done"
        assert any(e.kind == "preempt" and e.data.get("model") == "lo" and e.data.get("auto") for e in eng.events_since(0))
        eng.check_invariants()
        eng.set_device_options(memory_gib=1.0)
        assert req.done.wait(120) and req.state == "done"
        eng.check_invariants()


def test_close_while_waiting_for_memory_ends_the_waiting_request():
    """A request waiting for memory is still a request: close() ends it (cancelled,
    with its request_finish), wait_idle does not call the engine idle before."""
    eng = Engine(device="sim", memory_gib=1.0, link=20.0, host_slowdown=1.0)
    try:
        eng.load("zoo:llama-5m", id="a", max_batch=4)
        eng.set_device_options(memory_gib=(eng.device.used + int(2.5 * MiB)) / 1024**3)
        first = _hold_a_reservation(eng, "a", max_new=300)
        second = eng.submit("a", [6] * 8, max_new_tokens=300)
        assert not eng.wait_idle(0.3), "idle while a request waits for memory"
        t = threading.Thread(target=eng.close)
        t.start()
        t.join(30)
        for r in (first, second):
            assert r.done.wait(10) and r.finish_reason in ("engine closed", "length")
    finally:
        eng.close()


def test_refusal_sizes_read_unequal_when_they_differ():
    """A never-fits refusal compares two sizes; when they round alike it shows more
    digits (a user must be able to see that the need is larger)."""
    from labtui.engine.devices import fmt_bytes_apart

    need, avail = 2.2 * 2**20 + 3000, 2.2 * 2**20
    a, b = fmt_bytes_apart(need, avail)
    assert a != b and a.endswith("MiB") and b.endswith("MiB")
    assert fmt_bytes_apart(2 * 2**20, 2**20) == ("2.0 MiB", "1.0 MiB")
    assert fmt_bytes_apart(2**20 + 1, 2**20) == ("1048577 B", "1048576 B")
