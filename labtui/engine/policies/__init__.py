"""Scheduling policies (docs/policies.md).

- ``fcfs``, ``round_robin``, ``priority``: which model steps next (classic.py);
- ``ollama``, ``llamacpp-router``, ``static-split``: baselines that behave like the
  tools people use today, each documented with what it copies and leaves out;
- ``planner``: places, preempts and admits against per-model SLOs (planner.py).

The interface (base.py): ``pick`` chooses the next step; ``plan`` and ``at_load``
return ``Action``s the engine runs through its command handlers (driver.py).
"""

from __future__ import annotations

from typing import get_args

from labtui.engine.commands import PolicyName
from labtui.engine.policies.base import Action, Candidate, LoadPlan, ModelView, Policy, View, evict
from labtui.engine.policies.baselines import LlamaCppRouter, Ollama, StaticSplit
from labtui.engine.policies.classic import FCFS, Priority, RoundRobin
from labtui.engine.policies.planner import Planner
from labtui.errors import LabError

POLICIES: dict[str, type[Policy]] = {
    p.name: p for p in (FCFS, RoundRobin, Priority, Ollama, LlamaCppRouter, StaticSplit, Planner)
}
assert tuple(POLICIES) == get_args(PolicyName), "commands.PolicyName must list every policy"


def make_policy(name: str) -> Policy:
    if name not in POLICIES:
        raise LabError(f"unknown policy '{name}'; accepted: {', '.join(POLICIES)}")
    return POLICIES[name]()


__all__ = ["POLICIES", "Action", "Candidate", "LoadPlan", "ModelView", "Policy", "View", "evict", "make_policy"]
