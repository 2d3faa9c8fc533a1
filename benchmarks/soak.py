"""Soak: the lab (LabApp, driven by Textual's Pilot) with several models and
workloads, under random slider, preempt/resume, mode, prefetch and workload
actions for N minutes. Prints one JSON object:

- rss_start_mb / rss_end_mb / rss_growth_mb, rss_samples_mb: process RSS after the
  warm-up (models loaded, a minute of actions: the allocator's working set settles
  in about that long) and at the end, and every 30 s between (a leak is a trend,
  not one difference: glibc's arenas move RSS by tens of MB either way);
- rss_slope_mb_per_min / rss_slope_2nd_half_mb_per_min: least-squares slope of
  those samples (the figure the goal is about), over the run and its second half;
- heap_slope_mb_per_min: the same slope of where RSS lives, sampled with it:
  glibc's ``in_use`` (held by someone), ``free`` (kept in the arenas) and
  ``mmapped`` MB (trim.heap_mb), and Python's allocated blocks (``py_blocks_k``,
  thousands); object_growth: the object types whose live count grew most from the
  start of the measured run to its end (after a gc);
- key_ms_p50 / key_ms_p95 / key_ms_max: how long the lab took to handle a key or
  click: from posting the event until the app and every widget of the screen have
  handled it and the messages it caused, and the screen is repainted (``Input``);
- loop_lag_ms_p95 / loop_lag_ms_max: how late a 50 ms timer on the lab's event
  loop fires: how long the UI thread was busy (a poll, a repaint) or starved of
  the GIL by the engine's thread;
- requests_completed / requests_cancelled / tokens, per model and in total;
- stuck: requests still queued or running 60 s after the actions stop, the
  budget is raised and every preempted model is resumed (should be 0), and
  stuck_detail: those models' state and waiting reason;
- invariant_failures: ``check_invariants()`` run every ~10 s (should be 0);
- errors: the engine's ``error`` events (should be none).

    python benchmarks/soak.py --minutes 10              # sim, 4 zoo models
    python benchmarks/soak.py --minutes 1 --seed 3 --models llama-5m,gpt2-10m
    python benchmarks/soak.py --minutes 3 --profile /tmp/ui.pstats   # the UI thread
    python benchmarks/soak.py --minutes 3 --tracemalloc 25           # what grows
    python benchmarks/soak.py --minutes 3 --stalls                   # what blocks the UI
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import psutil  # noqa: E402

DEFAULT_MODELS = "llama-5m,qwen3-10m,gpt2-10m,phi3-15m"


def _rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


def _heap() -> dict:
    """Where the RSS lives now (see heap_slope_mb_per_min in the docstring)."""
    from labtui.tui.trim import heap_mb

    h = heap_mb() or {}
    h["py_blocks_k"] = round(sys.getallocatedblocks() / 1000, 1)
    return h


def _type_counts() -> dict[str, int]:
    import gc

    gc.collect()
    counts: dict[str, int] = {}
    for o in gc.get_objects():
        n = type(o).__qualname__
        counts[n] = counts.get(n, 0) + 1
    return counts


def _holders(type_name: str, top: int = 10) -> dict[str, int]:
    """Who holds the live objects of one type: "Owner.attr" (or the container's
    type) -> how many of them it holds, for the top holders. Two passes over the
    heap (containers that refer to the objects, then who owns those containers),
    instead of gc.get_referrers per object (a heap pass each)."""
    import gc
    import inspect

    gc.collect()
    objs = [o for o in gc.get_objects() if not inspect.isframe(o)]
    targets = {id(o) for o in objs if type(o).__qualname__ == type_name}
    held: dict[int, int] = {}
    box: dict[int, object] = {}
    for o in objs:
        n = sum(1 for r in gc.get_referents(o) if id(r) in targets)
        if n:
            held[id(o)], box[id(o)] = n, o
    owner: dict[int, str] = {}
    for o in objs:  # name each holder by the object and attribute (or key) it sits in
        try:
            d = object.__getattribute__(o, "__dict__")
        except Exception:  # noqa: BLE001 - no instance dict, or a proxy that refuses
            d = None
        for k, v in d.items() if isinstance(d, dict) else ():
            if id(v) in held and id(v) not in owner:
                owner[id(v)] = f"{type(o).__qualname__}.{k}"
        if type(o) is dict:  # not isinstance: lazy modules answer __class__ by importing
            for k, v in o.items():
                if id(v) in held and id(v) not in owner:
                    owner[id(v)] = f"dict[{str(k)[:30]}]"
    out: dict[str, int] = {}
    for i, n in held.items():
        label = f"{type(box[i]).__qualname__} in {owner.get(i, '?')}"
        out[label] = out.get(label, 0) + n
    del objs, box
    return dict(sorted(out.items(), key=lambda x: -x[1])[:top])


def _slope(samples: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, MB) samples, in MB per minute."""
    if len(samples) < 3:
        return None
    ts, ys = [t for t, _ in samples], [y for _, y in samples]
    mt, my = statistics.fmean(ts), statistics.fmean(ys)
    den = sum((t - mt) ** 2 for t in ts)
    return 60 * sum((t - mt) * (y - my) for t, y in zip(ts, ys, strict=True)) / den if den else None


