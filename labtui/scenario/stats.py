"""Numbers derived from a run's events: per-model decode speed, sweep points, and
the measurement protocol (medians with bootstrap confidence intervals, and when
to stop repeating a point).

Pure functions over event dicts (as in events.jsonl), so the runner's
summary.json and the report compute the same thing the same way, and the report
still works from events.jsonl alone when a run was killed before its summary.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np

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


# ---------------------------------------------------------------------------
# medians with bootstrap confidence intervals

BOOT = 2000  # resamples: the CI's own Monte Carlo error is ~1% of its width
LEVEL = 0.95
SEED = 0  # seeded: the same bundle always reports the same interval


def _clean(xs: Any) -> np.ndarray:
    a = np.asarray([x for x in (xs if xs is not None else []) if x is not None], dtype=float)
    return a[np.isfinite(a)]


def boot_medians(xs: Any, boot: int = BOOT, seed: int = SEED) -> np.ndarray:
    """Medians of `boot` resamples (with replacement) of xs; empty for no data."""
    a = _clean(xs)
    if a.size == 0:
        return np.empty(0)
    rng = np.random.default_rng(seed)
    return np.median(a[rng.integers(0, a.size, size=(boot, a.size))], axis=1)


def median_ci(xs: Any, level: float = LEVEL, boot: int = BOOT, seed: int = SEED) -> dict[str, Any]:
    """Median and its percentile-bootstrap CI. n=1 has no interval (lo = hi = None):
    one repetition says nothing about the spread, and reports show it as "-"."""
    a = _clean(xs)
    if a.size == 0:
        return {"median": None, "ci_lo": None, "ci_hi": None, "n": 0}
    med = float(np.median(a))
    if a.size == 1:
        return {"median": med, "ci_lo": None, "ci_hi": None, "n": 1}
    lo, hi = np.quantile(boot_medians(a, boot, seed), [(1 - level) / 2, (1 + level) / 2])
    return {"median": med, "ci_lo": float(lo), "ci_hi": float(hi), "n": int(a.size)}


def ratio_ci(num: Any, den: Any, level: float = LEVEL, boot: int = BOOT, seed: int = SEED) -> dict[str, Any]:
    """median(num) / median(den) with a CI that carries both sides' uncertainty:
    the ratio of independent bootstrap medians (a normalised curve's denominator,
    the 100%-resident point, is measured too)."""
    a, b = _clean(num), _clean(den)
    if a.size == 0 or b.size == 0 or np.median(b) == 0:
        return {"median": None, "ci_lo": None, "ci_hi": None, "n": int(a.size)}
    r = float(np.median(a) / np.median(b))
    if a.size + b.size <= 2:
        return {"median": r, "ci_lo": None, "ci_hi": None, "n": int(a.size)}
    # different seeds for the two sides: independent resamples
    ra, rb = boot_medians(a, boot, seed), boot_medians(b, boot, seed + 1)
    lo, hi = np.quantile(ra / rb, [(1 - level) / 2, (1 + level) / 2])
    return {"median": r, "ci_lo": float(lo), "ci_hi": float(hi), "n": int(a.size)}


def rel_halfwidth(ci: dict[str, Any]) -> float:
    """Half the CI's width over the median (inf without an interval)."""
    if ci.get("ci_lo") is None or not ci.get("median"):
        return math.inf
    return (ci["ci_hi"] - ci["ci_lo"]) / 2 / abs(ci["median"])


@dataclass(frozen=True)
class Protocol:
    """When a sweep point has been measured enough ([sweep] min_seconds,
    repeat, max_repeat, ci_rel_width; docs/scenarios.md).

    A point is repeated until it has at least ``min_repeat`` repetitions and
    ``min_seconds`` of timed run, and the 95% CI of every model's median decode
    tok/s is within +/- ``ci_rel_width`` of it; never more than ``max_repeat``.
    """

    min_repeat: int = 1
    max_repeat: int = 1
    min_seconds: float = 0.0
    ci_rel_width: float = 0.05

    @property
    def adaptive(self) -> bool:
        return self.max_repeat > self.min_repeat

    def needs_more(self, samples: dict[str, list[float]], measured_s: float, n: int) -> bool:
        if n < self.min_repeat:
            return True
        if n >= self.max_repeat:
            return False
        if measured_s < self.min_seconds:
            return True
        return any(rel_halfwidth(median_ci(xs)) > self.ci_rel_width for xs in samples.values() if xs)


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
                k: {**mean_std(xs := [s.get(k) for s in per if s.get(k) is not None]), **median_ci(xs)}
                for k in ("decode_tok_s", "throughput_tok_s", "ttft_p50", "tpot_p50", "e2e_s_mean")
            }
            models[m]["decode_tok_s"]["values"] = [s.get("decode_tok_s") for s in per]
        p["models"] = models
    for p in points:
        ref = _reference(p, points)
        for m, d in p["models"].items():
            rd = ref["models"].get(m, {}).get("decode_tok_s", {}) if ref else {}
            base = rd.get("mean")
            vals = [v for v in d["decode_tok_s"]["values"] if v is not None]
            d["normalised"] = mean_std([v / base for v in vals]) if base else {"mean": None, "std": None, "n": 0}
            # the median ratio, its CI carrying the reference point's uncertainty too
            d["normalised"].update(ratio_ci(vals, rd.get("values")) if base else median_ci([]))
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
