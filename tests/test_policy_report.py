"""The policy comparison's numbers and the sweep's policy axis."""

from __future__ import annotations

from labtui.report.policies import mean_ci, run_metrics, slos_of, verdict
from labtui.scenario.schema import parse_scenario
from labtui.scenario.sweep import expand

SCN = """
[device]
kind = "sim"
[[models]]
id = "a"
source = "zoo:llama-5m"
slo_ttft_s = 1.0
slo_tpot_s = 0.1
slo_weight = 3.0
[[models]]
id = "b"
source = "zoo:qwen3-10m"
[sweep]
policy = ["ollama", "planner"]
"""


def test_policy_is_a_sweep_axis():
    pts = expand(parse_scenario(SCN))
    assert [p.scenario.lab.policy for p in pts] == ["ollama", "planner"]
    assert pts[0].scenario.models[0].slo_tpot_s == 0.1 and pts[0].scenario.models[0].slo_weight == 3.0


def test_attainment_is_weighted_and_goodput_counts_met_requests_only():
    slos = slos_of(SCN)
    ev = [
        {"kind": "request_start", "t": 0.0, "phase": "run"},
        {"kind": "request_finish", "t": 1.0, "phase": "run", "model": "a", "ttft_s": 0.5, "tpot_s": 0.05,
         "new_tokens": 10, "reason": "length", "paused_s": 0.0},
        {"kind": "request_finish", "t": 2.0, "phase": "run", "model": "a", "ttft_s": 1.5, "tpot_s": 0.05,
         "new_tokens": 10, "reason": "length", "paused_s": 0.25},
        {"kind": "request_finish", "t": 2.0, "phase": "run", "model": "b", "ttft_s": 9.0, "tpot_s": 1.0,
         "new_tokens": 4, "reason": "eos", "paused_s": 0.0},  # no SLO: met
        {"kind": "layer_move", "t": 1.5, "phase": "run", "bytes": 2**20},
    ]
    m = run_metrics(ev, slos)
    assert m["attainment"] == (3 + 1) / (3 + 3 + 1)
    assert m["goodput_tok_s"] == (10 + 4) / 2.0
    assert m["pause_s"] == 0.25 and m["moved_mib"] == 1.0
    ci = mean_ci([1.0, 2.0, 3.0])
    assert ci["mean"] == 2.0 and 2.4 < ci["ci"] < 2.5
    t = {"ollama": {"attainment": {"mean": 0.4}}, "planner": {"attainment": {"mean": 0.8}}}
    assert "x2.00" in verdict(t)


def test_timeline_figure_draws_the_planner_against_the_best_baseline(tmp_path):
    from types import SimpleNamespace

    from labtui.report.policies import _run_events, timeline_figure

    def run(point, pol, ttft):
        return [
            {"kind": "point_start", "t": 10.0, "point": point, "rep": 0, "values": {"policy": pol}},
            {"kind": "residency", "t": 10.5, "point": point, "rep": 0, "phase": "run", "model": "a", "residency": 0.5},
            {"kind": "preempt", "t": 10.7, "point": point, "rep": 0, "phase": "run", "model": "a"},
            {"kind": "resume", "t": 10.9, "point": point, "rep": 0, "phase": "run", "model": "a", "pipelined": False},
            {"kind": "request_start", "t": 10.1, "point": point, "rep": 0, "phase": "run", "model": "a"},
            {"kind": "request_finish", "t": 11.0, "point": point, "rep": 0, "phase": "run", "model": "a",
             "ttft_s": ttft, "tpot_s": 0.05, "new_tokens": 4, "reason": "length"},
        ]

    b = SimpleNamespace(events=run(0, "ollama", 2.0) + run(1, "static-split", 0.5) + run(3, "priority", 0.5) + run(2, "planner", 0.5),
                        scenario_text=SCN)
    assert set(_run_events(b)) == {"ollama", "static-split", "planner", "priority"}
    assert timeline_figure([b], ["hot-cold"], tmp_path) is None  # only a bursty workload gets it
    stem = timeline_figure([b], ["bursty-pair"], tmp_path)
    assert stem == "policy_timeline" and (tmp_path / "policy_timeline.png").stat().st_size > 1000


