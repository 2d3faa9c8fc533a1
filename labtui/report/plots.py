"""Figures (PNG and SVG, 200 dpi) from bundle data; each function returns the file
stem it wrote, or None when the bundles hold no data for it. Repetitions are
dots, medians lines, 95% bootstrap CIs bands; several bundles share one set of
axes; every figure carries the device, profile, link and host slowdown."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never a window
import matplotlib.pyplot as plt  # noqa: E402

from labtui.report.costmodel import Prediction  # noqa: E402
from labtui.report.data import (  # noqa: E402
    PHASES,
    Pt,
    Run,
    curves,
    label_of,
    model_source,
    normalised,
    residency_of,
)

PHASE_COLOURS = {"kv_out_s": "#4c72b0", "release_s": "#8c8c8c", "reload_s": "#dd8452",
                 "kv_in_s": "#55a868", "recompute_s": "#c44e52"}


DPI = 200
MARKERS = ("o", "s", "^", "D", "v", "P", "X")
LINESTYLES = ("-", "--", ":", "-.")


def _save(fig, out: Path, stem: str) -> str:
    fig.tight_layout()
    for ext in ("png", "svg"):
        fig.savefig(out / f"{stem}.{ext}", dpi=DPI)
    plt.close(fig)
    return stem


def _grid(n_rows: int, n_cols: int, w: float = 5.0, h: float = 3.6, sharey: bool | str = False):
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(w * n_cols, h * n_rows), squeeze=False,
                             sharey=sharey)
    return fig, axes


def _short(s: str) -> str:
    return str(s).removeprefix("zoo:")


def setup_label(runs: list[Run]) -> str:
    """What produced these numbers, for the figure itself: device, profile, link,
    host slowdown (a figure copied out of the report must still say it)."""
    if not runs:
        return ""
    d = runs[0].device
    parts = [f"{d.get('kind', '?')}{' (simulated)' if d.get('simulated') else ''}"]
    profs = sorted({str(r.device.get("profile")) for r in runs if r.device.get("profile")})
    parts.append(f"profile {', '.join(profs)} (emulated)" if profs else "no profile: this machine's physics"
                 if d.get("simulated") else "real hardware")
    if profs and d.get("simulated"):
        # under a profile the device's link and host slowdown do not apply: the
        # model's copies and host blocks are paced to the profile at its D
        from labtui.report.data import dilation_of

        ds = sorted({round(x) for r in runs for m in r.models if (x := dilation_of(r, m))})
        if ds:
            parts.append(f"time x{ds[0]:g}-{ds[-1]:g} (D measured per load)" if len(ds) > 1
                         else f"time x{ds[0]:g}")
        return " · ".join(parts)
    links = sorted({str(r.device.get("link")) for r in runs if r.device.get("link")})
    gb = sorted({r.device.get("link_gbps") for r in runs if r.device.get("link_gbps")})
    parts.append(f"link {', '.join(links)}" + (f" ({', '.join(f'{g:g}' for g in gb)} GB/s)" if gb else ""))
    hs = sorted({r.device.get("host_slowdown") for r in runs if r.device.get("host_slowdown")})
    if hs and d.get("simulated"):
        parts.append(f"host slowdown x{', '.join(f'{h:g}' for h in hs)}")
    return " · ".join(parts)


def _stamp(ax, text: str) -> None:
    ax.text(0.01, 0.01, text, transform=ax.transAxes, fontsize=5.5, color="#555555", va="bottom",
            ha="left", wrap=True)


def draw_curve(ax, pts: list[Pt], label: str, color=None, marker: str = "o", ls: str = "-",
               xscale: float = 1.0):
    """Repetitions as dots, the median as a line, its 95% CI as a band (where n > 1)."""
    xs = [xscale * p.x for p in pts]
    line, = ax.plot(xs, [p.y for p in pts], marker=marker, ms=3.5, ls=ls, lw=1.2, label=label,
                    color=color)
    c = line.get_color()
    dx, dy = [], []
    for x, p in zip(xs, pts, strict=True):
        dx += [x] * len(p.values)
        dy += list(p.values)
    ax.scatter(dx, dy, s=7, color=c, alpha=0.45, linewidths=0, zorder=3)
    band = [(x, p.lo, p.hi) for x, p in zip(xs, pts, strict=True) if p.lo is not None]
    if len(band) > 1:
        ax.fill_between([b[0] for b in band], [b[1] for b in band], [b[2] for b in band], alpha=0.18,
                        color=c, lw=0)
    elif band:
        ax.errorbar([band[0][0]], [pts[0].y], yerr=[[pts[0].y - band[0][1]], [band[0][2] - pts[0].y]],
                    color=c, capsize=2)
    return c


def residency_figure(by_bundle: dict[str, list[Run]], out: Path, norm: bool) -> str | None:
    """Decode tok/s (absolute, or normalised to 100% resident) against residency:
    one panel per model, every bundle on the same axes (linestyle/marker per
    bundle), so machines or profiles compare directly."""
    data = {b: (normalised(rs) if norm else curves(rs, residency_of, "decode_tok_s", ("residency",)))
            for b, rs in by_bundle.items()}
    data = {b: {k: v for k, v in d.items() if len(v) > 1} for b, d in data.items()}
    data = {b: d for b, d in data.items() if d}
    sources = sorted({k[0] for d in data.values() for k in d})
    if not sources:
        return None
    fig, axes = _grid(1, len(sources), w=5.6, h=4.2, sharey=True)
    groups = sorted({k[1] for d in data.values() for k in d}, key=str)
    colours = {g: f"C{i % 10}" for i, g in enumerate(groups)}
    several = len(data) > 1
    for i, src in enumerate(sources):
        ax = axes[0][i]
        for j, (b, d) in enumerate(data.items()):
            for (s, group), pts in sorted(d.items(), key=lambda kv: str(kv[0])):
                if s != src:
                    continue
                lab = label_of(group, ("model", "sources")) or "run"
                draw_curve(ax, pts, f"{b}: {lab}" if several else lab, colours[group],
                           MARKERS[j % len(MARKERS)], LINESTYLES[j % len(LINESTYLES)], xscale=100)
        ax.set_title(_short(src), fontsize=9)
        ax.set_xlabel("decoder blocks resident on the accelerator (%)")
        ax.set_ylabel("decode tok/s ÷ 100% resident" if norm else "decode tok/s")
        if norm:
            ax.axhline(1.0, color="grey", lw=0.5)
            ax.plot([0, 100], [0, 1], color="grey", lw=0.5, ls=":", label="linear in residency")
            _profile_curves(ax, by_bundle, src)
            ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
        _stamp(ax, "\n".join(f"{b}: {setup_label(by_bundle[b])}" for b in data))
    return _save(fig, out, "normalised_vs_residency" if norm else "tok_s_vs_residency")


def _profile_curves(ax, by_bundle: dict[str, list[Run]], src: str) -> None:
    """The profile's predicted normalised curve (cost model on the target's
    physics), thin and dashed: what the emulated hardware should show."""
    from labtui.report.costmodel import profile_predictions

    acc: dict[tuple, dict[float, float]] = defaultdict(dict)
    for rs in by_bundle.values():
        for p in profile_predictions(rs):
            if p["model"] == src:
                acc[(p["profile"], p["mode"])][p["residency"]] = p["predicted_norm"]
    for (prof, mode), pts in sorted(acc.items()):
        if len(pts) > 1:
            xs = sorted(pts)
            ax.plot([100 * x for x in xs], [pts[x] for x in xs], color="black", lw=0.8, ls="--",
                    alpha=0.7, label=f"predicted on {prof}, {mode} (cost model)")


def size_figure(by_bundle: dict[str, list[Run]], out: Path) -> str | None:
    """The study's first finding: normalised curves of several model sizes on one
    axes (per bundle and offload mode), labelled by parameter count."""
    panels: dict[tuple, dict[str, list[Pt]]] = {}
    params: dict[str, int] = {}
    for b, rs in by_bundle.items():
        for r in rs:
            for m in r.models:
                params[model_source(r, m)] = (r.models[m] or {}).get("params") or 0
        for (src, group), pts in normalised(rs).items():
            if len(pts) < 2:
                continue
            rest = tuple((k, v) for k, v in group if k not in ("model", "sources"))
            panels.setdefault((b, rest), {})[src] = pts
    panels = {k: v for k, v in panels.items() if len(v) > 1}
    if not panels:
        return None
    fig, axes = _grid(1, len(panels), w=5.6, h=4.2, sharey=True)
    for ax, ((b, rest), by_src) in zip(axes[0], sorted(panels.items(), key=str), strict=True):
        for src in sorted(by_src, key=lambda s: params.get(s, 0)):
            p = params.get(src)
            draw_curve(ax, by_src[src], f"{_short(src)} ({p / 1e6:.0f}M params)" if p else _short(src),
                       xscale=100)
        ax.axhline(1.0, color="grey", lw=0.5)
        ax.plot([0, 100], [0, 1], color="grey", lw=0.5, ls=":", label="linear in residency")
        ax.set_ylim(bottom=0)
        ax.set_title(f"{b}: {label_of(rest) or 'all'}", fontsize=9)
        ax.set_xlabel("decoder blocks resident on the accelerator (%)")
        ax.set_ylabel("decode tok/s ÷ 100% resident")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
        _stamp(ax, setup_label(by_bundle[b]))
    return _save(fig, out, "size_dependence")


def axis_figure(by_bundle: dict[str, list[Run]], out: Path, axis: str, x_of, xlabel: str,
                stem: str, logx: bool = False) -> str | None:
    """Decode tok/s against one swept quantity (output length, link GB/s, ...),
    every bundle on the same axes."""
    data = {b: {k: v for k, v in curves(rs, x_of, "decode_tok_s", (axis,)).items() if len(v) > 1}
            for b, rs in by_bundle.items()}
    data = {b: d for b, d in data.items() if d}
    if not data:
        return None
    fig, axes = _grid(1, 1, w=6.4, h=4.4)
    ax = axes[0][0]
    for j, (b, d) in enumerate(data.items()):
        for (src, group), pts in sorted(d.items(), key=lambda kv: str(kv[0])):
            lab = f"{_short(src)} {label_of(group)}".strip()
            draw_curve(ax, pts, f"{b}: {lab}" if len(data) > 1 else lab, None,
                       MARKERS[j % len(MARKERS)], LINESTYLES[j % len(LINESTYLES)])
    ax.set_xlabel(xlabel)
    ax.set_ylabel("decode tok/s")
    if logx:
        ax.set_xscale("log")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
    _stamp(ax, "\n".join(f"{b}: {setup_label(by_bundle[b])}" for b in data))
    return _save(fig, out, stem)


def preemption_figure(rows: list[dict], out: Path, labels: dict[str, str] | None = None) -> str | None:
    """The four phases (and recompute) as stacked bars (means over repetitions, so
    the stack is the mean total) per paused model and pause point; each
    repetition's total as a dot. Bundles share the y axis."""
    if not rows:
        return None
    bundles = sorted({r["bundle"] for r in rows})
    fig, axes = _grid(1, len(bundles), w=max(5.0, 0.5 * len(rows) / len(bundles) + 3), h=4.2, sharey=True)
    for j, b in enumerate(bundles):
        ax = axes[0][j]
        groups: dict[tuple, list[dict]] = defaultdict(list)
        for r in rows:
            if r["bundle"] == b:
                # the requested pause point groups repetitions (the actual one varies by a token)
                pause = r["pause_after"] if r["pause_after"] is not None else r["at_tokens"] or 0
                groups[(r["pair"] or _short(r["source"]), r["weights"], pause)].append(r)
        keys = sorted(groups, key=lambda k: (k[0], k[1], k[2]))
        bottom = [0.0] * len(keys)
        for ph in PHASES:
            vals = [sum(r[ph] for r in groups[k]) / len(groups[k]) for k in keys]
            if not any(vals):
                continue
            ax.bar(range(len(keys)), vals, bottom=bottom, color=PHASE_COLOURS[ph], label=ph.removesuffix("_s"))
            bottom = [a + v for a, v in zip(bottom, vals, strict=True)]
        for x, k in enumerate(keys):
            tot = [r["total_s"] for r in groups[k]]
            ax.scatter([x] * len(tot), tot, s=8, color="black", alpha=0.6, zorder=3,
                       label="each repetition's total" if x == 0 else None)
        if labels and b in labels:
            _stamp(ax, labels[b])
        ax.set_xticks(range(len(keys)), [f"{k[0]}\n{k[1]} @{k[2]}" for k in keys], fontsize=7, rotation=45,
                      ha="right")
        ax.set_ylabel("seconds")
        ax.set_title(f"preemption phases (paused model, weights, after N tokens) · {b}", fontsize=9)
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=7)
    return _save(fig, out, "preemption_phases")


