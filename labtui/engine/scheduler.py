"""Scheduling policies: which model gets the next step.

Iteration-level scheduling across models, as vLLM's scheduler does within one:
each step is a prefill (admit one queued request) or one decode step of one
model's batch. The policy only decides; the engine's executor executes. Policies
see plain ``Candidate`` records, never tensors or hosted models.
"""

from __future__ import annotations

from dataclasses import dataclass

from labtui.errors import LabError


@dataclass(frozen=True)
class Candidate:
    id: str
    priority: int
    queued: int
    running: int
    can_admit: bool  # a queued request would fit (batch size and KV budget)
    oldest: float  # arrival time of its oldest queued or running request

    @property
    def action(self) -> str:
        # Prefill first, as vLLM does: new requests join the batch before it decodes.
        return "prefill" if self.queued and self.can_admit else "decode"

    @property
    def runnable(self) -> bool:
        return self.running > 0 or (self.queued > 0 and self.can_admit)


class Policy:
    name = "?"

    def pick(self, cands: list[Candidate]) -> tuple[str, str] | None:
        ready = [c for c in cands if c.runnable]
        if not ready:
            return None
        c = self.choose(ready)
        return c.id, c.action

    def choose(self, ready: list[Candidate]) -> Candidate:
        raise NotImplementedError


class FCFS(Policy):
    """The model holding the oldest outstanding request goes first."""

    name = "fcfs"

    def choose(self, ready):
        return min(ready, key=lambda c: (c.oldest, c.id))


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

    def choose(self, ready):
        return min(ready, key=lambda c: (-c.priority, c.oldest, c.id))


POLICIES = {"fcfs": FCFS, "round_robin": RoundRobin, "priority": Priority}


def make_policy(name: str) -> Policy:
    if name not in POLICIES:
        raise LabError(f"unknown policy '{name}'; accepted: {', '.join(POLICIES)}")
    return POLICIES[name]()
