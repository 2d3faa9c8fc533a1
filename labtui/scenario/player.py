"""Playing a scenario's workloads and timeline against a running engine.

One implementation for every frontend: the headless runner calls it once per
sweep point (until idle, under a deadline, with a progress tick), the lab calls
it to replay a scenario (``runner.play_timeline`` is this function), scripts can
call it directly. ``Schedule`` decides what is due; this module executes it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from labtui.engine.commands import CancelWorkload, LaunchWorkload, Note
from labtui.errors import LabError
from labtui.scenario.schedule import Schedule
from labtui.scenario.schema import Scenario, as_command

POLL_S = 0.02  # how often the schedule is checked; `when tokens` entries are armed in
# the engine instead (Engine.submit_when_tokens): they run at the exact count


class PlayClock:
    """Scenario time for a timeline being played: wall time divided by `time_scale`
    (2 = every `at` comes twice as late, for a lecture), which can be paused and
    stepped to the next caption (`note`). Only the timeline waits: the engine keeps
    serving its workloads while the clock is paused. Thread-safe: the lab calls
    these from the UI thread while the player reads it on its own."""

    def __init__(self, time_scale: float = 1.0) -> None:
        if not time_scale > 0:
            raise LabError(f"time scale {time_scale} is not > 0; accepted: a number > 0, "
                           "e.g. 2 (half speed) or 0.5 (double speed)")
        self.time_scale = float(time_scale)
        self._lock = threading.Lock()
        self._base = 0.0  # scenario seconds at the anchor
        self._anchor = time.monotonic()
        self.paused = False
        self._step = False

    def start(self) -> None:
        """Scenario time 0 is now (after the models are loaded); pausing holds."""
        with self._lock:
            self._base, self._anchor = 0.0, time.monotonic()

    def now(self) -> float:
        with self._lock:
            if self.paused:
                return self._base
            return self._base + (time.monotonic() - self._anchor) / self.time_scale

    def _rebase(self) -> None:  # caller holds the lock
        t = time.monotonic()
        if not self.paused:
            self._base += (t - self._anchor) / self.time_scale
        self._anchor = t

    def set_paused(self, paused: bool) -> None:
        with self._lock:
            self._rebase()
            self.paused = paused

    def toggle(self) -> bool:
        self.set_paused(not self.paused)
        return self.paused

    def set_time_scale(self, time_scale: float) -> None:
        with self._lock:
            self._rebase()
            self.time_scale = float(time_scale)

    def request_step(self) -> None:
        """Ask the player to jump to the next caption (it knows where that is)."""
        with self._lock:
            self._step = True

    def take_step(self) -> bool:
        with self._lock:
            step, self._step = self._step, False
            return step

    def jump_to(self, t: float) -> None:
        with self._lock:
            self._rebase()
            self._base = max(self._base, t)


@dataclass
class PlayResult:
    finished: bool = False  # the timeline ran out (and the engine went idle, if asked)
    stopped: str | None = None  # None | "stopped" | "timed_out" | "stuck"
    refused: list[str] = field(default_factory=list)  # commands the engine refused
    warnings: list[str] = field(default_factory=list)
    workloads: dict[str, str] = field(default_factory=dict)  # scenario id -> engine id


def load_models(scn: Scenario, engine: Any, stop: Callable[[], bool] = lambda: False) -> None:
    """The [[models]] entries, in order; a refusal names the entry."""
    for i, m in enumerate(scn.models):
        if stop():
            return
        try:
            engine.execute(as_command(m))
        except LabError as e:
            raise LabError(f"models[{i}] ({m.id}): {e}") from None


def play_timeline(
    scn: Scenario,
    engine: Any,
    stop: threading.Event | Callable[[], bool] | None = None,
    on_error: Callable[[str], None] | None = None,
    *,
    load: bool = True,
    until_idle: bool = False,
    deadline: float | None = None,  # time.monotonic() value
    on_tick: Callable[[Any], None] | None = None,  # the latest snapshot, every poll
    on_note: Callable[[str], None] | None = None,
    clock: PlayClock | None = None,
) -> PlayResult:
    """Load the models (unless `load` is False), then launch workloads and run the
    timeline at their times. Returns when the timeline is done (and, with
    `until_idle`, every workload has finished), when `stop` is set, or at `deadline`.
    `clock` (the lab's) lets the timeline be paused, stepped and slowed down."""
    is_stopped = stop.is_set if isinstance(stop, threading.Event) else (stop or (lambda: False))
    say = on_error or (lambda msg: None)
    res = PlayResult()
    if load:
        load_models(scn, engine, is_stopped)
    # counts are taken relative to now: a stale snapshot would count the warm-up's
    # last tokens towards the timeline's `when tokens` triggers
    snap = engine.fresh_snapshot() if hasattr(engine, "fresh_snapshot") else engine.snapshot()
    view = SnapView(snap, {m.id: m.tokens_generated for m in snap.models},
                    {m.id: m.completed for m in snap.models}, res.workloads)
    exact = hasattr(engine, "submit_when_tokens")
    schedule = Schedule(scn, exact=exact)
    armed: dict[str, tuple[Any, Any]] = {}  # source -> (Step, Future) of an armed entry
    fired: set[str] = set()  # armed entries that have run (or were refused)
    view.fired = fired.__contains__
    fresh = getattr(engine, "fresh_snapshot", engine.snapshot)
    if clock is None:
        clock = PlayClock()
    clock.start()
    while True:
        if is_stopped():
            _disarm(armed)
            res.stopped = "stopped"
            return res
        # fresh, not up to one publish period old: `when tokens` triggers fire
        # on the step that reaches the count (a token can take ~1 ms on sim)
        view.snap = fresh()
        _settle_armed(armed, fired, res, say)
        if clock.take_step() and (t := schedule.next_at("note", clock.now())) is not None:
            clock.jump_to(t)
        for step in schedule.due(clock.now(), view):
            if step.kind == "arm":
                _arm(engine, step, view, armed, res, say, on_note)
            else:
                _execute(engine, step, res, say, on_note)
            if is_stopped():
                break
        view.snap = engine.snapshot()
        if (why := schedule.stalled(view)) is not None:
            _disarm(armed)  # the engine must not run it later
            res.warnings.append(f"{why}: {', '.join(schedule.skip_rest())}")
            say(res.warnings[-1])
        if schedule.done and (not until_idle or view.idle()):
            res.finished = True
            return res
        if schedule.done and view.stuck():
            res.warnings.append("models still hold requests but are preempted with nothing left "
                                "to resume them: " + ", ".join(view.preempted_busy()))
            say(res.warnings[-1])
            res.stopped = "stuck"
            return res
        if deadline is not None and time.monotonic() > deadline:
            _disarm(armed)
            res.stopped = "timed_out"
            return res
        if on_tick is not None:
            on_tick(view.snap)
        time.sleep(POLL_S)


def _command(step: Any, res: PlayResult, on_note: Callable[[str], None] | None) -> Any:
    cmd = step.command
    if isinstance(cmd, CancelWorkload) and cmd.workload in res.workloads:
        cmd = CancelWorkload(workload=res.workloads[cmd.workload])  # the engine's id for it
    if isinstance(cmd, Note) and on_note is not None:
        on_note(cmd.text)
    return cmd


def _refused(step: Any, cmd: Any, e: Exception, res: PlayResult, say: Callable[[str], None]) -> None:
    res.refused.append(f"{step.source} ({cmd.action}): {e}")
    say(f"refused: {res.refused[-1]}")


def _execute(engine: Any, step: Any, res: PlayResult, say: Callable[[str], None],
             on_note: Callable[[str], None] | None) -> None:
    if step.kind == "wait_timeout":
        res.warnings.append(f"{step.source} (wait_idle) timed out; went on")
        say(res.warnings[-1])
        return
    if step.kind != "command":
        return
    cmd = _command(step, res, on_note)
    try:
        result = engine.execute(cmd)
    except LabError as e:
        _refused(step, cmd, e, res, say)
        return
    if isinstance(cmd, LaunchWorkload):
        res.workloads[step.workload_id or step.source] = result


def _arm(engine: Any, step: Any, view: SnapView, armed: dict, res: PlayResult,
         say: Callable[[str], None], on_note: Callable[[str], None] | None) -> None:
    """Hand a `when tokens` entry to the engine, at the count the view means (tokens
    since timing began: the warm-up's are added back)."""
    model, n = step.when_tokens
    cmd = _command(step, res, on_note)
    fut: Future = Future()
    try:
        fut = engine.submit_when_tokens(cmd, model, view.base_tokens(model) + n)
    except LabError as e:
        fut.set_exception(e)  # settled (and reported) like a refusal at run time
    armed[step.source] = (step, fut)


def _disarm(armed: dict) -> None:
    for _, fut in armed.values():
        fut.cancel()
    armed.clear()


def _settle_armed(armed: dict, fired: set[str], res: PlayResult, say: Callable[[str], None]) -> None:
    """Armed entries that ran: record what they returned (refusals, workload ids)."""
    for src, (step, fut) in list(armed.items()):
        if not fut.done():
            continue
        del armed[src]
        fired.add(src)
        if fut.cancelled():
            continue
        e = fut.exception()
        if e is not None:
            _refused(step, step.command, e, res, say)
        elif isinstance(step.command, LaunchWorkload):
            res.workloads[step.workload_id or step.source] = fut.result()


class SnapView:
    """Schedule's questions, answered from the latest engine snapshot; tokens and
    completions count from when the view was made (warm-up excluded)."""

    def __init__(self, snap: Any, base_tokens: dict, base_done: dict, wids: dict) -> None:
        self.snap, self._bt, self._bd, self._wids = snap, base_tokens, base_done, wids

    def base_tokens(self, model: str) -> int:
        return self._bt.get(model, 0)

    def fired(self, source: str) -> bool:  # set by play_timeline when it arms entries
        return False

    def tokens(self, model: str) -> int:
        m = self.snap.model(model)
        return m.tokens_generated - self._bt.get(model, 0) if m else 0

    def completed(self, model: str) -> int:
        m = self.snap.model(model)
        return m.completed - self._bd.get(model, 0) if m else 0

    def workload_done(self, workload: str) -> bool:
        eid = self._wids.get(workload)
        w = next((w for w in self.snap.workloads if w.id == eid), None)
        return w is not None and w.done

    def idle(self) -> bool:
        return (all(m.queued == 0 and m.running == 0 for m in self.snap.models)
                and all(w.done for w in self.snap.workloads))

    def preempted_busy(self) -> list[str]:
        return [m.id for m in self.snap.models if (m.queued or m.running) and m.state == "preempted"]

    def stuck(self) -> bool:
        if self.idle():
            return True
        from labtui.engine.commands import SELF_RESUMING

        if getattr(self.snap, "policy", None) in SELF_RESUMING:
            return False  # the policy resumes what it preempted
        busy = [m for m in self.snap.models if m.queued or m.running]
        open_models = {w.model for w in self.snap.workloads if not w.done}
        return all(m.state == "preempted" for m in busy) and all(
            (mm := self.snap.model(mid)) is not None and mm.state == "preempted" for mid in open_models)
