"""The headless runner: `labtui run SCENARIO` -> a result bundle.

For every sweep point and repetition: a fresh engine (each point is a clean run),
the scenario's models loaded, an optional warm-up request per model (excluded
from timing), then workloads and timeline driven by ``Schedule`` until the
timeline is done and every workload has finished. Events are written as they
happen (a listener on the engine's worker thread), metrics sampled on a thread,
summary.json written last, also after Ctrl-C or SIGTERM (marked interrupted).
"""

from __future__ import annotations

import datetime as _dt
import gc
import math
import platform
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import labtui
from labtui.engine.commands import LaunchWorkload
from labtui.errors import LabError, one_line
from labtui.scenario import stats as _stats
from labtui.scenario.bundle import SAMPLE_S, BundleWriter, CpuShare, loadavg, thread_settings
from labtui.scenario.player import POLL_S, load_models, play_timeline
from labtui.scenario.progress import Progress
from labtui.scenario.recorder import scenario_to_toml
from labtui.scenario.schema import Scenario, load_scenario
from labtui.scenario.sweep import (
    SweepPoint,
    apply_quick,
    expand,
    protocol,
    rep_seconds,
    repeat_count,
    warmup_tokens,
)

REP_SCALE_MAX = 64  # requests per workload at most x this (a bound on a mis-estimate)

__all__ = ["RunResult", "check_line", "cli_run", "play_timeline", "run_file", "run_scenario"]


@dataclass
class RunResult:
    path: Path
    summary: dict
    interrupted: bool = False
    signal: int | None = None  # the signal that interrupted the run (SIGINT, SIGTERM)


@dataclass
class _RunState:
    stop: str | None = None  # None | "interrupted" | "timed_out" | "write_failed"
    signal: int | None = None  # what interrupted it
    warnings: list[str] = field(default_factory=list)


def cli_run(args: Any) -> int:
    scn = load_scenario(args.scenario)
    if getattr(args, "check", False):
        print(check_line(scn, quick=getattr(args, "quick", False)))
        return 0
    res = run_scenario(scn, out=args.out, device=args.device, quick=args.quick,
                       argv=["labtui", *sys.argv[1:]], profile=getattr(args, "profile", None))
    if res.interrupted:
        print(f"labtui: interrupted; partial results in {res.path}", file=sys.stderr)
        return 128 + (res.signal or signal.SIGINT)  # the shell's code: 130 (Ctrl-C), 143 (SIGTERM)
    print(res.path)
    return 0


def check_line(scn: Scenario, quick: bool = False, with_estimate: bool = True) -> str:
    """One line: what `labtui run` would do with this scenario: its runs and a rough
    estimate of how long they take (labtui.scenario.estimate)."""
    from labtui.scenario.estimate import estimate, fmt_duration

    points, reps = expand(scn), repeat_count(scn)
    q = apply_quick(scn)
    qpoints, qreps = expand(q), repeat_count(q)

    def reps_of(s: Scenario) -> str:  # the protocol may repeat more, up to its cap
        p = protocol(s)
        return f"{p.min_repeat}" if not p.adaptive else f"{p.min_repeat}-{p.max_repeat}"

    where = scn.path or "<scenario>"
    runs = f"{len(points)} point(s) x {reps_of(scn)} repeat(s) = {len(points) * reps} run(s)"
    qruns = f"--quick: {len(qpoints)} x {reps_of(q)} = {len(qpoints) * qreps} run(s)"
    if with_estimate:
        full = estimate(points, reps, scn.lab.timeout_s, warmup_tokens(scn))
        fast = estimate(qpoints, qreps, q.lab.timeout_s, warmup_tokens(q))
        cap = " (the [lab].timeout_s limit)"
        runs += f", about {fmt_duration(full.seconds)}" + (cap if full.capped else "")
        qruns += f", about {fmt_duration(fast.seconds)}" + (cap if fast.capped else "")
        qruns += (f"; rough estimates for this machine (memory-bound decode at "
                  f"{full.memcpy_gbps:.0f} GB/s host memcpy)")
    return (f"ok: {where}: '{scn.name}': {len(scn.models)} model(s), {len(scn.workloads)} "
            f"workload(s), {len(scn.timeline)} timeline entr{'y' if len(scn.timeline) == 1 else 'ies'}; "
            f"{runs}; {qruns}" + (" (checked as --quick)" if quick else ""))


def default_out(name: str) -> Path:
    base = Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    p, n = base, 2
    while p.exists():
        p, n = Path(f"{base}-{n}"), n + 1
    return p


