"""Bounded memory: many requests and commands, and what the engine keeps stays
within its documented sizes (engine/limits.py, patched small here), while a
session's recorder still has every command."""

from __future__ import annotations

import pytest

from labtui.engine import Engine
from labtui.errors import LabError
from labtui.scenario.recorder import SessionRecorder, scenario_from_log
from labtui.scenario.schema import parse_scenario


def test_engine_keeps_bounded_windows_and_the_recorder_keeps_every_command(monkeypatch):
    import labtui.engine.api as api
    import labtui.engine.state as state
    import labtui.engine.worker as worker

    monkeypatch.setattr(api, "MAX_EVENTS", 60)
    monkeypatch.setattr(api, "COMMAND_LOG_MAX", 5)
    monkeypatch.setattr(worker, "KEEP_DONE_WORKLOADS", 3)
    monkeypatch.setattr(state, "RESIDENCY_HISTORY_KEPT", 4)
    with Engine(device="sim", memory_gib=1) as eng:
        rec = SessionRecorder(eng)
        eng.load("zoo:llama-5m", id="a")
        wids = [eng.launch_workload("a", requests=4, concurrency=2, prompt_tokens=4, max_new_tokens=2) for _ in range(10)]
        for i in range(12):
            eng.set_residency("a", (i % 3) / 2)
        assert eng.wait_idle(120)
        for _ in range(30):
            eng.generate("a", [1, 2, 3], max_new_tokens=1, timeout=60)
        snap = eng.fresh_snapshot()
        n_cmds = 1 + 10 + 12
        assert eng.commands_total == n_cmds and len(eng.command_log) == 5
        assert len(eng._events) == 60 and eng.events_since(0)[-1].seq == snap.events_total
        assert len(snap.workloads) == 3 and [w.id for w in snap.workloads] == wids[-3:]
        assert eng.workloads_done_total == 10
        assert len(eng._models["a"].residency_history) == 4
        assert snap.model("a").completed == 10 * 4 + 30
        s = eng.summary()
        assert s["workloads_done_total"] == 10 and len(s["workloads"]) == 3
        # a workload forgotten long ago: one line, nothing changed
        with pytest.raises(LabError, match="no workload"):
            eng.cancel_workload(wids[0])
        # the recorder has every command, in order, with the engine's times
        assert len(rec) == n_cmds and rec.complete and not rec.dropped
        log = rec.command_log
        assert [c.action for _, c in log] == ["load"] + ["launch_workload"] * 10 + ["set_residency"] * 12
        assert [t for t, _ in log] == sorted(t for t, _ in log)
        sc = parse_scenario(scenario_from_log(rec), "r.toml")
        # (launches go to [[workloads]] or, when the load took over START_WINDOW_S on a
        # busy machine, to the timeline)
        launches = len(sc.workloads) + sum(t.action == "launch_workload" for t in sc.timeline)
        assert launches == 10 and sum(t.action == "set_residency" for t in sc.timeline) == 12
        rec.close()


def test_recorder_attached_late_reads_what_the_engine_already_did():
    with Engine(device="sim", memory_gib=1) as eng:
        eng.load("zoo:llama-5m", id="a")
        wid = eng.launch_workload("a", requests=1, prompt_tokens=4, max_new_tokens=2)
        rec = SessionRecorder(eng)  # the lab attaches once its engine is up
        eng.cancel_workload(wid)
        assert [c.action for _, c in rec.command_log] == ["load", "launch_workload", "cancel_workload"]
        assert rec.launch_ids() == [wid]
        s = parse_scenario(scenario_from_log(rec), "r.toml")
        assert s.workloads[0].id == wid and s.timeline[-1].workload == wid


def test_listeners_get_every_event_in_order_once_per_step():
    """Deferred fan-out: a plain listener and a batch listener see the same events,
    in seq order, every one; a command's events arrive before its caller returns."""
    with Engine(device="sim", memory_gib=1) as eng:
        one: list = []
        batches: list = []
        eng.add_listener(one.append)
        eng.add_listener(batches.append, batch=True)
        eng.load("zoo:llama-5m", id="a")
        assert one and one[-1].kind == "command"  # delivered before load() returned
        eng.launch_workload("a", requests=6, concurrency=3, prompt_tokens=4, max_new_tokens=3)
        assert eng.wait_idle(60)
        with pytest.raises(LabError):
            eng.unload("nope")  # refused in this thread: delivered at once, in order
        flat = [e for b in batches for e in b]
        assert [e.seq for e in one] == [e.seq for e in flat] == list(range(1, len(one) + 1))
        assert one[-1].kind == "refused"
        assert sum(e.kind == "request_finish" for e in one) == 6
        assert len(batches) < len(one)  # handed over in groups, not one call per event
