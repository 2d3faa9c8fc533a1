"""The engine's original step-choice policies: fcfs, round_robin, priority.

They only choose which model steps next; ``priority`` also lets the engine make
room for a higher-priority model by preempting lower ones (admission.py).
"""

from __future__ import annotations

from labtui.engine.policies.base import Policy, fcfs_order


class FCFS(Policy):
    """The model holding the oldest outstanding request goes first."""

    name = "fcfs"

    def choose(self, ready):
        return fcfs_order(ready)


class RoundRobin(Policy):
    """One step per model in turn."""

    name = "round_robin"

    def __init__(self):
        self._last: str | None = None

    def choose(self, ready):
        ids = sorted(c.id for c in ready)
        nxt = next((i for i in ids if self._last is None or i > self._last), ids[0])
        self._last = nxt
        return next(c for c in ready if c.id == nxt)


class Priority(Policy):
    """Highest priority first (FCFS among equals). The engine also lets this policy
    make room for a higher-priority model by preempting lower ones."""

    name = "priority"
    preempts = True
    evicts = True  # its make-room preempts idle models (admission.py)

    def choose(self, ready):
        return min(ready, key=lambda c: (-c.priority, c.oldest, c.id))
