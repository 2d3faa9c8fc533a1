"""Commands armed to run when a model has generated N tokens (scenario ``when tokens``).

A frontend polling snapshots sees a token count some steps late (a step takes ~1 ms
on sim, a poll 20 ms), so a "pause after N tokens" fired from there lands a few
tokens late. Armed here, the worker checks the condition between steps, right after
each step of that model, and applies the command before the next one: with one
request running, the command runs at exactly N generated tokens (a batch of B
makes B tokens a step, so it runs at the first step that reaches N).
"""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from labtui.errors import LabError


@dataclass(eq=False)
class Armed:
    model: str
    tokens: int  # the model's tokens_generated to reach (absolute)
    cmd: Any
    fut: Future


class TokenTriggers:
    """Worker-owned: armed commands, and which are due."""

    def __init__(self) -> None:
        self._armed: list[Armed] = []

    def __bool__(self) -> bool:
        return bool(self._armed)

    def arm(self, a: Armed) -> None:
        self._armed.append(a)

    def due(self, models: dict) -> list[Armed]:
        """Remove and return the armed commands whose condition holds; drop the
        cancelled ones; fail those whose model is gone (it can never get there)."""
        out, keep = [], []
        for a in self._armed:
            ms = models.get(a.model)
            if a.fut.cancelled():
                continue
            if ms is None:
                if a.fut.set_running_or_notify_cancel():
                    a.fut.set_exception(LabError(
                        f"model '{a.model}' was unloaded before it generated {a.tokens} tokens"))
                continue
            (out if ms.metrics.tokens >= a.tokens else keep).append(a)
        self._armed = keep
        return out

    def close(self) -> None:
        for a in self._armed:
            if a.fut.set_running_or_notify_cancel():
                a.fut.set_exception(LabError(
                    f"the engine closed before {a.model} generated {a.tokens} tokens"))
        self._armed = []
