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


# -- a real run on the real engine (tiny model, a few seconds) ---------------

import json  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from _bundles import TINY, tiny_bundle, write_tiny  # noqa: E402

from labtui.cli import main  # noqa: E402
from labtui.scenario.bundle import METRICS_COLUMNS, read_bundle  # noqa: E402
from labtui.scenario.schema import load_scenario  # noqa: E402
from labtui.scenario.sweep import expand  # noqa: E402


def _lines(p: Path) -> list[dict]:
    return [json.loads(line) for line in p.read_text().splitlines()]


def test_run_writes_a_complete_bundle():
    b = tiny_bundle()
    assert {f.name for f in b.iterdir()} >= {"scenario.toml", "env.json", "events.jsonl", "metrics.csv", "summary.json"}
    env = json.loads((b / "env.json").read_text())
    assert env["labtui_version"] and env["device"]["kind"] == "sim" and "argv" in env and env["started"]
    events = _lines(b / "events.jsonl")
    assert all({"point", "rep", "phase", "kind", "t"} <= e.keys() for e in events)
    starts = [e for e in events if e["kind"] == "point_start"]
    assert [(e["point"], e["rep"]) for e in starts] == [(0, 0), (1, 0), (2, 0), (3, 0)]
    assert {e["phase"] for e in events} == {"setup", "warmup", "run"}
    assert any(e["kind"] == "note" and e["text"] == "hello" for e in events)
    header, *rows = (b / "metrics.csv").read_text().splitlines()
    assert tuple(header.split(",")) == METRICS_COLUMNS and rows
    s = json.loads((b / "summary.json").read_text())
    assert s["runs_done"] == s["runs_planned"] == 4 and not s["interrupted"] and not s["timed_out"]
    assert s["warnings"] == []
    assert all(r["finished"] for r in s["runs"])
    # normalised to the same pause point's fully resident run
    for p in s["points"]:
        n = p["models"]["A"]["normalised"]["mean"]
        if p["values"]["residency"] == 1.0:
            assert n == pytest.approx(1.0)
        else:
            assert n == pytest.approx(p["models"]["A"]["decode_tok_s"]["mean"] / next(
                q["models"]["A"]["decode_tok_s"]["mean"] for q in s["points"]
                if q["values"]["residency"] == 1.0
                and q["values"]["pause_after_tokens"] == p["values"]["pause_after_tokens"]))


def test_pause_points_preempt_after_n_tokens_with_four_phases():
    s = json.loads((tiny_bundle() / "summary.json").read_text())
    for r in s["runs"]:
        pre = r["engine"]["models"]["A"]["preemptions"]
        if r["values"]["pause_after_tokens"] == 0:
            assert pre == []  # the uninterrupted baseline
        else:
            (p,) = pre
            assert p["complete"] and p["at_tokens"] >= 6 and p["reload_s"] > 0 and p["kv_out_bytes"] > 0
            assert {"kv_out_s", "release_s", "reload_s", "kv_in_s", "recompute_s"} <= p.keys()


def test_same_greedy_tokens_whatever_placement_and_preemption():
    events = _lines(tiny_bundle() / "events.jsonl")
    digests = {e["digest"] for e in events if e["kind"] == "request_finish" and e["phase"] == "run"}
    assert len(digests) == 1


def test_warm_up_is_excluded_from_timing():
    events = _lines(tiny_bundle() / "events.jsonl")
    warm = [e for e in events if e["kind"] == "request_finish" and e["phase"] == "warmup"]
    assert len(warm) == 4 and all(e["new_tokens"] == 2 for e in warm)
    s = json.loads((tiny_bundle() / "summary.json").read_text())
    assert all(r["stats"]["A"]["requests"] == 1 and r["stats"]["A"]["tokens"] == 60 for r in s["runs"])


def test_bundle_scenario_replays_the_same_points():
    b = tiny_bundle()
    again = load_scenario(b / "scenario.toml")
    orig = load_scenario(write_tiny(b.parent / "copy"))
    assert [p.values for p in expand(again)] == [p.values for p in expand(orig)]
    assert again.commands() == orig.commands()


