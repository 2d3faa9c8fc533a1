"""Command handlers: one ``_do_<action>`` per command, run on the worker thread
between steps, after ``Engine._validate`` checked the command against the current
state. A handler either applies the whole command or raises (LabError: refused).

Mixed into ``Engine``.
"""

from __future__ import annotations

import time
from dataclasses import asdict

from labtui.engine import commands as C
from labtui.engine.decode import Batch
from labtui.engine.devices import parse_link
from labtui.engine.hosted import HostedModel
from labtui.engine.policies import make_policy
from labtui.engine.preemption import preempt, resume, resume_cost
from labtui.engine.snapshot import (
    PhaseReport,
)
from labtui.engine.state import ModelState
from labtui.engine.workload import Workload, corpus_ids
from labtui.errors import LabError


class Handlers:
    """One method per command (``_do_<action>``)."""

    def _do_load(self, cmd: C.Load) -> str:
        from labtui.engine.loader import load_pretrained
        from labtui.models.sources import resolve_source

        mid = cmd.id or _default_id(cmd.source)
        src = resolve_source(cmd.source, trust_remote_code=cmd.trust_remote_code, base=self.base_dir)
        ms = ModelState(id=mid, source=cmd.source, priority=cmd.priority, max_batch=cmd.max_batch)
        self._models[mid] = ms
        self._publish(force=True)
        t0 = time.perf_counter()
        try:
            dtype = cmd.dtype or ("float32" if self.device.simulated else "auto")
            model, tok = load_pretrained(src, dtype=dtype, trust_remote_code=cmd.trust_remote_code)
            hm = HostedModel(
                mid, cmd.source, src.path, model, tok, self.device, self.link, self._emit, self._publish_moving,
                prefetch=cmd.prefetch, prefetch_depth=self.prefetch_depth,
            )
            if self.device.simulated and self.device.profile is not None:
                from labtui.engine.dilation import apply_profile

                apply_profile(hm, self.device.profile)  # before placing: all resident compute
            # the policy may place it elsewhere and make room first (policies/driver.py)
            resident, mode = self._policy_load_plan(mid, hm, cmd)
            try:
                hm.initial_place(resident, mode)
            except LabError:
                if not self._make_room(hm.placement_bytes(resident, mode), cmd.priority, exclude=mid):
                    raise
                hm.initial_place(resident, mode)
        except BaseException:
            del self._models[mid]
            self._policy_forget(mid)
            raise
        ms.hm = hm
        ms.batch = Batch(hm)
        ms.eos = _eos_ids(model)
        ms.corpus = None
        ms.state = "idle"
        self._record_residency(ms)
        self._emit(
            "load", model=mid, source=cmd.source, family=hm.family, params=hm.params,
            n_layers=hm.n_layers, weight_bytes=hm.weight_bytes(), seconds=round(time.perf_counter() - t0, 4),
            profile=hm.pacing.profile if hm.pacing else None,
            dilation=round(hm.pacing.dilation, 3) if hm.pacing else None,
        )
        return mid

    def _do_unload(self, cmd: C.Unload) -> None:
        ms = self._models[cmd.model]
        ms.state = "unloading"
        for w in self._workloads.values():
            if w.model == cmd.model and not w.done:
                self._cancel_workload(w, reason="unloaded")
        for req in list(ms.queue) + (list(ms.batch.rows) if ms.batch else []):
            self._finish(ms, req, cancelled=True, reason="unloaded")
        ms.queue.clear()
        if ms.batch:
            ms.batch.clear()
        ms.hm.unload()
        del self._models[cmd.model]
        self._policy_forget(cmd.model)
        self._emit("unload", model=cmd.model)

    def _do_set_residency(self, cmd: C.SetResidency) -> dict:
        ms = self._models[cmd.model]
        hm = ms.hm
        mode = cmd.mode or hm.mode
        resident = hm.validate_layers(cmd.layers) if cmd.layers is not None else hm.layers_for_fraction(cmd.residency)
        self._stop_climb(cmd.model)  # an explicit placement ends a pipelined resume's climb
        extra = hm.plan_cost(resident, mode)
        if extra > self.device.free:
            self._make_room(extra, ms.priority, exclude=cmd.model)
        self._busy = f"moving {cmd.model}"
        hm.set_placement(resident, mode)
        self._record_residency(ms)
        return {"residency": hm.residency, "layers": sorted(resident), "mode": mode}

    def _do_set_mode(self, cmd: C.SetMode) -> None:
        hm = self._models[cmd.model].hm
        hm.set_placement(hm.resident_set(), cmd.mode, reason="mode")
        self._emit("mode", model=cmd.model, mode=cmd.mode)
        self._record_residency(self._models[cmd.model])

    def _do_set_prefetch(self, cmd: C.SetPrefetch) -> None:
        hm = self._models[cmd.model].hm
        hm.drain_prefetch()
        old, before = hm.prefetch, hm.ledger().accel_total
        hm.prefetch = cmd.prefetch
        # the ledger already counts the new stream window: compare with the old one
        extra = hm.ledger().accel_total - before
        if extra > 0 and extra > self.device.free:
            hm.prefetch = old
            self.device.check_fits(extra, f"prefetch buffers for {cmd.model}")
        hm.sync_reservation()
        self._emit("prefetch", model=cmd.model, prefetch=cmd.prefetch)

    def _do_set_pin(self, cmd: C.SetPin) -> dict:
        # the pin lives in the model's Load spec, which the policy view reads at every
        # plan (policies/driver.py): the next plan already honours it
        return self._set_pin(cmd.model, cmd.pin, cmd.min_residency)

    def _do_preempt(self, cmd: C.Preempt, auto: bool = False) -> PhaseReport:
        ms = self._models[cmd.model]
        ms.state = "preempting"
        self._busy = f"preempting {cmd.model}"
        self._publish(force=True)
        ms.t_preempt = time.perf_counter()
        self._stop_climb(cmd.model)
        try:
            rep = preempt(ms.hm, ms.batch, cmd.kv, cmd.weights)
        except BaseException:
            ms.state = "serving" if len(ms.batch) else "idle"
            raise
        ms.preemption = rep
        ms.last_preemption = rep
        ms.auto_preempted = auto
        ms.state = "preempted"
        self._emit("preempt", **_phase_dict(rep), auto=auto)
        return rep

    def _do_resume(self, cmd: C.Resume) -> PhaseReport:
        ms = self._models[cmd.model]
        hm = ms.hm
        target, mode = hm.resident_set(), hm.mode
        if cmd.residency is not None:
            target = hm.layers_for_fraction(cmd.residency)
        mode = cmd.mode or mode
        first, first_mode = target, mode
        if cmd.pipelined:
            # decode as soon as the embedding and the first blocks are back; the rest
            # offloaded in start_mode and climbed back one block per tick (driver.py)
            first = set(sorted(target)[: cmd.first_blocks])
            first_mode = cmd.start_mode
        retarget = (first, first_mode) != (hm.resident_set(), hm.mode)
        need = resume_cost(hm, ms.preemption, first if retarget else None, first_mode if retarget else None)
        if need > self.device.free:
            self._make_room(need, ms.priority, exclude=cmd.model)
        ms.state = "resuming"
        self._busy = f"resuming {cmd.model}"
        self._publish(force=True)
        try:
            rep = resume(hm, ms.batch, ms.preemption, ms.t_preempt,
                         first if retarget else None, first_mode if retarget else None)
        except BaseException:
            ms.state = "preempted"
            raise
        ms.preemption = None
        ms.auto_preempted = False
        ms.last_preemption = rep
        ms.preemptions.append(rep)
        ms.state = "serving" if len(ms.batch) else "idle"
        if retarget:
            self._record_residency(ms)
        if (first, first_mode) != (target, mode):
            self._start_climb(cmd.model, target, mode)
        self._emit("resume", **_phase_dict(rep), pipelined=cmd.pipelined)
        return rep

    def _do_launch_workload(self, cmd: C.LaunchWorkload) -> str:
        ms = self._models[cmd.model]
        # refused if even its shortest request could never be admitted (it would wait forever)
        shortest = {"fixed": cmd.prompt_tokens, "uniform": max(1, cmd.prompt_tokens // 2)}
        new = {"fixed": cmd.max_new_tokens, "uniform": max(1, cmd.max_new_tokens // 2)}
        why = self._never_fits(ms, shortest.get(cmd.prompt_dist, 1), new.get(cmd.output_dist, 1))
        if why:
            raise LabError(f"workload {cmd.id or ''} refused: {why}".replace("workload  ", "workload "))
        if ms.corpus is None:
            ms.corpus = corpus_ids(ms.hm.tokenizer)
        wid = cmd.id or f"w{next(self._ids)}"
        w = Workload(wid, cmd, ms.corpus, self.seed + self._workloads_launched, time.perf_counter())
        self._workloads_launched += 1
        self._workloads[wid] = w
        self._emit("workload_start", workload=wid, model=cmd.model, workload_kind=cmd.kind, requests=cmd.requests,
                   concurrency=cmd.concurrency, rate_per_s=cmd.rate_per_s, prompt_tokens=cmd.prompt_tokens,
                   max_new_tokens=cmd.max_new_tokens)
        return wid

    def _do_cancel_workload(self, cmd: C.CancelWorkload) -> int:
        return self._cancel_workload(self._workloads[cmd.workload], reason="cancelled")

    def _cancel_workload(self, w: Workload, reason: str) -> int:
        n = 0
        ms = self._models.get(w.model)
        if ms is not None:
            mine = [r for r in list(ms.queue) + (ms.batch.rows if ms.batch else []) if r.workload == w.id]
            for r in mine:
                if r in ms.queue:
                    ms.queue.remove(r)
                self._finish(ms, r, cancelled=True, reason=reason)
                n += 1
            if ms.batch:
                ms.batch.remove([r for r in ms.batch.rows if r.workload != w.id])
                self._set_plan(ms)
                ms.hm.sync_reservation()
        w.done = True  # nothing more will be submitted (``submitted`` stays what was)
        self._emit("workload_cancel", workload=w.id, model=w.model, cancelled=n, reason=reason)
        self._prune_workloads()
        return n

    def _do_set_policy(self, cmd: C.SetPolicy) -> None:
        self.policy = make_policy(cmd.policy)
        self._emit("policy", policy=cmd.policy)

    def _do_set_device_options(self, cmd: C.SetDeviceOptions) -> None:
        dev = self.device
        if cmd.memory_gib is not None:
            dev.set_budget(int(cmd.memory_gib * 1024**3))
        if cmd.link is not None:
            dev.link = parse_link(cmd.link)
        if cmd.host_slowdown is not None:
            dev.host_slowdown = float(cmd.host_slowdown)
        self._emit("device_options", link=dev.link.label, link_gbps=dev.link.gbps,
                   memory_gib=round(dev.budget_bytes / 1024**3, 3), host_slowdown=dev.host_slowdown)

    def _do_note(self, cmd: C.Note) -> None:
        self._note = cmd.text
        self._emit("note", text=cmd.text)


def _default_id(source: str) -> str:
    s = source.rstrip("/").split(":")[-1].split("/")[-1]
    return "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in s)[:64] or "model"


def _eos_ids(model) -> set[int]:
    gc = getattr(model, "generation_config", None)
    eos = getattr(gc, "eos_token_id", None) if gc is not None else None
    if eos is None:
        eos = getattr(model.config, "eos_token_id", None)
    if eos is None:
        return set()
    return {int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])}


def _phase_dict(p: PhaseReport) -> dict:
    d = asdict(p)
    d["total_s"] = p.total_s
    return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in d.items()}
