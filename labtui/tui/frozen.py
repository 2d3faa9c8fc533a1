"""A frozen stand-in for the engine: fixed snapshots, fixed events, recorded commands.

The lab reads everything it shows from ``EngineSnapshot`` and ``Event`` objects, so
feeding it hand-built ones gives deterministic screens for snapshot tests and for
looking at layouts without torch. Hand-built must not mean impossible: every state
here passes ``snapshot.snapshot_problems``, the invariants the real engine's
snapshots are tested against (tests/test_display_truth.py), e.g. a preempted model
has no block on the accelerator and its cells say where the weights went. ``FrozenEngine`` implements just the part of the
engine API the lab uses; commands sent to it are recorded (and validated by the
commands' own pydantic models) but change nothing.
"""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import replace

from labtui.engine.events import Event
from labtui.engine.snapshot import (
    DeviceSnapshot,
    EngineSnapshot,
    Ledger,
    ModelSnapshot,
    PhaseReport,
    WorkloadSnapshot,
)

GIB = 1024**3
MIB = 1024**2


class FrozenEngine:
    """Shows one fixed snapshot (swap it with ``set_snapshot``) and a fixed event list."""

    frozen = True

    def __init__(self, snapshot: EngineSnapshot, events: list[Event] | None = None) -> None:
        self._snap = snapshot
        self._events = list(events or [])
        self.command_log: list[tuple[float, object]] = []
        self.submitted: list[object] = []
        self.closed = False

    def set_snapshot(self, snap: EngineSnapshot) -> None:
        self._snap = snap

    def add_events(self, events: list[Event]) -> None:
        self._events.extend(events)

    def snapshot(self) -> EngineSnapshot:
        return self._snap

    def events_since(self, seq: int) -> list[Event]:
        return [e for e in self._events if e.seq > seq]

    def submit_command(self, cmd) -> Future:
        self.submitted.append(cmd)
        self.command_log.append((self._snap.t, cmd))
        fut: Future = Future()
        fut.set_result(None)
        return fut

    def close(self) -> None:
        self.closed = True


# ---------------------------------------------------------------------------
# Hand-built states (used by snapshot tests and `labtui screenshot --frozen`)


def demo_device(**kw) -> DeviceSnapshot:
    d = DeviceSnapshot(
        kind="sim",
        name="simulated accelerator",
        simulated=True,
        budget_bytes=4 * GIB,
        used_bytes=int(2.31 * GIB),
        total_bytes=4 * GIB,
        link="pcie4-x16",
        link_gbps=25.0,
        link_latency_us=10.0,
        host_slowdown=4.0,
        allocator_allocated=int(1.9 * GIB),
        allocator_reserved=int(2.2 * GIB),
        process_rss=int(3.4 * GIB),
        host_used=int(21.5 * GIB),
        host_total=64 * GIB,
    )
    return replace(d, **kw)


def _hist(base: float, n: int = 40, wobble: float = 0.08) -> tuple[float, ...]:
    # A fixed, smooth-looking history (no randomness: snapshot tests must not change).
    pattern = (0.0, 0.4, 0.7, 1.0, 0.6, 0.2, -0.3, -0.6, -0.2, 0.3)
    return tuple(round(base * (1 + wobble * pattern[i % len(pattern)]), 2) for i in range(n))


def demo_model(
    id: str = "small",
    *,
    source: str = "zoo:llama-30m",
    family: str = "llama",
    params: int = 30_100_000,
    n_layers: int = 8,
    cells: str | None = None,
    state: str = "serving",
    mode: str = "stream",
    prefetch: bool = True,
    served: float | None = 142.5,
    decode: float | None = None,
    queued: int = 2,
    running: int = 2,
    last_text: str = "the river ran past the old mill and the children watched it",
    last_preemption: PhaseReport | None = None,
    layer_bytes: int = 12 * MIB,
) -> ModelSnapshot:
    cells = cells if cells is not None else "R" * n_layers
    non_res = "H" if mode == "host" else "S"
    cells = "".join(non_res if c in "SH" else c for c in cells)
    resident = cells.count("R")
    streamed = cells.count("S") + cells.count("M")
    decode = decode if decode is not None else (round(served * 1.12, 1) if served else None)
    tok_s = served or 0.0
    return ModelSnapshot(
        id=id,
        source=source,
        family=family,
        params=params,
        n_layers=n_layers,
        state=state,
        mode=mode,
        prefetch=prefetch,
        priority=0,
        max_batch=8,
        residency=resident / n_layers,
        layer_cells=cells,
        ledger=Ledger(
            accel_weights=resident * layer_bytes + 8 * MIB,
            accel_kv=24 * MIB,
            accel_buffers=min(streamed, 4) * layer_bytes,  # the stream window
            host_weights=(n_layers - resident) * layer_bytes,
            host_kv=0,
        ),
        queued=queued,
        running=running,
        completed=14,
        cancelled=0,
        tokens_generated=1792,
        served_tok_s=served,
        decode_tok_s=decode,
        served_tok_s_history=_hist(tok_s) if tok_s else tuple(0.0 for _ in range(40)),
        ttft_p50=0.0182,
        ttft_p95=0.0311,
        tpot_p50=1.0 / tok_s if tok_s else None,
        tpot_p95=1.3 / tok_s if tok_s else None,
        achieved_gbps=round((decode or 0.0) * n_layers * layer_bytes / 1e9, 2),
        bytes_per_token=n_layers * layer_bytes,
        last_text=last_text,
        last_preemption=last_preemption,
        decode_tokens=1778,
        decode_s=round(1778 / decode, 3) if decode else 0.0,
    )