def test_an_existing_bundle_is_never_overwritten(tmp_path, capsys):
    out = tmp_path / "b"
    out.mkdir()
    (out / "summary.json").write_text("{}")
    rc = main(["run", str(write_tiny(tmp_path)), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "never overwritten" in err
    assert (out / "summary.json").read_text() == "{}"


def test_unwritable_out_is_one_line(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    rc = main(["run", str(write_tiny(tmp_path)), "--out", str(blocker / "sub")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err


def test_run_timeout_stops_and_says_so(tmp_path):
    from labtui.scenario.runner import run_file

    text = TINY.replace("timeout_s = 120", "timeout_s = 1.5").replace("max_new_tokens = 60", "max_new_tokens = 100000")
    text = text.replace("requests = 1\n", "requests = 1000\n")
    t0 = time.monotonic()
    res = run_file(write_tiny(tmp_path, text), out=tmp_path / "b", progress=False)
    assert time.monotonic() - t0 < 60
    assert res.summary["timed_out"] and res.summary["runs_done"] == 1
    assert any("timeout" in w for w in res.summary["warnings"])


def test_ctrl_c_finishes_summary_marked_interrupted(tmp_path):
    text = TINY.replace("requests = 1\n", "requests = 1000\n")
    out = tmp_path / "b"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "labtui", "run", str(write_tiny(tmp_path, text)),
                             "--out", str(out)], stderr=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:  # wait until timing has begun
            ev = out / "events.jsonl"
            if ev.exists() and '"request_finish"' in ev.read_text():
                break
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(60)
    finally:
        proc.kill()
    assert rc == 130
    s = json.loads((out / "summary.json").read_text())
    assert s["interrupted"] and s["runs_done"] >= 1
    b = read_bundle(out)
    assert b.events and b.summary["interrupted"]


@pytest.mark.slow
def test_design_example_runs_as_written(tmp_path, request):
    """The two-model example end to end (12 s of timeline and a 150M model): opt in
    with `pytest -m slow` or LABTUI_SLOW=1."""
    from labtui.scenario.runner import run_file

    if "slow" not in (request.config.getoption("-m") or "") and not os.environ.get("LABTUI_SLOW"):
        pytest.skip("slow: run with -m slow or LABTUI_SLOW=1")

    res = run_file("two-models", out=tmp_path / "b", quick=True, device="sim", progress=False)
    assert res.summary["runs"][0]["finished"] and not res.summary["warnings"]
    assert res.summary["models"]["small"]["preemptions"][0]["complete"]


def test_check_prints_runs_and_an_estimate(capsys):
    from labtui.cli import main

    assert main(["run", "--check", "offload-sweep"]) == 0
    out = capsys.readouterr().out
    assert "190 point(s) x 3-10 repeat(s) = 570 run(s), about " in out
    assert "--quick: 12 x 3-5 = 36 run(s), about " in out and "estimate" in out


def test_estimate_grows_with_work_and_respects_cancel_and_timeout():
    from labtui.scenario.estimate import estimate
    from labtui.scenario.schema import load_scenario
    from labtui.scenario.sweep import apply_quick, expand, repeat_count

    scn = load_scenario("offload-sweep")
    q = apply_quick(scn)
    full = estimate(expand(scn), repeat_count(scn), 1e9)
    fast = estimate(expand(q), repeat_count(q), 1e9)
    assert full.runs == 570 and fast.runs == 36 and full.seconds > 5 * fast.seconds > 0
    assert estimate(expand(scn), repeat_count(scn), 60.0).capped
    tour = load_scenario("tour")  # 400 requests per workload, cancelled at t = 40 s
    t = estimate(expand(tour), 1, 1e9).seconds
    assert 40 < t < 120


def test_progress_eta_from_measured_runs(monkeypatch):
    from labtui.scenario import progress as P

    now = [100.0]
    monkeypatch.setattr(P.time, "monotonic", lambda: now[0])
    p = P.Progress("t", enabled=False)
    p.set_plan(4, estimate_s=40.0)
    assert p.eta_s() == 40.0 and "(estimated)" in p.eta_text()
    now[0] += 20.0  # the first run took 20 s, not the estimated 10 s
    p.run_done()
    p.run_started()
    assert p.eta_s() == 60.0 and "(estimated)" not in p.eta_text()
    now[0] += 5.0
    assert p.eta_s() == 55.0