def costmodel_figure(preds: list[Prediction], reloads: list[dict], out: Path,
                     label: str = "") -> str | None:
    if not preds and not reloads:
        return None
    panels = [(items, title) for items, title in (
        ([(p.measured_s * 1e3, p.predicted_s * 1e3, f"{_short(p.source)} {p.mode}") for p in preds],
         "decode ms/token"),
        ([(r["measured_s"], r["predicted_s"], f"{r['phase']} (weights {r['weights']})") for r in reloads],
         "reload / kv_in s"),
    ) if items]
    fig, axes = _grid(1, len(panels), w=4.6, h=4.2)
    for ax, (items, title) in zip(axes[0], panels, strict=True):
        by: dict[str, list] = defaultdict(list)
        for m, p, lab in items:
            by[lab].append((m, p))
        for lab, pts in sorted(by.items()):
            ax.scatter([m for m, _ in pts], [p for _, p in pts], s=12, label=lab)
        if items:
            hi = max(max(m, p) for m, p, _ in items) * 1.1
            ax.plot([0, hi], [0, hi], color="grey", lw=0.6, ls="--", label="predicted = measured")
            ax.set_xlim(0, hi)
            ax.set_ylim(0, hi)
            ax.legend(fontsize=7)
        ax.set_xlabel(f"measured {title}")
        ax.set_ylabel(f"predicted {title}")
        ax.grid(alpha=0.3)
        if label:
            _stamp(ax, label)
    return _save(fig, out, "costmodel")


