"""The worker loop: the one thread that owns every model and all torch work.

Each tick applies the queued commands, moves newly submitted requests to their
model's queue, lets workloads submit, asks the policy for one step (a prefill or a
decode step of one model) and runs it, then publishes a snapshot. Requests end
here (``_finish``: one ``request_finish`` event each) and every event is emitted
here. Mixed into ``Engine`` (api.py); the state it reads is set up there.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future

import torch

from labtui.engine import commands as C
from labtui.engine.decode import Request
from labtui.engine.events import Event
from labtui.engine.hosted import HostedModel
from labtui.engine.limits import KEEP_DONE_WORKLOADS
from labtui.engine.state import ModelState
from labtui.engine.workload import Workload
from labtui.errors import LabError, one_line

log = logging.getLogger("labtui.engine")


class WorkerLoop:
    """The worker thread's loop, steps and request bookkeeping."""

    def _run(self) -> None:
        torch.set_grad_enabled(False)
        while not self._stop.is_set():
            try:
                did = self._tick()
            except Exception as e:  # never let the worker die: report and go on
                self._loop_error("worker", e)
                did = False
            try:
                self._publish()
            except Exception as e:  # nor of a snapshot that failed to build: the next tick retries
                self._loop_error("snapshot", e)
            self._fan_out()
            if self._t_fwd1 is not None:  # a step ran: account the scheduler's share
                st = self.sched_stats
                st["steps"] += 1
                st["step_s"] += self._t_fwd1 - self._t_fwd0
                ov = (self._t_fwd0 - self._t_sched) + (time.perf_counter() - self._t_fwd1)
                st["overhead_s"] += ov
                self._sched_samples.append(ov)
                self._t_fwd1 = None
            if not did:
                timeout = 0.05
                due = [w.next_due() for w in self._workloads.values()]
                due = [d for d in due if d is not None]
                if due:
                    timeout = max(0.0, min(timeout, min(due) - time.perf_counter()))
                self._busy = "idle"
                self._wake.wait(timeout)
                self._wake.clear()
        # shutdown: fail nothing silently. Requests running, queued or not yet picked
        # up end cancelled ("engine closed") with their request_finish event.
        self._triggers.close()
        while True:
            try:
                self._enqueue(self._incoming.get_nowait())
            except queue.Empty:
                break
        for req in list(self._requests.values()):
            ms = self._models.get(req.model)
            if ms is not None:
                self._finish(ms, req, cancelled=True, reason="engine closed")
            elif not req.done.is_set():
                req.state, req.finish_reason = "cancelled", "engine closed"
                req.done.set()
                self._count(requests=-1)
        # Commands still queued will never run: their callers get a LabError, not a wait.
        self._fail_queued_commands(emit=True)
        self._publish(force=True)
        self._fan_out()

    def _loop_error(self, where: str, e: Exception) -> None:
        """An exception the loop survives: logged, kept for snapshots, an error event."""
        log.exception("engine %s failed", where)
        self._errors.append(one_line(e))
        self._emit("error", where=where, message=one_line(e))

    def _count(self, requests: int = 0, commands: int = 0) -> None:
        """Submitted-but-unfinished requests and queued-but-unapplied commands, counted
        where they enter and where they end, so ``wait_idle`` is exact (a request
        between the incoming queue and its model's queue still counts)."""
        with self._count_lock:
            self._outstanding += requests
            self._pending_cmds += commands
            assert self._outstanding >= 0 and self._pending_cmds >= 0, "request/command counts went negative"

    def _fail_queued_commands(self, emit: bool) -> None:
        """End every queued command with LabError("the engine is closed")."""
        while True:
            try:
                cmd, fut = self._cmds.get_nowait()
            except queue.Empty:
                return
            if not callable(cmd):
                self._count(commands=-1)
                if emit:  # on the worker thread only: listeners expect to run there
                    self._emit("refused", command=cmd.action, reason="the engine is closed")
            if fut.set_running_or_notify_cancel():
                fut.set_exception(LabError("the engine is closed"))

    def _tick(self) -> bool:
        did = False
        # The queues' deques are peeked first (a length read, atomic under the GIL):
        # an empty queue costs no lock and no raised queue.Empty, on every tick.
        while self._cmds.queue:
            try:
                cmd, fut = self._cmds.get_nowait()
            except queue.Empty:
                break
            did = True
            self._apply(cmd, fut)
        did |= self._fire_triggers()
        while self._incoming.queue:
            try:
                req = self._incoming.get_nowait()
            except queue.Empty:
                break
            self._enqueue(req)
        now = self._t_sched = time.perf_counter()
        for w in list(self._workloads.values()):
            if w.idle_until_finish():
                continue  # a closed workload at its concurrency submits only after a finish
            if not w.done and w.model in self._models and self._models[w.model].hm is not None:
                w.tick(now, lambda ids, n, seed, w=w: self._workload_submit(w, ids, n, seed))
        if self.policy.name == "priority":
            did |= self._priority_rebalance()
        did |= self._policy_tick(now)  # policy actions and resume climbs (policies/driver.py)
        pick = self.policy.pick(self._candidates())
        if pick is None:
            return did
        self._step(self._models[pick[0]], pick[1])
        self._fire_triggers()  # between this step and the model's next: exact counts
        return True

    def _fire_triggers(self) -> bool:
        if not self._triggers:
            return False
        due = self._triggers.due(self._models)
        for a in due:
            self._count(commands=1)  # _apply ends it, as for a queued command
            self._apply(a.cmd, a.fut)
        return bool(due)

    def _apply(self, cmd, fut: Future) -> None:
        if callable(cmd):  # an internal call that must see a consistent state (tests)
            if fut.set_running_or_notify_cancel():
                try:
                    res = cmd()
                except BaseException as e:
                    self._fan_out()
                    fut.set_exception(e)
                else:
                    self._fan_out()
                    fut.set_result(res)
            return
        if isinstance(cmd, C.Load):
            self._pending_ids.discard(cmd.id or "")
        try:
            self._apply_cmd(cmd, fut)
        finally:
            self._count(commands=-1)
            self._fan_out()

    def _apply_cmd(self, cmd, fut: Future) -> None:
        if not fut.set_running_or_notify_cancel():
            return
        try:
            self._validate(cmd)  # the state may have changed since it was queued
            self._busy = cmd.action
            result = getattr(self, f"_do_{cmd.action}")(cmd)
        except LabError as e:
            self._emit("refused", command=cmd.action, reason=one_line(e))
            self._publish(force=True)
            self._fan_out()
            fut.set_exception(e)
            return
        except Exception as e:
            log.exception("command failed")
            self._emit("error", where=cmd.action, message=one_line(e))
            self._fan_out()
            fut.set_exception(e)
            return
        self.command_log.append((round(self.now(), 4), cmd))
        self.commands_total += 1
        self._emit("command", **cmd.to_toml_dict())
        self._publish(force=True)  # the caller sees the command's effect at once
        self._fan_out()
        fut.set_result(result)

    def _workload_submit(self, w: Workload, ids: list[int], n: int, seed: int) -> str:
        greedy = w.cmd.greedy
        req = Request(
            id=f"r{next(self._ids)}", model=w.model, prompt_ids=ids, max_new_tokens=n, greedy=greedy,
            temperature=w.cmd.temperature, seed=seed, workload=w.id, t_submit=time.perf_counter(),
        )
        self._count(requests=1)
        self._enqueue(req)
        return req.id

    def _enqueue(self, req: Request) -> None:
        ms = self._models.get(req.model)
        if ms is None:
            # accepted by submit() while its model was loaded, which was unloaded before
            # the worker picked it up: it ends as the unloaded model's other requests did
            req.state, req.finish_reason, req.error = "cancelled", "unloaded", f"model {req.model} was unloaded"
            self._emit("request_finish", model=req.model, request=req.id, workload=req.workload,
                       prompt_tokens=len(req.prompt_ids), new_tokens=0, digest=req.digest(), ttft_s=None,
                       tpot_s=None, e2e_s=_r(time.perf_counter() - req.t_submit), queue_s=None, paused_s=0.0,
                       reason="unloaded")
            req.done.set()
            self._count(requests=-1)
            return
        self._requests[req.id] = req
        ms.queue.append(req)

    def _step(self, ms: ModelState, action: str) -> None:
        hm, batch = ms.hm, ms.batch
        ms.state = "serving"
        self._busy = f"{action} {ms.id}"
        t0 = self._t_fwd0 = time.perf_counter()
        req = None
        try:
            if action == "prefill":
                req = ms.queue.popleft()
                # admission reserves the request's projected KV and the prefill's workspace
                self._set_plan(ms, admitting=req)
                hm.sync_reservation()
                batch.admit(req, t0, ms.eos)
                self._emit("request_start", model=ms.id, request=req.id, workload=req.workload,
                           prompt_tokens=len(req.prompt_ids), queue_s=round(t0 - req.t_submit, 6))
                if not hm.kv_measured:
                    self._measure_kv_per_token(hm, len(req.prompt_ids))
                finished = batch.remove_finished()
                tokens = 1
            else:
                rows = list(batch.rows)
                tokens = len(batch)
                finished = batch.decode_step(ms.eos)
        except Exception as e:
            # a request whose prefill failed left the queue but never joined the batch:
            # it fails with the batch, or it would never finish (its caller waits forever)
            self._step_failed(ms, e, also=[req] if req is not None and req not in batch.rows else [])
            return
        hm.device.synchronize()
        now = self._t_fwd1 = time.perf_counter()
        # A decode step that finished no row and grew no KV buffer changed neither the
        # ledger nor the plan: reuse the last synced ledger, skip the re-sync (no walk).
        key = (batch.version, id(hm.cache), getattr(hm.cache, "epoch", 0))
        same = action == "decode" and hm.last_ledger is not None and ms.synced == key
        led = hm.last_ledger if same else hm.ledger()
        bytes_read = hm.weight_bytes() + led.accel_kv + led.host_kv  # gpt-fast's bytes per step
        ms.metrics.on_step(now, tokens, now - t0, bytes_read, decode=(action == "decode"))
        if action == "decode":
            for r in rows:
                r.decode_s += (now - t0) / len(rows)
        if not same:
            self._set_plan(ms)  # finished rows release their reservation
            hm.sync_reservation(led)
            ms.synced = key
        for req in finished:
            self._finish(ms, req, cancelled=False, reason=req.finish_reason)

    def _measure_kv_per_token(self, hm: HostedModel, n_tokens: int) -> None:
        per = []
        for i in range(hm.n_layers):
            layer = hm.kv_layer(i)
            b = 0
            if layer is not None:
                b = (layer.keys[0:1].numel() * layer.keys.element_size() * 2) // max(1, layer.keys.shape[-2])
            per.append(b)
        hm.kv_bytes_per_token = per
        hm.kv_measured = True

    def _step_failed(self, ms: ModelState, e: Exception, also: list[Request] = ()) -> None:
        msg = one_line(e)
        oom = isinstance(e, torch.cuda.OutOfMemoryError) if hasattr(torch.cuda, "OutOfMemoryError") else False
        log.exception("step failed for %s", ms.id)
        self._errors.append(f"{ms.id}: {msg}")
        self._emit("error", where=f"step {ms.id}", message=msg, oom=oom)
        for req in list(ms.batch.rows) + list(also):
            req.error = msg
            self._finish(ms, req, cancelled=False, reason="failed")
        ms.batch.clear()
        self._set_plan(ms)
        ms.hm.sync_reservation()
        if oom:
            # Fall back to a smaller residency so the model can keep serving.
            hm = ms.hm
            k = max(0, len(hm.resident_set()) - max(1, hm.n_layers // 4))
            try:
                self.device.empty_cache()
                hm.set_placement(set(range(k)), hm.mode, reason="oom")
                self._record_residency(ms)
            except Exception as e2:  # noqa: BLE001 - report, keep serving others
                self._emit("error", where=f"oom fallback {ms.id}", message=one_line(e2))

    def _finish(self, ms: ModelState, req: Request, cancelled: bool, reason: str | None) -> None:
        if req.done.is_set():
            return
        req.finish_reason = reason if cancelled or reason else req.finish_reason
        if cancelled:
            req.state = "cancelled"
            ms.metrics.cancelled += 1
        elif reason == "failed":
            req.state = "failed"
            ms.metrics.failed += 1
        else:
            req.state = "done"
            ms.metrics.on_finish(req.ttft_s, req.tpot_s)
            # decoded when the next snapshot is built (snapshots.py): once per publish,
            # however many of the model's requests finished since the last one
            ms.last_ids = req.out_ids[-48:]
        now = time.perf_counter()
        self._emit(
            "request_finish", model=ms.id, request=req.id, workload=req.workload,
            prompt_tokens=len(req.prompt_ids), new_tokens=len(req.out_ids), digest=req.digest(),
            ttft_s=_r(req.ttft_s), tpot_s=_r(req.tpot_s), e2e_s=_r(now - req.t_submit),
            queue_s=_r((req.t_start or now) - req.t_submit), paused_s=_r(req.paused_s), reason=req.finish_reason,
            decode_s=_r(req.decode_s),
        )
        if req.workload and req.workload in self._workloads:
            w = self._workloads[req.workload]
            was_done = w.done
            w.on_finish(req.id, cancelled=req.state != "done")
            if w.done and not was_done:
                self._emit("workload_done", workload=w.id, model=w.model, completed=w.completed, cancelled=w.cancelled)
                self._prune_workloads()
        self._requests.pop(req.id, None)
        req.done.set()
        self._count(requests=-1)

    def _prune_workloads(self) -> None:
        """Forget all but the last KEEP_DONE_WORKLOADS finished workloads (bounded
        snapshots and memory); running ones always stay."""
        done = [wid for wid, w in self._workloads.items() if w.done]
        for wid in done[: max(0, len(done) - KEEP_DONE_WORKLOADS)]:
            del self._workloads[wid]
            self._workloads_pruned += 1

    def _emit(self, _kind: str, **data) -> None:
        # Cheap on the hot path: a ring append. Listeners get the worker's events
        # after its step (_fan_out); events from other threads (a refusal in the
        # caller's thread) are handed over at once, after any still pending.
        with self._ev_lock:
            self._seq += 1
            ev = Event(self._seq, self.now(), _kind, data)
            self._events.append(ev)
            if not self._listeners:
                return
            self._pending_ev.append(ev)
        if threading.current_thread() is not self._thread:
            self._fan_out()

    def _fan_out(self) -> None:
        # Unlocked peek (a list's truthiness; appends happen under _ev_lock): nothing
        # pending costs no lock. An event another thread appends meanwhile is handed
        # over by that thread's own _fan_out (_emit).
        if not self._pending_ev:
            return
        with self._fan_lock:
            with self._ev_lock:
                if not self._pending_ev:
                    return
                batch, self._pending_ev = self._pending_ev, []
                listeners = list(self._listeners)
            for fn, batched in listeners:
                for arg in ([batch] if batched else batch):
                    try:
                        fn(arg)
                    except Exception:  # a broken listener must not stop the engine
                        log.exception("event listener failed")

def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 6)
