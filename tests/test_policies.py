"""Policy actions and the baselines' documented rules (docs/policies.md).

Each baseline test would fail if its rule were broken: they watch the engine's own
events (preempt, resume, residency, policy_decision) while real requests run.
"""

from __future__ import annotations

import time
from typing import get_args

import pytest

from labtui.engine import Engine
from labtui.engine import commands as C
from labtui.engine.policies import POLICIES, Action, Policy, make_policy
from labtui.engine.policies.classic import FCFS
from labtui.errors import LabError

GiB = 1024**3
ONE_5M = 0.03  # GiB: one llama-5m (19 MiB) fits whole with its KV, two do not


def _events(eng, kind):
    return [e for e in eng.events_since(0) if e.kind == kind]


def _wait(pred, timeout=30.0):
    end = time.perf_counter() + timeout
    while time.perf_counter() < end:
        if pred():
            return True
        time.sleep(0.01)
    return False


def test_every_policy_is_named_in_commands():
    assert tuple(POLICIES) == get_args(C.PolicyName)
    for name in POLICIES:
        assert make_policy(name).name == name
    with pytest.raises(LabError, match="accepted: fcfs"):
        make_policy("nope")
    from labtui.engine.scheduler import make_policy as old  # the old import path works

    assert old("fcfs").name == "fcfs"


class _Scripted(FCFS):
    """Returns the actions it is given, once."""

    name = "fcfs"

    def __init__(self, actions):
        super().__init__()
        self.todo = list(actions)
        self.told = []

    def plan(self, view):
        out, self.todo = self.todo, []
        return out

    def on_decision(self, action, ok, now):
        self.told.append((action.cmd.action, ok))


def test_policy_actions_run_through_the_handlers_with_their_reason():
    with Engine(device="sim", memory_gib=ONE_5M, link=20.0) as eng:
        eng.load("zoo:llama-5m", id="a")
        want = eng.generate("a", [5, 6, 7], max_new_tokens=12).token_ids
        pol = _Scripted([
            Action(C.SetResidency(model="a", residency=0.5, mode="stream"), "test: halve a"),
            Action(C.Preempt(model="a", kv="swap", weights="disk"), "test: park a"),
            Action(C.Resume(model="a"), "test: back"),
            Action(C.SetResidency(model="a", residency=1.0), "test: whole again"),
        ])
        eng.on_worker(lambda: setattr(eng, "policy", pol))
        req = eng.submit("a", [5, 6, 7], max_new_tokens=12)
        assert req.done.wait(60)
        assert req.out_ids == want  # the oracle holds across policy moves
        assert _wait(lambda: len(pol.told) == 4)
        decs = _events(eng, "policy_decision")
        assert [d.data["reason"] for d in decs] == ["test: halve a", "test: park a", "test: back", "test: whole again"]
        assert all(d.data["ok"] for d in decs)
        assert [e.data["auto"] for e in _events(eng, "preempt")] == [True]
        eng.check_invariants()
        # a move over the budget is refused by the engine's own check: ok false, nothing moved
        eng.load  # noqa: B018
        pol2 = _Scripted([Action(C.Resume(model="a"), "test: resume a serving model")])
        eng.on_worker(lambda: setattr(eng, "policy", pol2))
        assert _wait(lambda: pol2.told)
        last = _events(eng, "policy_decision")[-1]
        assert last.data["ok"] is False and "not preempted" in last.data["refused"]
        eng.check_invariants()


def test_a_pinned_model_is_never_evicted_by_any_policy():
    with Engine(device="sim", memory_gib=ONE_5M, link=20.0) as eng:
        eng.load("zoo:llama-5m", id="a", pin=True, min_residency=0.5)
        pol = _Scripted([
            Action(C.Preempt(model="a", weights="disk"), "evict it"),
            Action(C.SetResidency(model="a", residency=0.0), "below its minimum"),
            Action(C.SetResidency(model="a", residency=0.5), "at its minimum is fine"),
        ])
        eng.on_worker(lambda: setattr(eng, "policy", pol))
        assert _wait(lambda: len(pol.told) == 3)
        assert pol.told == [("preempt", False), ("set_residency", False), ("set_residency", True)]
        assert not _events(eng, "preempt")
        assert eng.snapshot().models[0].state != "preempted"


# ---------------------------------------------------------------- ollama


