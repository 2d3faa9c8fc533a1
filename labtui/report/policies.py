"""Policy comparison: SLO attainment, goodput, latency, pauses and bytes moved per
scheduling policy, from bundles whose sweep has a ``policy`` axis.

Per run (point x repetition), from its timed events (phase run):

- SLO attainment: the share of requests, weighted by their model's ``slo_weight``,
  that met both their model's ``slo_ttft_s`` and ``slo_tpot_s`` (a target not given
  is met); a request that did not finish normally (cancelled, failed) missed;
- goodput: new tokens of the requests that met their SLOs, per second of the run
  (first request start to last finish);
- TTFT and TPOT p50/p95 over every finished request;
- pause: the total time running requests sat preempted (request_finish paused_s;
  a request waiting for its evicted model's reload shows in its TTFT instead);
- bytes moved: every layer_move (weights and KV, both directions);
- SLO scale: the attainment again with every target multiplied by 0.5-2x.

Per policy: mean and a 95% confidence interval over repetitions (Student's t).
SLOs are read from the bundle's scenario.toml ([[models]] entries).
"""

from __future__ import annotations

import math
import statistics
import tomllib
from collections import defaultdict
from typing import Any

from labtui.scenario.stats import percentile

# Student's t, two-sided 95%, by degrees of freedom: a table, not scipy (one lookup,
# no new dependency).
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
        10: 2.228, 15: 2.131, 20: 2.086, 30: 2.042}
METRICS = ("attainment", "goodput_tok_s", "ttft_p50", "ttft_p95", "tpot_p50", "tpot_p95", "pause_s", "moved_mib")
BASELINES = ("ollama", "llamacpp-router", "static-split")
SLO_SCALES = (0.5, 0.75, 1.0, 1.5, 2.0)  # multiples of the scenario's TTFT and TPOT targets


def _t95(df: int) -> float:
    keys = sorted(k for k in _T95 if k <= df)
    return _T95[keys[-1]] if keys else float("nan")


def mean_ci(xs: list[float]) -> dict[str, Any]:
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    if not xs:
        return {"mean": None, "ci": None, "n": 0}
    m = statistics.fmean(xs)
    ci = _t95(len(xs) - 1) * statistics.stdev(xs) / math.sqrt(len(xs)) if len(xs) > 1 else None
    return {"mean": m, "ci": ci, "n": len(xs), "values": xs}


def ratio_ci(a: list[float], b: list[float]) -> tuple[float, float, float] | None:
    """mean(a) / mean(b) with a 95% interval: the delta method on the log of the
    ratio (var = s_a^2 / (n_a m_a^2) + s_b^2 / (n_b m_b^2)), Student's t with
    Welch's degrees of freedom; the same repetitions as the table's intervals.
    None without two repetitions on each side or a mean of 0."""
    if len(a) < 2 or len(b) < 2:
        return None
    ma, mb = statistics.fmean(a), statistics.fmean(b)
    if ma <= 0 or mb <= 0:
        return None
    va = statistics.variance(a) / (len(a) * ma * ma)
    vb = statistics.variance(b) / (len(b) * mb * mb)
    r = ma / mb
    if va + vb == 0:
        return r, r, r
    df = (va + vb) ** 2 / ((va * va / (len(a) - 1) if va else 0.0) + (vb * vb / (len(b) - 1) if vb else 0.0))
    half = _t95(max(1, int(df))) * math.sqrt(va + vb)
    return r, r * math.exp(-half), r * math.exp(half)


def goal_of(workload: str) -> float:
    """The goal's ratio for a workload: 1.5x the best baseline on the bursty ones
    (their names say so), never below it (1.0x) on the others."""
    return 1.5 if "bursty" in workload else 1.0


