"""Hardware profiles: built-ins, TOML user profiles (one-line errors), selection
plumbing, and the dilation math that keeps the target's ratios."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from labtui.cli import main
from labtui.engine.profiles import BUILTINS, GB, Profile, get_profile, read_profiles
from labtui.errors import LabError
from labtui.scenario.schema import parse_scenario

NAMES = ("study-rtx5000ada", "study-a6000", "h100-pcie5", "gh200", "laptop-4060")


def test_builtins_are_there_and_cite_a_source():
    assert set(NAMES) <= set(BUILTINS)
    for p in BUILTINS.values():
        assert p.source and p.h2d_gbps >= p.d2h_gbps and p.accel_gbps > p.host_gbps


def _ratios(phys, weight_bytes, n_layers, block_bytes, kv_bytes, compute_s):
    """The study's ratios in one clock: stream/resident, host/resident, reload/KV copy, D2H/H2D."""
    res = phys.resident_step_s(weight_bytes)
    half = n_layers // 2
    return (
        phys.stream_step_s(0.0, half * block_bytes, half, prefetch=False) / res,
        phys.host_step_s(res / n_layers, n_layers, half, block_bytes) / res,
        phys.reload_s(weight_bytes) / phys.kv_copy_s(kv_bytes, 2 * n_layers, "h2d"),
        phys.kv_copy_s(kv_bytes, 2 * n_layers, "d2h") / phys.kv_copy_s(kv_bytes, 2 * n_layers, "h2d"),
        compute_s,
    )


@given(step=st.floats(1e-4, 10.0), weights=st.floats(1e6, 1e11), n=st.integers(2, 96),
       kv=st.floats(1e3, 1e10), name=st.sampled_from(NAMES))
def test_dilation_keeps_every_ratio_of_the_profile(step, weights, n, kv, name):
    prof = BUILTINS[name]
    pace = prof.pacing_for(step, weights, n_layers=n)
    # this machine's resident step is D times the profile's
    assert math.isclose(pace.dilation, step / (weights / (prof.accel_gbps * GB)), rel_tol=1e-12)
    assert math.isclose(pace.resident_step_s(weights), step, rel_tol=1e-12)
    target = _ratios(prof.physics, weights, n, weights / n, kv, 0)
    here = _ratios(pace, weights, n, weights / n, kv, 0)
    for a, b in zip(target, here, strict=True):
        assert math.isclose(a, b, rel_tol=1e-9)
    assert math.isclose(pace.host_slowdown_factor, prof.host_slowdown(weights / n), rel_tol=1e-12)
    assert math.isclose(pace.host_slowdown(weights / n), pace.host_slowdown_factor, rel_tol=1e-9)


def test_pacing_numbers_by_hand():
    p = BUILTINS["study-a6000"]
    # 768 MB of weights read at 768 GB/s: 1 ms per step on the A6000; 50 ms here -> D = 50
    pace = p.pacing_for(0.05, 768e6, n_layers=24)
    assert math.isclose(pace.dilation, 50.0)
    assert math.isclose(pace.h2d_gbps, 16 / 50) and math.isclose(pace.d2h_gbps, 12 / 50)
    assert math.isclose(pace.storage_gbps, 7.2 / 50) and math.isclose(pace.storage_fixed_s, 1.8 * 50)
    assert math.isclose(pace.copy_latency_s, 10e-6 * 50)
    # host slowdown: (32 MB / 204.8 GB/s + 20 us) / (32 MB / 768 GB/s)
    assert math.isclose(pace.host_slowdown_factor, (32e6 / 204.8e9 + 20e-6) / (32e6 / 768e9))
    # stream with prefetch: copies overlap compute; without, they add
    assert pace.stream_step_s(0.05, 0.0, 0) == 0.05
    assert math.isclose(pace.stream_step_s(0.05, 32e6, 1, prefetch=False),
                        0.05 + 32e6 / (16e9 / 50) + 10e-6 * 50)
    # reload = fixed + bytes / GB/s (on the target: 1.8 s + 5.9 GB / 7.2 GB/s)
    assert math.isclose(p.physics.reload_s(5.9e9), 1.8 + 5.9 / 7.2)


def test_pacing_refuses_nonsense():
    with pytest.raises(LabError, match="step > 0"):
        BUILTINS["gh200"].pacing_for(0.0, 1e6)


