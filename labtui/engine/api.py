"""The Engine: an actor that owns every model and all torch work.

Frontends (the lab, the headless runner, scripts) call ``execute(command)`` or
the convenience methods from any thread. Commands are validated in the caller's
thread against the latest state (so a bad one is refused at once and changes
nothing), then queued; the worker thread applies them between steps, runs the
scheduler's choice (one prefill or one decode step of one model), publishes an
immutable ``EngineSnapshot`` and appends events. See docs/engine-api.md.

The worker's code lives beside this file, one concern per module, mixed into
``Engine``: worker.py (the loop, steps, request bookkeeping, events),
admission.py (admission, make-room), handlers.py (one function per command),
snapshots.py (building views). This module is the public API and validation.
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
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil
import torch

from labtui.engine import commands as C
from labtui.engine.admission import Admission
from labtui.engine.decode import Request, prefill
from labtui.engine.devices import Device, fmt_bytes, make_device, parse_link
from labtui.engine.events import Event
from labtui.engine.handlers import Handlers, _default_id
from labtui.engine.hosted import HOST, RESIDENT, STREAM
from labtui.engine.limits import COMMAND_LOG_MAX, MAX_EVENTS, SCHED_SAMPLES_KEPT
from labtui.engine.policies import make_policy
from labtui.engine.policies.driver import PolicyDriver
from labtui.engine.preemption import check_preempt
from labtui.engine.snapshot import (
    EngineSnapshot,
    PhaseReport,
)
from labtui.engine.snapshots import SnapshotBuilder
from labtui.engine.state import ModelState
from labtui.engine.transfer import Link
from labtui.engine.triggers import Armed, TokenTriggers
from labtui.engine.worker import WorkerLoop
from labtui.engine.workload import Workload
from labtui.errors import LabError, one_line

log = logging.getLogger("labtui.engine")



@dataclass
class GenerationResult:
    token_ids: list[int]
    text: str
    prompt_ids: list[int]
    ttft_s: float | None
    token_times_s: list[float]  # seconds since submission, one per token
    finish_reason: str | None
    request_id: str = ""


class Engine(WorkerLoop, Admission, Handlers, PolicyDriver, SnapshotBuilder):
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
        self.command_log: deque[tuple[float, C._Cmd]] = deque(maxlen=COMMAND_LOG_MAX)
        self.commands_total = 0  # every command executed, also those out of command_log
        self._cmds: queue.Queue = queue.Queue()
        self._incoming: queue.Queue = queue.Queue()
        self._wake = threading.Event()
        self._stop = threading.Event()
        # Queuing work and closing are ordered by this lock: whatever was queued
        # before close() is seen (and ended) by the worker's shutdown.
        self._submit_lock = threading.Lock()
        self._count_lock = threading.Lock()
        self._outstanding = 0  # requests submitted, not finished (wait_idle)
        self._pending_cmds = 0  # commands queued, not yet applied
        self._models: dict[str, ModelState] = {}
        self._workloads: dict[str, Workload] = {}  # running + the last done (limits.py)
        self._workloads_launched = 0  # seeds workloads: the same whatever was pruned
        self._workloads_pruned = 0
        self._requests: dict[str, Request] = {}
        self._ids = itertools.count(1)
        self._events: deque[Event] = deque(maxlen=MAX_EVENTS)
        self._ev_lock = threading.Lock()
        self._seq = 0
        self._listeners: list[tuple[Callable, bool]] = []  # (fn, takes a list)
        self._pending_ev: list[Event] = []  # emitted on the worker, not yet fanned out
        self._fan_lock = threading.RLock()  # one fan-out at a time: listeners see seq order
        self._busy = "idle"
        self._note = ""
        self._errors: deque[str] = deque(maxlen=20)
        self._last_pub = 0.0
        self._last_hist = 0.0
        self._snap_seq = 0
        self._snapshot = self._build_snapshot()
        self._pending_ids: set[str] = set()  # ids of models being loaded (validation)
        self._triggers = TokenTriggers()  # commands armed on a token count (worker-owned)
        # Scheduler overhead: time per step outside the model's own prefill/decode
        # (policy, admission, bookkeeping, events, snapshot) vs the step itself.
        self.sched_stats = {"steps": 0, "step_s": 0.0, "overhead_s": 0.0}
        self._t_sched = self._t_fwd0 = 0.0
        self._t_fwd1: float | None = None
        self._sched_samples: deque[float] = deque(maxlen=SCHED_SAMPLES_KEPT)
        self._thread = threading.Thread(target=self._run, name="labtui-engine", daemon=True)
        self._thread.start()

    @property
    def workloads_done_total(self) -> int:
        return self._workloads_pruned + sum(1 for w in list(self._workloads.values()) if w.done)

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

    def add_listener(self, fn: Callable, batch: bool = False) -> None:
        """Call ``fn(event)`` for every event (``fn([event, ...])`` with batch=True), in
        order. Events of the worker's steps are handed over once per step, after it,
        so a slow listener (a bundle writer) never sits inside a step; those of a
        command, before its caller gets the result."""
        with self._ev_lock:
            self._listeners.append((fn, batch))

    def remove_listener(self, fn: Callable) -> None:
        with self._ev_lock:
            self._listeners = [(f, b) for f, b in self._listeners if f != fn]

    def submit_command(self, cmd: C._Cmd) -> Future:
        """Validate now (LabError on bad input), apply on the worker; returns a Future."""
        try:
            self._validate(cmd)
        except LabError as e:
            self._emit("refused", command=cmd.action, reason=one_line(e))
            raise
        fut: Future = Future()
        with self._submit_lock:
            closed = self._stop.is_set()
            if not closed:
                if isinstance(cmd, C.Load):
                    self._pending_ids.add(cmd.id or "")
                self._count(commands=1)
                self._cmds.put((cmd, fut))
        if closed:
            self._emit("refused", command=cmd.action, reason="the engine is closed")
            raise LabError("the engine is closed")
        self._wake.set()
        return fut

    def submit_when_tokens(self, cmd: C._Cmd, model: str, tokens: int) -> Future:
        """Validate ``cmd`` now; the worker applies it right after the step at which
        ``model`` has generated ``tokens`` tokens in all (``tokens_generated``), before
        its next step (triggers.py). Cancel the Future to disarm it."""
        try:
            self._model(model)
            self._validate(cmd)
        except LabError as e:
            self._emit("refused", command=cmd.action, reason=one_line(e))
            raise
        fut: Future = Future()
        armed = Armed(model, int(tokens), cmd, fut)
        self.on_worker(lambda: self._triggers.arm(armed))
        self._wake.set()
        return fut

    def execute(self, cmd: C._Cmd, timeout: float | None = None):
        if isinstance(cmd, C.WaitIdle):
            return self.wait_idle(cmd.timeout_s)
        return self.submit_command(cmd).result(timeout)

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

    def set_pin(self, model: str, pin: bool = True, min_residency: float | None = None) -> dict:
        """Pin (never evicted by a policy, never below min_residency) or unpin a model."""
        return self.execute(self._build(C.SetPin, model=model, pin=pin, min_residency=min_residency))

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
        why = self._never_fits(ms, len(ids), max_new_tokens)
        if why:  # it would wait forever: refuse now, with what it needs and what can be free
            raise LabError(why)
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
        with self._submit_lock:
            if self._stop.is_set():
                raise LabError("the engine is closed")
            self._count(requests=1)
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
        """True once no request is unfinished, no command unapplied and no workload
        left to submit (exact: a request counts from submit() to its finish)."""
        end = time.perf_counter() + timeout_s
        while time.perf_counter() < end:
            if self._stop.is_set():  # closed: the shutdown ended every request
                self._thread.join(max(0.0, end - time.perf_counter()))
                return not self._thread.is_alive() and self._outstanding == 0
            if self._idle():
                # and the snapshot readers see the final state
                try:
                    self.on_worker(lambda: self._publish(force=True))
                except LabError:  # closed meanwhile
                    pass
                return True
            time.sleep(0.02)
        return False

    def _idle(self) -> bool:
        with self._count_lock:
            if self._outstanding or self._pending_cmds:
                return False
        for w in list(self._workloads.values()):
            if not w.done:
                return False
        return self._busy == "idle"

    def close(self) -> None:
        """Stop the worker: requests end cancelled ("engine closed"), queued commands
        end with LabError("the engine is closed"), nobody waits forever."""
        with self._submit_lock:
            if self._stop.is_set():
                return
            self._stop.set()
        # Fail what is queued now, not after the command in progress (it may be slow).
        self._fail_queued_commands(emit=False)
        self._wake.set()
        self._thread.join(timeout=30)
        self.link.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

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
        out["workloads_done_total"] = self.workloads_done_total
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
    def _model(self, mid: str, allow_loading: bool = False) -> ModelState:
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
        elif isinstance(cmd, C.SetPin):
            self._model(cmd.model, allow_loading=False)
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

    # ------------------------------------------------------------- checks
    def on_worker(self, fn: Callable[[], object], timeout: float | None = 60):
        """Run ``fn`` on the worker thread between steps (a consistent state)."""
        fut: Future = Future()
        with self._submit_lock:
            if self._stop.is_set():
                raise LabError("the engine is closed")
            self._cmds.put((fn, fut))
        self._wake.set()
        return fut.result(timeout)

    def check_invariants(self) -> None:
        """For tests: ledgers exact, device accounting = sum of ledgers, budget kept."""
        self.on_worker(self._check_invariants_now)

    def _check_invariants_now(self) -> None:
        total = held = 0
        dev = self.device
        hms = []
        for ms in list(self._models.values()):
            if ms.hm is None:
                continue
            hm = ms.hm
            hm.check_invariants()
            hms.append(hm)
            total += hm.ledger().accel_total
            # the reservation is what the admitted requests still need, no more, no less
            want = self.expected_hold(ms)
            got = dev.hold_of(hm)
            assert got == hm._hold == want, f"{ms.id} reserves {got} (model says {hm._hold}) but its admitted requests need {want}"
            assert got >= 0
            held += got
        assert total == dev.used, f"device accounting {dev.used} != ledgers {total}"
        assert held == dev.reserved, f"device reservations {dev.reserved} != the models' {held} (a stray reservation)"
        assert set(dev.holders()) <= set(hms), "a reservation held for a model that is gone"
        assert dev.used >= 0 and dev.reserved >= 0
        assert dev.used + dev.reserved <= dev.budget_bytes, (
            f"budget exceeded: {fmt_bytes(dev.used)} used + {fmt_bytes(dev.reserved)} reserved > {fmt_bytes(dev.budget_bytes)}"
        )


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
