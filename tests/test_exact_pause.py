"""`when tokens` / pause-after-N: the command runs in the engine between two steps,
at exactly N generated tokens, not at the frontend's next poll."""

from __future__ import annotations

import time

import pytest

from labtui.engine import Engine
from labtui.engine import commands as C
from labtui.errors import LabError
from labtui.scenario.player import play_timeline
from labtui.scenario.schedule import Schedule
from labtui.scenario.schema import parse_scenario

PROMPT = "A pause point is a token count, not a time"


@pytest.fixture(scope="module")
def eng():
    # a fast link and a tiny model: ~1 ms a token, many tokens per 20 ms poll
    e = Engine(device="sim", memory_gib=2, link=40.0, host_slowdown=1.0)
    e.load("zoo:llama-5m", id="a")
    yield e
    e.close()


@pytest.mark.parametrize("n", [1, 2, 9, 40])
def test_armed_preempt_runs_at_exactly_n_tokens(eng, n):
    base = eng.fresh_snapshot().model("a").tokens_generated
    fut = eng.submit_when_tokens(C.Preempt(model="a", kv="swap", weights="host"), "a", base + n)
    req = eng.submit("a", PROMPT, max_new_tokens=200)
    rep = fut.result(60)
    assert rep.at_tokens == n
    assert len(req.out_ids) == n  # nothing decoded after the count was reached
    time.sleep(0.05)
    assert len(req.out_ids) == n  # and it stays paused
    assert eng.snapshot().model("a").state == "preempted"
    eng.resume("a")
    assert req.done.wait(60) and len(req.out_ids) == 200


def test_an_armed_command_already_due_runs_at_once_and_a_bad_one_is_refused(eng):
    base = eng.fresh_snapshot().model("a").tokens_generated
    fut = eng.submit_when_tokens(C.Note(text="now"), "a", base)
    assert fut.result(10) is None
    with pytest.raises(LabError):
        eng.submit_when_tokens(C.Preempt(model="a"), "nobody", 1)
    # cancelled before it fires: never runs
    fut = eng.submit_when_tokens(C.Preempt(model="a", kv="drop", weights="host"), "a", base + 10**9)
    assert fut.cancel()
    eng.generate("a", PROMPT, max_new_tokens=8)
    assert eng.snapshot().model("a").state != "preempted"


def test_scenario_pause_after_n_tokens_is_exact(eng):
    n = 25
    scn = parse_scenario(
        '[[models]]\nid = "a"\nsource = "zoo:llama-5m"\n'  # loaded already (load=False)
        '[[workloads]]\nmodel = "a"\nid = "job"\nrequests = 1\nprompt_tokens = 16\nmax_new_tokens = 120\n'
        f'[[timeline]]\naction = "preempt"\nmodel = "a"\nkv = "swap"\nweights = "disk"\nwhen = {{ model = "a", tokens = {n} }}\n'
        '[[timeline]]\naction = "resume"\nmodel = "a"\nat = 0.3\n',
        "x.toml",
    )
    seq = eng.fresh_snapshot().events_total
    res = play_timeline(scn, eng, load=False, until_idle=True, deadline=time.monotonic() + 120)
    assert res.finished and not res.refused, res
    ev = [e for e in eng.events_since(seq) if e.kind in ("preempt", "request_finish")]
    pre = [e for e in ev if e.kind == "preempt"]
    assert len(pre) == 1 and pre[0].data["at_tokens"] == n
    assert [e.data["new_tokens"] for e in ev if e.kind == "request_finish"] == [120]


class _View:
    def __init__(self):
        self.fired_set, self.tok = set(), 0

    def tokens(self, m):
        return self.tok

    def completed(self, m):
        return 0

    def workload_done(self, w):
        return False

    def idle(self):
        return False

    def stuck(self):
        return False

    def fired(self, src):
        return src in self.fired_set


def test_exact_schedule_arms_once_and_waits_until_fired():
    scn = parse_scenario(
        '[[models]]\nid = "a"\nsource = "zoo:llama-5m"\n'
        '[[timeline]]\naction = "preempt"\nmodel = "a"\nwhen = { model = "a", tokens = 7 }\n'
        '[[timeline]]\naction = "resume"\nmodel = "a"\n',
        "x.toml",
    )
    sch, v = Schedule(scn, exact=True), _View()
    steps = sch.due(0.0, v)
    assert [(s.kind, s.when_tokens) for s in steps] == [("arm", ("a", 7))]
    v.tok = 100  # the count alone does not advance it: the engine's firing does
    assert sch.due(0.1, v) == []
    v.fired_set.add("timeline[0]")
    assert [s.command.action for s in sch.due(0.2, v)] == ["resume"]
    assert sch.done
