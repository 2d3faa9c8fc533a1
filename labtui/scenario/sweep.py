"""Sweeps: a scenario's [sweep] grid expanded into concrete points, and --quick.

Each point is a complete scenario (no [sweep], no [quick]) that the runner runs
on a fresh engine, ``repeat`` times. Residency fractions are rounded to whole
decoder blocks of the model they apply to (as llama.cpp's -ngl counts layers) and
duplicates are dropped, so an 8-layer model gets fewer points than a 24-layer one.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from labtui.errors import LabError
from labtui.scenario.schema import (
    AXES,
    Quick,
    Scenario,
    Sweep,
    default_model_id,
    merge_sweep,
    zoo_layers,
)
from labtui.scenario.stats import Protocol

# --quick without a [quick] table: enough to see every code path, fast on 2 cores.
QUICK_DEFAULTS = {"requests": 2, "max_new_tokens": 32, "prompt_tokens": 32}
QUICK_AXIS_VALUES = 3
QUICK_TIMEOUT_S = 110.0
_NUMERIC_AXES = {"residency", "layers", "max_new_tokens", "prompt_tokens", "concurrency",
                 "pause_after_tokens"}
_WORKLOAD_AXES = ("concurrency", "prompt_tokens", "max_new_tokens")


@dataclass(frozen=True)
class SweepPoint:
    index: int
    values: dict[str, Any]  # axis -> value; residency axes add resident_layers {id: k}
    scenario: Scenario = field(repr=False)

    def label(self) -> str:
        parts = []
        for k, v in self.values.items():
            if k == "resident_layers":
                continue
            if isinstance(v, float):
                v = f"{v:.2f}"
            elif isinstance(v, dict):
                v = ",".join(f"{a}={b}" for a, b in v.items())
            parts.append(f"{k}={v}")
        return " ".join(parts) or "single run"


def round_layers(fraction: float, n_layers: int) -> int:
    """Half up (not banker's rounding): 0.5 of 5 layers is 3, as a person expects."""
    return min(n_layers, max(0, math.floor(fraction * n_layers + 0.5 + 1e-9)))


def residency_layers(fractions: list[float], n_layers: int) -> list[int]:
    """Whole-layer counts for fractions, duplicates dropped, ascending."""
    return sorted({round_layers(f, n_layers) for f in fractions})


def repeat_count(scn: Scenario) -> int:
    return (scn.sweep.repeat if scn.sweep and scn.sweep.repeat else 1)


def protocol(scn: Scenario) -> Protocol:
    """How many repetitions each point gets (see stats.Protocol). Without
    max_repeat, exactly ``repeat``: the protocol only adapts when asked to."""
    sw = scn.sweep
    n = repeat_count(scn)
    if sw is None:
        return Protocol(n, n)
    return Protocol(min_repeat=n, max_repeat=max(n, sw.max_repeat or n),
                    min_seconds=sw.min_seconds or 0.0,
                    ci_rel_width=sw.ci_rel_width if sw.ci_rel_width is not None else 0.05)


def rep_seconds(scn: Scenario) -> float:
    return (scn.sweep.rep_seconds if scn.sweep and scn.sweep.rep_seconds else 0.0)


def warmup_tokens(scn: Scenario) -> int:
    return (scn.sweep.warmup_tokens if scn.sweep and scn.sweep.warmup_tokens else 0)


# ---------------------------------------------------------------------------
# --quick


def _thin(values: list, numeric: bool) -> list:
    if numeric:
        values = sorted(set(values))
    if len(values) <= QUICK_AXIS_VALUES:
        return list(values)
    return [values[0], values[len(values) // 2], values[-1]]


def apply_quick(scn: Scenario) -> Scenario:
    """The scenario --quick runs: shorter workloads, fewer points, one repetition.

    A [quick] table says exactly what to use; anything it leaves out follows the
    default rule (QUICK_DEFAULTS caps, 3 values per sweep axis, repeat 1).
    """
    q = scn.quick or Quick()
    caps = {k: getattr(q, k) or v for k, v in QUICK_DEFAULTS.items()}
    data = scn.model_dump(mode="python")
    data["quick"] = None
    for w in data["workloads"] + [t for t in data["timeline"] if t["action"] == "launch_workload"]:
        for k, cap in caps.items():
            w[k] = min(w[k], cap)
        w["at"] = w["at"] * q.time_scale
    for t in data["timeline"]:
        t["at"] = t["at"] * q.time_scale
    if scn.sweep is not None or (q.sweep is not None):
        given = q.sweep.model_dump(exclude_none=True) if q.sweep is not None else {}
        sw = merge_sweep(scn.sweep, q.sweep) if q.sweep is not None else scn.sweep
        d = sw.model_dump(exclude_none=True)
        for axis in AXES:
            if axis in d and axis not in given:
                d[axis] = _thin(d[axis], axis in _NUMERIC_AXES)
        for k in ("max_new_tokens", "prompt_tokens"):
            if k in d and k not in given:
                d[k] = sorted({min(v, caps[k]) for v in d[k]})
        d["repeat"] = given.get("repeat", 1)
        # the adaptive protocol only where [quick] asks for it: --quick stays short
        for k in ("max_repeat", "min_seconds", "ci_rel_width", "rep_seconds"):
            if k in given:
                d[k] = given[k]
            else:
                d.pop(k, None)
        data["sweep"] = d
    data["lab"]["timeout_s"] = q.timeout_s or min(scn.lab.timeout_s, QUICK_TIMEOUT_S)
    return scn.with_updates(data)


# ---------------------------------------------------------------------------
# expansion


def expand(scn: Scenario, layers_of: Callable[[str], int | None] = zoo_layers) -> list[SweepPoint]:
    """Every point of the scenario's sweep (one point if it has none), in order."""
    sw = scn.sweep or Sweep()
    axes = sw.axes()
    base = scn.model_dump(mode="python")
    base["sweep"] = None
    base["quick"] = None
    targets = sw.models or [m.id or default_model_id(m.source) for m in scn.models]
    outer = [a for a in axes if a not in ("residency", "layers")]
    points: list[SweepPoint] = []
    for combo in itertools.product(*(axes[a] for a in outer)):
        values = dict(zip(outer, combo, strict=True))
        data = _substitute(base, values, targets)
        for res_values, data2 in _residency_variants(data, sw, targets, layers_of):
            v = {**values, **res_values}
            points.append(SweepPoint(len(points), v, scn.with_updates(data2)))
    return points


def _models_by_id(data: dict) -> dict[str, dict]:
    return {m["id"] or default_model_id(m["source"]): m for m in data["models"]}


def _substitute(base: dict, values: dict, targets: list[str]) -> dict:
    import copy

    data = copy.deepcopy(base)
    models = _models_by_id(data)
    workloads = data["workloads"] + [t for t in data["timeline"] if t["action"] == "launch_workload"]
    for axis, v in values.items():
        if axis == "model":
            models[targets[0]]["source"] = v
        elif axis == "sources":  # [[models]] or timeline loads (the preemption's B)
            for mid, src in v.items():
                if mid in models:
                    models[mid]["source"] = src
                for t in data["timeline"]:
                    if t["action"] == "load" and t["id"] == mid:
                        t["source"] = src
        elif axis == "link":
            data["device"]["link"] = v
        elif axis == "policy":
            data["lab"]["policy"] = v
        elif axis in ("offload", "prefetch"):
            for mid in targets:
                models[mid][axis] = v
        elif axis in ("weights", "kv"):
            for t in data["timeline"]:
                if t["action"] == "preempt":
                    t[axis] = v
        elif axis in _WORKLOAD_AXES:
            for w in workloads:
                if w["model"] in targets:
                    w[axis] = v
        elif axis == "pause_after_tokens":
            _set_pause(data, v)
    return data


def _set_pause(data: dict, tokens: int) -> None:
    """Set every when.tokens; 0 means no pause: drop the first such entry and all after it."""
    tl = data["timeline"]
    first = next((i for i, t in enumerate(tl) if t.get("when") and t["when"].get("tokens") is not None), None)
    if first is None:
        return
    if tokens == 0:
        del tl[first:]
        return
    for t in tl:
        if t.get("when") and t["when"].get("tokens") is not None:
            t["when"]["tokens"] = tokens


def _residency_variants(data: dict, sw: Sweep, targets: list[str], layers_of) -> list[tuple[dict, dict]]:
    if sw.residency is None and sw.layers is None:
        return [({}, data)]
    import copy

    models = _models_by_id(data)
    seen: set[tuple] = set()
    out: list[tuple[tuple, dict, dict]] = []
    for x in (sw.residency if sw.residency is not None else sw.layers):
        layers: dict[str, int | None] = {}
        fracs: dict[str, float] = {}
        for mid in targets:
            n = layers_of(models[mid]["source"])
            if sw.layers is not None:
                if n is None:
                    raise LabError(f"sweep.layers: cannot tell how many layers {mid} "
                                   f"({models[mid]['source']}) has; use residency fractions")
                if x > n:
                    raise LabError(f"sweep.layers: {x} is more than {mid}'s {n} decoder blocks; "
                                   f"accepted: 0 to {n}")
                layers[mid], fracs[mid] = x, x / n
            elif n is None:
                layers[mid], fracs[mid] = None, float(x)
            else:
                k = round_layers(x, n)
                layers[mid], fracs[mid] = k, k / n
        key = tuple(fracs[m] for m in targets)
        if key in seen:
            continue
        seen.add(key)
        d = copy.deepcopy(data)
        for mid in targets:
            _models_by_id(d)[mid]["residency"] = fracs[mid]
        values = {"residency": fracs[targets[0]]}
        if any(v is not None for v in layers.values()):
            values["resident_layers"] = {m: k for m, k in layers.items() if k is not None}
        out.append((key, values, d))
    out.sort(key=lambda t: t[0])
    return [(v, d) for _, v, d in out]
