"""report.md: tables in markdown (llama-bench style mean ± stddev) around the figures."""

from __future__ import annotations

import statistics
from collections import defaultdict
from typing import Any

from labtui.report.costmodel import Prediction
from labtui.report.data import Run
from labtui.scenario.bundle import Bundle


def table(head: list[str], rows: list[list[Any]]) -> str:
    def cell(v: Any) -> str:
        return "" if v is None else str(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def _f(x: float | None, digits: int = 2) -> str:
    return "" if x is None else f"{x:.{digits}f}"


def _gib(x: Any) -> str:
    return f"{x / 1024**3:.1f} GiB" if isinstance(x, int | float) and x else ""


def machines(bundles: list[Bundle], cols: list[str]) -> str:
    rows = []
    for col, b in zip(cols, bundles, strict=True):
        e = b.env or {}
        d = e.get("device") or {}
        rows.append([col, e.get("node") or e.get("hostname"), e.get("platform"), e.get("cpu_count"),
                     _gib(e.get("host_ram_bytes")), e.get("torch"), d.get("kind"), d.get("name"),
                     "yes" if d.get("simulated") else "no", d.get("link"), _gib(d.get("budget_bytes")),
                     d.get("host_slowdown")])
    return table(["bundle", "host", "platform", "CPUs", "RAM", "torch", "device", "name", "simulated",
                  "link", "budget", "host slowdown"], rows)


def status(bundles: list[Bundle], cols: list[str], runs: dict[str, list[Run]]) -> str:
    rows = []
    for col, b in zip(cols, bundles, strict=True):
        s = b.summary or {}
        state = ("interrupted" if s.get("interrupted") else "timed out" if s.get("timed_out")
                 else "error" if s.get("error") else "complete") if b.summary else "partial (no summary.json)"
        planned = s.get("runs_planned")
        done = sum(1 for r in runs[col] if r.ended)
        rows.append([col, s.get("scenario") or "", state, f"{done}/{planned if planned else '?'}",
                     "; ".join(b.notes) or "nothing missing"])
    return table(["bundle", "scenario", "state", "runs", "missing or damaged"], rows)


def points(runs: list[Run]) -> str:
    """Mean ± stddev over repetitions per sweep point and model."""
    acc: dict[tuple, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for r in runs:
        for m, st in r.stats.items():
            k = (r.bundle, r.point, r.label, m)
            acc[k]["dec"].append(st.get("decode_tok_s"))
            acc[k]["thr"].append(st.get("throughput_tok_s"))
            acc[k]["ttft"].append(st.get("ttft_p50"))
    rows = []
    for (b, p, label, m), d in sorted(acc.items(), key=lambda kv: kv[0][:2]):
        rows.append([b, p, label, m, _pm(d["dec"]), _pm(d["thr"]), _pm(d["ttft"], 3), len(d["dec"])])
    return table(["bundle", "point", "values", "model", "decode tok/s", "throughput tok/s", "TTFT p50 s", "reps"], rows)


def _pm(xs: list, digits: int = 2) -> str:
    xs = [x for x in xs if x is not None]
    if not xs:
        return ""
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{statistics.fmean(xs):.{digits}f} ± {sd:.{digits}f}"


def preemptions(rows: list[dict]) -> str:
    """The study's comparison: the four phases' total against the paused model's
    uninterrupted run; and the paused model's extra wall time, which also holds the
    replacing model's whole turn."""
    return table(
        ["bundle", "pair", "paused", "weights", "kv", "at tokens", "kv_out s", "release s", "reload s",
         "kv_in s", "recompute s", "total s", "reload share", "uninterrupted run s",
         "total / uninterrupted", "extra wall time s"],
        [[r["bundle"], r["pair"], r["model"], r["weights"], r["kv"], r["at_tokens"], _f(r["kv_out_s"], 4),
          _f(r["release_s"], 4), _f(r["reload_s"], 4), _f(r["kv_in_s"], 4), _f(r["recompute_s"], 4),
          _f(r["total_s"], 4), _pct(r["reload_share"]), _f(r["uninterrupted_e2e_s"], 3),
          _pct(r["total_s"] / r["uninterrupted_e2e_s"] if r["uninterrupted_e2e_s"] else None),
          _f(r["overhead_s"], 3)]
         for r in rows])


def _pct(x: float | None) -> str:
    return "" if x is None else f"{100 * x:.1f}%"


def costmodel(preds: list[Prediction], reloads: list[dict]) -> str:
    acc: dict[tuple, list[float]] = defaultdict(list)
    for p in preds:
        acc[(p.bundle, p.source, p.mode, "decode per token")].append(p.error)
    for r in reloads:
        if r["measured_s"]:
            acc[(r["bundle"], r["source"], r["weights"], r["phase"])].append(
                (r["predicted_s"] - r["measured_s"]) / r["measured_s"])
    rows = [[b, s, mode, what, len(errs), _pct(statistics.fmean(abs(e) for e in errs)),
             _pct(max(errs, key=abs))] for (b, s, mode, what), errs in sorted(acc.items())]
    return table(["bundle", "model", "mode / weights", "predicted", "n", "mean abs error", "worst error"], rows)
