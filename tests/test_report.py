"""`labtui report` on a real run's bundle, on a killed (truncated) copy, and on two."""

from __future__ import annotations

import json
import shutil
import statistics
from pathlib import Path

from _bundles import tiny_bundle

from labtui.cli import main
from labtui.report import build_report
from labtui.report.costmodel import decode_predictions, link_gbps
from labtui.report.data import normalised, preemption_rows, runs_of
from labtui.scenario.bundle import read_bundle


def test_report_from_a_complete_bundle(tmp_path, capsys):
    out = tmp_path / "rep"
    assert main(["report", str(tiny_bundle()), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out / "report.md")
    for stem in ("normalised_vs_residency", "tok_s_vs_residency", "preemption_phases", "costmodel"):
        assert (out / f"{stem}.png").stat().st_size > 1000
        assert (out / f"{stem}.svg").read_text().lstrip().startswith("<?xml")
    assert not (out / "timeseries.png").exists()  # a sweep is not a time series
    md = (out / "report.md").read_text()
    assert "![Decode tok/s normalised to 100% resident" in md and "(normalised_vs_residency.png)" in md
    assert "## Machines" in md and "| bundle | host |" in md and "complete" in md
    assert "## Preemptions" in md and "## Cost model error" in md


def test_figures_come_from_the_bundle_numbers():
    b = read_bundle(tiny_bundle())
    runs = runs_of(b)
    s = b.summary
    # the events-derived decode speed is the summary's, run by run
    for r, sr in zip(runs, s["runs"], strict=True):
        assert r.stats["A"]["decode_tok_s"] == sr["stats"]["A"]["decode_tok_s"]
    # the normalised curve is decode tok/s over the same pause point's 100% run
    for (src, group), pts in normalised(runs).items():
        assert src == "zoo:llama-5m" and pts[-1][0] == 1.0 and pts[-1][1] == 1.0
        pause = dict(group)["pause_after_tokens"]
        half = next(r for r in runs if r.values["pause_after_tokens"] == pause and r.values["residency"] == 0.5)
        full = next(r for r in runs if r.values["pause_after_tokens"] == pause and r.values["residency"] == 1.0)
        assert pts[0][1] == half.stats["A"]["decode_tok_s"] / full.stats["A"]["decode_tok_s"]
    # preemption rows: the resume events' phases, against the uninterrupted run
    rows = preemption_rows(runs)
    assert len(rows) == 2 and all(r["weights"] == "host" and r["reload_s"] > 0 for r in rows)
    base = statistics.fmean(r.stats["A"]["e2e_s_max"] for r in runs if r.values["pause_after_tokens"] == 0)
    assert all(r["uninterrupted_e2e_s"] == base for r in rows)
    # the cost model's link speed is the measured one from layer_move events
    r = runs[0]
    assert link_gbps(r) != r.device["link_gbps"] or not r.moves
    assert all(p.residency < 1.0 for p in decode_predictions(runs))


def _kill_copy(src: Path, dst: Path) -> Path:
    """What a SIGKILL leaves: no summary.json, the last events line cut mid-way."""
    shutil.copytree(src, dst)
    (dst / "summary.json").unlink()
    text = (dst / "events.jsonl").read_text()
    cut = text.rfind('"kind": "request_finish"')  # inside the last run's request line
    (dst / "events.jsonl").write_text(text[: cut + 10])
    m = (dst / "metrics.csv").read_text()
    (dst / "metrics.csv").write_text(m[: len(m) - 7])
    return dst


def test_report_from_a_killed_bundle_says_what_is_missing(tmp_path):
    killed = _kill_copy(tiny_bundle(), tmp_path / "killed")
    b = read_bundle(killed)
    assert b.summary is None and b.events and not b.complete
    assert any("cut short" in n for n in b.notes) and any("summary.json" in n for n in b.notes)
    out = build_report([str(killed)], tmp_path / "rep")
    md = (out / "report.md").read_text()
    assert "partial (no summary.json)" in md and "last line cut short" in md
    assert (out / "normalised_vs_residency.png").exists()  # earlier runs still plot
    assert "3/?" in md  # the last run never wrote its point_end


def test_two_bundles_side_by_side(tmp_path):
    a = tiny_bundle()
    other = _kill_copy(a, tmp_path / "other-machine")
    env = json.loads((other / "env.json").read_text())
    env["node"] = "second-box"
    (other / "env.json").write_text(json.dumps(env))
    out = build_report([str(a), str(other)], tmp_path / "both")
    md = (out / "report.md").read_text()
    assert f"| {a.name} |" in md and "| other-machine |" in md and "second-box" in md


def test_two_bundles_with_one_folder_name_get_two_columns(tmp_path):
    x = tmp_path / "x" / "bundle"
    shutil.copytree(tiny_bundle(), x)
    out = build_report([str(tiny_bundle()), str(x)], tmp_path / "rep")
    assert "bundle#1" in (out / "report.md").read_text() and "bundle#2" in (out / "report.md").read_text()


def test_bad_bundle_paths_are_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    for p in (tmp_path / "nope", tmp_path / "empty"):
        assert main(["report", str(p)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err


def test_unwritable_report_out_is_one_line(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    assert main(["report", str(tiny_bundle()), "--out", str(f / "sub")]) == 2
    assert capsys.readouterr().err.count("\n") == 1


# ---------------------------------------------------------------------------
# report science: tidy exports, CIs, n=1, shared axes, profiles, consistency


def test_tidy_exports_and_load(tmp_path):
    import csv

    from PIL import Image

    from labtui.report import load
    from labtui.report.data import POINT_COLUMNS, PREEMPTION_COLUMNS

    out = build_report([str(tiny_bundle())], tmp_path / "rep")
    with open(out / "points.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert tuple(rows[0]) == POINT_COLUMNS and len(rows) == 4  # 4 runs x 1 model
    assert {(r["residency"], r["offload"], r["model"]) for r in rows} == {
        ("0.5", "stream", "zoo:llama-5m"), ("1.0", "stream", "zoo:llama-5m")}
    with open(out / "preemptions.csv") as fh:
        pre = list(csv.DictReader(fh))
    assert set(PREEMPTION_COLUMNS) <= set(pre[0]) and len(pre) == 2
    assert all(float(r["reload_s"]) > 0 and int(r["kv_bytes"]) > 0 for r in pre)
    points, preemptions = load(tiny_bundle())
    assert list(points.columns) == list(POINT_COLUMNS) and len(points) == 4
    assert len(preemptions) == 2 and (preemptions["weights"] == "host").all()
    runs = runs_of(read_bundle(tiny_bundle()))
    by_rep = {(r.point, r.rep): r.stats["A"]["decode_tok_s"] for r in runs}
    for _, row in points.iterrows():
        assert row["decode_tok_s"] == by_rep[(row["point"], row["rep"])]
    assert round(Image.open(out / "normalised_vs_residency.png").info["dpi"][0]) == 200
    md = (out / "report.md").read_text()
    assert "[-]" in md and "± 0.00" not in md  # one repetition has no interval
    assert "no profile: this machine's physics" in (out / "normalised_vs_residency.svg").read_text()


def test_single_run_is_a_time_series(tmp_path):
    from _bundles import write_tiny

    from labtui.scenario.runner import run_file

    one = ('[lab]\nname = "one"\ntimeout_s = 60\n[device]\nkind = "sim"\nmemory_gib = 1\n'
           '[[models]]\nid = "A"\nsource = "zoo:llama-5m"\n[[workloads]]\nmodel = "A"\nrequests = 3\n'
           'prompt_tokens = 8\nmax_new_tokens = 120\n')
    res = run_file(write_tiny(tmp_path, one), out=tmp_path / "b", progress=False)
    out = build_report([str(res.path)], tmp_path / "rep")
    assert (out / "timeseries.png").exists() and "## Over time" in (out / "report.md").read_text()


def _as_profile(src: Path, dst: Path, profile: str) -> Path:
    shutil.copytree(src, dst)
    lines = []
    for line in (dst / "events.jsonl").read_text().splitlines():
        e = json.loads(line)
        if e.get("kind") == "point_start":
            e["device"]["profile"] = profile
        lines.append(json.dumps(e))
    (dst / "events.jsonl").write_text("\n".join(lines) + "\n")
    return dst


def test_two_bundles_share_axes_with_a_ratio_table_and_profile_predictions(tmp_path):
    a = tiny_bundle()
    b = _as_profile(a, tmp_path / "as-a6000", "study-a6000")
    out = build_report([str(a), str(b)], tmp_path / "rep")
    md = (out / "report.md").read_text()
    assert "## Bundles compared" in md and "ratio to bundle" in md
    # identical numbers in both bundles: every ratio is exactly 1
    sec = md.split("## Bundles compared")[1].split("##")[0]
    assert sec.count("| 1.000 [") == 4
    assert "## As on the profile (predicted, emulated)" in md and "study-a6000" in md
    svg = (out / "normalised_vs_residency.svg").read_text()
    assert "profile study-a6000 (emulated)" in svg and "no profile" in svg  # both on one axes


def _run(bundle, point, rep, mode, res, tok, source="zoo:m", params=1e6):
    from labtui.report.data import Run

    n = 4
    return Run(bundle, point, rep, {"offload": mode, "residency": res}, f"{mode} {res}", {"kind": "sim"},
               {"A": {"source": source, "n_layers": n, "resident_layers": round(res * n), "mode": mode,
                      "prefetch": True, "params": params}},
               stats={"A": {"decode_tok_s": tok}})


def test_consistency_warns_when_equal_configurations_differ():
    from labtui.report.markdown import consistency

    same = [_run("b", 0, i, "stream", 1.0, 100 + i) for i in range(5)]
    same += [_run("b", 1, i, "host", 1.0, 101 + i) for i in range(5)]
    table, warns = consistency(same)
    assert "agree within 5%" in table and warns == []
    off = same[:5] + [_run("b", 1, i, "host", 1.0, 130 + i) for i in range(5)]
    table, warns = consistency(off)
    assert "DIFFER beyond their CIs" in table and len(warns) == 1 and "must be equal" in warns[0]


def test_size_dependence_figure_puts_model_sizes_on_one_axes(tmp_path):
    from labtui.report.plots import size_figure

    runs = []
    for src, p, slow in (("zoo:small", 5e6, 0.9), ("zoo:big", 150e6, 0.5)):
        for i, res in enumerate((0.0, 0.5, 1.0)):
            for rep in range(3):
                tok = 100 * (1 - (1 - slow) * (1 - res)) + rep
                runs.append(_run("b", i, rep, "stream", res, tok, src, p))
    assert size_figure({"b": runs}, tmp_path) == "size_dependence"
    svg = (tmp_path / "size_dependence.svg").read_text()
    assert "small (5M params)" in svg and "big (150M params)" in svg
    assert size_figure({"b": [r for r in runs if r.models["A"]["source"] == "zoo:small"]}, tmp_path) is None


def test_normalised_band_carries_the_denominator():
    noisy = [_run("b", 0, i, "stream", 0.5, 50.0 + (i % 2)) for i in range(6)]
    exact_ref = noisy + [_run("b", 1, i, "stream", 1.0, 100.0) for i in range(6)]
    noisy_ref = noisy + [_run("b", 1, i, "stream", 1.0, 100.0 + 20 * (i % 2)) for i in range(6)]
    (a,), (b,) = normalised(exact_ref).values(), normalised(noisy_ref).values()
    assert a[0].hi - a[0].lo < b[0].hi - b[0].lo
    assert a[-1].y == 1.0 and a[0].values == tuple((50.0 + (i % 2)) / 100 for i in range(6))


def test_busy_machine_is_flagged():
    from labtui.report.markdown import contention

    quiet = [_run("q", 0, i, "stream", 1.0, 100) for i in range(3)]
    busy = [_run("b", 0, i, "stream", 1.0, 100) for i in range(3)]
    for r, x in zip(quiet + busy, (0.01, 0.02, 0.4, 0.6, 0.7, 0.9), strict=True):
        r.cpu_other = x
    (w,) = contention({"q": quiet, "b": busy})
    assert w.startswith("b: other processes used a median 70%")
