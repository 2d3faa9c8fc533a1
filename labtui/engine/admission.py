"""Admission and making room: whether a queued request may join its model's batch
and, under the priority policy, which models yield the accelerator to whom.

Mixed into ``Engine``; runs on the worker thread.
"""

from __future__ import annotations

from labtui.engine import commands as C
from labtui.engine.decode import Request
from labtui.engine.devices import fmt_bytes, fmt_bytes_apart
from labtui.engine.kvbuffer import capacity_for
from labtui.engine.preemption import resume_cost
from labtui.engine.scheduler import Candidate
from labtui.engine.state import ModelState


class Admission:
    """Admission control and make-room decisions."""

    def _admission_need(self, ms: ModelState, req: Request) -> int:
        """Extra bytes ``ms`` must reserve to admit ``req``: the batch's projected KV with
        the new row (every row as long as the longest projected one, left padding),
        minus the KV it already has, plus the prefill's workspace (reservation.py).

        Kept per model until something it depends on changes: the candidates pass asks
        for every model with a queue on every tick, and each tick steps one model. The
        key holds scalars and the per-layer lists themselves: the placement is changed
        in place (compared by value against a copy), ``kv_bytes_per_token`` is only
        ever replaced (compared by identity: the key keeps the old list alive)."""
        hm, batch = ms.hm, ms.batch
        key = (req, batch.version, batch.length, hm.accel_kv_last, hm._hold, hm._kv_swapped)
        cached = ms.need_cache
        if (cached is not None and cached[0] == key and cached[1] is hm.kv_bytes_per_token
                and cached[2] == hm.placement):
            return cached[3]
        need = self._compute_admission_need(ms, req)
        ms.need_cache = (key, hm.kv_bytes_per_token, list(hm.placement), need)
        return need

    def _compute_admission_need(self, ms: ModelState, req: Request) -> int:
        hm, batch = ms.hm, ms.batch
        n = len(batch.rows) + 1
        longest = max(_projected_len(req), max((_projected_len(r) for r in batch.rows), default=0))
        p = len(req.prompt_ids)
        merge = 0
        if batch.rows:  # the prefill's cache and a regrown buffer beside the batch's
            merge = n * capacity_for(max(batch.length, p), longest) * hm.kv_per_token_accel()
        return hm.headroom(n, longest, hm.accel_kv_last, p, merge) - hm._hold

    def _kv_fits(self, ms: ModelState, req: Request) -> bool:
        """Admission control: the batch's projected KV and step workspace must fit what
        is free (budget - used - every model's reservation)."""
        return self._admission_need(ms, req) <= self.device.free

    def _set_plan(self, ms: ModelState, admitting: Request | None = None) -> None:
        """Record the admitted rows (and the one being admitted) as the model's plan;
        the next ``sync_reservation`` holds what the plan still needs."""
        hm, rows = ms.hm, list(ms.batch.rows)
        p = merge = 0
        if admitting is not None:
            p = len(admitting.prompt_ids)
            if rows:
                longest = max(_projected_len(r) for r in [*rows, admitting])
                merge = (len(rows) + 1) * capacity_for(max(ms.batch.length, p), longest) * hm.kv_per_token_accel()
            rows.append(admitting)
        hm.set_plan(len(rows), max((_projected_len(r) for r in rows), default=0), p, merge)

    def expected_hold(self, ms: ModelState) -> int:
        """The reservation ``ms`` must hold between steps, from its admitted requests
        alone (for the invariant checks)."""
        hm = ms.hm
        if hm is None or hm._paused_window or not ms.batch.rows:
            return 0
        longest = max(_projected_len(r) for r in ms.batch.rows)
        return hm.headroom(len(ms.batch.rows), longest, hm.ledger().accel_kv)

    def _never_fits(self, ms: ModelState, prompt_tokens: int, max_new_tokens: int) -> str | None:
        """Why one request of this size could never be admitted, even with every other
        model's reservation (and its KV) gone: None when it could. Runs in the caller's
        thread on values the worker keeps up to date (ints: read atomically)."""
        hm = ms.hm
        if hm is None:
            return None
        base = self._policy_min_bytes(ms)  # where the policy may place it (policies/driver.py)
        kv_ws = hm.headroom(1, prompt_tokens + max_new_tokens, 0, prompt_tokens)
        need = base + kv_ws
        # Other models' weights stand in the way for good unless the policy can
        # evict them to make room (priority, ollama, llamacpp-router, planner).
        others = sum(
            max(0, o.hm._reserved - o.hm.accel_kv_last)
            for o in list(self._models.values()) if o is not ms and o.hm is not None
            and not self._policy_can_evict(o.id)  # a policy that evicts frees those (policies/driver.py)
        )
        budget = self.device.budget_bytes
        avail = budget - others
        if need <= avail:
            return None
        need_s, avail_s = fmt_bytes_apart(need, max(0, avail))
        return (
            f"a request of {prompt_tokens}+{max_new_tokens} tokens for {ms.id} needs {need_s} on the "
            f"accelerator ({fmt_bytes(base)} weights and buffers, {fmt_bytes(kv_ws)} KV and step workspace) but at "
            f"most {avail_s} of the {fmt_bytes(budget)} budget can be free for it"
            + (" (other models' weights hold the rest)" if others else "")
            + "; lower max_new_tokens or the prompt, lower a residency, or raise the budget"
        )

    def _note_wait(self, ms: ModelState, req: Request | None, need: int | None) -> None:
        """A queued request that does not fit waits visibly: the reason in the snapshot,
        one ``admission_wait`` event when it starts waiting."""
        if req is None or need is None:
            ms.waiting_reason = ""
            return
        free, held = self.device.free, self.device.reserved
        ms.waiting_reason = (
            f"{req.id} waits for accelerator memory: needs {fmt_bytes(need)}, {fmt_bytes(free)} free "
            f"({fmt_bytes(held)} reserved for admitted requests)"
        )
        if ms.waiting_request != req.id:
            ms.waiting_request = req.id
            self._emit("admission_wait", model=ms.id, request=req.id, need_bytes=int(need), free_bytes=int(free),
                       reserved_bytes=int(held), used_bytes=int(self.device.used))

    def _candidates(self) -> list[Candidate]:
        # Runs before every step, for every model: plain loops, no per-model lists.
        out = []
        free = self.device.free  # nothing below changes the device's accounting
        for ms in self._models.values():
            if ms.hm is None or ms.state in _NOT_STEPPING:
                continue
            rows, q = ms.batch.rows, ms.queue
            running, queued = len(rows), len(q)
            if not running and not queued:
                if ms.state == "serving":
                    ms.state = "idle"
                ms.waiting_reason = ""
                continue
            can_admit = False
            if queued and running < ms.max_batch:
                need = self._admission_need(ms, q[0])
                can_admit = need <= free
                if not can_admit:
                    self._note_wait(ms, q[0], need)
                elif ms.waiting_reason:
                    ms.waiting_reason = ""  # as _note_wait(ms, None, None)
            elif ms.waiting_reason:
                ms.waiting_reason = ""
            oldest = min(r.t_submit for r in rows) if running else q[0].t_submit
            for r in q:
                if r.t_submit < oldest:
                    oldest = r.t_submit
            out.append(Candidate(ms.id, ms.priority, queued, running, can_admit, oldest))
        return out

    def _make_room(self, need: int, priority: int, exclude: str) -> bool:
        """Under the priority policy, preempt lower-priority models until ``need`` fits."""
        if self.policy.name != "priority":
            return False
        # Lower-priority models yield first; an idle model (no queued or running
        # request) yields whatever its priority, so memory never sits unused.
        victims = sorted(
            (
                m for m in self._models.values()
                if m.id != exclude and m.hm is not None and m.state in ("serving", "idle")
                and (m.priority < priority or (not m.queue and not len(m.batch)))
            ),
            key=lambda m: (bool(m.queue or len(m.batch)), m.priority),
        )
        # A preemption (kv swap, weights host) frees all the victim holds. If even all of
        # them would not make room, preempt nobody: the command is refused, nothing changed.
        # A victim frees its ledger and the reservation of its admitted requests.
        if need > self.device.free + sum(v.hm.ledger().accel_total + v.hm._hold for v in victims):
            return False
        for v in victims:
            if need <= self.device.free:
                break
            self._do_preempt(C.Preempt(model=v.id, kv="swap", weights="host"), auto=True)
        return need <= self.device.free

    def _priority_rebalance(self) -> bool:
        """Resume auto-preempted models that have work, highest priority first."""
        did = False
        waiting = sorted(
            (m for m in self._models.values() if m.state == "preempted" and m.auto_preempted and (m.queue or len(m.batch))),
            key=lambda m: -m.priority,
        )
        for ms in waiting:
            need = resume_cost(ms.hm, ms.preemption)
            if need > self.device.free and not self._make_room(need, ms.priority, exclude=ms.id):
                continue
            self._do_resume(C.Resume(model=ms.id))
            did = True
        return did


_NOT_STEPPING = frozenset(("preempted", "preempting", "resuming", "loading", "unloading"))


def _projected_len(r: Request) -> int:
    """Tokens a request's row can reach: its prompt plus every token it may generate."""
    return len(r.prompt_ids) + r.max_new_tokens
