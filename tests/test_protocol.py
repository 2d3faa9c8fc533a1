"""The measurement protocol: medians with seeded bootstrap CIs, the normalised
ratio's CI carrying its denominator, and repetitions decided by the CI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from labtui.errors import LabError
from labtui.scenario.runner import run_scenario
from labtui.scenario.schema import parse_scenario
from labtui.scenario.stats import Protocol, median_ci, ratio_ci, rel_halfwidth
from labtui.scenario.sweep import apply_quick, protocol


def test_median_ci_is_seeded_and_covers_the_median():
    xs = [10.0, 11.0, 9.5, 10.2, 30.0, 10.1, 9.9, 10.4, 10.3]
    a, b = median_ci(xs), median_ci(xs)
    assert a == b and a["median"] == 10.2 and a["n"] == 9
    assert a["ci_lo"] <= a["median"] <= a["ci_hi"] and a["ci_hi"] < 30.0  # a median ignores the outlier
    one = median_ci([5.0])
    assert one["median"] == 5.0 and one["ci_lo"] is None and rel_halfwidth(one) == float("inf")
    assert median_ci([])["median"] is None and median_ci([None, float("nan")])["n"] == 0


def test_ci_narrows_with_repetitions():
    rng = np.random.default_rng(1)
    few, many = rng.normal(100, 5, 4), rng.normal(100, 5, 64)
    assert rel_halfwidth(median_ci(many)) < rel_halfwidth(median_ci(few))


def test_ratio_ci_carries_the_denominator():
    num = [50.0, 52.0, 48.0, 51.0, 49.0]
    exact_den, noisy_den = [100.0] * 5, [80.0, 120.0, 100.0, 90.0, 110.0]
    a, b = ratio_ci(num, exact_den), ratio_ci(num, noisy_den)
    assert a["median"] == b["median"] == pytest.approx(0.5)
    assert (b["ci_hi"] - b["ci_lo"]) > 2 * (a["ci_hi"] - a["ci_lo"])  # the denominator's spread shows
    assert ratio_ci([1.0], [2.0]) == {"median": 0.5, "ci_lo": None, "ci_hi": None, "n": 1}


def test_protocol_decisions():
    p = Protocol(min_repeat=2, max_repeat=6, min_seconds=1.0, ci_rel_width=0.05)
    tight = {"m": [100.0, 100.5, 99.8]}
    loose = {"m": [100.0, 130.0, 80.0]}
    assert p.needs_more(tight, 5.0, 1)  # below the minimum
    assert p.needs_more(tight, 0.5, 3)  # not enough timed seconds
    assert not p.needs_more(tight, 5.0, 3)  # narrow enough
    assert p.needs_more(loose, 5.0, 3)  # too wide
    assert not p.needs_more(loose, 5.0, 6)  # the cap
    assert not Protocol(3, 3).adaptive and p.adaptive


def test_sweep_fields_and_quick():
    scn = parse_scenario('[[models]]\nid = "A"\nsource = "zoo:llama-5m"\n[sweep]\nresidency = [1.0]\n'
                         'repeat = 2\nmax_repeat = 9\nmin_seconds = 3\nci_rel_width = 0.02\n'
                         '[quick]\nsweep = { max_repeat = 4 }\n')
    assert protocol(scn) == Protocol(2, 9, 3.0, 0.02)
    assert protocol(apply_quick(scn)) == Protocol(1, 4, 0.0, 0.05)  # only what [quick] gives
    with pytest.raises(LabError, match="max_repeat 1 is below repeat 2"):
        parse_scenario('[[models]]\nsource = "zoo:llama-5m"\n[sweep]\nrepeat = 2\nmax_repeat = 1\n')
    with pytest.raises(LabError, match="sweep.ci_rel_width: got 0"):
        parse_scenario('[[models]]\nsource = "zoo:llama-5m"\n[sweep]\nci_rel_width = 0\n')


TWO = '''
[lab]
name = "proto"
timeout_s = 100
[device]
kind = "sim"
memory_gib = 1
[[models]]
id = "A"
source = "zoo:llama-5m"
[[workloads]]
model = "A"
requests = 1
prompt_tokens = 8
max_new_tokens = 6
[sweep]
residency = [0.5, 1.0]
repeat = 2
max_repeat = 3
ci_rel_width = {w}
'''


@pytest.mark.parametrize("width, runs", [(1.0, 4), (1e-9, 6)])
def test_runner_repeats_until_the_ci_is_narrow_or_the_cap(tmp_path, width, runs):
    scn = parse_scenario(TWO.format(w=width))
    res = run_scenario(scn, out=tmp_path / "b", progress=False)
    s = res.summary
    assert s["runs_done"] == runs and s["protocol"]["max_repeat"] == 3
    # rounds: every point once before any point's next repetition; serpentine
    # (forward, then backward) so that no point is always measured last
    order = [(r["point"], r["rep"]) for r in s["runs"]]
    assert order[:4] == [(0, 0), (1, 0), (1, 1), (0, 1)]
    for p in s["points"]:
        d = p["models"]["A"]["decode_tok_s"]
        assert d["ci_lo"] <= d["median"] <= d["ci_hi"]
    env = json.loads((res.path / "env.json").read_text())
    assert env["threads"]["torch_num_threads"] >= 1 and "OMP_NUM_THREADS" in env["threads"]["env"]


def test_quick_keeps_rep_seconds_only_when_given():
    from labtui.scenario.sweep import rep_seconds

    scn = parse_scenario('[[models]]\nid = "A"\nsource = "zoo:llama-5m"\n[sweep]\nresidency = [1.0]\n'
                         'rep_seconds = 2\n[quick]\nsweep = { repeat = 1 }\n')
    assert rep_seconds(scn) == 2.0 and rep_seconds(apply_quick(scn)) == 0.0
    scn = parse_scenario('[[models]]\nid = "A"\nsource = "zoo:llama-5m"\n[sweep]\nresidency = [1.0]\n'
                         '[quick]\nsweep = { rep_seconds = 0.5 }\n')
    assert rep_seconds(apply_quick(scn)) == 0.5
    with pytest.raises(LabError, match="sweep.rep_seconds"):
        parse_scenario('[[models]]\nsource = "zoo:llama-5m"\n[sweep]\nrep_seconds = -1\n')


def test_rep_seconds_lengthens_a_fast_point_from_its_warm_up(tmp_path):
    base = TWO.format(w=1.0).replace("residency = [0.5, 1.0]", "residency = [1.0]").replace(
        "max_repeat = 3", "max_repeat = 2").replace("max_new_tokens = 6", "max_new_tokens = 4")
    fast = parse_scenario(base + "warmup_tokens = 4\n")
    long = parse_scenario(base + "warmup_tokens = 4\nrep_seconds = 0.6\n")
    a = run_scenario(fast, out=tmp_path / "a", progress=False).summary
    b = run_scenario(long, out=tmp_path / "b", progress=False).summary
    assert all(r["requests_per_workload"] is None for r in a["runs"])
    for r in b["runs"]:
        k = r["requests_per_workload"]
        assert k is not None and k > 1
        # the same requests, k times over: the point's tokens grow by k
        assert r["stats"]["A"]["requests"] == k and r["stats"]["A"]["tokens"] == 4 * k
        assert r["wall_s"] >= 0.3  # about rep_seconds (estimated from the warm-up)
    assert b["protocol"]["rep_seconds"] == 0.6