def test_ollama_loads_whole_and_offloads_to_host_only_a_model_too_big():
    with Engine(device="sim", memory_gib=0.04, link=20.0, policy="ollama") as eng:
        eng.load("zoo:llama-5m", id="small", residency=0.2, offload="stream")  # asks for 20%: ollama loads whole
        m = eng.snapshot().models[0]
        assert m.residency == 1.0
        eng.load("zoo:llama-30m", id="big", residency=1.0)  # 116 MiB > 41 MiB budget
        big = next(x for x in eng.snapshot().models if x.id == "big")
        assert 0 <= big.residency < 1.0 and big.mode == "host"
        # making room for big evicted the idle small one (least recently used)
        small = next(x for x in eng.snapshot().models if x.id == "small")
        assert small.state == "preempted"
        eng.check_invariants()


def test_ollama_caps_loaded_models_and_evicts_the_least_recently_used_idle_one():
    with Engine(device="sim", memory_gib=1, link=20.0, policy="ollama") as eng:
        eng.on_worker(lambda: setattr(eng.policy, "max_loaded", 2))
        eng.load("zoo:llama-5m", id="a")
        eng.load("zoo:qwen3-10m", id="b")
        eng.generate("a", [1, 2, 3], max_new_tokens=4)  # a used after b: b is the LRU
        eng.load("zoo:gpt2-10m", id="c")
        states = {m.id: m.state for m in eng.snapshot().models}
        assert states["b"] == "preempted" and states["a"] != "preempted" and states["c"] != "preempted"
        pre = _events(eng, "preempt")
        assert [(p.data["model"], p.data["weights"]) for p in pre] == [("b", "disk")]
        # b's next request reloads it (from disk), evicting the LRU idle one (a)
        r = eng.generate("b", [1, 2, 3], max_new_tokens=4, timeout=60)
        assert r.finish_reason in ("length", "eos")
        assert [p.data["model"] for p in _events(eng, "preempt")] == ["b", "a"]
        assert _events(eng, "resume")[-1].data["weights"] == "disk"
        eng.check_invariants()


def test_ollama_evicts_an_idle_model_after_keep_alive():
    with Engine(device="sim", memory_gib=1, link=20.0, policy="ollama") as eng:
        eng.on_worker(lambda: setattr(eng.policy, "keep_alive", 0.4))
        eng.load("zoo:llama-5m", id="a")
        t0 = time.perf_counter()
        eng.generate("a", [1, 2, 3], max_new_tokens=4)
        t_done = time.perf_counter()
        assert _wait(lambda: eng.snapshot().models[0].state == "preempted", 10)
        waited = time.perf_counter() - t_done
        assert waited >= 0.3, f"evicted {waited:.2f} s after its last request, before keep_alive"
        dec = [d for d in _events(eng, "policy_decision") if d.data["action"] == "preempt"]
        assert dec and "keep_alive" in dec[0].data["reason"]
        del t0


def test_ollama_never_preempts_a_model_with_running_requests():
    with Engine(device="sim", memory_gib=ONE_5M, link=20.0, policy="ollama") as eng:
        eng.load("zoo:llama-5m", id="a")
        eng.load("zoo:qwen3-10m", id="b")  # evicts a (idle) to load b whole
        assert {m.id: m.state for m in eng.snapshot().models}["a"] == "preempted"
        want_a = [1, 2, 3]
        ra = eng.submit("a", want_a, max_new_tokens=60)  # reloads a, evicting idle b
        assert _wait(lambda: ra.out_ids, 30)
        rb = eng.submit("b", [4, 5, 6], max_new_tokens=8)  # b must wait: a is running
        assert ra.done.wait(120) and rb.done.wait(120)
        pre = _events(eng, "preempt")
        # a was preempted only while idle: never between its first token and its finish
        a_start = next(e.t for e in _events(eng, "request_start") if e.data["request"] == ra.id)
        a_end = next(e.t for e in _events(eng, "request_finish") if e.data["request"] == ra.id)
        assert not [p for p in pre if p.data["model"] == "a" and a_start <= p.t <= a_end]
        b_start = next(e.t for e in _events(eng, "request_start") if e.data["request"] == rb.id)
        assert b_start >= a_end  # b's request waited for a to finish, then for b's reload
        eng.check_invariants()


# ---------------------------------------------------------------- llama.cpp router


