"""Recording: command log -> TOML -> scenario -> the same commands."""

from __future__ import annotations

import tomllib

import pytest

from labtui.engine import commands as C
from labtui.scenario.recorder import scenario_from_log, scenario_to_toml
from labtui.scenario.schema import builtin_names, load_scenario, parse_scenario

DEV = {"kind": "sim", "memory_gib": 2.0, "link": "pcie4-x16", "host_slowdown": 4.0}

LOG = [
    (0.05, C.Load(source="zoo:llama-5m", id="a", residency=0.5, offload="host")),
    (2.5, C.Load(source="zoo:qwen3-10m")),  # no id: the recorder derives it
    (3.0, C.LaunchWorkload(model="a", id="wa", requests=3, max_new_tokens=16)),
    (4.25, C.SetResidency(model="a", layers=[0, 2], mode="stream")),
    (5.0, C.SetPrefetch(model="a", prefetch=False)),
    (6.0, C.Note(text='say "hi"\nand \\ bye')),
    (7.0, C.Load(source="zoo:llama-30m", id="late")),
    (8.0, C.LaunchWorkload(model="late", kind="poisson", rate_per_s=2.5)),
    (9.0, C.Preempt(model="late", kv="drop", weights="disk")),
    (9.5, C.Resume(model="late")),
    (10.0, C.SetDeviceOptions(link=8.0, host_slowdown=6.0)),
    (11.0, C.SetPolicy(policy="round_robin")),
    (12.0, C.CancelWorkload(workload="wa")),
    (13.0, C.Unload(model="late")),
    (14.0, C.SetPin(model="a", pin=True, min_residency=0.5)),  # the lab's pin toggle (k)
]


def test_round_trip_log_to_toml_to_commands():
    text = scenario_from_log(LOG, DEV, name="rec")
    s = parse_scenario(text, "rec.toml")
    assert s.name == "rec" and s.device.link == "pcie4-x16" and s.device.memory_gib == 2.0
    assert [m.id for m in s.models] == ["a", "qwen3-10m"]
    assert [w.model for w in s.workloads] == ["a"]  # workloads on start-up models
    assert [t.action for t in s.timeline][3] == "load"  # a later load is a timeline action
    assert s.timeline[3].at == 7.0 and s.timeline[4].action == "launch_workload"
    expected = [(0.0 if isinstance(c, C.Load) and t < 5 else t, c) for t, c in LOG]
    expected[1] = (0.0, C.Load(source="zoo:qwen3-10m", id="qwen3-10m"))
    assert s.commands() == expected


def test_a_load_after_other_commands_is_a_timeline_action():
    log = [(0.0, C.Note(text="start")), (0.5, C.Load(source="zoo:llama-5m", id="a"))]
    s = parse_scenario(scenario_from_log(log, DEV), "r.toml")
    assert s.models == [] and [t.action for t in s.timeline] == ["note", "load"]


def test_recorder_accepts_an_engine_like_object():
    class Dev:
        kind, link, host_slowdown, simulated, budget_bytes = "sim", "16 GB/s", 4.0, True, 2 * 1024**3

    class Snap:
        device = Dev()

    class Eng:
        command_log = LOG[:3]

        def snapshot(self):
            return Snap()

    s = parse_scenario(scenario_from_log(Eng()), "r.toml")
    assert s.device.link == 16.0 and s.device.memory_gib == 2.0 and s.device.kind == "sim"


@pytest.mark.parametrize("name", builtin_names())
def test_scenario_to_toml_round_trips_builtins(name):
    s = load_scenario(name)
    text = scenario_to_toml(s, header="as run")
    tomllib.loads(text)
    s2 = parse_scenario(text, s.path)
    assert s2.commands() == s.commands()
    assert s2.sweep == s.sweep and s2.quick == s.quick and s2.device == s.device
    assert [t.when for t in s2.timeline] == [t.when for t in s.timeline]


def test_recording_a_real_engine_keeps_engine_workload_ids(tmp_path):
    from labtui.engine import Engine
    from labtui.scenario.runner import run_file

    with Engine(device="sim", memory_gib=1) as eng:
        eng.load("zoo:llama-5m", id="a", residency=0.5)
        wid = eng.launch_workload("a", requests=1, prompt_tokens=8, max_new_tokens=4)
        assert eng.wait_idle(60)
        eng.set_residency("a", 1.0)
        eng.cancel_workload(wid)
        text = scenario_from_log(eng, name="session")
    s = parse_scenario(text, tmp_path / "session.toml")
    assert s.device.kind == "sim" and s.workloads[0].id == wid
    assert s.timeline[-1].action == "cancel_workload" and s.timeline[-1].workload == wid
    (tmp_path / "session.toml").write_text(text)
    res = run_file(tmp_path / "session.toml", out=tmp_path / "b", progress=False)
    assert res.summary["runs"][0]["refused"] == [] and res.summary["runs"][0]["finished"]


def test_engine_ids_are_only_written_where_a_command_names_them():
    from labtui.engine import Engine

    with Engine(device="sim", memory_gib=1) as eng:
        eng.load("zoo:llama-5m", id="a")
        eng.launch_workload("a", requests=1, prompt_tokens=8, max_new_tokens=2)
        assert eng.wait_idle(60)
        s = parse_scenario(scenario_from_log(eng), "r.toml")
    assert s.workloads[0].id is None  # the log as it was: nothing refers to the id
