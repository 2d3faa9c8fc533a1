"""The engine side of the policy interface: the worker's once-per-tick hook.

Mixed into ``Engine``. ``_policy_tick`` runs on the worker thread between steps:
it raises the residency of models in a pipelined resume by one block, and every
``PLAN_PERIOD_S`` asks the policy for actions (``Policy.plan``), which it runs
through the engine's own command handlers (budget checks, events, the same code a
user's command runs). Every action leaves a ``policy_decision`` event with the
policy's reason, whether it ran, and the refusal if not. Pinned models are
protected here, whatever the policy: never evicted, never below min_residency.
"""

from __future__ import annotations

import time

from labtui.engine import commands as C
from labtui.engine.policies.base import Action, LoadPlan, ModelView, Policy, View
from labtui.errors import LabError, one_line

PLAN_PERIOD_S = 0.05  # policies plan at most 20 times a second (moves cost link time)
CLIMB_TICK_S = 0.02  # a pipelined resume's climb moves blocks for about this long per tick


class PolicyDriver:
    """Policy actions, pipelined-resume climbs, and what policies see."""

    # -- state (created lazily: Engine.__init__ stays the API's)
    def _pstate(self) -> dict:
        st = self.__dict__.get("_policy_state")
        if st is None:
            st = self.__dict__["_policy_state"] = {"t": 0.0, "used": {}, "specs": {}, "climbs": {}}
        return st

    def _policy_tick(self, now: float) -> bool:
        st = self._pstate()
        did = self._advance_climbs()
        if now - st["t"] < PLAN_PERIOD_S:
            return did
        st["t"] = now
        if type(self.policy).plan is Policy.plan:
            # A policy that never plans (fcfs, round robin, ...): building the whole
            # view each period is scheduler overhead for nothing; keep only the
            # last-used times current, as a view would.
            t = self.now()
            for ms in list(self._models.values()):
                if ms.hm is not None:
                    self._last_used(ms, t)
            return did
        view = self._policy_view()
        for a in self.policy.plan(view) or []:
            did |= self._policy_act(a)
        return did

    def _last_used(self, ms, now: float) -> float:
        st = self._pstate()
        used = st["used"].get(ms.id, now)
        if (len(ms.batch) if ms.batch is not None else 0) or ms.queue:
            used = now
        if ms.metrics.last_t is not None:
            used = max(used, ms.metrics.last_t - self.t0)
        st["used"][ms.id] = used
        return used

    # -- what policies see
    def _policy_view(self, extra: dict | None = None) -> View:
        st = self._pstate()
        now = self.now()
        models = {}
        for ms in list(self._models.values()):
            if ms.hm is None:
                continue
            models[ms.id] = self._model_view(ms, now)
        hms = {m: s.hm for m, s in self._models.items() if s.hm is not None}
        if extra:
            models.update(extra["views"])
            hms.update(extra["hms"])

        def bytes_fn(mid: str, k: int, mode: str, kv: bool) -> int:
            hm = hms[mid]
            return hm.placement_bytes(set(range(min(k, hm.n_layers))), mode, kv=kv)

        del st
        dev = self.device
        return View(now=now, budget=dev.budget_bytes, free=dev.free, link_gbps=dev.link.gbps,
                    host_slowdown=dev.host_slowdown, models=models, host_free=self._host_free(), bytes_fn=bytes_fn)

    def _model_view(self, ms, now: float) -> ModelView:
        st = self._pstate()
        hm = ms.hm
        running = len(ms.batch) if ms.batch is not None else 0
        used = self._last_used(ms, now)
        spec = st["specs"].get(ms.id)
        t = time.perf_counter()
        oldest = max((t - r.t_submit for r in ms.queue), default=0.0)
        pending = sum(r.max_new_tokens for r in ms.queue)
        pending += sum(max(0, r.max_new_tokens - len(r.out_ids)) for r in (ms.batch.rows if ms.batch else []))
        left = max((max(0, r.max_new_tokens - len(r.out_ids)) for r in (ms.batch.rows if ms.batch else [])), default=0)
        rep = ms.preemption
        led = hm.ledger()
        return ModelView(
            id=ms.id, state=ms.state, n_layers=hm.n_layers, resident=len(hm.resident_set()), mode=hm.mode,
            queued=len(ms.queue), running=running, priority=ms.priority, weight_bytes=hm.weight_bytes(),
            accel_bytes=led.accel_total, last_used=used,
            parked=rep.weights if rep is not None else None, auto_preempted=ms.auto_preempted,
            pin=bool(spec and spec.pin), min_residency=spec.min_residency if spec else 0.0,
            slo_ttft_s=spec.slo_ttft_s if spec else None, slo_tpot_s=spec.slo_tpot_s if spec else None,
            slo_weight=spec.slo_weight if spec else 1.0, decode_tokens=ms.metrics.decode_tokens,
            decode_s=ms.metrics.decode_s, oldest_wait_s=oldest, max_new_tokens=pending, running_left=left,
            climbing=ms.id in st["climbs"], reloads=tuple(ms.preemptions), kv_bytes=led.accel_kv,
            arrived=ms.metrics.completed + ms.metrics.cancelled + ms.metrics.failed + len(ms.queue) + running,
            block_bytes=max((b.nbytes for b in hm.blocks), default=0), max_batch=ms.max_batch,
            pacing=hm.pacing,
        )

    def _policy_can_evict(self, mid: str) -> bool:
        """Whether the policy may evict this model to make room (not when pinned)."""
        if not getattr(self.policy, "evicts", False):
            return False
        spec = self._pstate()["specs"].get(mid)
        return not (spec is not None and spec.pin)

    def _policy_min_bytes(self, ms) -> int:
        """Accelerator bytes the model's weights need at the least: where it is, or,
        under a policy that places models itself, its smallest placement."""
        hm = ms.hm
        if getattr(self.policy, "places", False):
            spec = self._pstate()["specs"].get(ms.id)
            low = hm.layers_for_fraction(spec.min_residency) if spec is not None and spec.pin else set()
            return min(hm.placement_bytes(low, m) for m in ("host", "stream"))
        return hm.placement_bytes(hm.resident_set(), hm.mode)

    def _host_free(self) -> int:
        _, used, total = self.device._host_memory()  # cached: refreshed twice a second
        return total - used

    # -- running an action
    def _policy_act(self, a: Action) -> bool:
        cmd = a.cmd
        ok, refused, result = True, None, None
        try:
            self._validate(cmd)
            self._guard_pin(cmd)
            self._busy = f"{self.policy.name}: {cmd.action} {cmd.model}"
            if isinstance(cmd, C.Preempt):
                result = self._do_preempt(cmd, auto=True)
            else:
                if isinstance(cmd, C.SetResidency):
                    self._pstate()["climbs"].pop(cmd.model, None)  # the policy's placement wins
                result = getattr(self, f"_do_{cmd.action}")(cmd)
        except LabError as e:
            ok, refused = False, one_line(e)
        extra = {}
        if isinstance(result, dict):
            extra = {k: v for k, v in result.items() if k in ("residency", "mode")}
        self._emit("policy_decision", policy=self.policy.name, model=cmd.model, action=cmd.action, ok=ok,
                   reason=a.reason, refused=refused, command=cmd.to_toml_dict(), **extra)
        self.policy.on_decision(a, ok, self.now())
        self._publish(force=True)
        return ok

    def _guard_pin(self, cmd) -> None:
        spec = self._pstate()["specs"].get(cmd.model)
        if spec is None or not spec.pin:
            return
        if isinstance(cmd, C.Preempt):
            raise LabError(f"{cmd.model} is pinned; a policy never evicts it")
        if isinstance(cmd, C.SetResidency):
            hm = self._models[cmd.model].hm
            k = len(cmd.layers) if cmd.layers is not None else len(hm.layers_for_fraction(cmd.residency))
            if k < len(hm.layers_for_fraction(spec.min_residency)):
                raise LabError(f"{cmd.model} is pinned at >= {spec.min_residency:.0%} residency; a policy never places it lower")

    # -- load
    def _policy_load_plan(self, mid: str, hm, cmd: C.Load) -> tuple[set[int], str]:
        """Where the policy puts a model being loaded; runs the evictions it asks for first."""
        st = self._pstate()
        st["specs"][mid] = cmd
        st["used"][mid] = self.now()
        new = ModelView(
            id=mid, state="loading", n_layers=hm.n_layers, resident=0, mode=cmd.offload, queued=0, running=0,
            priority=cmd.priority, weight_bytes=hm.weight_bytes(), accel_bytes=0, last_used=self.now(),
            parked=None, auto_preempted=False, pin=cmd.pin, min_residency=cmd.min_residency,
            slo_ttft_s=cmd.slo_ttft_s, slo_tpot_s=cmd.slo_tpot_s, slo_weight=cmd.slo_weight,
            block_bytes=max((b.nbytes for b in hm.blocks), default=0), max_batch=cmd.max_batch,
        )
        view = self._policy_view({"views": {mid: new}, "hms": {mid: hm}})
        plan: LoadPlan = self.policy.at_load(view, new, cmd.residency, cmd.offload)
        for a in plan.actions:
            self._policy_act(a)
        resident = hm.layers_for_fraction(plan.residency)
        if cmd.pin:
            resident |= hm.layers_for_fraction(cmd.min_residency)
        if (plan.residency, plan.mode) != (cmd.residency, cmd.offload):
            self._emit("policy_decision", policy=self.policy.name, model=mid, action="load", ok=True,
                       reason=plan.reason or f"load at {len(resident)}/{hm.n_layers} blocks ({plan.mode})",
                       refused=None, command={"residency": plan.residency, "mode": plan.mode},
                       residency=len(resident) / hm.n_layers, mode=plan.mode)
        return resident, plan.mode

    # -- pins (SetPin): set live; the next plan's view carries them
    def _set_pin(self, mid: str, pin: bool, min_residency: float | None) -> dict:
        st = self._pstate()
        spec = st["specs"].get(mid)
        if spec is None:  # loaded before any policy saw it: its pin starts from nothing
            spec = C.Load(id=mid, source=self._models[mid].source)
        low = spec.min_residency if min_residency is None else min_residency
        st["specs"][mid] = spec.model_copy(update={"pin": pin, "min_residency": low})
        self._emit("pin", model=mid, pin=pin, min_residency=low)
        self._publish(force=True)
        return {"pin": pin, "min_residency": low}

    def _pin_of(self, mid: str) -> tuple[bool, float]:
        """(pinned, min_residency) of a model, for snapshots."""
        spec = self._pstate()["specs"].get(mid)
        return (bool(spec.pin), spec.min_residency) if spec is not None else (False, 0.0)

    def _plan_of(self, mid: str):
        """The planner's current plan row for a model (None under other policies)."""
        rows = getattr(self.policy, "plan_rows", None)
        return rows.get(mid) if rows else None

    def _policy_forget(self, mid: str) -> None:
        st = self._pstate()
        for k in ("used", "specs", "climbs"):
            st[k].pop(mid, None)

    # -- pipelined resume: residency climbs back block by block between steps
    def _start_climb(self, mid: str, target: set[int], mode: str) -> None:
        # the token count at the last climb step: a block moves only after the model
        # stepped again, so decode and the climb alternate (the first token comes first)
        self._pstate()["climbs"][mid] = (frozenset(target), mode, self._models[mid].metrics.tokens)

    def _stop_climb(self, mid: str) -> None:
        self._pstate()["climbs"].pop(mid, None)

    def _advance_climbs(self) -> bool:
        """Raise each climbing model's residency between steps: at least one block per
        tick, more while the tick's moves took under CLIMB_TICK_S (so a slow link does
        not stall decode for long, a fast one climbs in a few ticks)."""
        climbs = self._pstate()["climbs"]
        if not climbs:  # every tick: nothing to climb costs one dict test
            return False
        did = False
        for mid, (target, mode, tokens) in list(climbs.items()):
            ms = self._models.get(mid)
            if ms is None or ms.hm is None or ms.state not in ("serving", "idle"):
                if ms is None or ms.state not in ("preempting", "preempted", "resuming"):
                    climbs.pop(mid, None)
                continue
            if ms.metrics.tokens == tokens and (ms.queue or len(ms.batch)):
                continue  # it has work and has not stepped since the last block moved
            climbs[mid] = (target, mode, ms.metrics.tokens)
            hm = ms.hm
            t0 = time.perf_counter()
            while time.perf_counter() - t0 < CLIMB_TICK_S:
                have = hm.resident_set()
                missing = sorted(target - have)
                if not missing and hm.mode == mode and have == target:
                    climbs.pop(mid, None)
                    self._emit("climb_done", model=mid, residency=hm.residency, mode=mode)
                    break
                nxt = (have & target) | ({missing[0]} if missing else set())
                nxt_mode = mode if nxt == target else hm.mode
                if hm.plan_cost(nxt, nxt_mode) > self.device.free:
                    break  # waits for room; the policy or a finishing request frees it
                try:
                    self._busy = f"resuming {mid}: block {len(nxt)}/{hm.n_layers}"
                    hm.set_placement(nxt, nxt_mode, reason="resume")
                    self._record_residency(ms)
                    did = True
                except LabError as e:
                    self._emit("error", where=f"climb {mid}", message=one_line(e))
                    climbs.pop(mid, None)
                    break
        return did
