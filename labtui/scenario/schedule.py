"""When each workload and timeline entry of a run is due: a pure state machine.

The runner asks ``due(now, view)`` every few tens of milliseconds and executes
what comes back; this module decides, the runner executes (vLLM's split between
scheduler and executor). ``view`` answers questions about the engine's latest
snapshot, so tests drive the schedule with a fake view and a fake clock.

Rules (see schema.py): workloads launch at their ``at``, independently of the
timeline; timeline entries run one after another in file order, each once its
``at`` has come and its ``when`` holds; ``wait_idle`` holds the timeline until
no model has queued or running requests (or its timeout_s passes).

With ``exact=True`` (an engine that arms commands on a token count), an entry
with ``when = { model, tokens }`` is handed out once its ``at`` has come as an
``arm`` step, and the timeline waits until the view says it has fired: the
engine runs it between two steps at exactly that count, not at the next poll.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from labtui.engine.commands import LaunchWorkload
from labtui.scenario.schema import as_command


class View(Protocol):
    def tokens(self, model: str) -> int: ...  # generated since timing began
    def completed(self, model: str) -> int: ...
    def workload_done(self, workload: str) -> bool: ...  # scenario workload id
    def idle(self) -> bool: ...  # no queued or running requests anywhere
    def stuck(self) -> bool: ...  # nothing can progress: idle, or all busy models preempted
    def fired(self, source: str) -> bool: ...  # an armed entry has run (exact schedules)


@dataclass(frozen=True)
class Step:
    kind: str  # "command" | "arm" (command on a token count) | "wait_done" | "wait_timeout"
    command: Any = None
    source: str = ""  # "workloads[0]" / "timeline[3]", for messages
    workload_id: str | None = None  # the scenario's id of a LaunchWorkload
    when_tokens: tuple[str, int] | None = None  # "arm": (model, tokens since timing began)


class Schedule:
    def __init__(self, scenario: Any, exact: bool = False) -> None:
        self.exact = exact
        self._armed = False  # the head entry is armed in the engine
        self._workloads = sorted(
            ((w.at, i, as_command(w)) for i, w in enumerate(scenario.workloads)),
            key=lambda x: (x[0], x[1]),
        )
        self._timeline = list(scenario.timeline)
        self._next = 0  # index of the timeline's head entry
        self._head_since: float | None = None

    @property
    def head(self) -> Any | None:
        return self._timeline[self._next] if self._next < len(self._timeline) else None

    @property
    def workloads_pending(self) -> int:
        return len(self._workloads)

    @property
    def done(self) -> bool:
        return not self._workloads and self.head is None

    def next_time(self) -> float | None:
        """The earliest `at` still ahead (for the progress display)."""
        ts = [w[0] for w in self._workloads] + ([self.head.at] if self.head is not None else [])
        return min(ts) if ts else None

    def next_at(self, action: str, after: float) -> float | None:
        """The `at` of the next timeline entry doing `action` later than `after` (the
        lab's "next caption" jumps there)."""
        for e in self._timeline[self._next:]:
            if e.action == action and e.at > after:
                return e.at
        return None

    def due(self, now: float, view: View) -> list[Step]:
        steps: list[Step] = []
        while self._workloads and self._workloads[0][0] <= now:
            _, i, cmd = self._workloads.pop(0)
            steps.append(Step("command", cmd, f"workloads[{i}]", cmd.id))
        while (entry := self.head) is not None and entry.at <= now:
            if self._head_since is None:
                self._head_since = now
            if self.exact and entry.when is not None and entry.when.tokens is not None:
                if not self._armed:
                    cmd = as_command(entry)
                    wid = cmd.id if isinstance(cmd, LaunchWorkload) else None
                    steps.append(Step("arm", cmd, self._src(), wid, (entry.when.model, entry.when.tokens)))
                    self._armed = True
                    break
                if not view.fired(self._src()):
                    break
                self._armed = False
                self._next += 1
                self._head_since = None
                continue
            if entry.when is not None and not _holds(entry.when, view):
                break
            if entry.action == "wait_idle":
                if view.idle():
                    steps.append(Step("wait_done", source=self._src()))
                elif now - self._head_since >= entry.timeout_s:
                    steps.append(Step("wait_timeout", source=self._src()))
                else:
                    break
            else:
                cmd = as_command(entry)
                wid = cmd.id if isinstance(cmd, LaunchWorkload) else None
                steps.append(Step("command", cmd, self._src(), wid))
            self._next += 1
            self._head_since = None
        return steps

    def stalled(self, view: View) -> str | None:
        """Why the rest of the timeline can never run, or None.

        The head waits on a `when` that cannot become true: every workload is
        launched and nothing can progress (all idle, or the busy ones preempted)."""
        entry = self.head
        if entry is None or self._workloads or entry.when is None or _holds(entry.when, view):
            return None
        if view.stuck():
            return (f"{self._src()} ({entry.action}) waits for {entry.when.model_dump(exclude_none=True)} "
                    "which cannot happen any more; the rest of the timeline was skipped")
        return None

    def skip_rest(self) -> list[str]:
        left = [f"timeline[{i}]" for i in range(self._next, len(self._timeline))]
        self._next = len(self._timeline)
        self._armed = False  # the runner disarms it in the engine
        return left

    def _src(self) -> str:
        return f"timeline[{self._next}]"


def _holds(when: Any, view: View) -> bool:
    if when.workload is not None:
        return view.workload_done(when.workload)
    if when.tokens is not None:
        return view.tokens(when.model) >= when.tokens
    return view.completed(when.model) >= when.completed
