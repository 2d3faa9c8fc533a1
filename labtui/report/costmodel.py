"""A first-order cost model, to compare with what was measured.

Decode time per token of a model with k of n decoder blocks resident:

- compute: c per block, calibrated from the same curve's fully resident run
  (t_full / n: embedding and head are folded in, which is why it is first order);
- ``stream``: every block computes on the accelerator, and the n-k streamed blocks'
  weights (b bytes each) cross the link at the measured bandwidth B:
  n*c + (n-k)*b/B without prefetch, max(n*c, (n-k)*b/B) with it (copies overlap
  compute);
- ``host``: the n-k blocks run on the host at c_host per block, calibrated from the
  curve's 0%-resident run if there is one, else c * host_slowdown.

Reload after a preemption: reload_bytes / B; KV in: kv_in_bytes / B.

b and B come from the bundle's layer_move events (weights moved at load or on a
residency change); nothing is assumed about the hardware.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass

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


def link_gbps(r: Run) -> float | None:
    """Measured host->accelerator GB/s of this run's weight moves, else the nominal."""
    g = [e["gbps"] for e in r.moves if e.get("direction") == "h2d" and e.get("what") == "weights"
         and isinstance(e.get("layer"), int) and e.get("gbps")]
    if g:
        return statistics.median(g)
    return r.device.get("link_gbps")


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
            c = statistics.fmean(curve[1.0]) / n
            mode = info.get("mode", "stream")
            if mode == "host":
                c_host = statistics.fmean(curve[0.0]) / n if 0.0 in curve else c * r.device.get("host_slowdown", 1.0)
                pred = k * c + (n - k) * c_host
            else:
                b, gbps = bb.get((r.bundle, key[1])), link_gbps(r)
                if b is None or not gbps:
                    continue
                copy = (n - k) * b / (gbps * 1e9)
                pred = max(n * c, copy) if info.get("prefetch", True) else n * c + copy
            out.append(Prediction(r.bundle, key[1], key[2], res, mode, 1 / st["decode_tok_s"], pred))
    return out


def reload_predictions(runs: list[Run]) -> list[dict]:
    """Per resume: predicted vs measured reload and kv_in seconds."""
    by_key = {r.key(): r for r in runs}
    out = []
    for row in preemption_rows(runs):
        r = by_key[(row["bundle"], row["point"], row["rep"])]
        gbps = link_gbps(r)
        if not gbps:
            continue
        for phase, nbytes in (("reload", row["reload_bytes"]), ("kv_in", row["kv_in_bytes"])):
            if nbytes:
                out.append({**row, "phase": phase, "bytes": nbytes, "gbps": gbps,
                            "predicted_s": nbytes / (gbps * 1e9), "measured_s": row[f"{phase}_s"]})
    return out
