"""A first-order cost model, to compare with what was measured.

Decode time per token of a model with k of n decoder blocks resident:

- compute: c per block, calibrated from the same curve's fully resident run
  (median t_full / n: embedding and head are folded in, which is why it is first
  order);
- ``stream``: every block computes on the accelerator, and the n-k streamed
  blocks' weights (b bytes each) cross the link: copies = (n-k) * (latency +
  b / B); n*c + copies without prefetch, max(n*c, copies) with it (copies
  overlap compute);
- ``host``: the n-k blocks run on the host at c_host per block, calibrated from
  the curve's 0%-resident run if there is one, else c * host_slowdown.

After a preemption: reload with weights=host = (n+1) copies over the link
(blocks, and the rest as one); with weights=disk = storage fixed cost + bytes /
storage GB/s; KV in = 2n copies (keys and values of each layer, as kvcache.py
moves them) over the link.

The link (B and the per-copy latency) is fitted per run to its own layer_move
events, seconds = latency + bytes / B (least squares when copies of several
sizes moved, else latency 0 and B their effective rate). Storage comes from
the bundle's disk reloads, fitted the same way: that term is calibrated on the
very reloads it predicts (in-sample), and the report says so.

Sign of the error: measured, and stated per row in the report (mean signed
error; positive = predicts slower). Expected biases: c folds embedding and head
into the blocks, so with few blocks resident the compute term is too large
(stream predictions slower than measured when compute-bound); a link fitted on
one copy size has latency 0, so many small copies are predicted too fast.

Under a hardware profile (runs made with --profile) the physics is known and
nothing is fitted: the link, host, storage and per-copy terms are the profile's
at the dilation D each model measured at its load (``_paced``), compute is the
curve's own 100%-resident step. What a first version missed and this one has:
the per-copy latency (x D: ~1 ms per copy at D ~ 100), the host stretch's
activation copies (latency-bound: a quarter of a host step), no prefetch
overlap when a single block is streamed (the prefetch window is streamed - 1
blocks), and a per-stretch host cost beyond the paced terms, read from the
curve's 0% host point and spread over its paced waits (``_host_rest``; that
point is then calibration, not scored). Errors are scored per sweep point (``point_errors``: medians over its
repetitions). Sign, under a profile: stream predictions slightly over (slower)
at 0-67% residency, where the copies dominate (pacing sleeps overshoot very
little); under (faster) with one streamed block; host mixed around the
calibrated 0% point.

``profile_predictions`` applies a hardware profile's physics
(labtui/engine/profiles.py) to the measured models' sizes: what the target
would show, predicted, never measured.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from labtui.report.data import (
    Run,
    dilation_of,
    group_values,
    model_source,
    preemption_rows,
    residency_of,
)

# Activation copies of a host-executed stretch of blocks, as streaming.py makes
# them on the zoo's llama and qwen3 families (counted: 9 D2H + 1 H2D per forward
# for qwen3-10m's 6 host blocks, 11 + 1 for llama-30m's 8): entering the host, the
# hidden state and the shared (cos, sin) go down; each host block's remaining
# tensor argument (position ids) goes down again; the output comes back up once.
# Each is a copy of a few KiB: latency-bound, and under a profile the latency is
# dilated by D, so with D ~ 100 these few copies are a quarter of a host step.
KV_COPIES_PER_LAYER = 2  # kvcache.py copies a layer's keys and values separately
ACT_D2H_PER_STRETCH = 3
ACT_D2H_PER_HOST_BLOCK = 1
ACT_H2D_PER_STRETCH = 1


@dataclass(frozen=True)
class Prediction:
    bundle: str
    source: str
    group: tuple
    residency: float
    mode: str
    measured_s: float  # per token
    predicted_s: float
    how: str = "fitted"  # "profile": the run's profile physics at its measured D

    @property
    def error(self) -> float:
        return (self.predicted_s - self.measured_s) / self.measured_s


def block_bytes(runs: list[Run]) -> dict[tuple, float]:
    """(bundle, source) -> median bytes of one decoder block's weights."""
    acc: dict[tuple, list[int]] = defaultdict(list)
    for r in runs:
        for e in r.moves:
            if e.get("what") == "weights" and isinstance(e.get("layer"), int) and e.get("bytes"):
                acc[(r.bundle, model_source(r, e.get("model")))].append(e["bytes"])
    return {k: statistics.median(v) for k, v in acc.items()}


