"""Figures (PNG and SVG) from bundle data; each function returns the file stem it
wrote, or None when the bundles hold no data for it. Bundles go side by side:
one column each, so two machines compare at a glance."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never a window
import matplotlib.pyplot as plt  # noqa: E402

from labtui.report.costmodel import Prediction  # noqa: E402
from labtui.report.data import PHASES, Run, curves, label_of, normalised, residency_of  # noqa: E402

PHASE_COLOURS = {"kv_out_s": "#4c72b0", "release_s": "#8c8c8c", "reload_s": "#dd8452",
                 "kv_in_s": "#55a868", "recompute_s": "#c44e52"}


def _save(fig, out: Path, stem: str) -> str:
    fig.tight_layout()
    for ext in ("png", "svg"):
        fig.savefig(out / f"{stem}.{ext}", dpi=110)
    plt.close(fig)
    return stem


def _grid(n_rows: int, n_cols: int, w: float = 5.0, h: float = 3.6):
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(w * n_cols, h * n_rows), squeeze=False)
    return fig, axes


def _short(s: str) -> str:
    return str(s).removeprefix("zoo:")


def residency_figure(by_bundle: dict[str, list[Run]], out: Path, norm: bool) -> str | None:
    """Decode tok/s (absolute, or normalised to 100% resident) against residency."""
    data = {b: (normalised(rs) if norm else curves(rs, residency_of, "decode_tok_s", ("residency",)))
            for b, rs in by_bundle.items()}
    data = {b: {k: v for k, v in d.items() if len(v) > 1} for b, d in data.items()}
    data = {b: d for b, d in data.items() if d}  # a bundle without this curve gets no column
    sources = sorted({k[0] for d in data.values() for k in d})
    if not sources:
        return None
    fig, axes = _grid(len(sources), len(data))
    for j, (b, d) in enumerate(data.items()):
        for i, src in enumerate(sources):
            ax = axes[i][j]
            for (s, group), pts in sorted(d.items(), key=lambda kv: str(kv[0])):
                if s != src:
                    continue
                xs = [100 * x for x, *_ in pts]
                ys = [m for _, m, _, _ in pts]
                sd = [s_ for _, _, s_, _ in pts]
                line, = ax.plot(xs, ys, marker="o", ms=3, label=label_of(group, ("model", "sources")) or "run")
                ax.fill_between(xs, [y - e for y, e in zip(ys, sd, strict=True)],
                                [y + e for y, e in zip(ys, sd, strict=True)], alpha=0.2, color=line.get_color())
            ax.set_title(f"{_short(src)} · {b}", fontsize=9)
            ax.set_xlabel("decoder blocks resident on the accelerator (%)")
            ax.set_ylabel("decode tok/s ÷ 100% resident" if norm else "decode tok/s")
            if norm:
                ax.axhline(1.0, color="grey", lw=0.5)
                ax.plot([0, 100], [0, 1], color="grey", lw=0.5, ls=":", label="linear in residency")
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
    return _save(fig, out, "normalised_vs_residency" if norm else "tok_s_vs_residency")


def axis_figure(by_bundle: dict[str, list[Run]], out: Path, axis: str, x_of, xlabel: str,
                stem: str, logx: bool = False) -> str | None:
    """Decode tok/s against one swept quantity (output length, link GB/s, ...)."""
    data = {b: {k: v for k, v in curves(rs, x_of, "decode_tok_s", (axis,)).items() if len(v) > 1}
            for b, rs in by_bundle.items()}
    data = {b: d for b, d in data.items() if d}
    if not data:
        return None
    fig, axes = _grid(1, len(data))
    for j, (b, d) in enumerate(data.items()):
        ax = axes[0][j]
        for (src, group), pts in sorted(d.items(), key=lambda kv: str(kv[0])):
            xs, ys, sd = [p[0] for p in pts], [p[1] for p in pts], [p[2] for p in pts]
            ax.errorbar(xs, ys, yerr=sd, marker="o", ms=3, capsize=2,
                        label=f"{_short(src)} {label_of(group)}".strip())
        ax.set_title(b, fontsize=9)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("decode tok/s")
        if logx:
            ax.set_xscale("log")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    return _save(fig, out, stem)


def preemption_figure(rows: list[dict], out: Path) -> str | None:
    """The four phases (and recompute) as stacked bars per paused model and pause point."""
    if not rows:
        return None
    bundles = sorted({r["bundle"] for r in rows})
    fig, axes = _grid(1, len(bundles), w=max(5.0, 0.5 * len(rows) / len(bundles) + 3), h=4.2)
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
        ax.set_xticks(range(len(keys)), [f"{k[0]}\n{k[1]} @{k[2]}" for k in keys], fontsize=7, rotation=45,
                      ha="right")
        ax.set_ylabel("seconds")
        ax.set_title(f"preemption phases (paused model, weights, after N tokens) · {b}", fontsize=9)
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=7)
    return _save(fig, out, "preemption_phases")


def costmodel_figure(preds: list[Prediction], reloads: list[dict], out: Path) -> str | None:
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
    return _save(fig, out, "costmodel")


def timeseries_figure(metrics_by_bundle: dict[str, list[dict]], out: Path) -> str | None:
    """tok/s and resident layers over the run, per model (runs without a sweep)."""
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
