"""Recording: a lab session's command log written down as a scenario file.

A ``SessionRecorder`` keeps every command the engine executed, with its time
(from the engine's ``command`` events, so the engine itself keeps only its last
commands: bounded memory, engine/limits.py); a scenario is a timeline of the same commands, so recording is a translation:
loads at the start become [[models]], workloads on those models [[workloads]],
everything else [[timeline]] entries. ``labtui run`` and ``labtui open`` replay
the result. ``scenario_to_toml`` writes any validated Scenario back out (the
bundle's "scenario.toml as run").
"""

from __future__ import annotations

import threading
from typing import Any

from labtui.engine.commands import CancelWorkload, LaunchWorkload, Load, build
from labtui.scenario import tomlw
from labtui.scenario.schema import Scenario, default_model_id

# Loads this close to the start (and before any other command) are the lab's
# initial models; later ones are timeline actions. Loading takes seconds, so the
# third of three start-up models is logged well after t=0.
START_WINDOW_S = 10.0


# A recording is what a person did: a command a second for 14 hours. Beyond it the
# recorder keeps counting but stores no more (save says so).
RECORD_MAX = 50_000


class SessionRecorder:
    """Every command an engine executes, with its time and (for launches) the
    workload id the engine gave it, taken from its events as they happen.

    Attach it when the session starts; what the engine already did is read from its
    event window first (complete for a fresh engine). Stores compact dicts: the
    commands are rebuilt when the recording is written."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self._lock = threading.Lock()
        self._rows: dict[int, tuple[float, dict, str | None]] = {}  # event seq -> (t, fields, wid)
        self._last_wid: str | None = None
        self.dropped = 0
        engine.add_listener(self._on_event)
        self.complete = True
        for ev in engine.events_since(0):  # what happened before we listened
            self._on_event(ev)
        if getattr(engine, "commands_total", 0) > len(self._rows):
            self.complete = False  # the engine's window had lost some already

    def _on_event(self, ev: Any) -> None:
        if ev.kind == "workload_start":  # emitted just before its launch's command event
            self._last_wid = ev.data.get("workload")
        elif ev.kind == "command":
            with self._lock:
                if ev.seq in self._rows:
                    return
                if len(self._rows) >= RECORD_MAX:
                    self.dropped += 1
                    return
                wid = self._last_wid if ev.data.get("action") == "launch_workload" else None
                self._rows[ev.seq] = (ev.t, dict(ev.data), wid)

    def __len__(self) -> int:
        return len(self._rows)

    @property
    def command_log(self) -> list[tuple[float, Any]]:
        with self._lock:
            rows = [self._rows[k] for k in sorted(self._rows)]
        out = []
        for t, fields, _ in rows:
            f = dict(fields)
            out.append((round(t, 4), build(f.pop("action"), **f)))
        return out

    def launch_ids(self) -> list[str | None]:
        with self._lock:
            return [self._rows[k][2] for k in sorted(self._rows) if self._rows[k][1].get("action") == "launch_workload"]

    def snapshot(self):
        return self.engine.snapshot()

    def close(self) -> None:
        self.engine.remove_listener(self._on_event)


def _round_t(t: float) -> float:
    return round(float(t), 3)


def scenario_from_log(
    engine_or_log: Any,
    device_opts: dict | None = None,
    name: str = "recorded",
    description: str = "recorded from a lab session",
    seed: int = 0,
) -> str:
    """TOML text of a scenario that replays `engine_or_log` (an Engine, or a list of
    (t, Command)). `device_opts`: kind, memory_gib, link, host_slowdown."""
    log = _with_workload_ids(engine_or_log, list(getattr(engine_or_log, "command_log", engine_or_log)))
    if device_opts is None and hasattr(engine_or_log, "snapshot"):
        device_opts = _device_opts(engine_or_log.snapshot().device)
    doc: dict[str, Any] = {
        "lab": {"name": name, "seed": seed, "description": description},
        "device": {k: v for k, v in (device_opts or {}).items() if v is not None},
    }
    models: list[dict] = []
    workloads: list[dict] = []
    timeline: list[dict] = []
    initial: set[str] = set()
    setup = True
    for t, cmd in log:
        if isinstance(cmd, Load):
            fields = _fields(cmd)
            fields["id"] = cmd.id or default_model_id(cmd.source)
            if setup and t <= START_WINDOW_S:
                fields.pop("action")
                models.append({"id": fields.pop("id"), **fields})
                initial.add(models[-1]["id"])
                continue
            timeline.append({"at": _round_t(t), **fields})
        elif isinstance(cmd, LaunchWorkload) and cmd.model in initial:
            fields = _fields(cmd)
            fields.pop("action")
            workloads.append({"model": fields.pop("model"), "at": _round_t(t), **fields})
        else:
            timeline.append({"at": _round_t(t), **_fields(cmd)})
        setup = False
    doc["models"], doc["workloads"], doc["timeline"] = models, workloads, timeline
    return tomlw.dumps({k: v for k, v in doc.items() if v != []},
                       header=f"labtui scenario: {name} (recorded)")


def _with_workload_ids(source: Any, log: list) -> list:
    """Give an id-less LaunchWorkload the id the engine assigned when a later
    cancel_workload names it (ids from the workload_start events, which pair one to
    one and in order with the launches executed), so the replayed cancel still
    finds its workload."""
    if hasattr(source, "launch_ids"):  # a SessionRecorder paired them as they happened
        started = source.launch_ids()
    elif hasattr(source, "events_since"):
        started = [e.data.get("workload") for e in source.events_since(0) if e.kind == "workload_start"]
    else:
        return log
    launches = [i for i, (_, c) in enumerate(log) if isinstance(c, LaunchWorkload)]
    if len(started) != len(launches):  # old events dropped from the engine's window: leave as is
        return log
    # only where a later command names it: otherwise the recording stays exactly the log
    named = {c.workload for _, c in log if isinstance(c, CancelWorkload)}
    out = list(log)
    for i, wid in zip(launches, started, strict=True):
        t, c = out[i]
        if c.id is None and wid in named:
            out[i] = (t, c.model_copy(update={"id": wid}))
    return out


def _fields(cmd: Any) -> dict:
    """Non-default fields, action first (what a person would have written)."""
    d = cmd.model_dump(mode="json", exclude_defaults=True)
    return {"action": cmd.action, **{k: v for k, v in d.items() if v is not None}}


def _device_opts(dev: Any) -> dict:
    opts: dict[str, Any] = {"kind": dev.kind, "link": _link_value(dev.link),
                            "host_slowdown": dev.host_slowdown}
    if dev.simulated and dev.budget_bytes:
        opts["memory_gib"] = round(dev.budget_bytes / 1024**3, 3)
    return opts


def _link_value(label: str) -> str | float:
    # DeviceSnapshot.link is a preset name or "<n> GB/s"; scenarios take the number.
    if label.endswith("GB/s"):
        return float(label.removesuffix("GB/s").strip())
    return label


def scenario_to_toml(scn: Scenario, header: str = "") -> str:
    """A validated scenario as TOML (defaults left out, sources as resolved)."""
    doc: dict[str, Any] = {}
    lab = scn.lab.model_dump(exclude_defaults=True)
    doc["lab"] = {"name": scn.name, **lab}
    doc["device"] = scn.device.model_dump(exclude_none=True)
    doc["models"] = [
        {"id": m.id, "source": m.source, **m.model_dump(exclude_defaults=True, exclude={"id", "source", "action"})}
        for m in scn.models
    ]
    doc["workloads"] = [
        {"model": w.model, "at": w.at, **w.model_dump(mode="json", exclude_defaults=True, exclude={"model", "at", "action"})}
        for w in scn.workloads
    ]
    doc["timeline"] = [
        {"at": t.at, "action": t.action,
         **t.model_dump(mode="json", exclude_defaults=True, exclude_none=True, exclude={"at", "action"})}
        for t in scn.timeline
    ]
    if scn.sweep is not None:
        doc["sweep"] = scn.sweep.model_dump(exclude_none=True)
    if scn.quick is not None:
        q = scn.quick.model_dump(exclude_none=True, exclude_defaults=True)
        doc["quick"] = q
    return tomlw.dumps({k: v for k, v in doc.items() if v not in ([], {})}, header=header)
