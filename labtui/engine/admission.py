"""Admission and making room: whether a queued request may join its model's batch
and, under the priority policy, which models yield the accelerator to whom.

Mixed into ``Engine``; runs on the worker thread.
"""

from __future__ import annotations

from labtui.engine import commands as C
from labtui.engine.decode import Request
from labtui.engine.preemption import resume_cost
from labtui.engine.scheduler import Candidate
from labtui.engine.state import ModelState


class Admission:
    """Admission control and make-room decisions."""

    def _kv_fits(self, ms: ModelState, req: Request) -> bool:
        """Admission control: the batch's KV at its longest must fit the budget."""
        hm = ms.hm
        per_tok = hm.kv_per_token_accel()
        if per_tok == 0:
            return True
        rows = ms.batch.rows + [req]
        longest = max(len(r.prompt_ids) + r.max_new_tokens for r in rows)
        projected = len(rows) * longest * per_tok
        return projected - hm.accel_kv_last <= self.device.free

    def _candidates(self) -> list[Candidate]:
        out = []
        for ms in self._models.values():
            if ms.hm is None or ms.state in ("preempted", "preempting", "resuming", "loading", "unloading"):
                continue
            running = len(ms.batch)
            queued = len(ms.queue)
            if not running and not queued:
                if ms.state == "serving":
                    ms.state = "idle"
                continue
            can_admit = bool(queued) and running < ms.max_batch and self._kv_fits(ms, ms.queue[0])
            oldest = min([r.t_submit for r in ms.batch.rows] + [r.t_submit for r in ms.queue])
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
        if need > self.device.free + sum(v.hm.ledger().accel_total for v in victims):
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
