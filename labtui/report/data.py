"""What a report needs from a bundle, read from events.jsonl first.

events.jsonl is written as the run goes, so a killed run still has it up to its
last whole line; summary.json only adds whether the run finished. Every number
here comes from the bundle: point_start lines (sweep values, device, models as
placed), request events (decode speed), layer_move (bytes, GB/s), preempt/resume
(the four phases).
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from labtui.scenario.bundle import Bundle
from labtui.scenario.stats import median_ci, ratio_ci, run_stats

PHASES = ("kv_out_s", "release_s", "reload_s", "kv_in_s", "recompute_s")


@dataclass
class Run:
    """One point x repetition of one bundle."""

    bundle: str
    point: int
    rep: int
    values: dict[str, Any]
    label: str
    device: dict[str, Any]
    models: dict[str, dict]  # id -> source, n_layers, residency, resident_layers, mode, prefetch
    stats: dict[str, dict] = field(default_factory=dict)  # id -> run_stats()
    finished: bool = False
    resumes: list[dict] = field(default_factory=list)  # resume events (all four phases)
    preempts: list[dict] = field(default_factory=list)
    moves: list[dict] = field(default_factory=list)  # layer_move events
    loads: list[dict] = field(default_factory=list)  # load events (a profile's dilation D per model)
    ended: bool = False  # a point_end line was written
    cpu_other: float | None = None  # share of the machine's CPU other processes used meanwhile

    def key(self) -> tuple:
        return (self.bundle, self.point, self.rep)


def runs_of(b: Bundle) -> list[Run]:
    events_by_run: dict[tuple, list[dict]] = defaultdict(list)
    starts: dict[tuple, dict] = {}
    ends: dict[tuple, dict] = {}
    for e in b.events:
        k = (e.get("point", 0), e.get("rep", 0))
        if e.get("kind") == "point_start":
            starts[k] = e
        elif e.get("kind") == "point_end":
            ends[k] = e
        else:
            events_by_run[k].append(e)
    out: list[Run] = []
    for k in sorted(starts):
        s = starts[k]
        evs = events_by_run.get(k, [])
        r = Run(b.name, k[0], k[1], s.get("values") or {}, s.get("label", ""), s.get("device") or {},
                s.get("models") or {})
        r.stats = run_stats(evs)
        r.ended = k in ends
        r.finished = bool(ends.get(k, {}).get("finished"))
        r.cpu_other = ends.get(k, {}).get("cpu_other")
        r.resumes = [e for e in evs if e.get("kind") == "resume"]
        r.preempts = [e for e in evs if e.get("kind") == "preempt"]
        r.moves = [e for e in evs if e.get("kind") == "layer_move"]
        r.loads = [e for e in evs if e.get("kind") == "load"]
        out.append(r)
    return out


def dilation_of(run: Run, model: str) -> float | None:
    """The time dilation D the engine measured for ``model`` at its (last) load in
    this run, when it ran under a profile; None otherwise."""
    ds = [e.get("dilation") for e in run.loads if e.get("model") == model and e.get("dilation")]
    return float(ds[-1]) if ds else None


def model_source(run: Run, model: str) -> str:
    return (run.models.get(model) or {}).get("source", model)


def residency_of(run: Run, model: str) -> float | None:
    m = run.models.get(model)
    if not m or not m.get("n_layers"):
        return None
    return m["resident_layers"] / m["n_layers"]


def group_values(run: Run, drop: tuple[str, ...]) -> tuple:
    """The sweep values that tell curves apart (all but the x axis)."""
    skip = set(drop) | {"resident_layers"}
    return tuple(sorted((k, _hashable(v)) for k, v in run.values.items() if k not in skip))


def _hashable(v: Any) -> Any:
    if isinstance(v, dict):
        return tuple(sorted((k, _hashable(x)) for k, x in v.items()))
    if isinstance(v, list):
        return tuple(_hashable(x) for x in v)
    return v


def label_of(group: tuple, skip: tuple[str, ...] = ()) -> str:
    parts = []
    for k, v in group:
        if k in skip:
            continue
        if isinstance(v, tuple):
            v = ",".join(f"{a}={str(b).removeprefix('zoo:')}" for a, b in v)
        elif isinstance(v, str):
            v = v.removeprefix("zoo:")
        parts.append(f"{k}={v}")
    return " ".join(parts)


class Pt(NamedTuple):
    """One x of a curve: the median over repetitions, its 95% CI (None for n=1),
    n, and the repetitions themselves (drawn as dots)."""

    x: float
    y: float
    lo: float | None
    hi: float | None
    n: int
    values: tuple


def curves(runs: list[Run], x_of, metric: str, drop: tuple[str, ...]) -> dict[tuple, list[Pt]]:
    """(model source, group) -> sorted points of `metric`: medians with bootstrap CIs."""
    acc: dict[tuple, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in runs:
        for m, st in r.stats.items():
            x, y = x_of(r, m), st.get(metric)
            if x is None or y is None:
                continue
            acc[(model_source(r, m), group_values(r, drop))][x].append(y)
    out: dict[tuple, list[Pt]] = {}
    for k, pts in acc.items():
        row = []
        for x, ys in sorted(pts.items()):
            c = median_ci(ys)
            row.append(Pt(x, c["median"], c["ci_lo"], c["ci_hi"], c["n"], tuple(ys)))
        out[k] = row
    return out


def normalised(runs: list[Run]) -> dict[tuple, list[Pt]]:
    """Decode tok/s / the same curve's median at residency 1.0 (curves without one:
    dropped). The CI is that of the ratio of bootstrap medians, so the reference
    point's own uncertainty widens every other point's band; dots are each
    repetition over the reference median."""
    out: dict[tuple, list[Pt]] = {}
    for k, pts in curves(runs, residency_of, "decode_tok_s", ("residency",)).items():
        full = next((p for p in pts if p.x == 1.0), None)
        if full is None or not full.y:
            continue
        row = []
        for p in pts:
            c = ratio_ci(p.values, full.values)
            row.append(Pt(p.x, c["median"], c["ci_lo"], c["ci_hi"], p.n, tuple(v / full.y for v in p.values)))
        out[k] = row
    return out


def axis_values(runs: list[Run], axis: str) -> list:
    return sorted({_hashable(r.values[axis]) for r in runs if axis in r.values}, key=str)


def preemption_rows(runs: list[Run]) -> list[dict]:
    """One row per resume: the paused model, what replaced it, the four phases, and
    the paused model's request time against its uninterrupted run (same bundle,
    same pair, pause_after_tokens = 0)."""
    base: dict[tuple, list[float]] = defaultdict(list)
    for r in runs:
        if r.values.get("pause_after_tokens") == 0:
            for m, st in r.stats.items():
                base[(r.bundle, _pair(r), m)].append(st["e2e_s_max"])
    rows = []
    for r in runs:
        for e in r.resumes:
            m = e.get("model")
            st = r.stats.get(m, {})
            b = base.get((r.bundle, _pair(r), m))
            uninterrupted = statistics.fmean(b) if b else None
            e2e = st.get("e2e_s_max")
            phases = {p: float(e.get(p) or 0.0) for p in PHASES}
            total = sum(phases.values())
            rows.append({
                "bundle": r.bundle, "point": r.point, "rep": r.rep, "model": m,
                "source": model_source(r, m), "pair": _pair_label(r),
                "pause_after": r.values.get("pause_after_tokens"), "at_tokens": e.get("at_tokens"),
                "kv": e.get("kv"), "weights": e.get("weights"), **phases, "total_s": total,
                "reload_bytes": e.get("reload_bytes"), "kv_in_bytes": e.get("kv_in_bytes"),
                "kv_out_bytes": e.get("kv_out_bytes"),
                "reload_share": phases["reload_s"] / total if total else None,
                "e2e_s": e2e, "uninterrupted_e2e_s": uninterrupted,
                "overhead_s": e2e - uninterrupted if e2e is not None and uninterrupted else None,
                "paused_s": e.get("paused_s"),
            })
    return rows


def _pair(r: Run) -> Any:
    return _hashable(r.values.get("sources") or r.values.get("model"))


def _pair_label(r: Run) -> str:
    v = r.values.get("sources")
    if isinstance(v, dict):
        return " -> ".join(str(s).removeprefix("zoo:") for s in v.values())
    return str(r.values.get("model", "")).removeprefix("zoo:")


# ---------------------------------------------------------------------------
# tidy tables (points.csv, preemptions.csv, labtui.report.load)

POINT_COLUMNS = ("bundle", "point", "model", "params", "offload", "residency", "resident_layers",
                 "prefetch", "link_gbps", "profile", "max_new_tokens", "rep", "decode_tok_s",
                 "served_tok_s", "ttft_s", "tpot_s", "cpu_other")
PREEMPTION_COLUMNS = ("bundle", "point", "rep", "model", "kv", "weights", "at_tokens", "kv_out_s",
                      "release_s", "reload_s", "kv_in_s", "recompute_s", "total_s", "reload_bytes",
                      "kv_bytes", "profile")


def max_new_tokens_of(r: Run, m: str) -> Any:
    if "max_new_tokens" in r.values:
        return r.values["max_new_tokens"]
    st = r.stats.get(m) or {}
    return round(st["tokens"] / st["requests"]) if st.get("requests") else None


def point_rows(runs: list[Run]) -> list[dict]:
    """One row per point x repetition x model (model = its source, as in the figures)."""
    rows = []
    for r in runs:
        for m, st in r.stats.items():
            info = r.models.get(m) or {}
            rows.append({
                "bundle": r.bundle, "point": r.point, "model": model_source(r, m),
                "params": info.get("params"), "offload": info.get("mode"),
                "residency": residency_of(r, m), "resident_layers": info.get("resident_layers"),
                "prefetch": info.get("prefetch"), "link_gbps": r.device.get("link_gbps"),
                "profile": r.device.get("profile"), "max_new_tokens": max_new_tokens_of(r, m),
                "rep": r.rep, "decode_tok_s": st.get("decode_tok_s"),
                "served_tok_s": st.get("served_tok_s", st.get("throughput_tok_s")), "ttft_s": st.get("ttft_p50"),
                "tpot_s": st.get("tpot_p50"), "cpu_other": r.cpu_other,
            })
    return rows


def preemption_table(rows: list[dict], runs: list[Run]) -> list[dict]:
    by_key = {r.key(): r for r in runs}
    out = []
    for row in rows:
        r = by_key.get((row["bundle"], row["point"], row["rep"]))
        d = {k: row.get(k) for k in PREEMPTION_COLUMNS}
        d["model"] = row["source"]
        d["kv_bytes"] = row.get("kv_out_bytes") or row.get("kv_in_bytes") or 0  # the cache's size
        d["profile"] = r.device.get("profile") if r else None
        out.append(d)
    return out