class Input:
    """Keys and clicks into the lab, each timed from posting the event until the app
    and every widget of its screen have handled it and the messages it caused, and
    the screen is repainted.

    Why not Pilot.press/click's own return: they also wait for the whole *process*
    to be CPU-idle (textual._wait.wait_for_idle: twice per key, four times per
    click, up to 1 s each), which never happens while the engine decodes on its own
    thread, so they measured that wait (p95 ~1 s, clicks up to 4 s), not the lab.
    The events here are the ones Pilot sends, posted the same way."""

    def __init__(self, app, pilot, record) -> None:
        self.app, self.pilot, self.record = app, pilot, record

    async def _settle(self) -> None:
        # Three rounds: a key reaches the app, then the focused widget, whose action
        # may post a message back to the app; each round waits for every message
        # queued before it (Pilot's own _wait_for_screen).
        for _ in range(3):
            await self.pilot._wait_for_screen()
        self.app.screen._on_timer_update()  # the repaint itself (compositor update)

    async def press(self, key: str, kind: str) -> None:
        from textual import events
        from textual.keys import _character_to_key

        t0 = time.perf_counter()
        if len(key) == 1 and not key.isalnum():
            key = _character_to_key(key)
        ev = events.Key(key, key if len(key) == 1 else None)
        ev.set_sender(self.app)
        self.app._driver.send_message(ev)
        await self._settle()
        self.record(time.perf_counter() - t0, kind)

    async def click(self, target, kind: str) -> None:
        """Click the top-left cell of ``target`` (a widget, or a selector on the
        screen): OutOfBounds when it is not on screen, NoMatches when there is none."""
        from textual.events import Click, MouseDown, MouseUp
        from textual.geometry import Offset
        from textual.pilot import OutOfBounds

        screen = self.app.screen
        widget = screen.query_one(target) if isinstance(target, str) else target
        x, y = widget.region.offset
        if not widget.region or Offset(x, y) not in screen.size.region:
            raise OutOfBounds("the widget is not on screen")
        t0 = time.perf_counter()
        args = dict(widget=widget, x=x, y=y, delta_x=0, delta_y=0, button=1, shift=False,
                    meta=False, ctrl=False, screen_x=x, screen_y=y)
        self.app.mouse_position = Offset(x, y)
        for cls in (MouseDown, MouseUp, Click):
            screen._forward_event(cls(**({**args, "chain": 1} if cls is Click else args)))
        await self._settle()
        self.record(time.perf_counter() - t0, kind)


async def _loop_lag(lags: list[float], stop: asyncio.Event, beat: list[float], period: float = 0.05) -> None:
    """How late a timer on the lab's event loop fires: the UI thread's longest waits."""
    while not stop.is_set():
        t0 = time.perf_counter()
        beat[0] = t0
        await asyncio.sleep(period)
        lags.append(max(0.0, time.perf_counter() - t0 - period))