def test_llamacpp_router_evicts_by_count_lru_and_never_changes_residency():
    with Engine(device="sim", memory_gib=0.05, link=20.0, policy="llamacpp-router") as eng:
        eng.on_worker(lambda: setattr(eng.policy, "models_max", 2))
        eng.load("zoo:llama-5m", id="a")
        eng.load("zoo:qwen3-10m", id="b")
        eng.generate("a", [1, 2], max_new_tokens=4)
        eng.load("zoo:gpt2-10m", id="c")  # count 2 reached: b (LRU) goes, memory or not
        assert [p.data["model"] for p in _events(eng, "preempt")][:1] == ["b"]
        for mid in "abc":
            eng.generate(mid, [1, 2, 3], max_new_tokens=4, timeout=60)
        eng.generate("b", [1, 2, 3], max_new_tokens=4, timeout=60)
        loaded = [m for m in eng.snapshot().models if m.state != "preempted"]
        assert len(loaded) <= 2
        # every placement a model ever had is the one chosen at its load
        per: dict[str, set] = {}
        for e in _events(eng, "residency"):
            per.setdefault(e.data["model"], set()).add(tuple(e.data["resident_layers"]))
        assert all(len(v) == 1 for v in per.values()), per
        assert len(_events(eng, "resume")) >= 2
        eng.check_invariants()


# ---------------------------------------------------------------- static split


def test_static_split_divides_the_budget_and_never_moves():
    with Engine(device="sim", memory_gib=0.08, link=20.0, policy="static-split") as eng:
        for mid, src in (("a", "zoo:llama-5m"), ("b", "zoo:qwen3-10m"), ("c", "zoo:gpt2-10m")):
            eng.load(src, id=mid, offload="stream")
        share = eng.device.budget_bytes // 3
        for ms in eng._models.values():
            assert ms.hm.ledger().accel_total <= share
        before = len(_events(eng, "residency"))
        reqs = [eng.submit(m, [1, 2, 3], max_new_tokens=10) for m in "abc"]
        assert all(r.done.wait(60) for r in reqs)
        time.sleep(0.2)
        assert len(_events(eng, "residency")) == before  # nothing moved once serving began
        assert not _events(eng, "preempt")
        eng.check_invariants()


# ---------------------------------------------------------------- pipelined resume


@pytest.mark.parametrize("weights,kv,start", [("host", "swap", "stream"), ("disk", "swap", "host"), ("host", "drop", "stream")])
def test_pipelined_resume_gives_the_uninterrupted_tokens(weights, kv, start):
    with Engine(device="sim", memory_gib=1, link=20.0) as eng:
        eng.load("zoo:llama-30m", id="a")
        ids = [3, 1, 4, 1, 5, 9, 2, 6]
        want = eng.generate("a", ids, max_new_tokens=40).token_ids
        req = eng.submit("a", ids, max_new_tokens=40)
        assert _wait(lambda: len(req.out_ids) >= 8)
        eng.preempt("a", kv=kv, weights=weights)
        eng.execute(C.Resume(model="a", pipelined=True, first_blocks=1, start_mode=start))
        assert req.done.wait(60)
        assert req.out_ids == want
        res = _events(eng, "residency")
        ks = [len(e.data["resident_layers"]) for e in res]
        assert 1 in ks and ks[-1] == 8  # started at 1 block, climbed back to all 8
        assert _wait(lambda: _events(eng, "climb_done"))
        eng.check_invariants()


def test_a_policy_base_class_plans_nothing():
    assert Policy().plan(None) == []


# ---------------------------------------------------------------- planner


def test_planner_keeps_budget_tokens_and_pins_under_pressure():
    """Three models on a budget that holds about one and a half: bursts to each in
    turn; the planner moves, evicts and resumes, and every request still gets the
    tokens it gets alone; the budget holds at every check; the pinned model is never
    evicted nor placed below its minimum."""
    with Engine(device="sim", memory_gib=0.06, link=8.0, policy="planner") as eng:
        eng.load("zoo:llama-5m", id="a", slo_tpot_s=0.05, slo_weight=2.0)
        eng.load("zoo:qwen3-10m", id="b", slo_tpot_s=0.08)
        eng.load("zoo:gpt2-10m", id="c", pin=True, min_residency=0.5)
        ids = [3, 1, 4, 1, 5]
        alone = {m: eng.generate(m, ids, max_new_tokens=16, timeout=60).token_ids for m in "abc"}
        reqs = []
        for burst in ("ab", "bc", "ca", "abc"):
            reqs += [(m, eng.submit(m, ids, max_new_tokens=16)) for m in burst for _ in range(2)]
            for _ in range(6):
                eng.check_invariants()
                time.sleep(0.05)
        for m, r in reqs:
            assert r.done.wait(120)
            assert r.out_ids == alone[m], f"{m} changed its tokens under the planner"
        eng.check_invariants()
        decs = _events(eng, "policy_decision")
        assert decs and all(d.data["reason"] for d in decs)
        assert not [e for e in _events(eng, "preempt") if e.data["model"] == "c"]
        n_c = eng._models["c"].hm.n_layers
        for e in _events(eng, "residency"):
            if e.data["model"] == "c":
                assert len(e.data["resident_layers"]) >= n_c // 2
        assert eng.policy.plan_rows  # the plan the lab shows