def slos_of(scenario_text: str | None) -> dict[str, dict]:
    """model id -> {ttft, tpot, weight} from a scenario's [[models]]."""
    if not scenario_text:
        return {}
    try:
        data = tomllib.loads(scenario_text)
    except tomllib.TOMLDecodeError:
        return {}
    out = {}
    for m in data.get("models", []):
        mid = m.get("id") or str(m.get("source", "")).removeprefix("zoo:").rsplit("/", 1)[-1]
        out[mid] = {"ttft": m.get("slo_ttft_s"), "tpot": m.get("slo_tpot_s"), "weight": m.get("slo_weight", 1.0)}
    return out


def run_metrics(events: list[dict], slos: dict[str, dict], scale: float = 1.0) -> dict[str, Any]:
    """The comparison's numbers for one run's events; ``scale`` multiplies every
    TTFT and TPOT target (the SLO-scale table)."""
    timed = [e for e in events if e.get("phase") in ("run", None)]
    fin = [e for e in timed if e.get("kind") == "request_finish"]
    starts = [e["t"] for e in timed if e.get("kind") == "request_start"]
    w_all = w_met = 0.0
    good_tokens = 0
    for e in fin:
        s = slos.get(e.get("model"), {})
        w = float(s.get("weight") or 1.0)
        w_all += w
        normal = e.get("reason") in ("eos", "length")
        ttft, tpot = e.get("ttft_s"), e.get("tpot_s")
        ok = normal and (s.get("ttft") is None or (ttft is not None and ttft <= s["ttft"] * scale)) \
            and (s.get("tpot") is None or tpot is None or tpot <= s["tpot"] * scale)
        if ok:
            w_met += w
            good_tokens += int(e.get("new_tokens") or 0)
    span = (max(e["t"] for e in fin) - min(starts)) if fin and starts else 0.0
    ttfts = [e["ttft_s"] for e in fin if e.get("ttft_s") is not None]
    tpots = [e["tpot_s"] for e in fin if e.get("tpot_s")]
    return {
        "requests": len(fin),
        "attainment": w_met / w_all if w_all else None,
        "goodput_tok_s": good_tokens / span if span > 0 else None,
        "ttft_p50": percentile(ttfts, 0.5), "ttft_p95": percentile(ttfts, 0.95),
        "tpot_p50": percentile(tpots, 0.5), "tpot_p95": percentile(tpots, 0.95),
        "pause_s": sum(float(e.get("paused_s") or 0.0) for e in fin),
        "moved_mib": sum(int(e.get("bytes") or 0) for e in timed if e.get("kind") == "layer_move") / 2**20,
        "decisions": sum(1 for e in timed if e.get("kind") == "policy_decision"),
    }


def _policy_runs(bundle: Any) -> dict[str, list[list[dict]]]:
    """policy -> the events of each of its runs (only runs with a policy value)."""
    per_run: dict[tuple, list[dict]] = defaultdict(list)
    policy_of: dict[tuple, str] = {}
    for e in bundle.events:
        k = (e.get("point", 0), e.get("rep", 0))
        if e.get("kind") == "point_start":
            pol = (e.get("values") or {}).get("policy")
            if pol is not None:
                policy_of[k] = pol
        else:
            per_run[k].append(e)
    runs: dict[str, list[list[dict]]] = defaultdict(list)
    for k, pol in policy_of.items():
        runs[pol].append(per_run.get(k, []))
    return runs


def by_policy(bundle: Any) -> dict[str, dict[str, dict]]:
    """policy -> metric -> mean/ci/n over the bundle's runs (only runs with a policy value)."""
    slos = slos_of(getattr(bundle, "scenario_text", None))
    out = {}
    for pol, evs in _policy_runs(bundle).items():
        runs = [run_metrics(e, slos) for e in evs]
        out[pol] = {m: mean_ci([r[m] for r in runs]) for m in (*METRICS, "requests", "decisions")}
    return out