def test_user_profile_file(tmp_path, monkeypatch):
    f = tmp_path / "box.toml"
    f.write_text('[profiles.my-box]\nbased_on = "study-a6000"\nh2d_gbps = 24\nsource = "measured"\n'
                 '[profiles.full]\naccel_gbps = 1000\naccel_gib = 24\nhost_gbps = 100\nh2d_gbps = 20\n'
                 'd2h_gbps = 20\nstorage_gbps = 3\n')
    got = read_profiles(f)
    assert got["my-box"].h2d_gbps == 24 and got["my-box"].accel_gbps == 768
    assert got["full"].copy_latency_us == 0.0 and got["full"].origin == str(f)
    assert get_profile(f"{f}#full").accel_gbps == 1000
    with pytest.raises(LabError, match="defines 2 profiles"):
        get_profile(str(f))
    monkeypatch.setenv("LABTUI_PROFILES", str(tmp_path))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "nothing"))
    assert get_profile("my-box").source == "measured"


@pytest.mark.parametrize("body, expect", [
    ('[profiles.x]\nbased_on = "study-a6000"\nh2d_gbps = -1\n', "profiles.x.h2d_gbps: got -1; accepted: GB/s > 0"),
    ('[profiles.x]\nbased_on = "study-a6000"\nh2d = 3\n', "profiles.x.h2d: unknown key (did you mean 'h2d_gbps'?)"),
    ('[profiles.x]\naccel_gbps = 1\n', "profiles.x.accel_gib: missing"),
    ('[profiles.x]\nbased_on = "a6000"\n', "unknown profile 'a6000' (did you mean 'study-a6000'?)"),
    ('[x]\na = 1\n', "expected [profiles.NAME] tables"),
    ('[profiles.x\n', "not valid TOML"),
    ('[profiles.x]\nbased_on = "gh200"\ncopy_latency_us = "fast"\n', "copy_latency_us: got 'fast'"),
])
def test_bad_profile_files_are_one_line(tmp_path, body, expect):
    f = tmp_path / "bad.toml"
    f.write_text(body)
    with pytest.raises(LabError) as e:
        read_profiles(f)
    msg = str(e.value)
    assert "\n" not in msg and expect in msg and str(f) in msg


def test_unknown_profile_lists_the_accepted_names():
    with pytest.raises(LabError) as e:
        get_profile("a100")
    assert "\n" not in str(e.value) and all(n in str(e.value) for n in NAMES)


def test_engine_records_the_profile():
    from labtui.engine import Engine

    eng = Engine(device="sim", memory_gib=0.5, profile="study-a6000")
    try:
        d = eng.device.describe()
        assert d["profile"] == "study-a6000" and d["simulated"]
        assert isinstance(eng.device.profile, Profile)
    finally:
        eng.close()
    with pytest.raises(LabError, match="accepted: study-rtx5000ada"):
        Engine(device="sim", profile="nope")


def test_scenario_device_profile():
    scn = parse_scenario('[device]\nkind = "sim"\nprofile = "gh200"\n[[models]]\nsource = "zoo:llama-5m"\n')
    assert scn.device.engine_kwargs()["profile"] == "gh200"
    with pytest.raises(LabError) as e:
        parse_scenario('[device]\nkind = "sim"\nprofile = "gh100"\n[[models]]\nsource = "zoo:llama-5m"\n',
                       "s.toml")
    assert str(e.value).startswith("s.toml:3: device.profile:") and "did you mean 'gh200'" in str(e.value)


def test_scenario_profile_file_resolves_against_the_scenario_folder(tmp_path, monkeypatch):
    d = tmp_path / "study"
    d.mkdir()
    (d / "box.toml").write_text('[profiles.my-box]\nbased_on = "study-a6000"\nh2d_gbps = 24\n')
    body = '[device]\nkind = "sim"\nprofile = "box.toml#my-box"\n[[models]]\nsource = "zoo:llama-5m"\n'
    (d / "s.toml").write_text(body)
    monkeypatch.chdir(tmp_path)  # not the scenario's folder: the old cwd-relative lookup fails here
    scn = parse_scenario(body, d / "s.toml")
    assert scn.device.profile == f"{(d / 'box.toml').resolve()}#my-box"
    assert get_profile(scn.device.engine_kwargs()["profile"]).h2d_gbps == 24
    with pytest.raises(LabError) as e:
        parse_scenario(body.replace("box.toml", "nobox.toml"), d / "s.toml")
    assert "device.profile" in str(e.value) and "nobox.toml" in str(e.value)