def preempted_model(m: ModelSnapshot, rep: PhaseReport, layer_bytes: int) -> ModelSnapshot:
    """``m`` as the engine shows it once ``rep``'s kv_out and release ran: every block
    parked in host RAM (weights=host) or released (disk), nothing on the accelerator."""
    kv_bytes = m.ledger.accel_kv + m.ledger.host_kv
    led = Ledger(
        accel_weights=0,
        accel_kv=kv_bytes if rep.kv == "keep" else 0,
        accel_buffers=0,
        host_weights=m.n_layers * layer_bytes + 8 * MIB if rep.weights == "host" else 0,
        host_kv=kv_bytes if rep.kv == "swap" else 0,
    )
    cell = "P" if rep.weights == "host" else "D"
    return replace(
        m,
        state="preempted",
        layer_cells=cell * m.n_layers,
        residency=0.0,
        ledger=led,
        last_preemption=rep,
        served_tok_s=None,  # no decode in the last window: nothing to show
        decode_tok_s=None,
        achieved_gbps=0.0,
        served_tok_s_history=_hist(140.0, 30) + tuple(0.0 for _ in range(10)),
    )


def demo_phase_report(model: str = "big") -> PhaseReport:
    return PhaseReport(
        model=model,
        kv="swap",
        weights="disk",
        kv_out_s=0.0041,
        kv_out_bytes=24 * MIB,
        release_s=0.0127,
        release_bytes=312 * MIB,
        reload_s=0.4213,
        reload_bytes=312 * MIB,
        kv_in_s=0.0036,
        kv_in_bytes=24 * MIB,
        recompute_s=0.0,
        freed_bytes=339 * MIB,
        at_tokens=500,
        paused_s=3.2,
        complete=True,
    )


def demo_snapshot(kind: str = "default") -> EngineSnapshot:
    """Fixed lab states: 'default', 'moving' (a model mid-move), 'preempted'
    (a completed preemption with its four phases), 'empty' (no models)."""
    small = demo_model("small")
    big = demo_model(
        "big",
        source="zoo:qwen3-150m",
        family="qwen3",
        params=151_000_000,
        n_layers=16,
        cells="R" * 8 + "H" * 8,
        mode="host",
        served=38.2,
        queued=0,
        running=1,
        layer_bytes=18 * MIB,
        last_text="A lighthouse keeper counts the ships that pass at night",
    )
    busy = "decode small"
    models: tuple[ModelSnapshot, ...] = (small, big)
    note = ""
    if kind == "moving":
        big = replace(
            big,
            layer_cells="R" * 8 + "MMM" + "H" * 5,
            state="serving",
        )
        models = (small, big)
        busy = "moving big L10"
        note = "big: residency 50% → 69% (11/16 layers)"
    elif kind == "preempted":
        rep = demo_phase_report("big")
        big = replace(big, last_preemption=rep, state="serving")
        open_rep = replace(
            rep,
            model="small",
            kv="swap",
            weights="host",
            kv_out_s=0.0009,
            kv_out_bytes=24 * MIB,
            release_s=0.0041,
            release_bytes=104 * MIB,
            reload_s=0.0,
            reload_bytes=0,
            kv_in_s=0.0,
            kv_in_bytes=0,
            freed_bytes=128 * MIB + 24 * MIB,
            paused_s=0.0,
            complete=False,
        )
        small = replace(preempted_model(small, open_rep, 12 * MIB), running=2, queued=2)
        models = (small, big)
        busy = "decode big"
    elif kind == "preempted-disk":
        # both ways of parking: small's weights in host RAM, big's released to disk
        rep = replace(
            demo_phase_report("big"),
            kv="drop",
            kv_out_s=0.0,
            kv_out_bytes=24 * MIB,
            reload_s=0.0,
            reload_bytes=0,
            kv_in_s=0.0,
            kv_in_bytes=0,
            paused_s=0.0,
            complete=False,
        )
        small_rep = replace(
            rep, model="small", kv="swap", weights="host", kv_out_s=0.0009, release_s=0.0041,
            release_bytes=104 * MIB,
        )
        big = replace(preempted_model(big, rep, 18 * MIB), running=1)
        small = replace(preempted_model(small, small_rep, 12 * MIB), running=2, queued=2)
        models = (small, big)
        busy = "idle"
    elif kind == "empty":
        models = ()
        busy = "idle"
    workloads = (
        (
            WorkloadSnapshot(
                id="w1",
                model="small",
                kind="closed",
                submitted=18,
                completed=14,
                cancelled=0,
                total=64,
                done=False,
            ),
        )
        if models
        else ()
    )
    used = sum(m.ledger.accel_total for m in models)
    return EngineSnapshot(
        t=42.0,
        seq=100,
        device=demo_device(used_bytes=used),
        models=models,
        workloads=workloads,
        policy="fcfs",
        busy=busy,
        events_total=0,
        note=note,
    )