def by_slo_scale(bundle: Any, scales: tuple[float, ...] = SLO_SCALES) -> dict[str, dict[float, float | None]]:
    """policy -> SLO scale -> mean attainment over its runs, every model's TTFT and
    TPOT targets multiplied by the scale: whether a comparison holds only at the
    scenario's own targets or on either side of them (as serving papers plot it)."""
    slos = slos_of(getattr(bundle, "scenario_text", None))
    out: dict[str, dict[float, float | None]] = {}
    for pol, evs in _policy_runs(bundle).items():
        out[pol] = {}
        for sc in scales:
            vals = [a for a in (run_metrics(e, slos, sc)["attainment"] for e in evs) if a is not None]
            out[pol][sc] = statistics.fmean(vals) if vals else None
    return out


def _cell(d: dict, digits: int = 2, scale: float = 1.0) -> str:
    if d["mean"] is None:
        return ""
    s = f"{d['mean'] * scale:.{digits}f}"
    if d["ci"] is not None:
        s += f" ± {d['ci'] * scale:.{digits}f}"
    return s


def against_best(table: dict[str, dict]) -> tuple | None:
    """(planner's attainment, best baseline's name, its attainment, ratio, ratio_ci)
    from one workload's policy table; None without the planner or a baseline."""
    base = {p: table[p]["attainment"]["mean"] for p in BASELINES if p in table and table[p]["attainment"]["mean"] is not None}
    if "planner" not in table or not base or table["planner"]["attainment"]["mean"] is None:
        return None
    best = max(base, key=base.get)
    pl, b = table["planner"]["attainment"], table[best]["attainment"]
    ratio = pl["mean"] / b["mean"] if b["mean"] > 0 else float("inf")
    return pl, best, b, ratio, ratio_ci(pl.get("values", []), b.get("values", []))


def verdict(table: dict[str, dict]) -> str:
    """Planner SLO attainment against the best baseline, in words."""
    got = against_best(table)
    if got is None:
        return ""
    pl, best, b, ratio, rc = got
    ci = f" [95% CI {rc[1]:.2f}, {rc[2]:.2f}]" if rc else ""
    return (f"planner SLO attainment {pl['mean']:.2f} against the best baseline ({best}) {b['mean']:.2f}: "
            f"{'x' + format(ratio, '.2f') + ci if math.isfinite(ratio) else 'best baseline met none'}")


def summary(bundles: list[Any], cols: list[str]) -> list[list]:
    """One row per workload: planner, best baseline, ratio with its CI, the goal and
    whether the ratio (its lower bound too) reaches it."""
    rows = []
    for col, bdl in zip(cols, bundles, strict=True):
        got = against_best(by_policy(bdl))
        if got is None:
            continue
        pl, best, b, ratio, rc = got
        goal = goal_of(col)
        met = "yes" if ratio >= goal else "no"
        if rc and ratio >= goal:
            met += " (CI above)" if rc[1] >= goal else " (CI includes less)"
        rows.append([col, pl["n"], _cell(pl), best, _cell(b), f"x{ratio:.2f}",
                     f"[{rc[1]:.2f}, {rc[2]:.2f}]" if rc else "", f">= x{goal:g}", met])
    return rows


