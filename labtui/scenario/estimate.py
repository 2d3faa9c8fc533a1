"""A rough estimate of how long `labtui run` will take, for `run --check`.

Nothing is loaded or run: model sizes come from the checkpoints' safetensors
headers (or the zoo's recipe when a zoo model is not built yet), and decode is
taken as memory-bound on the host (the `sim` accelerator computes on the CPU):
a token of a batch costs the model's float32 bytes over this machine's memcpy
bandwidth (measured here in ~50 ms, scaled by the share the engine achieved on
the reference machine) plus a fixed per-token overhead. Offloaded blocks add their
`host_slowdown` (mode host) or their bytes over the link (mode stream). Models
share one worker, so their decode times add up; the timeline's last `at` and the
run's timeout bound it. On a real GPU the run is usually faster than this.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_LINK_GBPS = {"pcie3-x16": 12.0, "pcie4-x16": 25.0, "pcie5-x16": 50.0, "nvlink-c2c": 400.0}
DECODE_SHARE = 0.8  # of memcpy bandwidth a resident decode achieved (README, "Measured")
TOKEN_OVERHEAD_S = 0.002  # per decode step: Python work around the forward
SETUP_S = 2.0  # a fresh engine per run, before the model bytes are read
STARTUP_S = 8.0  # once: importing torch and transformers


@dataclass
class Estimate:
    runs: int
    seconds: float
    memcpy_gbps: float
    capped: bool = False  # by [lab].timeout_s

    def line(self) -> str:
        return (f"{self.runs} run(s), estimated {fmt_duration(self.seconds)} on this machine "
                f"(rough: memory-bound decode at {self.memcpy_gbps:.0f} GB/s host memcpy; "
                "a GPU is usually faster)")


def fmt_duration(s: float) -> str:
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


def memcpy_gbps() -> float:
    import numpy as np

    a = np.ones(16 << 20, dtype=np.float32)  # 64 MiB
    b = np.empty_like(a)
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        np.copyto(b, a)
        best = min(best, time.perf_counter() - t)
    return a.nbytes / best / 1e9


def model_params(source: str) -> int | None:
    """Parameters of a source's checkpoint from its headers, None when unknown."""
    from labtui.models import catalog, zoo

    try:
        if source.startswith("zoo:"):
            name = source[4:]
            if zoo.is_built(name):
                return catalog.safetensors_stats([zoo.path(name) / "model.safetensors"])[0]
            s = zoo.get_spec(name)
            c = s.config
            inter = c.get("intermediate_size") or c.get("n_inner") or 4 * s.hidden
            return s.vocab * s.hidden + s.layers * (4 * s.hidden * s.hidden + 3 * s.hidden * inter)
        from labtui.models.sources import _cached_snapshot, weight_files

        p = _cached_snapshot(source[3:]) if source.startswith("hf:") else Path(source)
        if p is None or not p.is_dir():
            p = _cached_snapshot(source) if "/" in source else None
        if p is None:
            return None
        return catalog.safetensors_stats(weight_files(p))[0]
    except Exception:  # noqa: BLE001 - an estimate: an unreadable model is simply unknown
        return None


def _link_gbps(link: Any) -> float:
    return float(link) if isinstance(link, int | float) else _LINK_GBPS.get(str(link), 25.0)


def run_seconds(scn: Any, bw: float, params_of: dict[str, int | None]) -> float:
    """One run (one sweep point, one repetition) of scenario `scn`."""
    dev = scn.device
    link = _link_gbps(dev.link) * 1e9
    t_tok: dict[str, float] = {}
    setup = SETUP_S
    for m in scn.models:
        n = params_of.get(m.source) or 30_000_000
        nbytes = 4 * n  # float32 on sim
        setup += nbytes / 1e9  # read from the checkpoint at ~1 GB/s
        compute = nbytes / (DECODE_SHARE * bw * 1e9) + TOKEN_OVERHEAD_S
        off = 1.0 - float(getattr(m, "residency", 1.0) or 0.0)
        if getattr(m, "offload", "stream") == "host":
            t = compute * (1 - off) + compute * off * float(dev.host_slowdown)
        else:
            t = max(compute, off * nbytes / link)
        t_tok[m.id] = t
    cancels = {e.workload: e.at for e in scn.timeline if e.action == "cancel_workload"}
    decode = ends = 0.0
    for w in scn.workloads:
        t = t_tok.get(w.model, 0.01)
        batch = max(1, min(int(getattr(w, "concurrency", 1) or 1), 64))
        per_request = (int(w.max_new_tokens) + int(w.prompt_tokens) / 256) * t
        busy = w.requests * per_request / batch
        if getattr(w, "kind", "closed") == "poisson" and getattr(w, "rate_per_s", None):
            busy = max(busy, w.requests / float(w.rate_per_s))
        at = float(getattr(w, "at", 0.0))
        if getattr(w, "id", None) in cancels:  # the timeline cancels it: it ends then
            ends = max(ends, min(at + busy, cancels[w.id]))
            continue
        decode = max(decode, at) + busy  # one worker: the models' decode times add up
    last_at = max([e.at for e in scn.timeline] + [0.0])
    return setup + max(decode, ends, last_at)


def estimate(points: list, reps: int, timeout_s: float, warmup: int = 0) -> Estimate:
    bw = memcpy_gbps()
    params_of: dict[str, int | None] = {}
    total = STARTUP_S
    for pt in points:
        for m in pt.scenario.models:
            if m.source not in params_of:
                params_of[m.source] = model_params(m.source)
        one = run_seconds(pt.scenario, bw, params_of) + warmup * 0.01 * len(pt.scenario.models)
        total += reps * one
    return Estimate(len(points) * reps, min(total, timeout_s), bw, total > timeout_s)
