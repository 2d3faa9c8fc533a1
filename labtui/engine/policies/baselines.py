"""Baselines that behave like the multi-model tools people use today.

Each class says what it copies from the tool and what it leaves out; every rule
named here is checked by tests/test_policies.py. All three pick the next step in
arrival order (fcfs), as both tools serve requests in order.
"""

from __future__ import annotations

from labtui.engine import commands as C
from labtui.engine.policies.base import Action, LoadPlan, ModelView, Policy, View, evict, fcfs_order


def _loaded(view: View, but: str | None = None) -> list[ModelView]:
    return [m for m in view.models.values() if not m.preempted and m.id != but and m.state != "loading"]


def _lru_idle(view: View, but: str | None = None) -> list[ModelView]:
    """Loaded models with no queued or running request, least recently used first."""
    return sorted((m for m in _loaded(view, but) if not m.busy and not m.pin), key=lambda m: (m.last_used, m.id))


def _evict_until(view: View, need: int, max_count: int | None, but: str, why: str,
                 candidates: list[ModelView]) -> tuple[list[Action], bool]:
    """Evict from ``candidates`` in order until ``need`` bytes are free and fewer than
    ``max_count`` models stay loaded. Returns the evictions and whether that suffices."""
    free, count, acts = view.free, len(_loaded(view, but)), []
    for m in candidates:
        if free >= need and (max_count is None or count < max_count):
            break
        acts.append(evict(m.id, f"{why}: evict {m.id} (least recently used, idle {view.now - m.last_used:.1f} s)"))
        free += m.accel_bytes
        count -= 1
    return acts, free >= need and (max_count is None or count < max_count)


class Ollama(Policy):
    """Ollama's scheduler (server/sched.go), as it behaves on one GPU.

    Copies: a model loads whole when it fits the accelerator; only a model too big
    for the whole budget is partially offloaded, as many blocks resident as fit, the
    rest run on the host (``host`` mode, as llama.cpp's CPU layers); at most
    ``max_loaded`` models loaded (OLLAMA_MAX_LOADED_MODELS, 3 per GPU); a model idle
    (no queued or running request) for ``keep_alive`` is unloaded; to load another
    model it evicts the least recently used *idle* models; an evicted model's
    weights come back from disk (unload + load). It never preempts a model with
    running requests: a request for an evicted model waits until enough models are
    idle to evict, then waits for the reload.

    Leaves out: the 5-minute default keep_alive (here 5 s: labtui runs last seconds;
    set ``keep_alive``), per-request keep_alive, its VRAM estimate (labtui's exact
    placement bytes are used), multi-GPU spreading, OLLAMA_NUM_PARALLEL (the model's
    max_batch plays that role), and the model process start-up time.
    """

    name = "ollama"
    evicts = True

    def __init__(self, max_loaded: int = 3, keep_alive: float = 5.0):
        self.max_loaded = max_loaded
        self.keep_alive = keep_alive

    def choose(self, ready):
        return fcfs_order(ready)

    def _target(self, view: View, m: ModelView) -> tuple[int, str]:
        """Whole model if it fits the whole budget, else as many blocks as fit (host)."""
        if view.bytes_for(m.id, m.n_layers, "host") <= view.budget:
            return m.n_layers, "host"
        return view.max_layers_within(m.id, view.budget, "host") or 0, "host"

    def at_load(self, view, new, residency, mode):
        k, mode = self._target(view, new)
        need = view.bytes_for(new.id, k, mode)
        acts, _ = _evict_until(view, need, self.max_loaded, new.id, f"load {new.id}", _lru_idle(view, new.id))
        why = "whole model" if k == new.n_layers else f"too big for the budget: {k}/{new.n_layers} blocks, rest on the host"
        return LoadPlan(k / new.n_layers, mode, tuple(acts), f"ollama: load {new.id}: {why}")

    def plan(self, view):
        acts: list[Action] = []
        for m in _lru_idle(view):
            if view.now - m.last_used > self.keep_alive:
                acts.append(evict(m.id, f"idle {view.now - m.last_used:.1f} s > keep_alive {self.keep_alive:g} s"))
        if acts:
            return acts
        # one reload at a time, oldest waiting request first (requests are served in order)
        waiting = sorted((m for m in view.models.values() if m.preempted and m.auto_preempted and m.busy),
                         key=lambda m: -m.oldest_wait_s)
        for m in waiting[:1]:
            k, mode = self._target(view, m)
            need = view.bytes_for(m.id, k, mode)
            ev, enough = _evict_until(view, need, self.max_loaded, m.id, f"reload {m.id}", _lru_idle(view, m.id))
            if not enough:
                return []  # never preempt a running request: wait for models to go idle
            acts += ev
            acts.append(Action(C.Resume(model=m.id, residency=k / m.n_layers, mode=mode),
                               f"request waiting {m.oldest_wait_s:.2f} s: reload {m.id} from {m.parked} "
                               f"({'whole' if k == m.n_layers else f'{k}/{m.n_layers} blocks'})"))
        return acts


