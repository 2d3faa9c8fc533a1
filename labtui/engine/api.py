"""The Engine: an actor that owns every model and all torch work.

Frontends (the lab, the headless runner, scripts) call ``execute(command)`` or
the convenience methods from any thread. Commands are validated in the caller's
thread against the latest state (so a bad one is refused at once and changes
nothing), then queued; the worker thread applies them between steps, runs the
scheduler's choice (one prefill or one decode step of one model), publishes an
immutable ``EngineSnapshot`` and appends events. See docs/engine-api.md.
"""

from __future__ import annotations

import itertools
import logging
import os
import platform
import queue
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil
import torch

from labtui.engine import commands as C
from labtui.engine.decode import Batch, Request, prefill
from labtui.engine.devices import Device, fmt_bytes, make_device, parse_link
from labtui.engine.events import Event
from labtui.engine.hosted import HOST, RESIDENT, STREAM, HostedModel
from labtui.engine.metrics import ModelMetrics
from labtui.engine.preemption import check_preempt, preempt, resume, resume_cost
from labtui.engine.scheduler import Candidate, make_policy
from labtui.engine.snapshot import (
    DeviceSnapshot,
    EngineSnapshot,
    Ledger,
    ModelSnapshot,
    PhaseReport,
    WorkloadSnapshot,
)
from labtui.engine.transfer import Link
from labtui.engine.workload import Workload, corpus_ids
from labtui.errors import LabError, one_line

log = logging.getLogger("labtui.engine")

SNAPSHOT_PERIOD_S = 0.1  # 10 Hz: the lab polls at 4+ Hz
HISTORY_PERIOD_S = 0.25
MAX_EVENTS = 200_000


@dataclass
class GenerationResult:
    token_ids: list[int]
    text: str
    prompt_ids: list[int]
    ttft_s: float | None
    token_times_s: list[float]  # seconds since submission, one per token
    finish_reason: str | None
    request_id: str = ""


@dataclass(eq=False)
class _Model:
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
    preemptions: list = field(default_factory=list)
    residency_history: list = field(default_factory=list)
    last_text: str = ""
    eos: set = field(default_factory=set)
    corpus: list | None = None