def run_scenario(
    scn: Scenario,
    out: str | Path | None = None,
    device: str | None = None,
    quick: bool = False,
    argv: list[str] | None = None,
    progress: bool = True,
    engine_factory: Callable[..., Any] | None = None,
    profile: str | None = None,
) -> RunResult:
    run_scn = apply_quick(scn) if quick else scn
    if device is not None or profile is not None:
        data = run_scn.model_dump(mode="python")
        if device is not None:
            data["device"]["kind"] = device
        if profile is not None:  # --profile: validated like [device].profile, one line if unknown
            from labtui.engine.profiles import get_profile

            get_profile(profile)
            data["device"]["profile"] = profile
        run_scn = run_scn.with_updates(data)
    points = expand(run_scn)
    writer = BundleWriter(out if out is not None else default_out(run_scn.name))
    return _Run(run_scn, points, writer, quick, device, argv or [], progress,
                engine_factory).run()


class _Run:
    def __init__(self, scn, points, writer, quick, device, argv, progress, engine_factory):
        self.scn: Scenario = scn
        self.points: list[SweepPoint] = points
        self.writer: BundleWriter = writer
        self.quick, self.device, self.argv = quick, device, argv
        self.reps = repeat_count(scn)
        self.protocol = protocol(scn)
        self.warmup = warmup_tokens(scn)
        self.rep_s = rep_seconds(scn)
        self.state = _RunState()
        self.progress = Progress(f"labtui run {scn.name}", enabled=progress)
        self.engine_factory = engine_factory
        self.t0 = time.monotonic()
        self.started = _dt.datetime.now().astimezone()
        self.runs: list[dict] = []
        self.env_written = False
        self.error: str | None = None
        self._sampler = _Sampler(self)
        self.eng: Any = None
        self.point: SweepPoint | None = None
        self.rep = 0
        self.phase = "setup"
        self._timed_events: list[dict] = []
        self._engine_errors: list[str] = []

    # -- top level ---------------------------------------------------------

    def run(self) -> RunResult:
        header = (f"as run by labtui {labtui.__version__} at {self.started.isoformat(timespec='seconds')}\n"
                  f"command: {' '.join(self.argv) or 'run_scenario()'}\n"
                  f"from: {self.scn.path}\n"
                  + ("--quick applied: shorter workloads, fewer sweep points, one repetition\n" if self.quick else "")
                  + (f"--device {self.device} applied to [device].kind\n" if self.device else "")
                  + (f"profile: {self.scn.device.profile}\n" if self.scn.device.profile else ""))
        self.writer.write_text("scenario.toml", scenario_to_toml(self.scn, header=header))
        self.writer.on_fail = lambda e: setattr(self.state, "stop", "write_failed")
        old = self._install_signals()
        self.progress.set_plan(len(self.points) * self.reps, self._estimate())
        self._sampler.start()
        try:
            with self.progress:
                self._run_rounds()
        except LabError as e:
            self.error = str(e)
            raise
        except Exception as e:  # internal failure: the summary still says what happened
            self.error = f"internal error: {type(e).__name__}: {one_line(e)}"
            raise
        except KeyboardInterrupt:  # a second Ctrl-C: stop now, still write the summary
            self.state.stop = "interrupted"
            self.state.signal = self.state.signal or signal.SIGINT
        finally:
            self._sampler.stop()
            self._close_engine()
            summary = self._summary()
            for signum, handler in old.items():
                signal.signal(signum, handler)
            if self.writer.failed is None:
                self.writer.write_json("summary.json", summary)
            self.writer.close()
            if self.writer.failed is not None:
                # nothing more can be recorded: one line, and the run stops here
                raise LabError(self.writer.failure_message())
        return RunResult(self.writer.path, summary, self.state.stop == "interrupted", self.state.signal)

    def _run_rounds(self) -> None:
        """Every point once per round, rounds until each point has what the
        protocol asks (stats.Protocol). Interleaving the points, rather than
        repeating one point back to back, spreads slow drifts of the machine
        (other load, thermals) over all points instead of biasing some."""
        done = {p.index: 0 for p in self.points}
        measured = dict.fromkeys(done, 0.0)
        samples: dict[int, dict[str, list[float]]] = {i: {} for i in done}
        active = list(self.points)
        rnd = 0
        while active and not self.state.stop:
            # serpentine order (forward, then backward, ...): a slow drift of the
            # machine (other load, thermals) then biases no point position, e.g.
            # the last point of a round (residency 100% of the host series) is not
            # always measured later than the first ones
            for point in (active if rnd % 2 == 0 else active[::-1]):
                if self.state.stop:
                    break
                self.progress.run_started()
                self._run_point(point, done[point.index])
                self.progress.run_done()
                done[point.index] += 1
                r = self.runs[-1]
                measured[point.index] += r["wall_s"]
                for m, st in r["stats"].items():
                    if st.get("decode_tok_s"):
                        samples[point.index].setdefault(m, []).append(st["decode_tok_s"])
            rnd += 1
            active = [p for p in active
                      if self.protocol.needs_more(samples[p.index], measured[p.index], done[p.index])]

    def _estimate(self) -> float | None:
        if len(self.points) * self.reps <= 1:
            return None
        try:
            from labtui.scenario.estimate import estimate

            return estimate(self.points, self.reps, self.scn.lab.timeout_s, self.warmup).seconds
        except Exception:  # noqa: BLE001 - an ETA is a convenience; the run goes on without
            return None

    def _install_signals(self) -> dict:
        """Ctrl-C and SIGTERM (a service manager, ``kill``, a CI timeout) both stop the
        run after this step with the bundle finished; a second one stops at once."""
        if threading.current_thread() is not threading.main_thread():
            return {}

        def handler(signum, frame):
            if self.state.stop == "interrupted":
                raise KeyboardInterrupt
            self.state.stop = "interrupted"
            self.state.signal = signum
            what = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
            self.progress.line(f"{what}: stopping after this step (again to stop at once)", "yellow")

        old = {}
        for signum in (signal.SIGINT, signal.SIGTERM):
            old[signum] = signal.signal(signum, handler)
        return old

    # -- one point, one repetition ---------------------------------------

    def _make_engine(self, scn: Scenario) -> Any:
        kw = scn.device.engine_kwargs()
        kw.update(policy=scn.lab.policy, seed=scn.lab.seed)
        if self.engine_factory is not None:
            return self.engine_factory(**kw)
        from labtui.engine import Engine

        return Engine(**kw)

    def _run_point(self, point: SweepPoint, rep: int) -> None:
        scn = point.scenario
        self.point, self.rep, self.phase = point, rep, "setup"
        self._timed_events = []
        self._engine_errors = []
        refused: list[str] = []
        warnings: list[str] = []
        of = f"{self.reps}" if not self.protocol.adaptive else f"{self.reps}-{self.protocol.max_repeat}"
        head = f"point {point.index + 1}/{len(self.points)} rep {rep + 1}/{of} · {point.label()}"
        self.progress.head = head
        self.progress.line(head)
        started = time.monotonic()
        self.eng = eng = self._make_engine(scn)
        eng.add_listener(self._on_event)
        if not self.env_written:
            self._write_env(eng)
        load_models(scn, eng, lambda: self.state.stop is not None)
        if self.warmup and not self.state.stop:
            self._warm_up(eng, scn, warnings)
        scn, scaled = self._lengthened(scn)
        snap = eng.snapshot()
        self.phase = "run"
        self._runner_line("point_start", values=point.values, label=point.label(),
                          device=_device_info(snap, eng), models=_models_info(snap), loadavg=loadavg())
        t_point = time.monotonic()
        cpu = CpuShare()
        # as timeit: no cyclic garbage collection inside the timed phase (a gen-2
        # collection is tens of ms, a tenth of a short point); collected before
        gc.collect()
        gc_was = gc.isenabled()
        gc.disable()
        try:
            played = play_timeline(
                scn, eng, stop=lambda: self.state.stop is not None,
                on_error=lambda msg: self.progress.line(msg, "yellow"),
                load=False, until_idle=True, deadline=self.t0 + self.scn.lab.timeout_s,
                on_tick=lambda snap: self.progress.update(snap, time.monotonic() - self.t0),
                on_note=self._note,
            )
        finally:
            if gc_was:
                gc.enable()
        self.progress.update(eng.snapshot(), time.monotonic() - self.t0)  # the final state
        if played.stopped == "timed_out":
            self._out_of_time(warnings)
        finished = played.finished
        refused += played.refused
        warnings += played.warnings
        wall = time.monotonic() - t_point
        try:
            engine_summary = eng.summary()
        except Exception as e:  # noqa: BLE001 - the run's data so far still matters
            engine_summary = {"error": one_line(e)}
        run_stats = _stats.run_stats(self._timed_events)
        warnings += self._engine_errors[:20]
        cpu_other = cpu.other()
        self._runner_line("point_end", wall_s=wall, finished=finished, stats=run_stats,
                          cpu_other=cpu_other,
                          refused=refused, warnings=warnings)
        self._close_engine()
        self.runs.append({
            "point": point.index, "rep": rep, "label": point.label(), "values": point.values,
            "wall_s": wall, "setup_s": t_point - started, "finished": finished, "requests_per_workload": scaled, "cpu_other": cpu_other,
            "stats": run_stats, "engine": engine_summary, "refused": refused, "warnings": warnings,
        })
        self.state.warnings += [f"point {point.index} rep {rep}: {w}" for w in refused + warnings]
        tok = ", ".join(f"{m} {s['decode_tok_s']:.1f} decode tok/s" for m, s in run_stats.items()
                        if s.get("decode_tok_s"))
        self.progress.line(f"  done in {wall:.1f}s{': ' + tok if tok else ''}")

    def _lengthened(self, scn: Scenario) -> tuple[Scenario, int | None]:
        """The point's scenario with each workload's requests raised so that the
        timed phase lasts about [sweep].rep_seconds, from the warm-up's speed on
        this engine (a 32-token point at 180 tok/s is 0.18 s: scheduler jitter and
        one slow step then move its median by 10-20%). Only steady scenarios
        (closed workloads, no timeline: the offload and link sweeps): a timeline's
        pause points are counted in tokens of one request. Returns the scenario and
        the factor (None: unchanged). More requests of the same length keep the
        point's KV lengths, so the per-token figure measures the same thing."""
        if not self.rep_s or scn.timeline or not scn.workloads:
            return scn, None
        if any(w.kind != "closed" for w in scn.workloads):
            return scn, None
        warm = [e for e in self._timed_events if e.get("phase") == "warmup" and e["kind"] == "request_finish"]
        per_tok = [(e.get("decode_s") or 0) / (e["new_tokens"] - 1) for e in warm
                   if e.get("new_tokens", 0) > 1 and e.get("decode_s")]
        if not per_tok:
            return scn, None
        step = max(per_tok)
        ttft = max((e.get("ttft_s") or 0) for e in warm)
        data = scn.model_dump(mode="python")
        factor = 1
        for w in data["workloads"]:
            one = ttft + step * max(0, w["max_new_tokens"] - 1)
            est = one * w["requests"] / max(1, w["concurrency"])
            k = min(REP_SCALE_MAX, max(1, math.ceil(self.rep_s / est))) if est > 0 else 1
            w["requests"] *= k
            factor = max(factor, k)
        if factor == 1:
            return scn, None
        return scn.with_updates(data), factor

    def _warm_up(self, eng: Any, scn: Scenario, warnings: list) -> None:
        """One short request per model before timing (a workload, so it is polled:
        Ctrl-C and the run timeout still apply); its events are marked warmup."""
        self.phase = "warmup"
        ids = []
        for m in scn.models:
            cmd = LaunchWorkload(model=m.id, id=f"warmup-{m.id}", requests=1, prompt_tokens=16,
                                 max_new_tokens=self.warmup)
            ids.append(eng.execute(cmd))
        while not self.state.stop:
            snap = eng.snapshot()
            if all(w.done for w in snap.workloads if w.id in ids):
                return
            if self._out_of_time(warnings):
                return
            time.sleep(POLL_S)

    def _out_of_time(self, warnings: list) -> bool:
        if time.monotonic() - self.t0 <= self.scn.lab.timeout_s:
            return False
        if self.state.stop == "timed_out":
            return True
        self.state.stop = "timed_out"
        warnings.append(f"run timeout ({self.scn.lab.timeout_s:g} s, [lab].timeout_s) reached")
        self.progress.line(warnings[-1], "yellow")
        return True

    def _note(self, text: str) -> None:
        self.progress.note = text
        self.progress.line(f"note: {text}", "italic")

    def _close_engine(self) -> None:
        if self.eng is not None:
            try:
                self.eng.close()
            finally:
                self.eng = None

    # -- recording ---------------------------------------------------------

    def _on_event(self, ev: Any) -> None:
        rec = {"seq": ev.seq, "t": round(ev.t, 6), "kind": ev.kind, **ev.data,
               "point": self.point.index if self.point else 0, "rep": self.rep, "phase": self.phase}
        self.writer.event(rec)
        if ev.kind in ("request_start", "request_finish"):
            self._timed_events.append(rec)
        elif ev.kind == "error":  # an internal failure the engine survived: say so
            self._engine_errors.append(f"engine error in {ev.data.get('where')}: {ev.data.get('message')}")

    def _runner_line(self, kind: str, **data: Any) -> None:
        eng_t = self.eng.snapshot().t if self.eng is not None else None
        self.writer.event({"seq": None, "t": eng_t, "kind": kind, "source": "runner",
                           "point": self.point.index, "rep": self.rep, "phase": self.phase,
                           "run_t": round(time.monotonic() - self.t0, 6), **data})

    def _write_env(self, eng: Any) -> None:
        try:
            env = dict(eng.env_info())
        except Exception as e:  # noqa: BLE001
            env = {"env_info_error": one_line(e)}
        env.update(labtui_version=labtui.__version__, argv=self.argv,
                   started=self.started.isoformat(timespec="seconds"),
                   hostname=platform.node(), python=platform.python_version(),
                   scenario=str(self.scn.path), quick=self.quick, device_override=self.device,
                   threads=thread_settings(), profile=self.scn.device.profile)
        self.writer.write_json("env.json", env)
        self.env_written = True

    def _summary(self) -> dict:
        s = {
            "labtui_version": labtui.__version__,
            "scenario": self.scn.name,
            "scenario_file": str(self.scn.path),
            "description": self.scn.lab.description,
            "started": self.started.isoformat(timespec="seconds"),
            "finished": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            "wall_s": time.monotonic() - self.t0,
            "interrupted": self.state.stop == "interrupted",
            "interrupted_by": signal.Signals(self.state.signal).name if self.state.signal else None,
            "timed_out": self.state.stop == "timed_out",
            "error": self.error,
            "quick": self.quick,
            "device_override": self.device,
            "repeat": self.reps,
            "protocol": {"min_repeat": self.protocol.min_repeat, "max_repeat": self.protocol.max_repeat,
                         "min_seconds": self.protocol.min_seconds,
                         "ci_rel_width": self.protocol.ci_rel_width, "rep_seconds": self.rep_s},
            "runs_max": len(self.points) * self.protocol.max_repeat,
            "warmup_tokens": self.warmup,
            "axes": self.scn.sweep.axes() if self.scn.sweep else {},
            "runs_planned": len(self.points) * self.reps,
            "runs_done": len(self.runs),
            "points": _stats.point_results(self.runs),
            "runs": self.runs,
            "warnings": self.state.warnings,
        }
        if len(self.runs) == 1:  # one run: its per-model engine summary at the top
            eng = self.runs[0]["engine"]
            s["models"] = eng.get("models", {}) if isinstance(eng, dict) else {}
        return s


