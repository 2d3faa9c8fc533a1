"""Sweeps expand to exactly the expected points; --quick follows its rules."""

from __future__ import annotations

import pytest

from labtui.errors import LabError
from labtui.scenario.schema import load_scenario, parse_scenario
from labtui.scenario.sweep import (
    apply_quick,
    expand,
    protocol,
    repeat_count,
    residency_layers,
    round_layers,
    warmup_tokens,
)

STUDY = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 0.92, 0.94, 0.96, 0.98]
ONE = '[[models]]\nid = "m"\nsource = "zoo:llama-5m"\n[[workloads]]\nmodel = "m"\nmax_new_tokens = 50\n'


def test_round_layers_is_half_up():
    assert round_layers(0.5, 5) == 3  # not banker's 2
    assert round_layers(0.1, 24) == 2 and round_layers(0.3, 8) == 2 and round_layers(1.0, 7) == 7


def test_study_residencies_for_24_and_8_layers():
    # 0.1*24 = 2.4 -> 2 ... 0.92*24 = 22.08 -> 22 (same as 0.9), 0.94 -> 23, 0.96 -> 23, 0.98 -> 24
    assert residency_layers(STUDY, 24) == [0, 2, 5, 7, 10, 12, 14, 17, 19, 22, 23, 24]
    assert residency_layers(STUDY, 8) == [0, 1, 2, 3, 4, 5, 6, 7, 8]


@pytest.mark.parametrize("n,expected", [(24, [0, 2, 5, 7, 10, 12, 14, 17, 19, 22, 23, 24]),
                                        (8, [0, 1, 2, 3, 4, 5, 6, 7, 8])])
def test_expand_offload_residencies(n, expected):
    s = parse_scenario(ONE + f"[sweep]\nresidency = {STUDY}\n", "x.toml")
    pts = expand(s, layers_of=lambda src: n)
    assert [p.values["resident_layers"]["m"] for p in pts] == expected
    assert [p.scenario.models[0].residency for p in pts] == [k / n for k in expected]
    assert [p.index for p in pts] == list(range(len(expected)))
    assert all(p.scenario.sweep is None for p in pts)


def test_builtin_offload_sweep_points_per_model():
    s = load_scenario("offload-sweep")
    pts = expand(s)  # real zoo layer counts: qwen3-10m has 6 blocks, qwen3-150m 16
    by_model: dict[str, set] = {}
    for p in pts:
        by_model.setdefault(p.values["model"], set()).add(p.values["resident_layers"]["m"])
    assert by_model["zoo:qwen3-10m"] == set(residency_layers(STUDY, 6)) == {0, 1, 2, 3, 4, 5, 6}
    assert by_model["zoo:qwen3-150m"] == set(residency_layers(STUDY, 16))
    n6, n16 = len(residency_layers(STUDY, 6)), len(residency_layers(STUDY, 16))
    assert len(pts) == (n6 + n16) * 2 * 5  # x offload modes x output lengths
    assert repeat_count(s) == 3 and warmup_tokens(s) == 8
    p = pts[0]
    assert p.scenario.models[0].source == "zoo:qwen3-10m"
    assert p.scenario.workloads[0].max_new_tokens == p.values["max_new_tokens"]
    assert p.scenario.models[0].offload == p.values["offload"]


def test_product_order_outer_axes_first():
    s = parse_scenario(ONE + "[sweep]\noffload = ['stream', 'host']\nmax_new_tokens = [8, 16]\n", "x.toml")
    assert [(p.values["offload"], p.values["max_new_tokens"]) for p in expand(s)] == [
        ("stream", 8), ("stream", 16), ("host", 8), ("host", 16)]


def test_layers_axis_and_its_limit():
    s = parse_scenario(ONE + "[sweep]\nlayers = [0, 3, 6]\n", "x.toml")
    assert [p.scenario.models[0].residency for p in expand(s)] == [0.0, 0.5, 1.0]
    s = parse_scenario(ONE + "[sweep]\nlayers = [4]\n", "x.toml")
    with pytest.raises(LabError, match="more than"):
        expand(s, layers_of=lambda src: 2)