# ---------------------------------------------------------------- pins set live (SetPin)


def test_set_pin_validates_and_is_read_live_by_the_guard():
    with pytest.raises(LabError, match="min_residency"):
        C.build("set_pin", model="a", pin=True, min_residency=1.5)
    with pytest.raises(LabError, match="pin"):
        C.build("set_pin", model="a")
    with Engine(device="sim", memory_gib=ONE_5M, link=20.0) as eng:
        eng.load("zoo:llama-5m", id="a")
        with pytest.raises(LabError, match="no model 'zz'"):
            eng.set_pin("zz", True)
        assert eng.set_pin("a", True, min_residency=0.5) == {"pin": True, "min_residency": 0.5}
        snap = eng.fresh_snapshot().model("a")
        assert (snap.pin, snap.min_residency) == (True, 0.5)
        pol = _Scripted([
            Action(C.Preempt(model="a", weights="disk"), "evict it"),
            Action(C.SetResidency(model="a", residency=0.0), "below its minimum"),
        ])
        eng.on_worker(lambda: setattr(eng, "policy", pol))
        assert _wait(lambda: len(pol.told) == 2)
        assert pol.told == [("preempt", False), ("set_residency", False)]
        # unpinned (min_residency kept), the same eviction runs
        eng.set_pin("a", False)
        assert eng.fresh_snapshot().model("a").pin is False
        pol2 = _Scripted([Action(C.Preempt(model="a", weights="host"), "evict it now")])
        eng.on_worker(lambda: setattr(eng, "policy", pol2))
        assert _wait(lambda: len(pol2.told) == 1)
        assert pol2.told == [("preempt", True)]
        assert [e.data["pin"] for e in _events(eng, "pin")] == [True, False]
        assert [c.action for _, c in eng.command_log].count("set_pin") == 2


def test_planner_never_evicts_a_model_pinned_while_serving():
    """A model pinned by SetPin after it loaded (not by its Load) is never evicted by
    the planner when another model's burst needs its memory; the snapshot carries
    the planner's plan for the lab; unpinned, it is evicted for the same burst."""
    def run(pin: bool) -> list:
        with Engine(device="sim", memory_gib=ONE_5M, link=20.0, policy="planner") as eng:
            eng.load("zoo:llama-5m", id="a")
            eng.load("zoo:llama-5m", id="b")
            eng.generate("a", [1, 2, 3], max_new_tokens=4, timeout=60)
            if pin:
                eng.set_pin("a", True, min_residency=0.5)
            time.sleep(2.0)  # a idle: its memory is what b's burst can take
            seq0 = eng.events_since(0)[-1].seq
            reqs = [eng.submit("b", [3, 1, 4, 1], max_new_tokens=12) for _ in range(3)]
            for r in reqs:
                assert r.done.wait(120)
            plan = eng.fresh_snapshot().model("b").plan
            assert plan is not None and plan.model == "b" and plan.n_layers == 6 and plan.binding
            eng.check_invariants()
            if pin:  # from the pin on, never below its minimum (the planner raises it to it)
                at = _events(eng, "pin")[0].seq
                res = [e for e in _events(eng, "residency") if e.data["model"] == "a" and e.seq > at]
                assert all(len(e.data["resident_layers"]) >= 3 for e in res)
                assert len(eng._models["a"].hm.resident_set()) >= 3
            return [e for e in _events(eng, "preempt") if e.data["model"] == "a" and e.seq > seq0]

    assert run(pin=True) == []
    assert run(pin=False)  # the same burst evicts it when it is not pinned
