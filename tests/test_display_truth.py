"""What the lab shows is what the engine did: the layer map, residency and ledger of
a preempted model, the two speeds and their first samples, and the frozen engine's
hand-built states held to the same invariants as the real engine's snapshots."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest

from labtui.engine import Engine
from labtui.engine.metrics import MIN_SPAN_S, MIN_TOKENS, ModelMetrics
from labtui.engine.snapshot import (
    CELL_HOST,
    CELL_PARKED,
    CELL_RELEASED,
    CELL_RESIDENT,
    CELL_STREAM,
    model_problems,
    snapshot_problems,
)
from labtui.tui.frozen import demo_snapshot

PROMPT = "The lab shows where every block's weights are while a model is paused"


@pytest.fixture(scope="module")
def eng():
    e = Engine(device="sim", memory_gib=2, link=8.0, host_slowdown=1.0)
    e.load("zoo:llama-5m", id="a", residency=0.5, offload="stream")
    e.load("zoo:llama-5m", id="b", residency=0.5, offload="host")
    yield e
    e.close()


def _running(eng, model, n_tokens=8):
    req = eng.submit(model, PROMPT, max_new_tokens=400)
    while len(req.out_ids) < n_tokens:
        time.sleep(0.001)
    return req


@pytest.mark.parametrize(("kv", "weights"), [("swap", "host"), ("drop", "disk"), ("keep", "host"), ("swap", "disk")])
def test_preempted_map_shows_where_the_weights_are(eng, kv, weights):
    snap = eng.fresh_snapshot()
    assert snapshot_problems(snap) == []
    a = snap.model("a")
    assert a.layer_cells == CELL_RESIDENT * 3 + CELL_STREAM * 3 and a.residency == 0.5
    assert snap.model("b").layer_cells == CELL_RESIDENT * 3 + CELL_HOST * 3
    req = _running(eng, "a")
    eng.preempt("a", kv=kv, weights=weights)
    try:
        snap = eng.fresh_snapshot()
        a = snap.model("a")
        cell = CELL_RELEASED if weights == "disk" else CELL_PARKED
        # every block, resident before or not, is parked/released: none on the accelerator
        assert a.state == "preempted" and a.layer_cells == cell * 6
        assert a.resident_layers == 0 and a.residency == 0.0
        assert a.ledger.accel_weights == 0
        assert a.paused_where == (weights, {"swap": "host", "keep": "accelerator", "drop": "dropped"}[kv])
        assert (a.ledger.host_weights > 0) == (weights == "host")
        assert snapshot_problems(snap) == [], snapshot_problems(snap)
    finally:
        eng.resume("a")
    snap = eng.fresh_snapshot()
    a = snap.model("a")
    assert a.layer_cells == CELL_RESIDENT * 3 + CELL_STREAM * 3 and a.residency == 0.5
    assert snapshot_problems(snap) == []
    assert req.done.wait(120)
    eng.check_invariants()


def test_every_published_snapshot_is_possible_during_preemptions(eng):
    """The snapshots frontends read (not only fresh ones) around preempt/resume."""
    seen: list = []
    req = _running(eng, "b")
    stop = time.monotonic() + 60
    for kv, weights in (("swap", "disk"), ("keep", "host")):
        eng.preempt("b", kv=kv, weights=weights)
        for _ in range(5):
            seen.append(eng.snapshot())
            time.sleep(0.02)
        eng.resume("b")
        for _ in range(5):
            seen.append(eng.snapshot())
            time.sleep(0.02)
    req.done.wait(max(1, stop - time.monotonic()))
    bad = [p for s in seen for p in snapshot_problems(s)]
    assert bad == []
    assert any(s.model("b").state == "preempted" for s in seen)


def test_served_and_decode_rates_have_no_first_sample_spike():
    m = ModelMetrics()
    t = 100.0
    m.on_step(t, 1, 0.002, 0, decode=False)  # prefill
    for _ in range(3):
        t += 0.001
        m.on_step(t, 1, 0.001, 1000, decode=True)
    # 4 tokens in 5 ms would read ~800 tok/s: too little measured, no rate
    assert m.served_tok_s(t) is None and m.decode_tok_s(t) is None
    # a steady 10 ms per token (5 ms of it decoding): served 100, decode 200
    while t < 100.0 + MIN_SPAN_S + 3.5:
        t += 0.01
        m.on_step(t, 1, 0.005, 1000, decode=True)
    assert m.served_tok_s(t) == pytest.approx(100, rel=0.05)
    assert m.decode_tok_s(t) == pytest.approx(200, rel=0.05)
    assert m.served_tok_s(t) <= m.decode_tok_s(t)
    # idle: the served rate falls with wall time, decode keeps its last tokens' rate
    assert m.served_tok_s(t + 1.5) == pytest.approx(50, rel=0.1)
    assert m.decode_tok_s(t + 1.5) == pytest.approx(200, rel=0.05)
    assert m.decode_tok_s(t + 40) is None  # nothing measured in the long window
    s = m.summary()
    assert set(s) >= {"decode_tok_s", "served_tok_s"} and "tok_s_overall" not in s


def test_a_slow_model_still_shows_a_rate():
    m = ModelMetrics()
    t = 0.0
    for _ in range(MIN_TOKENS + 2):  # 2 tok/s: fewer than MIN_TOKENS in 3 s
        t += 0.5
        m.on_step(t, 1, 0.4, 0, decode=True)
    assert m.decode_tok_s(t) == pytest.approx(2.5, rel=0.01)
    assert m.served_tok_s(t) == pytest.approx(2.0, rel=0.15)


def test_real_engine_rates_start_without_a_spike():
    with Engine(device="sim", memory_gib=2, link=40.0, host_slowdown=1.0) as e:
        e.load("zoo:llama-5m", id="a")
        req = e.submit("a", PROMPT, max_new_tokens=2000)
        firsts = []
        while not req.done.is_set() and len(firsts) < 200:
            m = e.snapshot().model("a")
            if m.served_tok_s is not None:
                firsts.append((m.served_tok_s, m.decode_tok_s, m.decode_tokens))
            time.sleep(0.01)
        summ = e.summary()["models"]["a"]
    assert firsts, "no rate shown in 2 s of decoding"
    served0, decode0, n0 = firsts[0]
    assert n0 >= MIN_TOKENS
    assert served0 <= decode0 * 1.1
    # the first shown rate is within the run's own range, not a spike above it
    assert decode0 <= 1.5 * max(d for _, d, _ in firsts[len(firsts) // 2 :])
    assert summ["served_tok_s"] <= summ["decode_tok_s"]


@pytest.mark.parametrize("kind", ["default", "moving", "preempted", "preempted-disk", "empty"])
def test_frozen_states_are_states_the_engine_can_produce(kind):
    assert snapshot_problems(demo_snapshot(kind)) == []


def test_the_check_catches_what_the_old_frozen_engine_showed():
    snap = demo_snapshot("preempted")
    small = snap.model("small")
    # the old hand-built preempted card: "on host" cells, weights still on the accelerator
    old = replace(small, layer_cells=CELL_HOST * 8, ledger=replace(small.ledger, accel_weights=100))
    assert model_problems(old)
    assert model_problems(replace(small, layer_cells=CELL_RESIDENT * 8, residency=1.0))


BUNDLE_SCN = '''
[lab]
name = "preempted-truth"
timeout_s = 120

[device]
kind = "sim"
memory_gib = 1

[[models]]
id = "A"
source = "zoo:llama-5m"
residency = 0.5

[[workloads]]
model = "A"
id = "a-job"
requests = 1
prompt_tokens = 16
max_new_tokens = 80

[[timeline]]
action = "preempt"
model = "A"
kv = "swap"
weights = "disk"
when = { model = "A", tokens = 10 }

[[timeline]]
action = "resume"
model = "A"
at = 1.5
'''


def test_bundle_metrics_events_and_summary_agree_on_a_preemption(tmp_path):
    import csv
    import json

    from labtui.scenario.runner import run_file

    f = tmp_path / "s.toml"
    f.write_text(BUNDLE_SCN)
    res = run_file(f, out=tmp_path / "b", progress=False)
    assert not res.interrupted
    rows = list(csv.DictReader(open(res.path / "metrics.csv")))
    paused = [r for r in rows if r["state"] == "preempted"]
    serving = [r for r in rows if r["state"] == "serving"]
    assert paused and serving
    for r in paused:  # the model's weights are on disk: nothing on the accelerator
        assert (r["resident_layers"], float(r["residency"]), r["paused_weights"], r["paused_kv"]) == (
            "0", 0.0, "disk", "host")
        assert int(r["accel_weights_bytes"]) == 0 and int(r["accel_kv_bytes"]) == 0
        assert r["decode_tok_s"] == ""  # no decode in the window while paused: no rate
    assert {r["resident_layers"] for r in serving} == {"3"}
    assert all(r["paused_weights"] == "" for r in serving)
    ev = [json.loads(x) for x in open(res.path / "events.jsonl")]
    pre = [e for e in ev if e["kind"] == "preempt"]
    assert len(pre) == 1 and pre[0]["at_tokens"] == 10 and pre[0]["weights"] == "disk"
    summ = json.loads((res.path / "summary.json").read_text())
    eng = summ["runs"][0]["engine"]["models"]["A"]
    assert eng["served_tok_s"] <= eng["decode_tok_s"]
    assert eng["preemptions"][0]["at_tokens"] == 10


def test_report_decode_rate_is_the_engines_decode_rate():
    """stats.run_stats (summary.json's stats, the report) computes decode tok/s from
    the request_finish events: the same number as the engine's own, batched or not."""
    from labtui.scenario.stats import run_stats

    with Engine(device="sim", memory_gib=2, link=40.0, host_slowdown=1.0) as e:
        e.load("zoo:llama-5m", id="a", max_batch=4)
        reqs = [e.submit("a", PROMPT, max_new_tokens=n) for n in (40, 25, 60)]
        for r in reqs:
            assert r.done.wait(120)
        e.wait_idle(30)
        m = e.fresh_snapshot().model("a")
        evs = [{"kind": ev.kind, "t": ev.t, **ev.data} for ev in e.events_since(0)]
    st = run_stats(evs)["a"]
    assert m.decode_tokens == sum(n - 1 for n in (40, 25, 60))
    assert st["decode_tok_s"] == pytest.approx(m.decode_tokens / m.decode_s, rel=1e-3)
    assert st["served_tok_s"] <= st["decode_tok_s"]


def test_ttft_tpot_percentiles_are_numpy_linear_over_the_last_5000():
    """The snapshot's p50/p95 come from a list kept sorted beside the window: the same
    values, to the last bit, as numpy's percentile over the window's values."""
    import random

    import numpy as np

    rng = random.Random(7)
    m = ModelMetrics()
    assert m.percentiles() == (None, None, None, None)
    vals: list[float] = []
    for n in (1, 2, 3, 17, 5000, 6234):  # past 5000 the oldest values leave
        while len(vals) < n:
            x = rng.lognormvariate(-3, 1) if rng.random() > 0.1 else round(rng.random(), 1)  # ties too
            vals.append(x)
            m.on_finish(x, x / 7)
        m._pct = None
        last = np.asarray(vals[-5000:])
        want = tuple(float(np.percentile(a, q)) for a in (last, last / 7) for q in (50, 95))
        assert m.percentiles() == want
        assert list(m.ttft) == vals[-5000:] and len(m.tpot) == min(n, 5000)