def demo_events(kind: str = "default") -> list[Event]:
    ev = [
        Event(
            1,
            0.10,
            "load",
            {
                "model": "small",
                "source": "zoo:llama-30m",
                "family": "llama",
                "params": 30_100_000,
                "n_layers": 8,
                "seconds": 0.41,
            },
        ),
        Event(
            2,
            0.62,
            "load",
            {
                "model": "big",
                "source": "zoo:qwen3-150m",
                "family": "qwen3",
                "params": 151_000_000,
                "n_layers": 16,
                "seconds": 1.22,
            },
        ),
        Event(3, 0.70, "workload_start", {"workload": "w1", "model": "small"}),
    ]
    seq = 4
    for layer in range(8, 16):
        ev.append(
            Event(
                seq,
                5.0 + layer * 0.01,
                "layer_move",
                {
                    "model": "big",
                    "layer": layer,
                    "what": "weights",
                    "direction": "d2h",
                    "bytes": 18 * MIB,
                    "seconds": 0.00076,
                    "gbps": 24.8,
                    "reason": "residency",
                },
            )
        )
        seq += 1
    ev.append(
        Event(
            seq,
            5.2,
            "residency",
            {"model": "big", "residency": 0.5, "resident_layers": list(range(8)), "mode": "host"},
        )
    )
    seq += 1
    ev.append(
        Event(
            seq,
            9.0,
            "refused",
            {
                "command": "set_residency",
                "reason": "big: 16/16 layers need 3.1 GiB, only 1.7 GiB free on sim",
            },
        )
    )
    seq += 1
    if kind == "preempted":
        rep = demo_phase_report("big")
        ev.append(
            Event(
                seq,
                20.0,
                "preempt",
                {
                    "model": "big",
                    "kv": "swap",
                    "weights": "disk",
                    "kv_out_s": rep.kv_out_s,
                    "kv_out_bytes": rep.kv_out_bytes,
                    "release_s": rep.release_s,
                    "release_bytes": rep.release_bytes,
                    "freed_bytes": rep.freed_bytes,
                    "at_tokens": 500,
                },
            )
        )
        seq += 1
        d = {k: getattr(rep, k) for k in rep.__dataclass_fields__}
        ev.append(Event(seq, 23.2, "resume", d))
        seq += 1
    ev.append(Event(seq, 30.0, "note", {"text": "drag big's slider and watch tok/s"}))
    return ev


def demo_chart_points() -> list[tuple[str, int, int, float]]:
    """(model, resident layers, n_layers, tok/s): a hand-made curve in the shape the
    study reports (the small model falls off sharply, the bigger one more evenly)."""
    small = [14.0, 16.5, 19.8, 24.1, 30.2, 39.5, 55.0, 83.0, 142.5]
    big = [9.1, 11.8, 15.2, 19.6, 24.8, 30.9, 38.2, 47.5, 61.0]
    pts = [("small", k, 8, v) for k, v in enumerate(small)]
    pts += [("big", 2 * i, 16, v) for i, v in enumerate(big)]
    return pts


def seed_chart(app) -> None:
    """Put the demo curve into a LabApp's chart (for screenshots and snapshot tests)."""
    for model, k, n, v in demo_chart_points():
        mode = "host" if model == "big" else "stream"
        app.chart_data.add_point(model, k, n, v, index=app.series.get(model, 0), mode=mode)
    app.refresh_chart()