def section(bundles: list[Any], cols: list[str]) -> str | None:
    """Markdown for the report (None when no bundle swept the policy axis)."""
    from labtui.report.markdown import table as md_table

    parts = []
    for col, b in zip(cols, bundles, strict=True):
        t = by_policy(b)
        if not t:
            continue
        rows = []
        for pol, d in sorted(t.items(), key=lambda kv: -(kv[1]["attainment"]["mean"] or -1)):
            rows.append([pol, d["attainment"]["n"], _cell(d["attainment"]), _cell(d["goodput_tok_s"], 1),
                         _cell(d["ttft_p50"], 0, 1e3), _cell(d["ttft_p95"], 0, 1e3), _cell(d["tpot_p50"], 0, 1e3),
                         _cell(d["tpot_p95"], 0, 1e3), _cell(d["pause_s"], 2), _cell(d["moved_mib"], 0),
                         _cell(d["requests"], 0)])
        parts.append(f"### {col}\n\n" + md_table(
            ["policy", "runs", "SLO attainment", "goodput tok/s", "TTFT p50 ms", "TTFT p95 ms", "TPOT p50 ms",
             "TPOT p95 ms", "pause s", "moved MiB", "requests"], rows))
        v = verdict(t)
        if v:
            parts.append(v + ".")
        sc = by_slo_scale(b)
        if any(x is not None for row in sc.values() for x in row.values()):
            srows = [[pol, *("" if sc[pol][x] is None else f"{sc[pol][x]:.2f}" for x in SLO_SCALES)]
                     for pol in sorted(sc, key=lambda p: -(t[p]["attainment"]["mean"] or -1))]
            parts.append("SLO attainment with every TTFT and TPOT target multiplied by the scale "
                         "(mean of runs; 1 = the scenario's targets):\n\n"
                         + md_table(["policy", *(f"x{x:g}" for x in SLO_SCALES)], srows))
    if not parts:
        return None
    head = ""
    rows = summary(bundles, cols)
    if rows:
        head = ("Planner against the best baseline (ollama, llamacpp-router, static-split: the highest mean SLO "
                "attainment) per workload; the ratio's 95% interval by the delta method on its log (Student's t, "
                "Welch's degrees of freedom) over the same repetitions:\n\n" + md_table(
                    ["workload", "runs", "planner", "best baseline", "its attainment", "ratio", "95% CI",
                     "goal", "met"], rows) + "\n\n")
    return (head + "Mean ± 95% confidence interval over repetitions (Student's t; blank without "
            "repetitions). SLO attainment: share of requests (weighted by slo_weight) meeting "
            "their model's TTFT and TPOT targets. See labtui/report/policies.py.\n\n" + "\n\n".join(parts))


def figure(bundles: list[Any], cols: list[str], out: Any) -> str | None:
    """SLO attainment per policy, one group of bars per bundle (workload), with the
    95% confidence interval as error bars. Returns the file stem, or None."""
    tables = [(c, by_policy(b)) for c, b in zip(cols, bundles, strict=True)]
    tables = [(c, t) for c, t in tables if t]
    if not tables:
        return None
    from labtui.report.plots import _save, plt

    pols = sorted({p for _, t in tables for p in t}, key=lambda p: (p == "planner", p))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(tables) * len(pols) / 3), 3.8))
    width = 0.8 / len(pols)
    for j, pol in enumerate(pols):
        xs, ys, es = [], [], []
        for i, (_, t) in enumerate(tables):
            d = t.get(pol, {}).get("attainment")
            if d and d["mean"] is not None:
                xs.append(i + (j - (len(pols) - 1) / 2) * width)
                ys.append(d["mean"])
                es.append(d["ci"] or 0.0)
        ax.bar(xs, ys, width, yerr=es, capsize=2, label=pol,
               color="#c44e52" if pol == "planner" else None)
    ax.set_xticks(range(len(tables)), [c.removeprefix("bench-") for c, _ in tables])
    ax.set_ylabel("SLO attainment")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=7, ncol=min(4, len(pols)))
    ax.set_title("Requests meeting their model's TTFT and TPOT targets, by policy")
    return _save(fig, out, "policies")


def _run_events(bundle: Any) -> dict[str, list[dict]]:
    """policy -> the events of its first repetition (run phase), in order."""
    first: dict[str, tuple] = {}
    runs: dict[tuple, list[dict]] = defaultdict(list)
    for e in bundle.events:
        k = (e.get("point", 0), e.get("rep", 0))
        if e.get("kind") == "point_start":
            pol = (e.get("values") or {}).get("policy")
            if pol is not None and pol not in first:
                first[pol] = k
        runs[k].append(e)
    return {pol: runs[k] for pol, k in first.items()}


