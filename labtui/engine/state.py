"""Worker-owned state of one hosted model (only the worker thread mutates it).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from labtui.engine.decode import Batch
from labtui.engine.hosted import HostedModel
from labtui.engine.limits import PREEMPTIONS_KEPT, RESIDENCY_HISTORY_KEPT
from labtui.engine.metrics import ModelMetrics
from labtui.engine.snapshot import PhaseReport


@dataclass(eq=False)
class ModelState:
    """Worker-owned state of one hosted model."""

    id: str
    source: str
    priority: int
    max_batch: int
    hm: HostedModel | None = None
    batch: Batch | None = None
    queue: deque = field(default_factory=deque)
    state: str = "loading"
    metrics: ModelMetrics = field(default_factory=ModelMetrics)
    preemption: PhaseReport | None = None  # the open one, while preempted
    t_preempt: float = 0.0
    auto_preempted: bool = False
    last_preemption: PhaseReport | None = None
    # the last ones only (bounded memory; every one is an event, in a bundle on disk)
    preemptions: deque = field(default_factory=lambda: deque(maxlen=PREEMPTIONS_KEPT))
    residency_history: deque = field(default_factory=lambda: deque(maxlen=RESIDENCY_HISTORY_KEPT))
    last_text: str = ""
    last_ids: list | None = None  # the last finished request's tail, not decoded into last_text yet
    eos: set = field(default_factory=set)
    corpus: list | None = None
    waiting_reason: str = ""  # why the queue's head is not admitted ("" when it is not waiting)
    waiting_request: str = ""  # the last request an admission_wait event was emitted for
    # caches of the hot path, each with the key it was computed for:
    need_cache: tuple | None = None  # (inputs, bytes) of admission's need (admission.py)
    synced: tuple | None = None  # (batch version, cache, epoch) last synced (worker._step)
