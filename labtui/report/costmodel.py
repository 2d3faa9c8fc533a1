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
storage GB/s; KV in = n copies (one per layer, as the engine moves it) over the link.

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

``profile_predictions`` applies a hardware profile's physics
(labtui/engine/profiles.py) to the measured models' sizes: what the target
would show, predicted, never measured.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from labtui.report.data import Run, group_values, model_source, preemption_rows, residency_of


@dataclass(frozen=True)
class Prediction:
    bundle: str
    source: str
    group: tuple
    residency: float
    mode: str
    measured_s: float  # per token
    predicted_s: float

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
        fit = link_fit(r)
        if not fit:
            continue
        lat, gbps = fit
        n = (r.models.get(row["model"]) or {}).get("n_layers") or 1
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
                copies = n + 1 if phase == "reload" else n  # blocks + the rest; one KV copy per layer
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
                step = phys.host_step_s(res / n, n, n - k, b)
            else:
                step = phys.stream_step_s(res, (n - k) * b, n - k, info.get("prefetch", True))
            here = resident.get((r.bundle, model_source(r, m)))
            out.append({"bundle": r.bundle, "point": r.point, "label": r.label, "model": model_source(r, m),
                        "profile": name, "residency": k / n, "mode": info.get("mode"),
                        "predicted_tok_s": 1 / step, "predicted_norm": res / step,
                        "dilation": statistics.median(here) / res if here else None})
    return out
