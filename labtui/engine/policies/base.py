"""The policy interface: what a scheduling policy sees and what it may ask for.

A policy makes two kinds of decision, on the worker thread between steps:

- ``pick(candidates)``: which model runs the next step (a prefill or one decode
  step), from plain ``Candidate`` records, as vLLM's scheduler picks within a model;
- ``plan(view)``: actions on residency and preemption (``Action``: a SetResidency,
  SetMode, Preempt or Resume command plus the reason). The engine executes them
  through the same command handlers a user's command goes through, so budget
  checks, events and the token-equality oracle apply to them too; each one leaves
  a ``policy_decision`` event with its reason. ``at_load(view, new)`` chooses where
  a model being loaded goes and which models make room for it.

Policies see read-only ``ModelView`` records and a ``View`` that can price a
placement (``bytes_for``), never tensors or hosted models.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from labtui.engine import commands as C


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


@dataclass(frozen=True)
class Action:
    """One engine command a policy asks for, and why (goes into policy_decision)."""

    cmd: C.SetResidency | C.SetMode | C.Preempt | C.Resume
    reason: str

    @property
    def model(self) -> str:
        return self.cmd.model


def evict(model: str, reason: str, weights: str = "disk", kv: str = "drop") -> Action:
    """Unload-like eviction: the weights leave the accelerator (to disk by default, as
    an unload would), the model stays known and is resumed when work arrives."""
    return Action(C.Preempt(model=model, kv=kv, weights=weights), reason)


@dataclass(frozen=True)
class ModelView:
    id: str
    state: str  # idle | serving | preempted | ... (ModelState.state)
    n_layers: int
    resident: int  # blocks resident now (while preempted: the placement it returns to)
    mode: str  # offload mode of the non-resident blocks
    queued: int
    running: int
    priority: int
    weight_bytes: int
    accel_bytes: int  # accelerator bytes it holds now (ledger)
    last_used: float  # engine time it last had queued or running work
    parked: str | None  # preempted: where its weights are ("host" | "disk"); else None
    auto_preempted: bool
    pin: bool = False
    min_residency: float = 0.0
    slo_ttft_s: float | None = None
    slo_tpot_s: float | None = None
    slo_weight: float = 1.0
    decode_tokens: int = 0  # cumulative decode tokens and seconds (metrics.py)
    decode_s: float = 0.0
    oldest_wait_s: float = 0.0  # how long its oldest queued request has waited
    max_new_tokens: int = 0  # of the requests queued and running (sum)
    running_left: int = 0  # tokens the longest running request still has to make
    climbing: bool = False  # a pipelined resume is raising its residency
    kv_bytes: int = 0  # accelerator KV it holds now
    arrived: int = 0  # requests it has been given so far (finished + queued + running)
    block_bytes: int = 0  # bytes of one decoder block (the largest)
    reloads: tuple = ()  # its completed PhaseReports (resume costs measured)
    max_batch: int = 0  # requests it decodes together at most (0: not given)
    # profiles.Pacing under a hardware profile on sim: its copies, host blocks and
    # disk reloads are paced by it, not by the device's link and host_slowdown
    pacing: object | None = field(default=None, compare=False)

    @property
    def busy(self) -> bool:
        return self.queued > 0 or self.running > 0

    @property
    def preempted(self) -> bool:
        return self.state in ("preempted", "preempting")

    @property
    def min_layers(self) -> int:
        return int(round(self.min_residency * self.n_layers + 1e-9))


@dataclass
class View:
    """What a policy knows about the engine at one instant."""

    now: float
    budget: int
    free: int
    link_gbps: float
    host_slowdown: float
    models: dict[str, ModelView]
    host_free: int = 1 << 62  # host RAM available (bytes)
    bytes_fn: Callable[[str, int, str, bool], int] = field(repr=False, default=lambda m, k, mode, kv: 0)

    def bytes_for(self, model: str, k: int, mode: str, kv: bool = False) -> int:
        """Accelerator bytes ``model`` needs with its first ``k`` blocks resident and the
        rest in ``mode`` (placement.placement_bytes: the engine's one formula)."""
        return self.bytes_fn(model, k, mode, kv)

    def max_layers_within(self, model: str, nbytes: int, mode: str) -> int | None:
        """The most resident blocks that fit in ``nbytes`` (None: not even 0 fits)."""
        n = self.models[model].n_layers
        best = None
        for k in range(n + 1):
            if self.bytes_for(model, k, mode) <= nbytes:
                best = k
            else:
                break
        return best


@dataclass(frozen=True)
class LoadPlan:
    """Where a model being loaded goes, and who makes room first."""

    residency: float
    mode: str
    actions: tuple[Action, ...] = ()
    reason: str = ""


class Policy:
    name = "?"
    preempts = False  # the engine's priority make-room (admission.py) applies
    evicts = False  # it evicts models to make room on its own (admission counts on it)
    places = False  # it chooses every model's residency (admission counts on the smallest)

    def pick(self, cands: list[Candidate]) -> tuple[str, str] | None:
        ready = [c for c in cands if c.runnable]
        if not ready:
            return None
        c = self.choose(ready)
        return c.id, c.action

    def choose(self, ready: list[Candidate]) -> Candidate:
        raise NotImplementedError

    def plan(self, view: View) -> list[Action]:
        """Residency/preemption actions to take now (default: none)."""
        return []

    def at_load(self, view: View, new: ModelView, residency: float, mode: str) -> LoadPlan:
        """Where a model being loaded goes (default: where its Load command says)."""
        return LoadPlan(residency, mode)

    def on_decision(self, action: Action, ok: bool, view_now: float) -> None:
        """Told after each of its actions ran (ok) or was refused."""


def fcfs_order(ready: list[Candidate]) -> Candidate:
    return min(ready, key=lambda c: (c.oldest, c.id))