def _stall_sampler(beat: list[float], stop, out: dict, threshold: float = 0.25) -> None:
    """While the event loop is late by more than ``threshold``, sample every 20 ms
    what the UI thread (and the engine's) is running: a poor man's py-spy."""
    import collections
    import threading
    import traceback

    main_id = threading.main_thread().ident
    eng_id = next((t.ident for t in threading.enumerate() if t.name == "labtui-engine"), None)
    counts: collections.Counter = collections.Counter()

    def where(frame, n: int) -> str:
        st = [f for f in traceback.extract_stack(frame) if "asyncio" not in f.filename]
        return " < ".join(f"{f.filename.split('/')[-1]}:{f.lineno}:{f.name}" for f in reversed(st[-n:]))

    while not stop.wait(0.02):
        if time.perf_counter() - beat[0] < threshold + 0.05:
            continue
        frames = sys._current_frames()
        ui = frames.get(main_id)
        eng = frames.get(eng_id) if eng_id else None
        counts[("ui: " + (where(ui, 6) if ui else "?"), "engine: " + (where(eng, 2) if eng else "?"))] += 1
    out["stall_samples_20ms"] = [{"n": n, "ui": k[0], "engine": k[1]} for k, n in counts.most_common(12)]


def _round(x: float | None, nd: int = 2) -> float | None:
    return None if x is None else round(x, nd)


def _pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