def test_ratio_ci_brackets_the_ratio_and_widens_with_spread():
    from labtui.report.policies import goal_of, ratio_ci

    r, lo, hi = ratio_ci([0.8, 0.9, 1.0], [0.4, 0.45, 0.5])
    assert abs(r - 2.0) < 1e-9 and 1.0 < lo < 2.0 < hi
    _, lo2, hi2 = ratio_ci([0.5, 0.9, 1.3], [0.4, 0.45, 0.5])
    assert lo2 < lo and hi2 > hi
    assert ratio_ci([0.9], [0.5, 0.6]) is None and ratio_ci([0.9, 0.8], [0.0, 0.0]) is None
    assert ratio_ci([0.5, 0.5], [0.25, 0.25]) == (2.0, 2.0, 2.0)
    assert goal_of("bursty-pair") == 1.5 and goal_of("hot-cold") == 1.0
    t = {"ollama": {"attainment": {"mean": 0.45, "values": [0.4, 0.45, 0.5]}},
         "planner": {"attainment": {"mean": 0.9, "values": [0.8, 0.9, 1.0]}}}
    assert f"[95% CI {lo:.2f}, {hi:.2f}]" in verdict(t)


def test_resume_bench_rejects_bad_input_in_one_line(capsys):
    from labtui.engine.policies.resume_bench import main

    assert main(["--profiles", "no-such-profile", "--reps", "1"]) == 2
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "no-such-profile" in out[0]
    assert main(["--reps", "0"]) == 2


def test_slo_scale_table_recounts_attainment_with_every_target_scaled():
    from types import SimpleNamespace

    from labtui.report.policies import by_slo_scale

    def run(point, pol, ttft, tpot):
        return [{"kind": "point_start", "point": point, "rep": 0, "values": {"policy": pol}},
                {"kind": "request_start", "t": 0.0, "phase": "run", "point": point, "rep": 0},
                {"kind": "request_finish", "t": 1.0, "phase": "run", "point": point, "rep": 0, "model": "a",
                 "ttft_s": ttft, "tpot_s": tpot, "new_tokens": 4, "reason": "length"}]

    # planner: TTFT 0.9 s (meets 1.0 s, misses 0.75 s); ollama: TTFT 1.4 s (met only from x1.5),
    # static-split: TPOT 0.18 s against 0.1 s (met only at x2)
    b = SimpleNamespace(scenario_text=SCN, events=run(0, "planner", 0.9, 0.05) + run(1, "ollama", 1.4, 0.05)
                        + run(2, "static-split", 0.5, 0.18))
    sc = by_slo_scale(b)
    assert sc["planner"] == {0.5: 0.0, 0.75: 0.0, 1.0: 1.0, 1.5: 1.0, 2.0: 1.0}
    assert sc["ollama"] == {0.5: 0.0, 0.75: 0.0, 1.0: 0.0, 1.5: 1.0, 2.0: 1.0}
    assert sc["static-split"] == {0.5: 0.0, 0.75: 0.0, 1.0: 0.0, 1.5: 0.0, 2.0: 1.0}


def test_every_benchmark_workload_validates_and_sweeps_the_baselines_and_the_planner():
    """scenarios/bench/*.toml (the suite run-quick.sh runs): each loads with its profile
    file resolved, declares SLOs for every model, and both its sweeps compare the planner
    with every baseline; the bursty pair runs under the study's A6000 profile (sim's
    own physics leaves it nothing to decide: docs/policies.md, "The bursty pair")."""
    from pathlib import Path

    from labtui.engine.profiles import get_profile
    from labtui.report.policies import BASELINES
    from labtui.scenario.schema import load_scenario

    root = Path(__file__).resolve().parent.parent / "labtui" / "scenarios" / "bench"
    files = sorted(root.glob("*.toml"))
    assert len(files) >= 4
    for f in files:
        scn = load_scenario(f)
        assert all(m.slo_ttft_s and m.slo_tpot_s for m in scn.models), f.name
        assert {"planner", *BASELINES} <= set(scn.sweep.policy), f.name
        assert {"planner", *BASELINES} <= set(scn.quick.sweep.policy), f.name
    bp = load_scenario(root / "bursty-pair.toml")
    prof = get_profile(bp.device.profile)  # resolved against the scenario's folder
    assert prof.h2d_gbps == get_profile("study-a6000").h2d_gbps and prof.storage_fixed_s < 1.8
