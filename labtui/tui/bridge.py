"""The lab's link to the scenario package: loading, replay, recording.

The lab has no scenario logic of its own: it loads files with
``labtui.scenario.schema``, replays them with the runner's timeline player when
it exists, and records with ``labtui.scenario.recorder``. Nothing here imports
torch.
"""

from __future__ import annotations

import threading
import time
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
    """Plays a scenario against a running engine on its own thread.

    Same semantics as ``labtui run`` (it drives the scenario package's own
    ``Schedule``, the runner's decider): [[models]] loaded first, in order; then
    workloads at their ``at`` and timeline entries in file order, each once its
    ``at`` has come and its ``when`` holds. Uses the runner's ``play_timeline``
    instead if the runner exposes one.
    """

    POLL_S = 0.02

    def __init__(
        self,
        scn,
        engine,
        on_error: Callable[[str], None],
        on_done: Callable[[str], None],
    ) -> None:
        self.scn = scn
        self.engine = engine
        self.on_error = on_error
        self.on_done = on_done
        self.stop_event = threading.Event()
        self.status = "replaying"
        self.thread = threading.Thread(target=self._run, name="labtui-replay", daemon=True)

    def start(self) -> Replay:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stop_event.set()

    def _run(self) -> None:
        try:
            player = _runner_player()
            if player is not None:
                player(self.scn, self.engine, stop=self.stop_event, on_error=self.on_error)
            else:
                self._play()
            if self.stop_event.is_set():
                self.status = "stopped"
                return
            self.status = ""
            self.on_done(f"scenario {self.scn.name}: timeline done")
        except LabError as e:
            self.status = "failed"
            self.on_error(f"scenario {self.scn.name}: {e}")
        except Exception as e:  # noqa: BLE001 - never a traceback in the lab
            if self.stop_event.is_set():
                return  # the lab is closing; the engine went away under us
            self.status = "failed"
            self.on_error(f"scenario {self.scn.name}: internal error: {one_line(e)}")

    def _play(self) -> None:
        from labtui.scenario.schedule import Schedule
        from labtui.scenario.schema import as_command

        eng = self.engine
        for i, m in enumerate(self.scn.models):
            if self.stop_event.is_set():
                return
            try:
                eng.execute(as_command(m))
            except LabError as e:
                self.on_error(f"models[{i}] ({m.id}): {e}")
        snap = eng.snapshot()
        view = _View(
            snap,
            {m.id: m.tokens_generated for m in snap.models},
            {m.id: m.completed for m in snap.models},
            {},
        )
        schedule = Schedule(self.scn)
        t0 = time.monotonic()
        while not self.stop_event.is_set() and not schedule.done:
            view.snap = eng.snapshot()
            for step in schedule.due(time.monotonic() - t0, view):
                if self.stop_event.is_set():
                    return
                self._execute(step, view.wids)
            view.snap = eng.snapshot()
            if schedule.stalled(view) is not None:
                skipped = schedule.skip_rest()
                self.on_error(f"scenario {self.scn.name}: stalled; skipped {', '.join(skipped)}")
                return
            self.stop_event.wait(self.POLL_S)

    def _execute(self, step, wids: dict) -> None:
        from labtui.engine.commands import CancelWorkload, LaunchWorkload

        if step.kind == "wait_timeout":
            self.on_error(f"{step.source} (wait_idle) timed out; went on")
            return
        if step.kind != "command":
            return
        cmd = step.command
        if isinstance(cmd, CancelWorkload) and cmd.workload in wids:
            cmd = CancelWorkload(workload=wids[cmd.workload])
        try:
            result = self.engine.execute(cmd)
        except LabError as e:
            self.on_error(f"{step.source} ({cmd.action}) refused: {e}")
            return
        if isinstance(cmd, LaunchWorkload):
            wids[step.workload_id or step.source] = result


class _View:
    """Answers the Schedule's questions from the latest snapshot (as the runner's)."""

    def __init__(self, snap, base_tokens: dict, base_done: dict, wids: dict) -> None:
        self.snap, self._bt, self._bd, self.wids = snap, base_tokens, base_done, wids

    def tokens(self, model: str) -> int:
        m = self.snap.model(model)
        return m.tokens_generated - self._bt.get(model, 0) if m else 0

    def completed(self, model: str) -> int:
        m = self.snap.model(model)
        return m.completed - self._bd.get(model, 0) if m else 0

    def workload_done(self, workload: str) -> bool:
        eid = self.wids.get(workload)
        w = next((w for w in self.snap.workloads if w.id == eid), None)
        return w is not None and w.done

    def idle(self) -> bool:
        return all(m.queued == 0 and m.running == 0 for m in self.snap.models) and all(
            w.done for w in self.snap.workloads
        )

    def stuck(self) -> bool:
        if self.idle():
            return True
        busy = [m for m in self.snap.models if m.queued or m.running]
        open_models = {w.model for w in self.snap.workloads if not w.done}
        return all(m.state == "preempted" for m in busy) and all(
            (mm := self.snap.model(mid)) is not None and mm.state == "preempted"
            for mid in open_models
        )


def _runner_player():
    """The runner's shared timeline player, if it exposes one."""
    try:
        from labtui.scenario import runner
    except Exception:  # noqa: BLE001
        return None
    return getattr(runner, "play_timeline", None)


def save_recording(engine, path: str | Path, scn=None) -> Path:
    """Write the engine's command log as a scenario (`labtui run` replays it)."""
    from labtui.scenario.recorder import scenario_from_log

    path = Path(path).expanduser()
    name = path.stem
    text = scenario_from_log(
        engine,
        name=name,
        description="recorded in the lab"
        + (f" (opened from {scn.name})" if scn is not None else ""),
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
