"""`labtui report BUNDLE... [--out DIR]`: figures and report.md from result bundles.

Everything plotted comes from the bundles (events.jsonl, metrics.csv,
summary.json, env.json); a partial bundle (killed run) still reports, and the
report says what was missing.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any

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
    from labtui.report.costmodel import decode_predictions, reload_predictions
    from labtui.report.data import preemption_rows, runs_of
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

    figs: list[tuple[str, str | None, str]] = []
    figs.append(("Decode tok/s normalised to 100% resident, against residency",
                 plots.residency_figure(by_bundle, out, norm=True),
                 "The study's main figure: each curve divided by its own fully resident value; the "
                 "dotted diagonal is a slowdown linear in the share of blocks offloaded. Bands: ± one "
                 "standard deviation over repetitions."))
    figs.append(("Decode tok/s against residency", plots.residency_figure(by_bundle, out, norm=False), ""))
    figs.append(("Decode tok/s against output length",
                 plots.axis_figure(by_bundle, out, "max_new_tokens", lambda r, m: r.values.get("max_new_tokens"),
                                   "output length (max_new_tokens)", "seq_length"), ""))
    figs.append(("Decode tok/s against link bandwidth",
                 plots.axis_figure(by_bundle, out, "link", lambda r, m: r.device.get("link_gbps") if "link" in r.values else None,
                                   "link GB/s (nominal)", "bandwidth", logx=True), ""))
    prows = preemption_rows(all_runs)
    figs.append(("Preemption phases", plots.preemption_figure(prows, out),
                 "Each bar: kv_out, release, reload, kv_in (and recompute for kv=drop), mean over "
                 "repetitions, by pair, weights policy and the token count at which the paused "
                 "model was stopped."))
    preds, reloads = decode_predictions(all_runs), reload_predictions(all_runs)
    figs.append(("Cost model: predicted against measured", plots.costmodel_figure(preds, reloads, out),
                 "See labtui/report/costmodel.py: compute per block from the fully resident run, "
                 "streamed bytes over the measured link GB/s (max with compute when prefetching), "
                 "host-executed blocks from the 0% host run; reload = bytes / measured GB/s."))
    figs.append(("Over time", plots.timeseries_figure({c: b.metrics for c, b in zip(cols, bundles, strict=True)}, out),
                 "Sampled from metrics.csv (tok/s over the last seconds, resident layers)."))

    missing = [title for title, stem, _ in figs if stem is None]
    parts = [
        "# labtui report",
        f"Made {_dt.datetime.now().astimezone().isoformat(timespec='seconds')} from "
        + ", ".join(f"`{b.path}`" for b in bundles) + ".",
        "## Bundles", md.status(bundles, cols, by_bundle),
        "## Machines", md.machines(bundles, cols),
    ]
    for title, stem, caption in figs:
        if stem is None:
            continue
        parts += [f"## {title}", f"![{title}]({stem}.png)", f"[SVG]({stem}.svg). {caption}".strip()]
    if all_runs:
        parts += ["## Sweep points (mean ± stddev over repetitions)", md.points(all_runs)]
    from labtui.report import policies as pol_report

    pol = pol_report.section(bundles, cols)  # bundles that swept the policy axis
    if pol:
        stem = pol_report.figure(bundles, cols, out)
        parts += ["## Policy comparison"] + ([f"![SLO attainment by policy]({stem}.png)"] if stem else []) + [pol]
    if prows:
        parts += ["## Preemptions", md.preemptions(prows)]
    if preds or reloads:
        parts += ["## Cost model error", md.costmodel(preds, reloads)]
    if missing:
        parts += ["## Not in these bundles",
                  "No data for: " + "; ".join(missing) + ". "
                  + ("Axes swept: " + ", ".join(sorted({a for r in all_runs for a in r.values} - {"resident_layers"})) + "."
                     if any(r.values for r in all_runs) else "No sweep axes.")]
    if not all_runs:
        parts.append("No run got as far as its first point (no point_start in events.jsonl).")
    (out / "report.md").write_text("\n\n".join(parts) + "\n", encoding="utf-8")
    return out


def _col(b: Any, i: int, names: list[str]) -> str:
    return b.name if names.count(b.name) == 1 else f"{b.name}#{i + 1}"
