"""`labtui report BUNDLE... [--out DIR]`: figures, report.md and tidy CSVs from
result bundles; ``load(BUNDLE)`` gives the same tables as pandas DataFrames.

Everything plotted comes from the bundles (events.jsonl, metrics.csv,
summary.json, env.json); a partial bundle (killed run) still reports, and the
report says what was missing.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any, NamedTuple

from labtui.errors import LabError, one_line


def cli_report(args: Any) -> int:
    out = build_report(args.bundles, args.out)
    print(out / "report.md")
    return 0


def default_out(bundles: list[str]) -> Path:
    return Path(bundles[0]) / "report" if len(bundles) == 1 else Path("report")


def build_report(bundle_paths: list[str], out: str | Path | None = None) -> Path:
    from labtui.report import markdown as md
    from labtui.report import plots
    from labtui.report.costmodel import decode_predictions, profile_predictions, reload_predictions
    from labtui.report.data import (
        POINT_COLUMNS,
        PREEMPTION_COLUMNS,
        point_rows,
        preemption_rows,
        preemption_table,
        runs_of,
    )
    from labtui.scenario.bundle import read_bundle

    bundles = [read_bundle(p) for p in bundle_paths]
    names = [b.name for b in bundles]
    for i, b in enumerate(bundles):  # two bundles with one folder name still need two columns
        if names.count(b.name) > 1:
            b.notes.append(f"shown as '{_col(b, i, names)}'")
    out = Path(out) if out is not None else default_out(bundle_paths)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise LabError(f"cannot write the report to {out}: {one_line(e.strerror or e)}; "
                       "give a writable --out folder") from None

    cols = [_col(b, i, names) for i, b in enumerate(bundles)]
    by_bundle = {c: runs_of(b) for c, b in zip(cols, bundles, strict=True)}
    for c, rs in by_bundle.items():
        for r in rs:
            r.bundle = c
    all_runs = [r for rs in by_bundle.values() for r in rs]
    labels = {c: plots.setup_label(rs) for c, rs in by_bundle.items()}
    prows = preemption_rows(all_runs)
    _write_csv(out / "points.csv", POINT_COLUMNS, point_rows(all_runs))
    _write_csv(out / "preemptions.csv", PREEMPTION_COLUMNS, preemption_table(prows, all_runs))

    figs: list[tuple[str, str | None, str]] = []
    figs.append(("Decode tok/s normalised to 100% resident, against residency",
                 plots.residency_figure(by_bundle, out, norm=True),
                 "The study's main figure: each curve divided by its own fully resident median; the "
                 "dotted diagonal is a slowdown linear in the share of blocks offloaded. Dots: "
                 "repetitions; line: medians; band: 95% bootstrap CI of the ratio of medians, so the "
                 "100%-resident point's own uncertainty is carried into every point. Several "
                 "bundles share the axes (marker and line style per bundle)."))
    figs.append(("Size dependence: normalised curves of several model sizes",
                 plots.size_figure(by_bundle, out),
                 "The study's first finding: how much a model loses when offloaded depends on its "
                 "size. One curve per model, same mode and values."))
    figs.append(("Decode tok/s against residency", plots.residency_figure(by_bundle, out, norm=False),
                 "Dots: repetitions; line: medians; band: 95% bootstrap CI of the median."))
    figs.append(("Decode tok/s against output length",
                 plots.axis_figure(by_bundle, out, "max_new_tokens", lambda r, m: r.values.get("max_new_tokens"),
                                   "output length (max_new_tokens)", "seq_length"), ""))
    figs.append(("Decode tok/s against link bandwidth",
                 plots.axis_figure(by_bundle, out, "link", lambda r, m: r.device.get("link_gbps") if "link" in r.values else None,
                                   "link GB/s (nominal)", "bandwidth", logx=True), ""))
    figs.append(("Preemption phases", plots.preemption_figure(prows, out, labels),
                 "Each bar: kv_out, release, reload, kv_in (and recompute for kv=drop), mean over "
                 "repetitions, by pair, weights policy and the token count at which the paused "
                 "model was stopped; dots: each repetition's total."))
    preds, reloads = decode_predictions(all_runs), reload_predictions(all_runs)
    figs.append(("Cost model: predicted against measured",
                 plots.costmodel_figure(preds, reloads, out, "; ".join(sorted(set(labels.values())))),
                 "See labtui/report/costmodel.py: compute per block from the fully resident run, "
                 "streamed blocks as copies of latency + bytes / GB/s fitted to the run's own "
                 "copies (max with compute when prefetching), host-executed blocks from the 0% host "
                 "run; reload with weights=host over the link, with weights=disk fixed + bytes / "
                 "storage GB/s fitted to the bundle's disk reloads (in-sample). Under a profile "
                 "(\"profile\" rows) the link, host, storage and per-copy terms are the profile's "
                 "at the D each model measured at its load: known physics, nothing fitted."))
    series = {c: b.metrics for c, b in zip(cols, bundles, strict=True) if _is_time_series(by_bundle[c])}
    figs.append(("Over time", plots.timeseries_figure(series, out),
                 "Sampled from metrics.csv (tok/s over the last seconds, resident layers); only for "
                 "bundles of one point and one repetition."))

    missing = [title for title, stem, _ in figs if stem is None]
    check_table, warns = md.consistency(all_runs)
    warns += md.contention(by_bundle)
    parts = [
        "# labtui report",
        f"Made {_dt.datetime.now().astimezone().isoformat(timespec='seconds')} from "
        + ", ".join(f"`{b.path}`" for b in bundles) + ".",
        "## Bundles", md.status(bundles, cols, by_bundle),
        "## Machines", md.machines(bundles, cols),
        "Each figure also says what produced it: " + "; ".join(f"{c}: {lab}" for c, lab in labels.items() if lab)
        + ". Runs on `sim` are a simulated accelerator on this machine's CPU; under a profile, "
        "figures marked *emulated* stand for the profile's hardware, never measured on it.",
        "Tidy data: [points.csv](points.csv) (one row per point, repetition and model) and "
        "[preemptions.csv](preemptions.csv); in Python `labtui.report.load(BUNDLE)` returns both "
        "as pandas DataFrames.",
    ]
    if warns:
        parts += ["## Warnings", "\n".join(f"- **warning:** {w}" for w in warns)]
    for title, stem, caption in figs:
        if stem is None:
            continue
        parts += [f"## {title}", f"![{title}]({stem}.png)", f"[SVG]({stem}.svg). {caption}".strip()]
    if check_table:
        parts += ["## Consistency: configurations that must be equal",
                  "At 100% residency nothing is offloaded, so the offload mode and prefetch cannot "
                  "matter: these points measure the same thing twice. Their difference is the "
                  "protocol's noise floor.", check_table]
    if len(by_bundle) > 1:
        rt = md.ratios(by_bundle)
        if rt:
            parts += ["## Bundles compared (median decode tok/s, ratio with 95% CI)", rt]
    if all_runs:
        parts += ["## Sweep points (median [95% bootstrap CI] over repetitions; [-]: one repetition)",
                  md.points(all_runs)]
    from labtui.report import policies as pol_report

    pol = pol_report.section(bundles, cols)  # bundles that swept the policy axis
    if pol:
        stem = pol_report.figure(bundles, cols, out)
        parts += ["## Policy comparison"] + ([f"![SLO attainment by policy]({stem}.png)"] if stem else []) + [pol]
        tl = pol_report.timeline_figure(bundles, cols, out)
        if tl:
            parts += [f"![Residency over time, planner and the best baseline]({tl}.png)",
                      "Residency over time in the bursty workload's first repetition: the best "
                      "baseline (top) against the planner (bottom); dots are requests finishing "
                      "(hollow: missed its TTFT or TPOT target)."]
    if prows:
        parts += ["## Preemptions", md.preemptions(prows)]
    if preds or reloads:
        parts += ["## Cost model error",
                  "Error = (predicted - measured) / measured: positive means the model predicts "
                  "slower than measured.", md.costmodel(preds, reloads)]
    prof = profile_predictions(all_runs)
    if prof:
        parts += ["## As on the profile (predicted, emulated)",
                  "The profile's physics (labtui/engine/profiles.py, docs/profiles.md) applied to "
                  "the measured models' sizes: what the target hardware would show, predicted from "
                  "its specifications, not measured. D is this machine's resident step over the "
                  "target's.", md.profile_table(prof)]
    if missing:
        parts += ["## Not in these bundles",
                  "No data for: " + "; ".join(missing) + ". "
                  + ("Axes swept: " + ", ".join(sorted({a for r in all_runs for a in r.values} - {"resident_layers"})) + "."
                     if any(r.values for r in all_runs) else "No sweep axes.")]
    if not all_runs:
        parts.append("No run got as far as its first point (no point_start in events.jsonl).")
    (out / "report.md").write_text("\n\n".join(parts) + "\n", encoding="utf-8")
    return out


def _is_time_series(runs: list) -> bool:
    return len({(r.point, r.rep) for r in runs}) == 1


def _write_csv(path: Path, columns: tuple[str, ...], rows: list[dict]) -> None:
    import csv

    with open(path, "w", encoding="utf-8", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(columns), extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in columns})


class Frames(NamedTuple):
    points: Any  # pandas.DataFrame, columns data.POINT_COLUMNS
    preemptions: Any  # pandas.DataFrame, columns data.PREEMPTION_COLUMNS


def load(bundles: str | Path | list[str | Path]) -> Frames:
    """The tidy tables of one or more bundles as pandas DataFrames, for notebooks:
    ``points, preemptions = labtui.report.load("runs/offload-sweep-...")``.
    The same rows as the report's points.csv and preemptions.csv."""
    import pandas as pd

    from labtui.report.data import (
        POINT_COLUMNS,
        PREEMPTION_COLUMNS,
        point_rows,
        preemption_rows,
        preemption_table,
        runs_of,
    )
    from labtui.scenario.bundle import read_bundle

    paths = [bundles] if isinstance(bundles, str | Path) else list(bundles)
    runs = []
    for i, p in enumerate(paths):
        b = read_bundle(p)
        rs = runs_of(b)
        if [Path(q).name for q in paths].count(b.name) > 1:
            for r in rs:
                r.bundle = f"{b.name}#{i + 1}"
        runs += rs
    return Frames(pd.DataFrame(point_rows(runs), columns=list(POINT_COLUMNS)),
                  pd.DataFrame(preemption_table(preemption_rows(runs), runs), columns=list(PREEMPTION_COLUMNS)))


def _col(b: Any, i: int, names: list[str]) -> str:
    return b.name if names.count(b.name) == 1 else f"{b.name}#{i + 1}"