def timeline_figure(bundles: list[Any], cols: list[str], out: Any) -> str | None:
    """Residency over time in the first bursty bundle: the planner's first run
    against the best baseline's, one line per model (resident blocks / all, 0 while
    evicted or preempted), each finished request a dot at its finish time (filled:
    met its TTFT and TPOT targets). Returns the file stem, or None."""
    pick = next(((c, b) for c, b in zip(cols, bundles, strict=True) if "bursty" in c), None)
    if pick is None:
        return None
    col, bundle = pick
    table = by_policy(bundle)
    base = [p for p in BASELINES if p in table and table[p]["attainment"]["mean"] is not None]  # as verdict
    runs = _run_events(bundle)
    if "planner" not in runs or not base:
        return None
    best = max(base, key=lambda p: table[p]["attainment"]["mean"])
    slos = slos_of(getattr(bundle, "scenario_text", None))
    from labtui.report.plots import _save, plt

    fig, axes = plt.subplots(2, 1, figsize=(7.5, 4.6), sharex=True)
    for ax, pol in zip(axes, (best, "planner"), strict=True):
        evs = runs[pol]
        t0 = next((e["t"] for e in evs if e.get("kind") == "point_start"), 0.0)
        n_layers = {e["model"]: e.get("n_layers") for e in bundle.events if e.get("kind") == "load"}
        lines: dict[str, list[tuple[float, float]]] = defaultdict(list)
        last: dict[str, float] = {}  # the placement a model returns to on a plain resume
        now: dict[str, float] = {}  # where each model is at the run's start (setup phase)
        for e in evs:
            m, t = e.get("model"), e["t"] - t0
            kind = e.get("kind")
            if not m or kind not in ("residency", "preempt", "resume"):
                continue
            if kind == "residency":
                y = float(e.get("residency") or 0.0)
                last[m] = y
            elif kind == "preempt":
                y = 0.0
            elif e.get("pipelined"):
                continue  # its climb's residency events follow
            else:
                y = last.get(m, 1.0)
            if e.get("phase") in ("run", None):
                if m not in lines and m in now:
                    lines[m].append((0.0, now[m]))
                lines[m].append((t, y))
            else:
                now[m] = y
        for m, y in now.items():
            if m not in lines:
                lines[m] = [(0.0, y)]
        t_end = max((e["t"] - t0 for e in evs if e.get("kind") == "request_finish"), default=0.0)
        for pts in lines.values():
            pts.append((t_end, pts[-1][1]))
        for i, (m, pts) in enumerate(sorted(lines.items())):
            xs = [p[0] for p in pts]
            ys = [p[1] for p in pts]
            ax.step(xs, ys, where="post", label=f"{m} ({n_layers.get(m) or '?'} blocks)", color=f"C{i}")
            for e in evs:
                if e.get("kind") == "request_finish" and e.get("model") == m:
                    s = slos.get(m, {})
                    ok = (s.get("ttft") is None or (e.get("ttft_s") or 0) <= s["ttft"]) and \
                        (s.get("tpot") is None or (e.get("tpot_s") or 0) <= s["tpot"])
                    ax.plot(e["t"] - t0, 1.06 + 0.06 * i, "o", ms=4, color=f"C{i}", mfc=f"C{i}" if ok else "none")
        att = table[pol]["attainment"]["mean"]
        ax.set_title(f"{pol}: SLO attainment {att:.2f} (mean of runs); dots: requests finishing "
                     "(hollow: missed a target)", fontsize=8)
        ax.set_ylim(-0.05, 1.25)
        ax.set_ylabel("residency")
        ax.legend(fontsize=7, loc="lower right")
    axes[-1].set_xlabel(f"seconds into the run ({col.removeprefix('bench-')}, first repetition)")
    fig.tight_layout()
    return _save(fig, out, "policy_timeline")