class Engine:
    def __init__(
        self,
        device: str = "auto",
        memory_gib: float | None = None,
        link: str | float | None = None,
        host_slowdown: float = 4.0,
        policy: str = "fcfs",
        seed: int = 0,
        prefetch_depth: int = 4,
        base_dir: str | Path | None = None,
        profile: str | None = None,
    ):
        _quiet_transformers()
        # The link's pacing and prefetch threads must wake on time while the worker
        # runs Python-heavy decode steps; the default 5 ms GIL switch interval would
        # serialise them behind compute. 0.5 ms costs little and keeps overlap real.
        if sys.getswitchinterval() > 0.0005:
            sys.setswitchinterval(0.0005)
        self.device: Device = make_device(device, memory_gib, link, host_slowdown, profile)
        self.link = Link(self.device)
        self.policy = make_policy(policy)
        self.seed = seed
        self.prefetch_depth = prefetch_depth
        self.base_dir = Path(base_dir) if base_dir else None
        self.t0 = time.perf_counter()
        self.command_log: list[tuple[float, C._Cmd]] = []
        self._cmds: queue.Queue = queue.Queue()
        self._incoming: queue.Queue = queue.Queue()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._models: dict[str, _Model] = {}
        self._workloads: dict[str, Workload] = {}
        self._requests: dict[str, Request] = {}
        self._ids = itertools.count(1)
        self._events: deque[Event] = deque(maxlen=MAX_EVENTS)
        self._ev_lock = threading.Lock()
        self._seq = 0
        self._listeners: list[Callable[[Event], None]] = []
        self._busy = "idle"
        self._note = ""
        self._errors: deque[str] = deque(maxlen=20)
        self._last_pub = 0.0
        self._last_hist = 0.0
        self._snap_seq = 0
        self._snapshot = self._build_snapshot()
        self._pending_ids: set[str] = set()  # ids of models being loaded (validation)
        # Scheduler overhead: time per step outside the model's own prefill/decode
        # (policy, admission, bookkeeping, events, snapshot) vs the step itself.
        self.sched_stats = {"steps": 0, "step_s": 0.0, "overhead_s": 0.0}
        self._t_sched = self._t_fwd0 = 0.0
        self._t_fwd1: float | None = None
        self._sched_samples: deque[float] = deque(maxlen=10_000)
        self._thread = threading.Thread(target=self._run, name="labtui-engine", daemon=True)
        self._thread.start()

    # ================================================================ public
    def now(self) -> float:
        return time.perf_counter() - self.t0

    def snapshot(self) -> EngineSnapshot:
        return self._snapshot

    def fresh_snapshot(self, timeout: float = 30) -> EngineSnapshot:
        """A snapshot built now, after every command and step so far (snapshot() may
        be up to one publish period old). Blocks until the worker is between steps."""
        if threading.current_thread() is self._thread:
            self._publish(force=True)
        else:
            self.on_worker(lambda: self._publish(force=True), timeout)
        return self._snapshot

    def events_since(self, seq: int) -> list[Event]:
        with self._ev_lock:
            if not self._events or self._events[-1].seq <= seq:
                return []
            first = self._events[0].seq
            start = max(0, seq + 1 - first)
            return list(itertools.islice(self._events, start, None))

    def add_listener(self, fn: Callable[[Event], None]) -> None:
        with self._ev_lock:
            self._listeners.append(fn)

    def remove_listener(self, fn: Callable[[Event], None]) -> None:
        with self._ev_lock:
            if fn in self._listeners:
                self._listeners.remove(fn)

    def submit_command(self, cmd: C._Cmd) -> Future:
        """Validate now (LabError on bad input), apply on the worker; returns a Future."""
        try:
            self._validate(cmd)
        except LabError as e:
            self._emit("refused", command=cmd.action, reason=one_line(e))
            raise
        fut: Future = Future()
        if isinstance(cmd, C.Load):
            self._pending_ids.add(cmd.id or "")
        self._cmds.put((cmd, fut))
        self._wake.set()
        return fut

    def execute(self, cmd: C._Cmd, timeout: float | None = None):
        if isinstance(cmd, C.WaitIdle):
            return self.wait_idle(cmd.timeout_s)
        return self.submit_command(cmd).result(timeout)

    # convenience wrappers ---------------------------------------------------
    def _build(self, action, **fields) -> C._Cmd:
        """C.build, plus the ``refused`` event that every refusal leaves (engine-api.md),
        also for values refused by the command's field checks before it is queued."""
        try:
            return C.build(action, **fields)
        except LabError as e:
            self._emit("refused", command=action.model_fields["action"].default, reason=one_line(e))
            raise

    def load(self, source: str, id: str | None = None, **kw) -> str:
        return self.execute(self._build(C.Load, source=source, id=id, **kw))

    def unload(self, model: str) -> None:
        self.execute(self._build(C.Unload, model=model))

    def set_residency(self, model: str, residency: float | Iterable[int], mode: str | None = None):
        if isinstance(residency, (int, float)) and not isinstance(residency, bool):
            cmd = self._build(C.SetResidency, model=model, residency=float(residency), mode=mode)
        else:
            cmd = self._build(C.SetResidency, model=model, layers=list(residency), mode=mode)
        return self.execute(cmd)

    def set_mode(self, model: str, mode: str):
        return self.execute(self._build(C.SetMode, model=model, mode=mode))

    def set_prefetch(self, model: str, prefetch: bool):
        return self.execute(self._build(C.SetPrefetch, model=model, prefetch=prefetch))

    def preempt(self, model: str, kv: str = "swap", weights: str = "host") -> PhaseReport:
        return self.execute(self._build(C.Preempt, model=model, kv=kv, weights=weights))

    def resume(self, model: str) -> PhaseReport:
        return self.execute(self._build(C.Resume, model=model))

    def launch_workload(self, model: str, **kw) -> str:
        return self.execute(self._build(C.LaunchWorkload, model=model, **kw))

    def cancel_workload(self, workload: str):
        return self.execute(self._build(C.CancelWorkload, workload=workload))

    def set_policy(self, policy: str):
        return self.execute(self._build(C.SetPolicy, policy=policy))

    def set_device_options(self, **kw):
        return self.execute(self._build(C.SetDeviceOptions, **kw))

    def note(self, text: str):
        return self.execute(self._build(C.Note, text=text))

    def submit(
        self,
        model: str,
        prompt: str | list[int],
        max_new_tokens: int = 32,
        greedy: bool = True,
        temperature: float = 1.0,
        seed: int | None = None,
        workload: str | None = None,
    ) -> Request:
        if self._stop.is_set():  # no worker will pick it up: it would never finish
            raise LabError("the engine is closed")
        if model not in self._models:
            raise LabError(f"no model '{model}'; loaded: {', '.join(self._models) or 'none'}")
        if max_new_tokens < 1:
            raise LabError("max_new_tokens must be >= 1")
        ms = self._models[model]
        if isinstance(prompt, str):
            if ms.hm is None:
                raise LabError(f"model '{model}' is still loading")
            ids = ms.hm.tokenizer(prompt, add_special_tokens=True)["input_ids"] if ms.hm.tokenizer else []
        else:
            ids = [int(i) for i in prompt]
        if not ids:
            raise LabError("the prompt is empty; give text or at least one token id")
        req = Request(
            id=f"r{next(self._ids)}",
            model=model,
            prompt_ids=list(ids),
            max_new_tokens=max_new_tokens,
            greedy=greedy,
            temperature=temperature,
            seed=seed,
            workload=workload,
            t_submit=time.perf_counter(),
        )
        self._incoming.put(req)
        self._wake.set()
        return req

    def generate(self, model: str, prompt: str | list[int], max_new_tokens: int = 32, timeout: float | None = None, **kw) -> GenerationResult:
        req = self.submit(model, prompt, max_new_tokens, **kw)
        if not req.done.wait(timeout):
            raise TimeoutError(f"request {req.id} did not finish in {timeout} s")
        if req.state == "failed":
            raise RuntimeError(f"request {req.id} failed: {req.error}")
        return self._result(req)

    def _result(self, req: Request) -> GenerationResult:
        ms = self._models.get(req.model)
        tok = ms.hm.tokenizer if ms and ms.hm else None
        text = tok.decode(req.out_ids, skip_special_tokens=True) if tok is not None else ""
        return GenerationResult(
            token_ids=list(req.out_ids),
            text=text,
            prompt_ids=list(req.prompt_ids),
            ttft_s=req.ttft_s,
            token_times_s=[t - req.t_submit for t in req.token_times],
            finish_reason=req.finish_reason,
            request_id=req.id,
        )

    def wait_idle(self, timeout_s: float = 600.0) -> bool:
        end = time.perf_counter() + timeout_s
        while time.perf_counter() < end:
            if self._idle():
                # and the snapshot readers see the final state
                self.on_worker(lambda: self._publish(force=True))
                return True
            time.sleep(0.02)
        return False

    def _idle(self) -> bool:
        if not self._cmds.empty() or not self._incoming.empty():
            return False
        for w in list(self._workloads.values()):
            if not w.done:
                return False
        for ms in list(self._models.values()):
            if ms.queue or (ms.batch is not None and len(ms.batch)):
                return False
        return self._busy == "idle"

    def close(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=30)
        self.link.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---------------------------------------------------------- reporting
    def summary(self) -> dict:
        out: dict = {"t": round(self.now(), 3), "device": self.device.describe(), "policy": self.policy.name, "models": {}}
        for ms in list(self._models.values()):
            hm = ms.hm
            d = ms.metrics.summary()
            d.update(
                source=ms.source,
                family=hm.family if hm else None,
                params=hm.params if hm else None,
                n_layers=hm.n_layers if hm else None,
                weight_bytes=hm.weight_bytes() if hm else None,
                state=ms.state,
                residency_history=list(ms.residency_history),
                preemptions=[asdict(p) | {"total_s": p.total_s} for p in ms.preemptions],
            )
            out["models"][ms.id] = d
        out["workloads"] = {
            w.id: {"model": w.model, "kind": w.cmd.kind, "submitted": w.submitted, "completed": w.completed, "cancelled": w.cancelled, "total": w.total}
            for w in list(self._workloads.values())
        }
        return out

    def env_info(self) -> dict:
        import accelerate
        import transformers

        from labtui import __version__

        vm = psutil.virtual_memory()
        return {
            "labtui": __version__,
            "machine": platform.machine(),
            "platform": platform.platform(),
            "node": platform.node(),
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
            "host_ram_bytes": vm.total,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "accelerate": accelerate.__version__,
            "torch_threads": torch.get_num_threads(),
            "device": self.device.describe(),
        }

    # ============================================================ validation
    def _model(self, mid: str, allow_loading: bool = False) -> _Model:
        ms = self._models.get(mid)
        if ms is None or (ms.hm is None and not allow_loading):
            names = ", ".join(m for m, s in self._models.items() if s.hm is not None) or "none"
            if ms is not None:
                raise LabError(f"model '{mid}' is still loading; wait for it")
            raise LabError(f"no model '{mid}'; loaded: {names}")
        return ms

    def _validate(self, cmd: C._Cmd) -> None:
        if self._stop.is_set():
            raise LabError("the engine is closed")
        if isinstance(cmd, C.Load):
            mid = cmd.id or _default_id(cmd.source)
            if mid in self._models or mid in self._pending_ids:
                raise LabError(f"a model with id '{mid}' is already loaded; choose another id")
            from labtui.models.sources import resolve_source

            resolve_source(cmd.source, trust_remote_code=cmd.trust_remote_code, base=self.base_dir)
        elif isinstance(cmd, (C.Unload,)):
            self._model(cmd.model, allow_loading=False)
        elif isinstance(cmd, C.SetResidency):
            ms = self._model(cmd.model)
            if cmd.layers is not None:
                ms.hm.validate_layers(cmd.layers)
            if ms.state in ("preempted", "preempting", "resuming"):
                raise LabError(f"{cmd.model} is {ms.state}; resume it before changing its residency")
        elif isinstance(cmd, (C.SetMode, C.SetPrefetch)):
            ms = self._model(cmd.model)
            if ms.state in ("preempted", "preempting", "resuming"):
                raise LabError(f"{cmd.model} is {ms.state}; resume it first")
        elif isinstance(cmd, C.Preempt):
            ms = self._model(cmd.model)
            if ms.state in ("preempted", "preempting"):
                raise LabError(f"{cmd.model} is already preempted; resume it first")
            check_preempt(ms.hm, cmd.weights)
        elif isinstance(cmd, C.Resume):
            ms = self._model(cmd.model)
            if ms.state not in ("preempted", "preempting"):
                raise LabError(f"{cmd.model} is {ms.state}, not preempted; nothing to resume")
        elif isinstance(cmd, C.LaunchWorkload):
            self._model(cmd.model, allow_loading=True)
            if cmd.id and cmd.id in self._workloads:
                raise LabError(f"a workload with id '{cmd.id}' exists; choose another id")
        elif isinstance(cmd, C.CancelWorkload):
            if cmd.workload not in self._workloads:
                raise LabError(f"no workload '{cmd.workload}'; running: {', '.join(w for w, x in self._workloads.items() if not x.done) or 'none'}")
        elif isinstance(cmd, C.SetPolicy):
            make_policy(cmd.policy)
        elif isinstance(cmd, C.SetDeviceOptions):
            if cmd.link is not None:
                parse_link(cmd.link)
            if cmd.memory_gib is not None and not self.device.simulated:
                raise LabError("memory_gib can only be changed on the simulated accelerator")

    # ================================================================ worker
    def _run(self) -> None:
        torch.set_grad_enabled(False)
        while not self._stop.is_set():
            try:
                did = self._tick()
            except Exception as e:  # never let the worker die: report and go on
                log.exception("engine tick failed")
                self._errors.append(one_line(e))
                self._emit("error", where="worker", message=one_line(e))
                did = False
            self._publish()
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
        self._publish(force=True)

    def _tick(self) -> bool:
        did = False
        while True:
            try:
                cmd, fut = self._cmds.get_nowait()
            except queue.Empty:
                break
            did = True
            self._apply(cmd, fut)
        while True:
            try:
                req = self._incoming.get_nowait()
            except queue.Empty:
                break
            self._enqueue(req)
        now = self._t_sched = time.perf_counter()
        for w in list(self._workloads.values()):
            if not w.done and w.model in self._models and self._models[w.model].hm is not None:
                w.tick(now, lambda ids, n, seed, w=w: self._workload_submit(w, ids, n, seed))
        if self.policy.name == "priority":
            did |= self._priority_rebalance()
        pick = self.policy.pick(self._candidates())
        if pick is None:
            return did
        self._step(self._models[pick[0]], pick[1])
        return True

    def _apply(self, cmd, fut: Future) -> None:
        if callable(cmd):  # an internal call that must see a consistent state (tests)
            if fut.set_running_or_notify_cancel():
                try:
                    fut.set_result(cmd())
                except BaseException as e:
                    fut.set_exception(e)
            return
        if isinstance(cmd, C.Load):
            self._pending_ids.discard(cmd.id or "")
        if not fut.set_running_or_notify_cancel():
            return
        try:
            self._validate(cmd)  # the state may have changed since it was queued
            self._busy = cmd.action
            result = getattr(self, f"_do_{cmd.action}")(cmd)
        except LabError as e:
            self._emit("refused", command=cmd.action, reason=one_line(e))
            self._publish(force=True)
            fut.set_exception(e)
            return
        except Exception as e:
            log.exception("command failed")
            self._emit("error", where=cmd.action, message=one_line(e))
            fut.set_exception(e)
            return
        self.command_log.append((round(self.now(), 4), cmd))
        self._emit("command", **cmd.to_toml_dict())
        self._publish(force=True)  # the caller sees the command's effect at once
        fut.set_result(result)

    # ------------------------------------------------------------- commands
    def _do_load(self, cmd: C.Load) -> str:
        from labtui.engine.loader import load_pretrained
        from labtui.models.sources import resolve_source

        mid = cmd.id or _default_id(cmd.source)
        src = resolve_source(cmd.source, trust_remote_code=cmd.trust_remote_code, base=self.base_dir)
        ms = _Model(id=mid, source=cmd.source, priority=cmd.priority, max_batch=cmd.max_batch)
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
            resident = hm.layers_for_fraction(cmd.residency)
            try:
                hm.initial_place(resident, cmd.offload)
            except LabError:
                if not self._make_room(hm_need(hm, resident, cmd.offload), cmd.priority, exclude=mid):
                    raise
                hm.initial_place(resident, cmd.offload)
        except BaseException:
            del self._models[mid]
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
        self._emit("unload", model=cmd.model)

    def _do_set_residency(self, cmd: C.SetResidency) -> dict:
        ms = self._models[cmd.model]
        hm = ms.hm
        mode = cmd.mode or hm.mode
        resident = hm.validate_layers(cmd.layers) if cmd.layers is not None else hm.layers_for_fraction(cmd.residency)
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

    def _do_preempt(self, cmd: C.Preempt, auto: bool = False) -> PhaseReport:
        ms = self._models[cmd.model]
        ms.state = "preempting"
        self._busy = f"preempting {cmd.model}"
        self._publish(force=True)
        ms.t_preempt = time.perf_counter()
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
        need = resume_cost(ms.hm, ms.preemption)
        if need > self.device.free:
            self._make_room(need, ms.priority, exclude=cmd.model)
        ms.state = "resuming"
        self._busy = f"resuming {cmd.model}"
        self._publish(force=True)
        try:
            rep = resume(ms.hm, ms.batch, ms.preemption, ms.t_preempt)
        except BaseException:
            ms.state = "preempted"
            raise
        ms.preemption = None
        ms.auto_preempted = False
        ms.last_preemption = rep
        ms.preemptions.append(rep)
        ms.state = "serving" if len(ms.batch) else "idle"
        self._emit("resume", **_phase_dict(rep))
        return rep

    def _do_launch_workload(self, cmd: C.LaunchWorkload) -> str:
        ms = self._models[cmd.model]
        if ms.corpus is None:
            ms.corpus = corpus_ids(ms.hm.tokenizer)
        wid = cmd.id or f"w{next(self._ids)}"
        w = Workload(wid, cmd, ms.corpus, self.seed + len(self._workloads), time.perf_counter())
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
                ms.hm.sync_reservation()
        w.done = True  # nothing more will be submitted (``submitted`` stays what was)
        self._emit("workload_cancel", workload=w.id, model=w.model, cancelled=n, reason=reason)
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

    # ------------------------------------------------------------- requests
    def _workload_submit(self, w: Workload, ids: list[int], n: int, seed: int) -> str:
        greedy = w.cmd.greedy
        req = Request(
            id=f"r{next(self._ids)}", model=w.model, prompt_ids=ids, max_new_tokens=n, greedy=greedy,
            temperature=w.cmd.temperature, seed=seed, workload=w.id, t_submit=time.perf_counter(),
        )
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
            return
        self._requests[req.id] = req
        ms.queue.append(req)

    def _kv_fits(self, ms: _Model, req: Request) -> bool:
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

    def _step(self, ms: _Model, action: str) -> None:
        hm, batch = ms.hm, ms.batch
        ms.state = "serving"
        self._busy = f"{action} {ms.id}"
        t0 = self._t_fwd0 = time.perf_counter()
        req = None
        try:
            if action == "prefill":
                req = ms.queue.popleft()
                batch.admit(req, t0, ms.eos)
                self._emit("request_start", model=ms.id, request=req.id, workload=req.workload,
                           prompt_tokens=len(req.prompt_ids), queue_s=round(t0 - req.t_submit, 6))
                if not any(hm.kv_bytes_per_token):
                    self._measure_kv_per_token(hm, len(req.prompt_ids))
                finished = batch.remove_finished()
                tokens = 1
            else:
                tokens = len(batch)
                finished = batch.decode_step(ms.eos)
        except Exception as e:
            # a request whose prefill failed left the queue but never joined the batch:
            # it fails with the batch, or it would never finish (its caller waits forever)
            self._step_failed(ms, e, also=[req] if req is not None and req not in batch.rows else [])
            return
        hm.device.synchronize()
        now = self._t_fwd1 = time.perf_counter()
        led = hm.ledger()
        bytes_read = hm.weight_bytes() + led.accel_kv + led.host_kv  # gpt-fast's bytes per step
        ms.metrics.on_step(now, tokens, now - t0, bytes_read, decode=(action == "decode"))
        hm.sync_reservation(led)
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

    def _step_failed(self, ms: _Model, e: Exception, also: list[Request] = ()) -> None:
        msg = one_line(e)
        oom = isinstance(e, torch.cuda.OutOfMemoryError) if hasattr(torch.cuda, "OutOfMemoryError") else False
        log.exception("step failed for %s", ms.id)
        self._errors.append(f"{ms.id}: {msg}")
        self._emit("error", where=f"step {ms.id}", message=msg, oom=oom)
        for req in list(ms.batch.rows) + list(also):
            req.error = msg
            self._finish(ms, req, cancelled=False, reason="failed")
        ms.batch.clear()
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

    def _finish(self, ms: _Model, req: Request, cancelled: bool, reason: str | None) -> None:
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
            tok = ms.hm.tokenizer if ms.hm else None
            if tok is not None:
                ms.last_text = tok.decode(req.out_ids[-48:], skip_special_tokens=True)
        now = time.perf_counter()
        self._emit(
            "request_finish", model=ms.id, request=req.id, workload=req.workload,
            prompt_tokens=len(req.prompt_ids), new_tokens=len(req.out_ids), digest=req.digest(),
            ttft_s=_r(req.ttft_s), tpot_s=_r(req.tpot_s), e2e_s=_r(now - req.t_submit),
            queue_s=_r((req.t_start or now) - req.t_submit), paused_s=_r(req.paused_s), reason=req.finish_reason,
        )
        if req.workload and req.workload in self._workloads:
            w = self._workloads[req.workload]
            was_done = w.done
            w.on_finish(req.id, cancelled=req.state != "done")
            if w.done and not was_done:
                self._emit("workload_done", workload=w.id, model=w.model, completed=w.completed, cancelled=w.cancelled)
        self._requests.pop(req.id, None)
        req.done.set()

    # ----------------------------------------------------------- make room
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

    # -------------------------------------------------------------- events
    def _emit(self, _kind: str, **data) -> None:
        with self._ev_lock:
            self._seq += 1
            ev = Event(self._seq, self.now(), _kind, data)
            self._events.append(ev)
            listeners = list(self._listeners)
        for fn in listeners:
            try:
                fn(ev)
            except Exception:  # a broken listener must not stop the engine
                log.exception("event listener failed")

    def _record_residency(self, ms: _Model) -> None:
        hm = ms.hm
        entry = {"t": round(self.now(), 4), "residency": round(hm.residency, 4), "resident_layers": len(hm.resident_set()), "mode": hm.mode}
        ms.residency_history.append(entry)
        self._emit("residency", model=ms.id, residency=entry["residency"], resident_layers=sorted(hm.resident_set()), mode=hm.mode)

    # ------------------------------------------------------------ snapshots
    def _publish_moving(self) -> None:
        self._publish(force=True)

    def _publish(self, force: bool = False) -> None:
        now = time.perf_counter()
        if not force and now - self._last_pub < SNAPSHOT_PERIOD_S:
            return
        self._last_pub = now
        if now - self._last_hist >= HISTORY_PERIOD_S:
            self._last_hist = now
            for ms in list(self._models.values()):
                ms.metrics.history.append(ms.metrics.tok_s(now))
        self._snapshot = self._build_snapshot()

    def _build_snapshot(self) -> EngineSnapshot:
        now = time.perf_counter()
        probe = self.device.probe()
        dev = self.device
        d = DeviceSnapshot(
            kind=dev.kind, name=dev.name, simulated=dev.simulated, budget_bytes=dev.budget_bytes,
            used_bytes=dev.used if dev.simulated else probe.used_bytes, total_bytes=probe.total_bytes,
            link=dev.link.label, link_gbps=dev.link.gbps, link_latency_us=dev.link.latency_s * 1e6,
            host_slowdown=dev.host_slowdown, allocator_allocated=probe.allocator_allocated,
            allocator_reserved=probe.allocator_reserved, process_rss=probe.process_rss,
            host_used=probe.host_used, host_total=probe.host_total,
        )
        models = []
        for ms in list(self._models.values()):
            hm = ms.hm
            m = ms.metrics
            rows = list(ms.batch.rows) if ms.batch else []
            pct = m.percentiles()
            models.append(
                ModelSnapshot(
                    id=ms.id, source=ms.source, family=hm.family if hm else "?", params=hm.params if hm else 0,
                    n_layers=hm.n_layers if hm else 0, state=ms.state, mode=hm.mode if hm else STREAM,
                    prefetch=hm.prefetch if hm else True, priority=ms.priority, max_batch=ms.max_batch,
                    residency=hm.residency if hm else 0.0, layer_cells=hm.layer_cells() if hm else "",
                    ledger=hm.ledger() if hm else _EMPTY_LEDGER, queued=len(ms.queue), running=len(rows),
                    completed=m.completed, cancelled=m.cancelled, tokens_generated=m.tokens,
                    tok_s=m.tok_s(now), tok_s_overall=m.overall_tok_s(), tok_s_history=tuple(m.history),
                    ttft_p50=pct[0], ttft_p95=pct[1], tpot_p50=pct[2], tpot_p95=pct[3],
                    achieved_gbps=m.gbps(now), bytes_per_token=m.bytes_per_token,
                    last_text=ms.last_text, last_preemption=ms.last_preemption,
                    decode_tokens=m.decode_tokens, decode_s=m.decode_s,
                )
            )
        wls = tuple(
            WorkloadSnapshot(w.id, w.model, w.cmd.kind, w.submitted, w.completed, w.cancelled, w.total, w.done)
            for w in list(self._workloads.values())
        )
        self._snap_seq += 1
        return EngineSnapshot(
            t=self.now(), seq=self._snap_seq, device=d, models=tuple(models), workloads=wls,
            policy=self.policy.name, busy=self._busy, events_total=self._seq, note=self._note,
            errors=tuple(self._errors),
        )

    # ------------------------------------------------------------- checks
    def on_worker(self, fn: Callable[[], object], timeout: float | None = 60):
        """Run ``fn`` on the worker thread between steps (a consistent state)."""
        fut: Future = Future()
        self._cmds.put((fn, fut))
        self._wake.set()
        return fut.result(timeout)

    def check_invariants(self) -> None:
        """For tests: ledgers exact, device accounting = sum of ledgers, budget kept."""
        self.on_worker(self._check_invariants_now)

    def _check_invariants_now(self) -> None:
        total = 0
        for ms in list(self._models.values()):
            if ms.hm is None:
                continue
            ms.hm.check_invariants()
            total += ms.hm.ledger().accel_total
        assert total == self.device.used, f"device accounting {self.device.used} != ledgers {total}"
        assert self.device.used <= self.device.budget_bytes, (
            f"budget exceeded: {fmt_bytes(self.device.used)} > {fmt_bytes(self.device.budget_bytes)}"
        )


# ---------------------------------------------------------------- helpers
_EMPTY_LEDGER = Ledger()


def hm_need(hm: HostedModel, resident: set[int], mode: str) -> int:
    offl = [i for i in range(hm.n_layers) if i not in resident]
    return hm.rest.nbytes + sum(hm.blocks[i].nbytes for i in resident) + hm._window_bytes(offl, mode)


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


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 6)


def _quiet_transformers() -> None:
    # Progress bars and info logs from transformers would scribble over the TUI.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except Exception:
        pass


__all__ = ["Engine", "GenerationResult", "HOST", "RESIDENT", "STREAM", "prefill"]