def test_cli_profiles_and_run_profile(capsys):
    assert main(["profiles", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows][:5] == list(NAMES)
    assert main(["profiles"]) == 0
    assert "study-a6000" in capsys.readouterr().out
    assert main(["run", "default", "--profile", "nope", "--out", "/nonexistent/x"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown profile 'nope'" in err


def test_a_run_under_a_profile_records_it_and_the_report_predicts_the_target(tmp_path):
    from labtui.report import build_report
    from labtui.scenario.runner import run_scenario

    scn = parse_scenario('[lab]\nname = "p"\ntimeout_s = 60\n[device]\nkind = "sim"\nmemory_gib = 1\n'
                         '[[models]]\nid = "A"\nsource = "zoo:llama-5m"\n[[workloads]]\nmodel = "A"\n'
                         'requests = 1\nprompt_tokens = 8\nmax_new_tokens = 6\n'
                         '[sweep]\nresidency = [0.0, 0.5, 1.0]\n')
    res = run_scenario(scn, out=tmp_path / "b", progress=False, profile="study-rtx5000ada")
    env = json.loads((res.path / "env.json").read_text())
    assert env["profile"] == "study-rtx5000ada" and env["device"]["profile"] == "study-rtx5000ada"
    starts = [json.loads(x) for x in (res.path / "events.jsonl").read_text().splitlines()
              if '"point_start"' in x]
    assert len(starts) == 3 and all(s["device"]["profile"] == "study-rtx5000ada" for s in starts)
    assert "profile: study-rtx5000ada" in (res.path / "scenario.toml").read_text()
    out = build_report([str(res.path)], tmp_path / "rep")
    md = (out / "report.md").read_text()
    assert "## As on the profile (predicted, emulated)" in md
    svg = (out / "normalised_vs_residency.svg").read_text()
    assert "predicted on study-rtx5000ada, stream" in svg and "(emulated)" in svg
    # the predicted value at 0% resident is the profile's physics on the model's bytes
    from labtui.report.costmodel import block_bytes, profile_predictions
    from labtui.report.data import runs_of
    from labtui.scenario.bundle import read_bundle

    runs = runs_of(read_bundle(res.path))
    (zero,) = [p for p in profile_predictions(runs) if p["residency"] == 0.0]
    phys = BUILTINS["study-rtx5000ada"].physics
    info = runs[0].models["A"]
    w, n = info["params"] * 4, info["n_layers"]
    b = block_bytes(runs)[(runs[0].bundle, "zoo:llama-5m")]
    step = phys.stream_step_s(w / (576 * GB), n * b, n, prefetch=True)
    assert zero["predicted_norm"] == pytest.approx((w / (576 * GB)) / step)
    assert zero["predicted_norm"] < 0.2  # on the target, streaming every block is link-bound
    assert zero["dilation"] > 1  # this CPU is slower than the GPU it stands for


def test_dilation_cap_keeps_the_paced_ratios_and_says_how_far_compute_is_off():
    prof = get_profile("study-a6000").capped(10)
    w, n = 200e6, 8
    step = 500 * prof.resident_step_s(w)  # D = 500 measured here
    pace = prof.pacing_for(step, w, n_layers=n)
    assert pace.dilation == 10 and pace.measured_dilation == pytest.approx(500)
    tgt = get_profile("study-a6000").physics
    # every paced term x10: their ratios to each other are the profile's ...
    assert pace.reload_s(w) / pace.kv_copy_s(1e6, n, "d2h") == pytest.approx(
        tgt.reload_s(w) / tgt.kv_copy_s(1e6, n, "d2h"))
    assert pace.copy_s(w, n, "h2d") / pace.copy_s(w, n, "d2h") == pytest.approx(
        tgt.copy_s(w, n, "h2d") / tgt.copy_s(w, n, "d2h"))
    # ... and against this machine's compute they are D / cap = 50x too fast
    assert (pace.copy_s(w, n) / step) / (tgt.copy_s(w, n) / tgt.resident_step_s(w)) == pytest.approx(10 / 500)
    # no cap, or a cap above D: the measured D
    assert get_profile("study-a6000").capped(None).pacing_for(step, w).dilation == pytest.approx(500)
    assert prof.capped(1000).pacing_for(step, w).dilation == pytest.approx(500)


def test_dilation_cap_validates_in_a_profile_file_and_a_scenario(tmp_path):
    f = tmp_path / "cap.toml"
    f.write_text('[profiles.x]\nbased_on = "study-a6000"\nmax_dilation = 0.5\n')
    with pytest.raises(LabError) as e:
        read_profiles(f)
    assert "\n" not in str(e.value) and "profiles.x.max_dilation: got 0.5" in str(e.value)
    scn = parse_scenario('[device]\nkind = "sim"\nprofile = "study-a6000"\nmax_dilation = 10\n'
                         '[[models]]\nsource = "zoo:llama-5m"\n')
    p = scn.device.engine_kwargs()["profile"]
    assert isinstance(p, Profile) and p.name == "study-a6000" and p.max_dilation == 10
    with pytest.raises(LabError) as e:
        parse_scenario('[device]\nkind = "sim"\nmax_dilation = 0\n[[models]]\nsource = "zoo:llama-5m"\n', "s.toml")
    assert "\n" not in str(e.value) and "device.max_dilation" in str(e.value)


def test_study_totals_calibrate_on_two_and_predict_four():
    from labtui.report.costmodel import study_totals

    rows = study_totals()
    assert len(rows) == 6 and sum(r["calibration"] for r in rows) == 2
    for r in rows:
        if r["calibration"]:
            assert r["predicted_s"] == pytest.approx(r["study_s"])
    a6000 = [r for r in rows if r["gpu"] == "study-a6000"]
    # one storage for the shared host: the A6000 machine reloaded faster than it explains
    assert all(r["error"] > 0.1 for r in a6000)


def _run(mode, k, n=6, params=10_000_000, d=100.0, tok_s=10.0, point=0, rep=0):
    from labtui.report.data import Run

    r = Run("b", point, rep, {"offload": mode, "residency": k / n}, "", {"profile": "study-a6000"},
            {"m": {"source": "zoo:x", "params": params, "n_layers": n, "resident_layers": k, "mode": mode,
                   "prefetch": True}})
    r.stats = {"m": {"decode_tok_s": tok_s}}
    r.loads = [{"kind": "load", "model": "m", "dilation": d}]
    return r


def test_cost_model_under_a_profile_is_the_profiles_physics_at_the_runs_D():
    from labtui.report.costmodel import (
        ACT_D2H_PER_HOST_BLOCK,
        ACT_D2H_PER_STRETCH,
        ACT_H2D_PER_STRETCH,
        _paced,
        _profile_step,
    )

    r = _run("stream", 0)
    p = _paced(r, "m")
    assert p.dilation == pytest.approx(100) and p.h2d_gbps == pytest.approx(16 / 100)
    w, n, t_full = 40e6, 6, 0.005
    b = w / n
    # stream, several blocks streamed: prefetch overlaps compute and copies
    assert _profile_step(p, t_full, n, 0, "stream", b, r, "m", True) == pytest.approx(
        max(t_full, n * p.copy_latency_s + n * b / (p.h2d_gbps * 1e9)))
    # one block streamed is never prefetched: its copy adds to the compute
    assert _profile_step(p, t_full, n, n - 1, "stream", b, r, "m", True) == pytest.approx(
        t_full + p.copy_s(b, 1, "h2d"))
    # host, all blocks: n paced host blocks + the stretch's activation copies + its cost
    host_b = b / (p.host_gbps * 1e9) + p.host_block_s
    acts = (ACT_D2H_PER_STRETCH + ACT_H2D_PER_STRETCH + ACT_D2H_PER_HOST_BLOCK * n) * p.copy_latency_s
    got = _profile_step(p, t_full, n, 0, "host", b, _run("host", 0), "m", True, 0.002)
    assert got == pytest.approx(n * host_b + acts + 0.002)


def test_cost_model_scores_points_and_calibrates_host_on_its_zero_point():
    from labtui.report.costmodel import decode_predictions, point_errors

    runs = [_run("host", k, tok_s=s, point=i, rep=j) for i, (k, s) in enumerate([(0, 20.0), (3, 40.0), (6, 200.0)])
            for j in range(3)]
    preds = decode_predictions(runs)
    # the 100% and 0% points are calibration: only the 50% point is predicted
    assert {p.residency for p in preds} == {0.5} and {p.how for p in preds} == {"profile"}
    pts = point_errors(preds)
    assert len(pts) == 1 and pts[0].measured_s == pytest.approx(1 / 40)