def fit_fixed_rate(sizes: list[float], seconds: list[float]) -> tuple[float, float] | None:
    """(fixed s, GB/s) of seconds = fixed + bytes / rate, least squares; with one
    size (or a fit that goes negative), fixed 0 and the effective rate."""
    pts = [(b, s) for b, s in zip(sizes, seconds, strict=True) if b and s and s > 0]
    if not pts:
        return None
    b, s = np.array([p[0] for p in pts], float), np.array([p[1] for p in pts], float)
    if len(set(b.tolist())) > 1:
        slope, fixed = np.polyfit(b, s, 1)
        if slope > 0 and fixed >= 0:
            return float(fixed), float(1 / slope / 1e9)
    return 0.0, float(np.median(b / s) / 1e9)


def link_fit(r: Run) -> tuple[float, float] | None:
    """(latency s, GB/s) of this run's host->accelerator copies (weights and KV)."""
    moves = [e for e in r.moves if e.get("direction") == "h2d" and e.get("bytes") and e.get("seconds")
             and (isinstance(e.get("layer"), int))]
    # a model's first load writes freshly allocated memory (page faults), slower
    # than the link's pacing: fit on the other copies when there are any
    warm = [e for e in moves if e.get("reason") != "load"]
    moves = warm or moves
    fit = fit_fixed_rate([e["bytes"] for e in moves], [e["seconds"] for e in moves])
    if fit is not None:
        return fit
    if r.device.get("link_gbps"):
        return (r.device.get("link_latency_us") or 0.0) * 1e-6, float(r.device["link_gbps"])
    return None


def link_gbps(r: Run) -> float | None:
    """Measured host->accelerator GB/s of this run's copies, else the nominal."""
    fit = link_fit(r)
    return fit[1] if fit else None