def test_workload_axes_only_touch_target_models():
    s = parse_scenario(
        ONE + '[[models]]\nid = "o"\nsource = "zoo:llama-5m"\n[[workloads]]\nmodel = "o"\n'
        'max_new_tokens = 7\n[sweep]\nmodels = ["m"]\nmax_new_tokens = [11]\nconcurrency = [3]\n'
        'residency = [0.5]\n', "x.toml")
    (p,) = expand(s)
    w_m, w_o = p.scenario.workloads
    assert (w_m.max_new_tokens, w_m.concurrency) == (11, 3)
    assert (w_o.max_new_tokens, w_o.concurrency) == (7, 1)
    assert p.scenario.models[1].residency == 1.0


def test_preemption_pause_points_and_pairs():
    s = load_scenario("preemption")
    pts = expand(s)
    assert len(pts) == 4 * 2 * 6
    base = [p for p in pts if p.values["pause_after_tokens"] == 0]
    paused = [p for p in pts if p.values["pause_after_tokens"] == 300]
    assert all(p.scenario.timeline == [] for p in base)  # uninterrupted: no pause episode
    for p in paused:
        pre = p.scenario.timeline[0]
        assert pre.action == "preempt" and pre.when.tokens == 300 and pre.weights == p.values["weights"]
        load_b = p.scenario.timeline[1]
        assert load_b.id == "B" and load_b.source == p.values["sources"]["B"]
        assert p.scenario.models[0].source == p.values["sources"]["A"]


def test_link_axis_sets_the_device():
    s = load_scenario("link-bandwidth")
    links = [p.values["link"] for p in expand(s)]
    assert links[0] == 4.0 and "nvlink-c2c" in links
    assert all(p.scenario.device.link == p.values["link"] for p in expand(s))


def test_no_sweep_is_one_point():
    (p,) = expand(parse_scenario(ONE, "x.toml"))
    assert p.values == {} and p.label() == "single run"


# -- --quick -----------------------------------------------------------------


def test_quick_default_rule():
    s = parse_scenario(ONE.replace("max_new_tokens = 50", "max_new_tokens = 500\nrequests = 40")
                       + f"[[timeline]]\nat = 3\naction = 'note'\ntext = 'x'\n"
                       f"[sweep]\nresidency = {STUDY}\nmax_new_tokens = [50, 100, 1000, 5000]\nrepeat = 3\n",
                       "x.toml")
    q = apply_quick(s)
    assert q.workloads[0].requests == 2 and q.workloads[0].max_new_tokens == 32
    assert q.sweep.residency == [0.0, 0.7, 1.0]  # sorted (15 values), then first, middle, last
    assert q.sweep.max_new_tokens == [32]  # thinned to 3, capped, duplicates dropped
    assert repeat_count(q) == 1 and q.timeline[0].at == 3
    assert q.lab.timeout_s <= 110 and q.quick is None


def test_quick_table_overrides():
    s = load_scenario("offload-sweep")
    q = apply_quick(s)
    assert q.sweep.model == ["zoo:qwen3-10m"]
    assert q.sweep.residency == [0.0, 0.2, 0.4, 0.6, 0.8, 0.92, 1.0]
    assert q.sweep.offload == ["stream", "host"] and q.sweep.max_new_tokens == [32]
    # 6 layers: 0.92 rounds to 6 layers like 1.0 and is dropped
    assert len(expand(q)) == 12 and repeat_count(q) == 3 and warmup_tokens(q) == 6
    assert protocol(q).max_repeat == 5 and protocol(q).ci_rel_width == 0.03
    # the quick sweep keeps 1-s repetitions and gets the time its protocol needs
    assert q.sweep.rep_seconds == 1.0 and q.lab.timeout_s == 420
    t = apply_quick(load_scenario("tour"))
    assert t.timeline[-1].at == 20.0  # time_scale 0.5


@pytest.mark.parametrize("name", ["offload-sweep", "preemption", "seq-length", "link-bandwidth",
                                  "tour", "default", "two-models"])
def test_every_builtin_quick_is_small(name):
    q = apply_quick(load_scenario(name))
    # tiny models and short outputs: 72 short runs of offload-sweep (its protocol's
    # cap) take ~75 s here; the others repeat once
    assert len(expand(q)) * protocol(q).max_repeat <= 72
    assert all(w.requests <= 2 and w.max_new_tokens <= 48 for w in q.workloads)
