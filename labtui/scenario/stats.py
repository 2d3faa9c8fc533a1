"""Numbers derived from a run's events: per-model decode speed, and sweep points.

Pure functions over event dicts (as in events.jsonl), so the runner's
summary.json and the report compute the same thing the same way, and the report
still works from events.jsonl alone when a run was killed before its summary.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from typing import Any

TIMED = ("run", None)  # events of the timed phase (None: bundles without a phase field)


def percentile(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    s = sorted(xs)
    k = (len(s) - 1) * q
    lo, hi = math.floor(k), math.ceil(k)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def mean_std(xs: list[float]) -> dict[str, Any]:
    """llama-bench style: mean ± sample stddev over repetitions."""
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    if not xs:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": statistics.fmean(xs), "std": statistics.stdev(xs) if len(xs) > 1 else 0.0,
            "n": len(xs)}


def run_stats(events: list[dict]) -> dict[str, dict[str, Any]]:
    """Per model, from the timed request_finish events of one run.

    decode_tok_s: the lab's decode tok/s (the card's and the chart's definition):
    tokens made by decode steps (all but each request's first) per second of the
    model's own decode steps, from each request's share of its steps' time
    (``decode_s``); bundles without it fall back to wall time between a request's
    first and last token (TPOT). served_tok_s: the same tokens per wall second from
    the first request start to the last finish; throughput_tok_s: all new tokens
    (first ones included) over that span.
    """
    fin: dict[str, list[dict]] = defaultdict(list)
    first_start: dict[str, float] = {}
    for e in events:
        if e.get("phase") not in TIMED:
            continue
        m = e.get("model")
        if e.get("kind") == "request_start" and m is not None:
            first_start.setdefault(m, e["t"])
        elif e.get("kind") == "request_finish" and m is not None:
            fin[m].append(e)
    out: dict[str, dict[str, Any]] = {}
    for m, rs in fin.items():
        tokens = sum(int(r.get("new_tokens") or 0) for r in rs)
        dec_tok = dec_s = 0.0
        busy = all(r.get("decode_s") is not None for r in rs)
        for r in rs:
            n, tpot = int(r.get("new_tokens") or 0), r.get("tpot_s")
            if busy and n > 1:
                dec_tok += n - 1
                dec_s += r["decode_s"]
            elif n > 1 and tpot:
                dec_tok += n - 1
                dec_s += (n - 1) * tpot
        start = first_start.get(m, min(r["t"] - (r.get("e2e_s") or 0) for r in rs))
        span = max(r["t"] for r in rs) - start
        ttft = [r["ttft_s"] for r in rs if r.get("ttft_s") is not None]
        tpot = [r["tpot_s"] for r in rs if r.get("tpot_s")]
        out[m] = {
            "requests": len(rs),
            "tokens": tokens,
            "decode_tok_s": dec_tok / dec_s if dec_s > 0 else None,
            "served_tok_s": dec_tok / span if span > 0 else None,
            "throughput_tok_s": tokens / span if span > 0 else None,
            "ttft_p50": percentile(ttft, 0.5),
            "ttft_p95": percentile(ttft, 0.95),
            "tpot_p50": percentile(tpot, 0.5),
            "tpot_p95": percentile(tpot, 0.95),
            "e2e_s_mean": statistics.fmean([r.get("e2e_s") or 0.0 for r in rs]),
            "e2e_s_max": max(r.get("e2e_s") or 0.0 for r in rs),
        }
    return out


def point_results(runs: list[dict]) -> list[dict]:
    """Aggregate runs ({point, values, stats}) into points with mean ± stddev per
    model, and decode tok/s normalised to the same point at 100% residency."""
    by_point: dict[int, dict] = {}
    for r in runs:
        p = by_point.setdefault(r["point"], {"index": r["point"], "values": r["values"],
                                             "label": r.get("label", ""), "reps": 0, "_runs": []})
        p["reps"] += 1
        p["_runs"].append(r)
    points = [by_point[k] for k in sorted(by_point)]
    for p in points:
        models: dict[str, dict] = {}
        for m in sorted({m for r in p["_runs"] for m in r["stats"]}):
            per = [r["stats"].get(m, {}) for r in p["_runs"]]
            models[m] = {
                k: mean_std([s.get(k) for s in per if s.get(k) is not None])
                for k in ("decode_tok_s", "throughput_tok_s", "ttft_p50", "tpot_p50", "e2e_s_mean")
            }
            models[m]["decode_tok_s"]["values"] = [s.get("decode_tok_s") for s in per]
        p["models"] = models
    for p in points:
        ref = _reference(p, points)
        for m, d in p["models"].items():
            base = ref["models"].get(m, {}).get("decode_tok_s", {}).get("mean") if ref else None
            vals = [v for v in d["decode_tok_s"]["values"] if v is not None]
            d["normalised"] = mean_std([v / base for v in vals]) if base else {"mean": None, "std": None, "n": 0}
    for p in points:
        del p["_runs"]
    return points


def _reference(p: dict, points: list[dict]) -> dict | None:
    """The point equal to `p` but at full residency (None without a residency axis)."""
    if "residency" not in p["values"]:
        return None
    rest = {k: v for k, v in p["values"].items() if k not in ("residency", "resident_layers")}
    for q in points:
        qv = q["values"]
        if qv.get("residency") == 1.0 and {k: v for k, v in qv.items()
                                            if k not in ("residency", "resident_layers")} == rest:
            return q
    return None