def timeseries_figure(metrics_by_bundle: dict[str, list[dict]], out: Path) -> str | None:
    """tok/s and resident layers over the run, per model. Only for bundles that
    are a time series (one point, one repetition): a sweep's samples jump from
    fresh engine to fresh engine and mean nothing as one line."""
    data = {b: rows for b, rows in metrics_by_bundle.items() if rows}
    if not data:
        return None
    fig, axes = _grid(2, len(data), w=5.5, h=3.0)
    for j, (b, rows) in enumerate(data.items()):
        by: dict[str, list[dict]] = defaultdict(list)
        for r in rows:
            by[str(r.get("model"))].append(r)
        for m, rs in sorted(by.items()):
            ts = [r["t"] for r in rs]
            # served tok/s (wall time); bundles before it was named carried "tok_s"
            axes[0][j].plot(ts, [r.get("served_tok_s", r.get("tok_s")) or 0 for r in rs], label=m)
            axes[1][j].step(ts, [r.get("resident_layers") or 0 for r in rs], where="post", label=m)
        axes[0][j].set_title(b, fontsize=9)
        axes[0][j].set_ylabel("served tok/s")
        axes[1][j].set_ylabel("resident layers")
        axes[1][j].set_xlabel("seconds since the run began")
        for ax in (axes[0][j], axes[1][j]):
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    return _save(fig, out, "timeseries")