class _Sampler:
    """Samples the current engine's snapshot into metrics.csv every SAMPLE_S."""

    def __init__(self, run: _Run) -> None:
        self.run = run
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="labtui-sampler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)

    def _loop(self) -> None:
        while not self._stop.wait(SAMPLE_S):
            eng, point = self.run.eng, self.run.point
            if eng is None or point is None:
                continue
            try:
                snap = eng.snapshot()
            except Exception:  # noqa: BLE001 - engine closing under us; next tick
                continue
            t = round(time.monotonic() - self.run.t0, 3)
            rows = [{
                "t": t, "model": m.id, "state": m.state, "residency": m.residency,
                "resident_layers": m.resident_layers, "mode": m.mode,
                "served_tok_s": m.served_tok_s, "decode_tok_s": m.decode_tok_s,
                # while preempted: where the weights (host | disk) and KV are
                "paused_weights": (m.paused_where or ("", ""))[0],
                "paused_kv": (m.paused_where or ("", ""))[1],
                "tokens": m.tokens_generated,
                "accel_weights_bytes": m.ledger.accel_weights, "accel_kv_bytes": m.ledger.accel_kv,
                "host_bytes": m.ledger.host_total, "queued": m.queued, "running": m.running,
                "completed": m.completed, "device_used_bytes": snap.device.used_bytes,
                "point": point.index, "rep": self.run.rep,
            } for m in snap.models]
            self.run.writer.metric_rows(rows)


def _device_info(snap: Any, eng: Any = None) -> dict:
    d = snap.device
    prof = getattr(getattr(eng, "device", None), "profile", None)
    return {"kind": d.kind, "name": d.name, "simulated": d.simulated, "link": d.link,
            "link_gbps": d.link_gbps, "link_latency_us": d.link_latency_us,
            "host_slowdown": d.host_slowdown, "budget_bytes": d.budget_bytes,
            "profile": prof.name if prof is not None else None}


def _models_info(snap: Any) -> dict:
    return {m.id: {"source": m.source, "family": m.family, "params": m.params,
                   "n_layers": m.n_layers, "residency": m.residency,
                   "resident_layers": m.resident_layers, "mode": m.mode, "prefetch": m.prefetch}
            for m in snap.models}


def run_file(path: str | Path, **kw: Any) -> RunResult:
    """Script entry: load a scenario file (or built-in name) and run it."""
    return run_scenario(load_scenario(path), **kw)
