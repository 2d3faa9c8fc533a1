"""The runner: its schedule (pure, fake clock and view) and a real quick run."""

from __future__ import annotations

from dataclasses import dataclass, field

from labtui.engine import commands as C
from labtui.scenario.schedule import Schedule
from labtui.scenario.schema import parse_scenario

HEAD = '[[models]]\nid = "a"\nsource = "zoo:llama-5m"\n[[models]]\nid = "b"\nsource = "zoo:llama-5m"\n'


@dataclass
class FakeView:
    tok: dict = field(default_factory=dict)
    done_models: dict = field(default_factory=dict)
    done_workloads: set = field(default_factory=set)
    is_idle: bool = False
    is_stuck: bool = False

    def tokens(self, m):
        return self.tok.get(m, 0)

    def completed(self, m):
        return self.done_models.get(m, 0)

    def workload_done(self, w):
        return w in self.done_workloads

    def idle(self):
        return self.is_idle

    def stuck(self):
        return self.is_stuck or self.is_idle


def cmds(steps):
    return [s.command for s in steps if s.kind == "command"]


def test_workloads_launch_at_their_time_independently_of_the_timeline():
    s = parse_scenario(HEAD + '[[workloads]]\nmodel = "a"\nat = 2\n[[workloads]]\nmodel = "b"\nat = 0\n'
                       '[[timeline]]\naction = "wait_idle"\n', "x.toml")
    sch, v = Schedule(s), FakeView()
    assert [c.model for c in cmds(sch.due(0.0, v))] == ["b"]  # wait_idle holds only the timeline
    assert cmds(sch.due(1.9, v)) == []
    assert [c.model for c in cmds(sch.due(2.0, v))] == ["a"]
    assert not sch.done
    v.is_idle = True
    assert [st.kind for st in sch.due(2.1, v)] == ["wait_done"]
    assert sch.done


def test_timeline_runs_in_file_order_at_its_times():
    s = parse_scenario(HEAD + '[[timeline]]\nat = 1\naction = "note"\ntext = "one"\n'
                       '[[timeline]]\nat = 1\naction = "set_mode"\nmodel = "a"\nmode = "host"\n'
                       '[[timeline]]\nat = 3\naction = "resume"\nmodel = "a"\n', "x.toml")
    sch, v = Schedule(s), FakeView()
    assert sch.due(0.5, v) == [] and sch.next_time() == 1
    assert cmds(sch.due(1.0, v)) == [C.Note(text="one"), C.SetMode(model="a", mode="host")]
    assert cmds(sch.due(2.9, v)) == []
    assert cmds(sch.due(10.0, v)) == [C.Resume(model="a")] and sch.done


def test_when_tokens_and_workload_conditions_hold_the_timeline():
    s = parse_scenario(
        HEAD + '[[workloads]]\nmodel = "a"\nid = "wa"\n'
        '[[timeline]]\naction = "preempt"\nmodel = "a"\nwhen = { model = "a", tokens = 100 }\n'
        '[[timeline]]\naction = "launch_workload"\nmodel = "b"\nid = "wb"\n'
        '[[timeline]]\naction = "resume"\nmodel = "a"\nwhen = { workload = "wb" }\n'
        '[[timeline]]\naction = "note"\ntext = "done"\nwhen = { model = "b", completed = 2 }\n', "x.toml")
    sch, v = Schedule(s), FakeView()
    first = sch.due(0.0, v)
    assert first[0].workload_id == "wa" and len(first) == 1
    v.tok["a"] = 99
    assert sch.due(0.1, v) == []
    v.tok["a"] = 100
    steps = sch.due(0.2, v)
    assert cmds(steps) == [C.Preempt(model="a"), C.LaunchWorkload(model="b", id="wb")]
    assert steps[1].workload_id == "wb" and steps[1].source == "timeline[1]"
    assert sch.due(0.3, v) == []
    v.done_workloads.add("wb")
    v.done_models["b"] = 1
    assert cmds(sch.due(0.4, v)) == [C.Resume(model="a")]
    v.done_models["b"] = 2
    assert cmds(sch.due(0.5, v)) == [C.Note(text="done")] and sch.done


def test_wait_idle_times_out():
    s = parse_scenario(HEAD + '[[timeline]]\nat = 1\naction = "wait_idle"\ntimeout_s = 5\n'
                       '[[timeline]]\nat = 1\naction = "note"\ntext = "after"\n', "x.toml")
    sch, v = Schedule(s), FakeView()
    assert sch.due(1.0, v) == [] and sch.due(5.9, v) == []
    steps = sch.due(6.0, v)
    assert [st.kind for st in steps] == ["wait_timeout", "command"]


def test_a_condition_that_cannot_happen_is_reported_and_skipped():
    s = parse_scenario(HEAD + '[[workloads]]\nmodel = "a"\n'
                       '[[timeline]]\naction = "preempt"\nmodel = "a"\nwhen = { model = "a", tokens = 500 }\n'
                       '[[timeline]]\naction = "resume"\nmodel = "a"\n', "x.toml")
    sch, v = Schedule(s), FakeView(tok={"a": 32})
    sch.due(0.0, v)
    assert sch.stalled(v) is None  # still generating: it may yet happen
    v.is_idle = True
    why = sch.stalled(v)
    assert why is not None and "timeline[0]" in why
    assert sch.skip_rest() == ["timeline[0]", "timeline[1]"] and sch.done