def decode_predictions(runs: list[Run]) -> list[Prediction]:
    bb = block_bytes(runs)
    # measured seconds per token, by curve and residency
    t: dict[tuple, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in runs:
        for m, st in r.stats.items():
            res = residency_of(r, m)
            if res is None or not st.get("decode_tok_s"):
                continue
            t[(r.bundle, model_source(r, m), group_values(r, ("residency",)))][res].append(1 / st["decode_tok_s"])
    host_rest = _host_rest(runs, t, bb)
    out: list[Prediction] = []
    for r in runs:
        for m, st in r.stats.items():
            info = r.models.get(m) or {}
            n, res = info.get("n_layers"), residency_of(r, m)
            if not n or res is None or not st.get("decode_tok_s"):
                continue
            key = (r.bundle, model_source(r, m), group_values(r, ("residency",)))
            curve = t[key]
            if 1.0 not in curve:
                continue
            k = info["resident_layers"]
            if k == n:  # the calibration point itself: nothing to predict
                continue
            c = statistics.median(curve[1.0]) / n
            mode = info.get("mode", "stream")
            prof = _paced(r, m)
            if prof is not None:
                if mode == "host" and k == 0 and key in host_rest:
                    continue  # the curve's other calibration point (host_rest)
                pred = _profile_step(prof, statistics.median(curve[1.0]), n, k, mode,
                                     bb.get((r.bundle, key[1])), r, m, info.get("prefetch", True),
                                     host_rest.get(key))
                out.append(Prediction(r.bundle, key[1], key[2], res, mode, 1 / st["decode_tok_s"],
                                      pred, "profile"))
                continue
            if mode == "host":
                c_host = (statistics.median(curve[0.0]) / n if 0.0 in curve
                          else c * r.device.get("host_slowdown", 1.0))
                pred = k * c + (n - k) * c_host
            else:
                b, fit = bb.get((r.bundle, key[1])), link_fit(r)
                if b is None or not fit:
                    continue
                lat, gbps = fit
                copy = (n - k) * (lat + b / (gbps * 1e9))
                pred = max(n * c, copy) if info.get("prefetch", True) else n * c + copy
            out.append(Prediction(r.bundle, key[1], key[2], res, mode, 1 / st["decode_tok_s"], pred))
    return out


def point_errors(preds: list[Prediction]) -> list[Prediction]:
    """One prediction per sweep point: the median of its repetitions' measured and
    predicted seconds per token (each repetition predicted at its own D). A point
    is what the goal "within 15% on every point" is about; one repetition on a
    shared machine scatters by more than that by itself."""
    acc: dict[tuple, list[Prediction]] = defaultdict(list)
    for p in preds:
        acc[(p.bundle, p.source, p.group, p.residency, p.mode, p.how)].append(p)
    return [Prediction(*k[:5], statistics.median(p.measured_s for p in ps),
                       statistics.median(p.predicted_s for p in ps), k[5]) for k, ps in acc.items()]


def _paced(r: Run, m: str):
    """The Pacing model ``m`` of run ``r`` ran under (its profile at the D measured
    at its load), or None without a profile."""
    from labtui.engine.profiles import get_profile
    from labtui.errors import LabError

    name, d = r.device.get("profile"), dilation_of(r, m)
    info = r.models.get(m) or {}
    if not name or not d or not info.get("params"):
        return None
    try:
        prof = get_profile(name)
    except LabError:  # a user profile not on this machine
        return None
    w = float(info["params"]) * 4
    return prof.pacing_for(d * prof.resident_step_s(w), w, n_layers=info.get("n_layers"))


def _host_terms(p, b: float, off: int) -> tuple[float, float]:
    """(one host block's paced time, the activation copies' time) with ``off``
    blocks executed on the host in one stretch (the first blocks are resident)."""
    host_b = b / (p.host_gbps * 1e9) + p.host_block_s
    stretches = 1 if off else 0
    copies = (ACT_D2H_PER_STRETCH + ACT_H2D_PER_STRETCH) * stretches + ACT_D2H_PER_HOST_BLOCK * off
    return host_b, copies * p.copy_latency_s


def _waits(off: int) -> int:
    """Paced waits of a host stretch of ``off`` blocks: one per block, one per copy."""
    if not off:
        return 0
    return off + ACT_D2H_PER_STRETCH + ACT_H2D_PER_STRETCH + ACT_D2H_PER_HOST_BLOCK * off


def _host_rest(runs: list[Run], t: dict, bb: dict) -> dict[tuple, float]:
    """Per host-mode curve under a profile: what a host stretch costs beyond its
    paced blocks and copies, read from the curve's 0% point (its measured step
    minus the physics' prediction, median over repetitions), and spread over the
    stretch's paced waits (``_waits``: 16 for qwen3-10m's 6 host blocks).

    Why: measured host steps came out 4-7 ms (qwen3-10m, D ~ 100-190, loaded
    machine) longer than the physics: each of a stretch's paced sleeps wakes up
    late on a busy core and each block's hooks hand over between threads. A cost
    per wait fitted three bundles' intermediate points within 12%; a constant per
    stretch over-predicted one block by up to 44%. With the 0% point as its
    calibration the points in between are predictions, and the 0% point is not
    scored.
    """
    acc: dict[tuple, list[float]] = defaultdict(list)
    for r in runs:
        for m, st in r.stats.items():
            info = r.models.get(m) or {}
            n = info.get("n_layers")
            if info.get("mode") != "host" or info.get("resident_layers") != 0 or not n or not st.get("decode_tok_s"):
                continue
            p = _paced(r, m)
            key = (r.bundle, model_source(r, m), group_values(r, ("residency",)))
            if p is None or 1.0 not in t.get(key, {}):
                continue
            phys = _profile_step(p, statistics.median(t[key][1.0]), n, 0, "host", bb.get((r.bundle, key[1])), r, m,
                                 True, 0.0)
            acc[key].append(1 / st["decode_tok_s"] - phys)
    return {k: max(0.0, statistics.median(v)) for k, v in acc.items()}


def _profile_step(p, t_full: float, n: int, k: int, mode: str, b: float | None, r: Run, m: str,
                  prefetch: bool, stretch_s: float | None = None) -> float:
    """Seconds per token under a profile, in this machine's (dilated) clock.

    The physics is known there: the link, host and latency terms are the
    profile's at the run's measured D (``_paced``); compute is this machine's own
    fully resident step ``t_full`` (measured in the same curve), split over the
    blocks by their share of the weights (the rest: embedding, head). In host
    mode the stretch's paced waits add ``stretch_s`` (``_host_rest``: the cost of
    an all-host stretch) pro rata.
    """
    info = r.models.get(m) or {}
    w = float(info["params"]) * 4
    b = b or w / n
    off = n - k
    if mode == "host":
        c_b = t_full * b / w  # one block's compute here
        rest = max(0.0, t_full - n * c_b)
        host_b, acts = _host_terms(p, b, off)
        # a host block takes the target's host time (dilated) unless this CPU's own
        # block compute is longer (streaming.py sleeps the difference out)
        return rest + k * c_b + off * max(c_b, host_b) + acts + (stretch_s or 0.0) * _waits(off) / _waits(n)
    copy = p.copy_s(off * b, off, "h2d")
    # prefetch keeps min(depth - 1, streamed - 1) blocks in flight (streaming.py):
    # one streamed block is never prefetched, so its copy adds to the compute
    if prefetch and off > 1:
        return max(t_full, copy)
    return t_full + copy


def storage_fits(runs: list[Run]) -> dict[str, tuple[float, float]]:
    """bundle -> (fixed s, GB/s) fitted to its weights=disk reloads (in-sample)."""
    acc: dict[str, tuple[list, list]] = defaultdict(lambda: ([], []))
    for row in preemption_rows(runs):
        if row["weights"] == "disk" and row["reload_bytes"] and row["reload_s"]:
            acc[row["bundle"]][0].append(row["reload_bytes"])
            acc[row["bundle"]][1].append(row["reload_s"])
    return {b: f for b, (s, t) in acc.items() if (f := fit_fixed_rate(s, t)) is not None}


def reload_predictions(runs: list[Run]) -> list[dict]:
    """Per resume: predicted vs measured reload and kv_in seconds."""
    by_key = {r.key(): r for r in runs}
    storage = storage_fits(runs)
    out = []
    for row in preemption_rows(runs):
        r = by_key[(row["bundle"], row["point"], row["rep"])]
        n = (r.models.get(row["model"]) or {}).get("n_layers") or 1
        pace = _paced(r, row["model"])
        if pace is not None:  # under a profile the physics is known: nothing fitted
            for phase, nbytes in (("reload", row["reload_bytes"]), ("kv_in", row["kv_in_bytes"])):
                if not nbytes:
                    continue
                if phase == "reload" and row["weights"] == "disk":
                    pred, how = pace.reload_s(nbytes), "profile storage"
                else:
                    copies = n + 1 if phase == "reload" else KV_COPIES_PER_LAYER * n
                    pred, how = pace.copy_s(nbytes, copies, "h2d"), "profile link"
                out.append({**row, "phase": phase, "bytes": nbytes, "gbps": pace.h2d_gbps, "how": how,
                            "predicted_s": pred, "measured_s": row[f"{phase}_s"]})
            continue
        fit = link_fit(r)
        if not fit:
            continue
        lat, gbps = fit
        for phase, nbytes in (("reload", row["reload_bytes"]), ("kv_in", row["kv_in_bytes"])):
            if not nbytes:
                continue
            how = "link"
            if phase == "reload" and row["weights"] == "disk":
                st = storage.get(row["bundle"])
                if st is None:
                    continue
                pred, how = st[0] + nbytes / (st[1] * 1e9), "storage (in-sample fit)"
            else:
                copies = n + 1 if phase == "reload" else KV_COPIES_PER_LAYER * n  # blocks + the rest; K and V
                pred = copies * lat + nbytes / (gbps * 1e9)
            out.append({**row, "phase": phase, "bytes": nbytes, "gbps": gbps, "how": how,
                        "predicted_s": pred, "measured_s": row[f"{phase}_s"]})
    return out


# ---------------------------------------------------------------------------
# "as on PROFILE": the profile's physics applied to the measured models' sizes


def weight_bytes(r: Run, m: str, bb: dict[tuple, float]) -> tuple[float, float] | None:
    """(all weights, one block) in bytes: params x 4 (sim computes in float32),
    the block's size from the bundle's moves when it has them."""
    info = r.models.get(m) or {}
    if not info.get("params") or not info.get("n_layers"):
        return None
    w = float(info["params"]) * 4
    return w, bb.get((r.bundle, model_source(r, m)), w / info["n_layers"])


def profile_predictions(runs: list[Run]) -> list[dict]:
    """Per point and model of runs made under a profile: the target's predicted
    decode tok/s and the dilation D = measured resident step / predicted one."""
    from labtui.engine.profiles import get_profile
    from labtui.errors import LabError

    bb = block_bytes(runs)
    resident: dict[tuple, list[float]] = defaultdict(list)
    for r in runs:
        for m, st in r.stats.items():
            if residency_of(r, m) == 1.0 and st.get("decode_tok_s"):
                resident[(r.bundle, model_source(r, m))].append(1 / st["decode_tok_s"])
    seen: set[tuple] = set()
    out = []
    for r in runs:
        name = r.device.get("profile")
        if not name:
            continue
        try:
            prof = get_profile(name)
        except LabError:  # a user profile not on this machine: nothing to predict from
            continue
        phys = prof.physics
        for m in r.stats:
            info, wb = r.models.get(m) or {}, weight_bytes(r, m, bb)
            key = (r.bundle, r.point, m)
            if wb is None or key in seen:
                continue
            seen.add(key)
            w, b = wb
            n, k = info["n_layers"], info["resident_layers"]
            res = phys.resident_step_s(w)
            if k == n:
                step = res
            elif info.get("mode") == "host":
                # the stretch's activation copies are latency on the target too
                step = phys.host_step_s(res / n, n, n - k, b) + _host_terms(phys, b, n - k)[1]
            else:
                step = phys.stream_step_s(res, (n - k) * b, n - k, info.get("prefetch", True))
            here = resident.get((r.bundle, model_source(r, m)))
            out.append({"bundle": r.bundle, "point": r.point, "label": r.label, "model": model_source(r, m),
                        "profile": name, "residency": k / n, "mode": info.get("mode"),
                        "predicted_tok_s": 1 / step, "predicted_norm": res / step,
                        "dilation": statistics.median(here) / res if here else None})
    return out


# ---------------------------------------------------------------------------
# the study's six preemption totals, from the models' sizes (docs/study.md)

# The study's own figures (docs/profiles.md, "Storage"): FP16 weights of its 3B,
# 8B and 14B models, and the pause totals (kv_out + release + reload + kv_in) it
# reported on each GPU.
STUDY_SIZES_GB = {"3B": 5.9, "8B": 15.6, "14B": 28.3}
STUDY_TOTALS_S = {
    "study-rtx5000ada": {"3B": 2.98, "8B": 5.16, "14B": 7.31},
    "study-a6000": {"3B": 2.62, "8B": 4.06, "14B": 5.73},
}
CALIBRATION = (("study-rtx5000ada", "3B"), ("study-rtx5000ada", "14B"))


def study_totals() -> list[dict]:
    """The six totals predicted by the cost model's reload term (fixed + bytes /
    GB/s) with ONE storage fitted through two of them (CALIBRATION: the RTX 5000
    Ada's 3B and 14B) and applied to both machines, which share the host and its
    NVMe drive (docs/study.md, "Setup"); the other four are predictions. The KV
    copies (under 2% of each total in the study) are folded into the fixed cost.
    The built-in profiles' own storage terms are fitted per machine (four totals):
    they are not used here, so that four of the six remain predictions."""
    pts = [(STUDY_SIZES_GB[m] * 1e9, STUDY_TOTALS_S[g][m]) for g, m in CALIBRATION]
    fixed, gbps = fit_fixed_rate([b for b, _ in pts], [s for _, s in pts])
    out = []
    for gpu, totals in STUDY_TOTALS_S.items():
        for m, study in totals.items():
            pred = fixed + STUDY_SIZES_GB[m] / gbps
            out.append({"gpu": gpu, "model": m, "weights_gb": STUDY_SIZES_GB[m], "study_s": study,
                        "predicted_s": pred, "error": (pred - study) / study,
                        "calibration": (gpu, m) in CALIBRATION, "fixed_s": fixed, "storage_gbps": gbps})
    return out


def study_totals_table() -> str:
    from labtui.report.markdown import table

    rows = [[r["gpu"], r["model"], f"{r['weights_gb']:g}", f"{r['study_s']:.2f}", f"{r['predicted_s']:.2f}",
             "calibration" if r["calibration"] else f"{100 * r['error']:+.1f}%"] for r in study_totals()]
    r0 = study_totals()[0]
    return (f"reload = {r0['fixed_s']:.2f} s + GB / {r0['storage_gbps']:.2f} GB/s (fitted on "
            + " and ".join(f"{g} {m}" for g, m in CALIBRATION) + ")\n\n"
            + table(["GPU", "model", "FP16 GB", "study total s", "predicted s", "error"], rows))
