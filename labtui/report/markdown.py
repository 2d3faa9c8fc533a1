"""report.md: tables in markdown around the figures: medians with 95% bootstrap
CIs (n=1 has no interval and shows "-"), consistency checks, ratios between
bundles, the cost model's error with its sign."""

from __future__ import annotations

import statistics
from collections import defaultdict
from typing import Any

from labtui.report.costmodel import Prediction
from labtui.report.data import Run, group_values, model_source, residency_of
from labtui.scenario.bundle import Bundle
from labtui.scenario.stats import median_ci, ratio_ci


def table(head: list[str], rows: list[list[Any]]) -> str:
    def cell(v: Any) -> str:
        return "" if v is None else str(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def _f(x: float | None, digits: int = 2) -> str:
    return "" if x is None else f"{x:.{digits}f}"


def _gib(x: Any) -> str:
    # three significant digits: a 0.13 GiB sim budget is not "0.1", 23.5 GiB of RAM stays so
    return f"{x / 1024**3:.3g} GiB" if isinstance(x, int | float) and x else ""


def machines(bundles: list[Bundle], cols: list[str]) -> str:
    rows = []
    for col, b in zip(cols, bundles, strict=True):
        e = b.env or {}
        d = e.get("device") or {}
        th = e.get("threads") or {}
        env = {k: v for k, v in (th.get("env") or {}).items() if v}
        threads = (f"{th.get('torch_num_threads', e.get('torch_threads', ''))}"
                   + (f" ({', '.join(f'{k}={v}' for k, v in env.items())})" if env else "")) if th or e else ""
        load = th.get("loadavg")
        rows.append([col, e.get("node") or e.get("hostname"), e.get("platform"), e.get("cpu_count"),
                     _gib(e.get("host_ram_bytes")), e.get("torch"), threads,
                     f"{load[0]:g}" if load else "", d.get("kind"), d.get("name"),
                     "yes" if d.get("simulated") else "no", d.get("link"), _gib(d.get("budget_bytes")),
                     d.get("host_slowdown"), d.get("profile") or e.get("profile") or "-"])
    return table(["bundle", "host", "platform", "CPUs", "RAM", "torch", "torch threads", "load at start",
                  "device", "name", "simulated", "link", "budget", "host slowdown", "profile"], rows)


def status(bundles: list[Bundle], cols: list[str], runs: dict[str, list[Run]]) -> str:
    rows = []
    for col, b in zip(cols, bundles, strict=True):
        s = b.summary or {}
        state = ("interrupted" if s.get("interrupted") else "timed out" if s.get("timed_out")
                 else "error" if s.get("error") else "complete") if b.summary else "partial (no summary.json)"
        planned = s.get("runs_planned")
        done = sum(1 for r in runs[col] if r.ended)
        pr = s.get("protocol") or {}
        runs_txt = (f"{done} ({pr['min_repeat']}-{pr['max_repeat']} per point, until the CI is "
                    f"within ±{100 * pr['ci_rel_width']:g}%)" if pr.get("max_repeat", 0) > pr.get("min_repeat", 0)
                    else f"{done}/{planned if planned else '?'}")
        rows.append([col, s.get("scenario") or "", state, runs_txt,
                     "; ".join(b.notes) or "nothing missing"])
    return table(["bundle", "scenario", "state", "runs", "missing or damaged"], rows)


def ci(d: dict, digits: int = 2) -> str:
    """median [lo, hi] (95% bootstrap CI), or median [-] for one repetition."""
    if d.get("median") is None:
        return ""
    if d.get("ci_lo") is None:
        return f"{d['median']:.{digits}f} [-]"
    return f"{d['median']:.{digits}f} [{d['ci_lo']:.{digits}f}, {d['ci_hi']:.{digits}f}]"


def points(runs: list[Run]) -> str:
    """Median and 95% CI over repetitions per sweep point and model."""
    acc: dict[tuple, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for r in runs:
        for m, st in r.stats.items():
            k = (r.bundle, r.point, r.label, m)
            acc[k]["dec"].append(st.get("decode_tok_s"))
            acc[k]["thr"].append(st.get("served_tok_s", st.get("throughput_tok_s")))
            acc[k]["ttft"].append(st.get("ttft_p50"))
            acc[k]["cpu"].append(r.cpu_other)
    rows = []
    for (b, p, label, m), d in sorted(acc.items(), key=lambda kv: kv[0][:2]):
        dec = median_ci(d["dec"])
        rows.append([b, p, label, m, ci(dec), _rel(dec), ci(median_ci(d["thr"])),
                     ci(median_ci(d["ttft"]), 3), len(d["dec"]), _cpu(d["cpu"])])
    return table(["bundle", "point", "values", "model", "decode tok/s", "CI ±", "served tok/s",
                  "TTFT p50 s", "reps", "other CPU load"], rows)


def _cpu(xs: list) -> str:
    xs = [x for x in xs if x is not None]
    return f"{100 * statistics.median(xs):.0f}%" if xs else "-"


def _rel(d: dict) -> str:
    if d.get("ci_lo") is None or not d.get("median"):
        return "-"
    return f"{100 * (d['ci_hi'] - d['ci_lo']) / 2 / d['median']:.1f}%"


def _pm(xs: list, digits: int = 2) -> str:
    return ci(median_ci(xs), digits)


def consistency(runs: list[Run], tol: float = 0.05) -> tuple[str, list[str]]:
    """Configurations that must measure the same: at 100% residency the offload
    mode and prefetch change nothing, so those points (same bundle, model and
    every other value) are compared. Returns the table and the warnings."""
    acc: dict[tuple, dict[tuple, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in runs:
        for m, st in r.stats.items():
            info = r.models.get(m) or {}
            if residency_of(r, m) != 1.0 or not st.get("decode_tok_s"):
                continue
            key = (r.bundle, model_source(r, m), group_values(r, ("residency", "offload", "prefetch")))
            acc[key][(info.get("mode"), info.get("prefetch"))].append(st["decode_tok_s"])
    rows, warns = [], []
    for (b, src, _group), confs in sorted(acc.items(), key=str):
        if len(confs) < 2:
            continue
        (ref_c, ref), *others = sorted(confs.items(), key=str)
        for c, xs in others:
            rc = ratio_ci(xs, ref)
            diff = rc["median"] - 1
            beyond = rc["ci_lo"] is not None and not rc["ci_lo"] <= 1.0 <= rc["ci_hi"]
            tight = rc["ci_lo"] is not None and rc["ci_lo"] >= 1 - tol and rc["ci_hi"] <= 1 + tol
            verdict = ("agree within 5%" + ("" if tight else "; the CI is wider than ±5%, so not resolved "
                                            "at 5%") if abs(diff) <= tol
                       else "DIFFER beyond their CIs" if beyond else "differ by > 5%, within their CIs")
            what = f"{src.removeprefix('zoo:')} {_conf(c)} vs {_conf(ref_c)} at 100% resident ({b})"
            rows.append([b, src.removeprefix("zoo:"), _conf(c), _conf(ref_c), ci(median_ci(xs)),
                         ci(median_ci(ref)), f"{100 * diff:+.1f}%", _ci_pct(rc), verdict])
            if abs(diff) > tol:
                warns.append(f"{what}: {100 * diff:+.1f}% ({verdict}); these must be equal, so the "
                             "difference is measurement noise or drift, and differences of this size "
                             "elsewhere are not findings")
    return (table(["bundle", "model", "config", "reference", "decode tok/s", "reference tok/s",
                   "difference", "95% CI of the ratio", "verdict"], rows) if rows else "", warns)


BUSY = 0.25  # other processes' share of the CPU above which a bundle is flagged


def contention(by_bundle: dict[str, list[Run]]) -> list[str]:
    """A warning per bundle measured while other processes used much of the CPU:
    its absolute numbers are this machine's under load, and its spread is wide."""
    out = []
    for b, rs in by_bundle.items():
        xs = [r.cpu_other for r in rs if r.cpu_other is not None]
        if xs and statistics.median(xs) > BUSY:
            out.append(f"{b}: other processes used a median {100 * statistics.median(xs):.0f}% of the "
                       f"machine's CPU while its points ran (max {100 * max(xs):.0f}%); its tok/s are "
                       "those of a busy machine and its intervals are wide; rerun on a quiet one to cite "
                       "absolute figures")
    return out


def _conf(c: tuple) -> str:
    mode, pf = c
    return f"{mode}" + ("" if pf is None else f", prefetch {'on' if pf else 'off'}")


def _ci_pct(rc: dict) -> str:
    if rc.get("ci_lo") is None:
        return "-"
    return f"[{100 * (rc['ci_lo'] - 1):+.1f}%, {100 * (rc['ci_hi'] - 1):+.1f}%]"


def ratios(by_bundle: dict[str, list[Run]]) -> str:
    """Several bundles: each point's median decode tok/s against the first
    bundle's same point (same model and values), with the ratio's CI."""
    cols = list(by_bundle)
    acc: dict[str, dict[tuple, list[float]]] = {c: defaultdict(list) for c in cols}
    for c, rs in by_bundle.items():
        for r in rs:
            for m, st in r.stats.items():
                if st.get("decode_tok_s"):
                    acc[c][(model_source(r, m), r.label)].append(st["decode_tok_s"])
    base = acc[cols[0]]
    rows = []
    for key in sorted(base, key=str):
        for c in cols[1:]:
            if key in acc[c]:
                rc = ratio_ci(acc[c][key], base[key])
                rows.append([key[0].removeprefix("zoo:"), key[1], ci(median_ci(base[key])), c,
                             ci(median_ci(acc[c][key])), ci(rc, 3)])
    return table(["model", "point", f"{cols[0]} tok/s", "bundle", "tok/s", f"ratio to {cols[0]}"],
                 rows) if rows else ""


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
    from labtui.report.costmodel import point_errors

    acc: dict[tuple, list[float]] = defaultdict(list)
    for p in point_errors(preds):  # per sweep point: medians over its repetitions
        acc[(p.bundle, p.source, p.mode, f"decode per token ({p.how})")].append(p.error)
    for r in reloads:
        if r["measured_s"]:
            acc[(r["bundle"], r["source"], r["weights"], f"{r['phase']} ({r.get('how', 'link')})")].append(
                (r["predicted_s"] - r["measured_s"]) / r["measured_s"])
    rows = [[b, s, mode, what, len(errs), _pct(statistics.fmean(abs(e) for e in errs)),
             f"{100 * statistics.fmean(errs):+.1f}%", _sign(errs), _pct(max(errs, key=abs))]
            for (b, s, mode, what), errs in sorted(acc.items())]
    return table(["bundle", "model", "mode / weights", "predicted", "n (points; resumes)", "mean abs error",
                  "mean signed error", "sign", "worst error"], rows)


def _sign(errs: list[float]) -> str:
    pos = sum(e > 0 for e in errs)
    if pos == len(errs):
        return "always over (predicts slower)"
    if pos == 0:
        return "always under (predicts faster)"
    return f"mixed ({pos}/{len(errs)} over)"


def profile_table(rows: list[dict]) -> str:
    """The profile's physics on the measured models: predicted, not measured."""
    acc: dict[tuple, dict] = {}
    for r in rows:
        acc.setdefault((r["bundle"], r["point"], r["model"]), r)
    out = [[r["bundle"], r["point"], r["label"], r["model"].removeprefix("zoo:"), r["profile"],
            _f(r["predicted_tok_s"], 1), _f(r["predicted_norm"], 3),
            _f(r["dilation"], 1) if r["dilation"] else "-"]
           for _, r in sorted(acc.items(), key=lambda kv: kv[0][:2])]
    return table(["bundle", "point", "values", "model", "profile", "predicted tok/s on the target",
                  "predicted ÷ 100% resident", "dilation D"], out)
