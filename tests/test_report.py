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
    for stem in ("normalised_vs_residency", "tok_s_vs_residency", "preemption_phases", "costmodel", "timeseries"):
        assert (out / f"{stem}.png").stat().st_size > 1000
        assert (out / f"{stem}.svg").read_text().lstrip().startswith("<?xml")
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
