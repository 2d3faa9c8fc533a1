"""The lab's link to the scenario package: loading, replay, recording.

The lab has no scenario logic of its own: it loads files with
``labtui.scenario.schema``, replays them with ``labtui.scenario.player`` (the
runner's own timeline player) and records with ``labtui.scenario.recorder``.
Nothing here imports torch.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from labtui.errors import LabError, one_line

# What `labtui` opens when no built-in default.toml exists: two zoo models and a
# light workload, so a newcomer sees numbers move within seconds.
FALLBACK_DEFAULT = {
    "lab": {"name": "default", "description": "two small models, one light workload"},
    "device": {"kind": "auto", "memory_gib": 2, "link": "pcie4-x16", "host_slowdown": 4.0},
    "models": [
        {"id": "small", "source": "zoo:llama-30m", "residency": 1.0, "offload": "stream"},
        {"id": "big", "source": "zoo:qwen3-150m", "residency": 0.5, "offload": "stream"},
    ],
    "workloads": [
        {
            "model": "small",
            "at": 0.0,
            "kind": "closed",
            "concurrency": 2,
            "requests": 100000,
            "prompt_tokens": 32,
            "max_new_tokens": 64,
        },
    ],
}


def load_scenario(path: str | None):
    """The scenario to open: a file/built-in name, or the default one."""
    from labtui.scenario import schema

    if path is not None:
        return schema.load_scenario(path)
    p = schema.default_scenario_path()
    if p.is_file():
        return schema.load_scenario(p)
    return schema.Scenario.model_validate(FALLBACK_DEFAULT)


def engine_kwargs(scn, device: str | None) -> dict[str, Any]:
    kw = scn.device.engine_kwargs(device)
    kw["policy"] = scn.lab.policy
    kw["seed"] = scn.lab.seed
    return kw


class Replay:
    """Plays a scenario against the lab's engine on its own thread, with the
    scenario package's ``play_timeline`` (the very function ``labtui run`` uses):
    [[models]] loaded first, in order; then workloads at their ``at`` and timeline
    entries in file order, each once its ``at`` has come and its ``when`` holds."""

    def __init__(
        self,
        scn,
        engine,
        on_error: Callable[[str], None],
        on_done: Callable[[str], None],
        time_scale: float = 1.0,
    ) -> None:
        from labtui.scenario.player import PlayClock

        self.clock = PlayClock(time_scale)  # the lab pauses, steps and slows it
        self.notes = [e.text for e in scn.timeline if e.action == "note"]
        self.captions = len(self.notes)
        self.scn = scn
        self.engine = engine
        self.on_error = on_error
        self.on_done = on_done
        self.stop_event = threading.Event()
        self.status = "replaying"
        self.result = None
        self.thread = threading.Thread(target=self._run, name="labtui-replay", daemon=True)

    def start(self) -> Replay:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stop_event.set()

    def _run(self) -> None:
        from labtui.scenario.player import play_timeline

        try:
            self.result = play_timeline(
                self.scn, self.engine, stop=self.stop_event, on_error=self.on_error,
                clock=self.clock,
            )
        except LabError as e:
            self.status = "failed"
            self.on_error(f"scenario {self.scn.name}: {e}")
            return
        except Exception as e:  # noqa: BLE001 - never a traceback in the lab
            if not self.stop_event.is_set():  # else: the lab is closing under us
                self.status = "failed"
                self.on_error(f"scenario {self.scn.name}: internal error: {one_line(e)}")
            return
        if self.stop_event.is_set():
            self.status = "stopped"
            return
        self.status = ""
        self.on_done(f"scenario {self.scn.name}: timeline done")


def save_recording(engine, path: str | Path, scn=None) -> Path:
    """Write a session's commands as a scenario (`labtui run` replays it).
    `engine`: the lab's SessionRecorder (every command), or an engine (its last ones)."""
    from labtui.scenario.recorder import scenario_from_log

    path = Path(path).expanduser()
    name = path.stem
    text = scenario_from_log(
        engine,
        name=name,
        description="recorded in the lab"
        + (f" (opened from {scn.name})" if scn is not None else "")
        + (" (incomplete: not every command of the session was kept)"
           if not getattr(engine, "complete", True) or getattr(engine, "dropped", 0) else ""),
        seed=scn.lab.seed if scn is not None else 0,
    )
    if path.parent and not path.parent.exists():
        raise LabError(f"folder {path.parent} does not exist")
    tmp = path.with_suffix(path.suffix + ".tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    except OSError as e:
        raise LabError(f"cannot write {path}: {one_line(e)}") from None
    return path