class LlamaCppRouter(Policy):
    """llama.cpp's server in router mode (``--models-max``): one process per model.

    Copies: at most ``models_max`` models loaded (default 4); loading one more
    unloads the least recently used; each model's residency (-ngl) is fixed when it
    is first loaded by a memory-fit estimate (the most blocks that fit in the memory
    free then; the rest run on the host, as llama.cpp's CPU layers) and never
    changes afterwards, also when it is loaded again; weights come back from disk.

    Leaves out: process start-up, the HTTP proxying, per-model arguments. Where the
    router would stop a process with requests in flight, labtui waits for its
    requests to finish instead (a model with running requests is never evicted), and
    it evicts further LRU models when the fixed placement does not fit the memory
    free (the router only counts models; a real load would fail or spill).
    """

    name = "llamacpp-router"
    evicts = True

    def __init__(self, models_max: int = 4):
        self.models_max = models_max
        self.fixed: dict[str, tuple[int, str]] = {}  # model -> (resident blocks, mode) at first load

    def choose(self, ready):
        return fcfs_order(ready)

    def at_load(self, view, new, residency, mode):
        lru = _lru_idle(view, new.id)
        acts, _ = _evict_until(view, 0, self.models_max, new.id, f"load {new.id}", lru)
        free = view.free + sum(view.models[a.model].accel_bytes for a in acts)
        k = view.max_layers_within(new.id, free, "host")
        while k is None and len(acts) < len(lru):  # not even 0 blocks fit: evict one more
            nxt = lru[len(acts)]
            acts.append(evict(nxt.id, f"load {new.id}: evict {nxt.id} (least recently used) for memory"))
            free += nxt.accel_bytes
            k = view.max_layers_within(new.id, free, "host")
        k = k or 0
        self.fixed[new.id] = (k, "host")
        return LoadPlan(k / new.n_layers, "host", tuple(acts),
                        f"llamacpp-router: load {new.id}: memory-fit {k}/{new.n_layers} blocks, fixed from now on")

    def plan(self, view):
        waiting = sorted((m for m in view.models.values() if m.preempted and m.auto_preempted and m.busy),
                         key=lambda m: -m.oldest_wait_s)
        for m in waiting[:1]:
            k, mode = self.fixed.get(m.id, (m.resident, m.mode))
            need = view.bytes_for(m.id, k, mode)
            acts, enough = _evict_until(view, need, self.models_max, m.id, f"load {m.id}", _lru_idle(view, m.id))
            if not enough:
                return []
            acts.append(Action(C.Resume(model=m.id, residency=k / m.n_layers, mode=mode),
                               f"request for {m.id}: load it again at its fixed {k}/{m.n_layers} blocks"))
            return acts
        return []


class StaticSplit(Policy):
    """The budget divided evenly between the models, never changed.

    Each model gets budget / N and the most resident blocks that fit in that share
    (the rest offloaded in its Load's mode); nothing is evicted, preempted or moved
    once serving starts. The split is made as models load: while none has served a
    request yet, each load re-divides the budget among the models loaded so far.

    What it stands for: a static partition (one process or MIG slice per model).
    """

    name = "static-split"

    def __init__(self):
        self.frozen = False

    def choose(self, ready):
        return fcfs_order(ready)

    def at_load(self, view, new, residency, mode):
        others = [m for m in view.models.values() if m.id != new.id]
        n = len(others) + 1
        share = view.free if self.frozen else view.budget // n
        acts = []
        if not self.frozen:
            for m in others:
                if m.preempted:
                    continue
                k = view.max_layers_within(m.id, share, m.mode) or 0
                if k < m.resident:
                    acts.append(Action(C.SetResidency(model=m.id, residency=k / m.n_layers),
                                       f"static split: {m.id} to its 1/{n} share, {k}/{m.n_layers} blocks"))
        k = view.max_layers_within(new.id, share, mode)
        if k is None:  # not even the stream window fits the share: run the blocks on the host
            mode = "host"
            k = view.max_layers_within(new.id, share, mode) or 0
        return LoadPlan(k / new.n_layers, mode, tuple(acts),
                        f"static split: {new.id} gets 1/{n} of the budget, {k}/{new.n_layers} blocks")

    def plan(self, view):
        if any(m.busy for m in view.models.values()):
            self.frozen = True
        return []