async def soak(args) -> dict:
    from textual.css.query import NoMatches
    from textual.pilot import OutOfBounds

    from labtui.engine import Engine
    from labtui.engine.commands import LaunchWorkload
    from labtui.tui.app import LabApp
    from labtui.tui.trim import tune_malloc
    from labtui.tui.widgets.model_card import ModelCard
    from labtui.tui.widgets.slider import ResidencySlider

    rng = random.Random(args.seed)
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    if not args.no_tune_malloc:
        tune_malloc()  # as the lab does before its engine starts (labtui/tui/app.py main)
    eng = Engine(device="sim", memory_gib=args.memory_gib, link=args.link, host_slowdown=2.0, seed=args.seed)
    ids = []
    for i, name in enumerate(names):
        mid = f"m{i}"
        eng.load(f"zoo:{name}", id=mid, residency=rng.choice([0.0, 0.5, 1.0]), offload=rng.choice(["stream", "host"]))
        ids.append(mid)

    # the engine keeps a bounded window of events (engine/limits.py): collect the
    # errors of the whole soak as they happen
    errors: list[dict] = []
    eng.add_listener(lambda e: errors.append(e.data) if e.kind == "error" else None)
    key_s: list[float] = []
    counts: dict[str, int] = {}
    invariant_failures: list[str] = []
    app = LabApp(eng)

    by_kind: dict[str, list[float]] = {}

    def record(seconds: float, kind: str) -> None:
        key_s.append(seconds)
        by_kind.setdefault(kind, []).append(seconds)
        counts[kind] = counts.get(kind, 0) + 1

    async def select(pilot, mid: str) -> None:
        for _ in range(2):
            card = next((c for c in app.query(ModelCard) if c.model_id == mid), None)
            if card is None:
                return
            try:
                await inp.click(card, "select")
                return
            except OutOfBounds:  # another view is showing, or the card is scrolled away
                await inp.press("1", "view")
                card.scroll_visible(animate=False)
                await pilot.pause(0.05)

    async def action(pilot) -> None:
        snap = eng.snapshot()
        if app.screen is not app.screen_stack[0]:  # a dialog left open: close it
            await inp.press("escape", "escape")
            return
        mid = rng.choice(ids)
        await select(pilot, mid)
        m = snap.model(mid)
        kind = rng.choices(
            ["slider", "preempt", "resume", "mode", "prefetch", "workload", "cancel", "view"],
            weights=[6, 2, 3, 1, 1, 3, 1, 1],
        )[0]
        if kind == "slider":
            slider = app.query_one(ResidencySlider)
            slider.focus()
            key = rng.choice(["left", "right", "shift+left", "shift+right", "home", "end"])
            for _ in range(rng.randint(1, 3)):
                await inp.press(key, "slider")
        elif kind == "preempt" and m is not None and m.state not in ("preempted", "preempting"):
            await inp.press("p", "preempt")
            await pilot.pause(0.1)
            if app.screen is app.screen_stack[0]:  # no dialog (e.g. it was preempted meanwhile)
                return
            for sel in (rng.choice(["#kv-keep", "#kv-swap", "#kv-drop"]), rng.choice(["#weights-host", "#weights-disk"]), "#ok"):
                try:
                    await inp.click(sel, "preempt")
                except (NoMatches, OutOfBounds):  # the dialog closed or changed under us
                    break
        elif kind == "resume":
            await inp.press("r", "resume")
        elif kind == "mode":
            await inp.press("m", "mode")
        elif kind == "prefetch":
            await inp.press("f", "prefetch")
        elif kind == "workload":  # the same command the workload dialog sends, kept small
            app.send(LaunchWorkload(model=mid, kind=rng.choice(["closed", "poisson"]), rate_per_s=4.0,
                                    concurrency=rng.randint(1, 3), requests=rng.randint(2, 6),
                                    prompt_tokens=rng.randint(8, 48), max_new_tokens=rng.randint(8, 48)))
            counts["workload"] = counts.get("workload", 0) + 1
        elif kind == "cancel":
            await inp.press("c", "cancel")
        else:
            await inp.press(rng.choice(["1", "2", "3", "4"]), "view")

    def check() -> None:
        try:
            eng.check_invariants()
        except AssertionError as e:
            invariant_failures.append(str(e))

    lags: list[float] = []
    lag_stop = asyncio.Event()
    prof = None
    async with app.run_test(size=(140, 44)) as pilot:
        inp = Input(app, pilot, record)
        await pilot.pause(1.0)
        # warm-up: one of each action, a workload per model, then measure from here
        for mid in ids:
            app.send(LaunchWorkload(model=mid, requests=2, prompt_tokens=16, max_new_tokens=16))
        t_warm = time.monotonic() + args.warmup_s
        while time.monotonic() < t_warm:
            await action(pilot)
            await pilot.pause(rng.uniform(0.05, 0.3))
        key_s.clear()
        by_kind.clear()
        beat = [time.perf_counter()]
        lag_task = asyncio.create_task(_loop_lag(lags, lag_stop, beat))
        stalls: dict = {}
        if args.stalls:
            import threading

            stall_stop = threading.Event()
            stall_thread = threading.Thread(target=_stall_sampler, args=(beat, stall_stop, stalls), daemon=True)
            stall_thread.start()
        if args.tracemalloc:
            import tracemalloc

            tracemalloc.start(args.tracemalloc_frames)
            tm_start = tracemalloc.take_snapshot()
        if args.profile:
            import cProfile

            prof = cProfile.Profile()  # this thread only: the lab's event loop
            prof.enable()
        types_start = _type_counts()
        rss_start = _rss_mb()
        heap_samples = [(0, _heap())]
        t_end = time.monotonic() + args.minutes * 60
        next_check = time.monotonic() + 10
        t_run, rss_samples, next_sample = time.monotonic(), [(0, round(rss_start, 1))], time.monotonic() + 30
        while time.monotonic() < t_end:
            await action(pilot)
            await pilot.pause(rng.uniform(0.05, 0.5))
            if time.monotonic() >= next_check:
                # on a thread: the check waits for the worker's step, the lab must not
                await asyncio.to_thread(check)
                next_check = time.monotonic() + 10
            if time.monotonic() >= next_sample:  # the trend tells a leak from allocator noise
                rss_samples.append((round(time.monotonic() - t_run), round(_rss_mb(), 1)))
                heap_samples.append((rss_samples[-1][0], _heap()))
                next_sample += 30
        rss_end = _rss_mb()
        types_end = _type_counts()
        holders = _holders(args.holders) if args.holders else None
        if prof is not None:
            prof.disable()
            prof.dump_stats(args.profile)
        growth = []
        if args.tracemalloc:
            import gc

            gc.collect()
            diff = tracemalloc.take_snapshot().compare_to(tm_start, "traceback")
            tracemalloc.stop()
            for st in diff[: args.tracemalloc]:
                growth.append({"kib": round(st.size_diff / 1024, 1), "count": st.count_diff,
                               "where": [f"{f.filename.split('site-packages/')[-1]}:{f.lineno}" for f in st.traceback]})
        lag_stop.set()
        await lag_task
        if args.stalls:
            stall_stop.set()
            stall_thread.join()
        # drain: no more actions; everything must finish. Commands sent just before
        # (a preempt from the last dialog) are applied first, and preempted models are
        # resumed for as long as the drain lasts: a resume must not race a preempt
        # still queued behind it.
        if app.screen is not app.screen_stack[0]:
            await pilot.press("escape")
        eng.set_device_options(memory_gib=max(args.memory_gib, 4.0))
        t0 = time.monotonic()
        while time.monotonic() - t0 < args.drain_s:
            for m in eng.fresh_snapshot().models:
                if m.state == "preempted":
                    try:
                        eng.resume(m.id)
                    except Exception:  # noqa: BLE001 - resumed by the scheduler meanwhile
                        pass
            if eng.wait_idle(0.5):
                break
            await pilot.pause(0.2)
        drain_s = time.monotonic() - t0
        check()
        snap = eng.fresh_snapshot()

    summary = eng.summary()
    eng.close()
    per_model = {
        mid: {"completed": m.get("completed"), "cancelled": m.get("cancelled"), "tokens": m.get("tokens")}
        for mid, m in summary["models"].items()
    }
    return {
        "minutes": args.minutes,
        "models": dict(zip(ids, names, strict=True)),
        "device": f"sim {args.memory_gib} GiB, link {args.link}",
        "actions": counts,
        "rss_start_mb": round(rss_start, 1),
        "rss_end_mb": round(rss_end, 1),
        "rss_growth_mb": round(rss_end - rss_start, 1),
        "rss_samples_mb": rss_samples,
        "rss_slope_mb_per_min": _round(_slope(rss_samples)),
        "rss_slope_2nd_half_mb_per_min": _round(_slope(
            [x for x in rss_samples if x[0] >= rss_samples[-1][0] / 2])),
        "heap_samples": heap_samples,
        "heap_slope_mb_per_min": {k: _round(_slope([(t, h[k]) for t, h in heap_samples if k in h]))
                                  for k in heap_samples[0][1]},
        "object_growth": dict(sorted(((n, c - types_start.get(n, 0)) for n, c in types_end.items()),
                                     key=lambda x: -x[1])[:args.growth_top]),
        "key_ms_p50": round(1000 * statistics.median(key_s), 1) if key_s else None,
        "key_ms_p95": round(1000 * _pct(key_s, 0.95), 1) if key_s else None,
        "key_ms_max": round(1000 * max(key_s), 1) if key_s else None,
        "keys": len(key_s),
        "key_ms_p95_by_kind": {k: round(1000 * _pct(v, 0.95), 1) for k, v in sorted(by_kind.items())},
        "loop_lag_ms_p95": round(1000 * _pct(lags, 0.95), 1) if lags else None,
        "loop_lag_ms_max": round(1000 * max(lags), 1) if lags else None,
        "requests_completed": sum(v["completed"] or 0 for v in per_model.values()),
        "requests_cancelled": sum(v["cancelled"] or 0 for v in per_model.values()),
        "tokens": sum(v["tokens"] or 0 for v in per_model.values()),
        "per_model": per_model,
        "stuck": sum(m.queued + m.running for m in snap.models),
        "stuck_detail": [
            {"model": m.id, "state": m.state, "queued": m.queued, "running": m.running,
             "mode": m.mode, "residency": round(m.residency, 2), "waiting_reason": m.waiting_reason}
            for m in snap.models if m.queued or m.running
        ],
        "drain_s": round(drain_s, 1),
        "invariant_failures": invariant_failures,
        "errors": errors[:20],
        **({"tracemalloc_growth": growth} if args.tracemalloc else {}),
        **({"holders": {args.holders: holders}} if holders is not None else {}),
        **stalls,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--models", default=DEFAULT_MODELS, help="comma-separated zoo names")
    p.add_argument("--memory-gib", type=float, default=0.15, help="sim budget (small: refusals and squeezes)")
    p.add_argument("--link", default="pcie4-x16")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--warmup-s", type=float, default=60.0, help="RSS settles in about a minute")
    p.add_argument("--drain-s", type=float, default=60.0)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--profile", metavar="PATH", help="cProfile the lab's event loop thread (pstats file)")
    p.add_argument("--tracemalloc", type=int, default=0, metavar="N",
                   help="print the N allocation sites that grew most over the measured run (slow)")
    p.add_argument("--tracemalloc-frames", type=int, default=4)
    p.add_argument("--no-tune-malloc", action="store_true",
                   help="keep glibc's dynamic mmap threshold (what the lab did before tui/trim.tune_malloc)")
    p.add_argument("--growth-top", type=int, default=12, metavar="N",
                   help="how many of the fastest-growing object types to report")
    p.add_argument("--holders", metavar="TYPE", help="report who holds the live objects of TYPE at the end")
    p.add_argument("--stalls", action="store_true", help="sample the UI thread's stack while its loop is late")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    out = asyncio.run(soak(args))
    print(json.dumps(out, indent=2))
    ok = out["stuck"] == 0 and not out["invariant_failures"] and not out["errors"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
