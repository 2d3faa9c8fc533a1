"""Several models on one engine: same tokens as alone, policies, budget, workloads."""

from __future__ import annotations

import time

import pytest

from labtui.engine import Engine
from labtui.engine.scheduler import Candidate, make_policy
from labtui.errors import LabError

PROMPTS = [
    "Three models share one accelerator and take turns",
    "The scheduler decides and the executor executes",
    "Layers stream over the link while the previous block computes",
]


def test_three_models_at_once_match_alone():
    with Engine(device="sim", memory_gib=2, link=20.0, host_slowdown=2.0) as eng:
        eng.load("zoo:llama-5m", id="a", residency=1.0)
        eng.load("zoo:qwen3-10m", id="b", residency=0.5, offload="stream")
        eng.load("zoo:gpt2-10m", id="c", residency=0.5, offload="host")
        ids = {m: eng._models[m].hm.tokenizer(PROMPTS[i])["input_ids"] for i, m in enumerate("abc")}
        alone = {m: eng.generate(m, ids[m], max_new_tokens=20).token_ids for m in "abc"}
        for policy in ("fcfs", "round_robin", "priority"):
            eng.set_policy(policy)
            reqs = {m: eng.submit(m, ids[m], max_new_tokens=20) for m in "abc"}
            for m, r in reqs.items():
                assert r.done.wait(60)
                assert r.out_ids == alone[m], f"{policy}: model {m} changed its tokens"
        eng.check_invariants()


def test_batched_rows_match_alone():
    with Engine(device="sim", memory_gib=2, link=20.0) as eng:
        eng.load("zoo:llama-5m", id="a", max_batch=4)
        tok = eng._models["a"].hm.tokenizer
        prompts = [tok(p)["input_ids"] for p in PROMPTS] + [tok("short")["input_ids"]]
        alone = [eng.generate("a", p, max_new_tokens=16).token_ids for p in prompts]
        reqs = [eng.submit("a", p, max_new_tokens=16) for p in prompts]
        for r, want in zip(reqs, alone, strict=True):
            assert r.done.wait(60)
            assert r.out_ids == want
        starts = [e for e in eng.events_since(0) if e.kind == "request_start"]
        assert len(starts) == 8


@pytest.mark.parametrize(
    "policy,expect",
    [("fcfs", "old"), ("round_robin", "old"), ("priority", "vip")],
)
def test_policies_choose(policy, expect):
    p = make_policy(policy)
    cands = [
        Candidate("x", 0, 0, 1, False, oldest=5.0),
        Candidate("old", 0, 2, 1, True, oldest=1.0),
        Candidate("vip", 9, 1, 0, True, oldest=9.0),
        Candidate("blocked", 99, 1, 0, False, oldest=0.0),  # cannot admit, nothing running
    ]
    mid, action = p.pick(cands)
    assert mid == expect
    assert action == {"x": "decode", "old": "prefill", "vip": "prefill"}[mid]
    if policy == "round_robin":
        assert [p.pick(cands)[0] for _ in range(3)] == ["vip", "x", "old"]


def test_load_beyond_budget_is_refused_with_figures_and_changes_nothing():
    with Engine(device="sim", memory_gib=0.03, link=20.0) as eng:
        eng.load("zoo:llama-5m", id="a")
        used = eng.snapshot().device.used_bytes
        with pytest.raises(LabError, match=r"needs .* on the accelerator but only .* free"):
            eng.load("zoo:qwen3-10m", id="b")
        assert [m.id for m in eng.snapshot().models] == ["a"]
        assert eng.snapshot().device.used_bytes == used
        with pytest.raises(LabError, match="budget"):
            eng.set_device_options(memory_gib=0.001)
        eng.check_invariants()


def test_priority_policy_makes_room_by_preempting_then_resumes():
    with Engine(device="sim", memory_gib=0.042, link=20.0, policy="priority") as eng:
        eng.load("zoo:llama-5m", id="low", priority=0)
        eng.launch_workload("low", kind="closed", concurrency=1, requests=3, prompt_tokens=8, max_new_tokens=8)
        eng.load("zoo:qwen3-10m", id="high", priority=5, residency=0.25)
        kinds = [(e.kind, e.data.get("model"), e.data.get("auto")) for e in eng.events_since(0)]
        assert ("preempt", "low", True) in kinds
        res = eng.generate("high", [5, 6, 7, 8], max_new_tokens=6)
        assert len(res.token_ids) == 6
        assert eng.wait_idle(60), "the preempted model's requests must finish after it is resumed"
        snap = eng.snapshot()
        assert snap.model("low").completed == 3
        assert any(e.kind == "resume" and e.data["model"] == "low" for e in eng.events_since(0))
        eng.check_invariants()


def test_cancel_workload_and_unload_in_flight_lose_nothing():
    with Engine(device="sim", memory_gib=2, link=20.0) as eng:
        eng.load("zoo:llama-5m", id="a", max_batch=2)
        eng.load("zoo:qwen3-10m", id="b")
        wa = eng.launch_workload("a", kind="closed", concurrency=2, requests=50, prompt_tokens=8, max_new_tokens=64)
        wb = eng.launch_workload("b", kind="poisson", rate_per_s=50, requests=40, prompt_tokens=8, max_new_tokens=64)
        while eng.snapshot().model("a").tokens_generated < 10:
            time.sleep(0.01)
        n = eng.cancel_workload(wa)
        assert n >= 1
        eng.unload("b")
        assert eng.wait_idle(30)
        snap = eng.snapshot()
        w = {x.id: x for x in snap.workloads}
        assert w[wa].done and w[wa].completed + w[wa].cancelled == w[wa].submitted or w[wa].done
        assert w[wb].done
        starts = {e.data["request"] for e in eng.events_since(0) if e.kind == "request_start"}
        finishes = {e.data["request"]: e.data["reason"] for e in eng.events_since(0) if e.kind == "request_finish"}
        assert starts <= set(finishes), "every started request has an outcome"
        assert "cancelled" in finishes.values() and "unloaded" in finishes.values()
        with pytest.raises(LabError, match="no model 'b'"):
            eng.set_residency("b", 0.5)
        with pytest.raises(LabError, match="no workload"):
            eng.cancel_workload("nope")
        eng.check_invariants()
