"""Scheduling policies: which model gets the next step, and what to move.

Iteration-level scheduling across models, as vLLM's scheduler does within one:
each step is a prefill (admit one queued request) or one decode step of one
model's batch. The policies live in ``labtui.engine.policies``; this module keeps
the old import path.
"""

from __future__ import annotations

from labtui.engine.policies import POLICIES, Candidate, Policy, make_policy
from labtui.engine.policies.classic import FCFS, Priority, RoundRobin

__all__ = ["FCFS", "POLICIES", "Candidate", "Policy", "Priority", "RoundRobin", "make_policy"]
