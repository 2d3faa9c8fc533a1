"""Soak: the lab (LabApp, driven by Textual's Pilot) with several models and
workloads, under random slider, preempt/resume, mode, prefetch and workload
actions for N minutes. Prints one JSON object:

- rss_start_mb / rss_end_mb / rss_growth_mb, rss_samples_mb: process RSS after the
  warm-up (models loaded, a minute of actions: the allocator's working set settles
  in about that long) and at the end, and every 30 s between (a leak is a trend,
  not one difference: glibc's arenas move RSS by tens of MB either way);
- key_ms_p50 / key_ms_p95 / key_ms_max: how long the lab took to handle a key or
  click (Pilot returns once the app has processed it and is idle again);
- requests_completed / requests_cancelled / tokens, per model and in total;
- stuck: requests still queued or running 60 s after the actions stop, the
  budget is raised and every preempted model is resumed (should be 0);
- invariant_failures: ``check_invariants()`` run every ~10 s (should be 0);
- errors: the engine's ``error`` events (should be none).

    python benchmarks/soak.py --minutes 10              # sim, 4 zoo models
    python benchmarks/soak.py --minutes 1 --seed 3 --models llama-5m,gpt2-10m
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
    from labtui.tui.widgets.model_card import ModelCard
    from labtui.tui.widgets.slider import ResidencySlider

    rng = random.Random(args.seed)
    names = [n.strip() for n in args.models.split(",") if n.strip()]
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

    async def timed(coro, kind: str) -> None:
        t0 = time.perf_counter()
        await coro
        key_s.append(time.perf_counter() - t0)
        counts[kind] = counts.get(kind, 0) + 1

    async def select(pilot, mid: str) -> None:
        for _ in range(2):
            card = next((c for c in app.query(ModelCard) if c.model_id == mid), None)
            if card is None:
                return
            try:
                await timed(pilot.click(card), "select")
                return
            except OutOfBounds:  # another view is showing, or the card is scrolled away
                await timed(pilot.press("1"), "view")
                card.scroll_visible(animate=False)
                await pilot.pause(0.05)

    async def action(pilot) -> None:
        snap = eng.snapshot()
        if app.screen is not app.screen_stack[0]:  # a dialog left open: close it
            await timed(pilot.press("escape"), "escape")
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
                await timed(pilot.press(key), "slider")
        elif kind == "preempt" and m is not None and m.state not in ("preempted", "preempting"):
            await timed(pilot.press("p"), "preempt")
            await pilot.pause(0.1)
            if app.screen is app.screen_stack[0]:  # no dialog (e.g. it was preempted meanwhile)
                return
            for sel in (rng.choice(["#kv-keep", "#kv-swap", "#kv-drop"]), rng.choice(["#weights-host", "#weights-disk"]), "#ok"):
                try:
                    await timed(pilot.click(sel), "preempt")
                except NoMatches:  # the dialog closed or changed under us
                    break
        elif kind == "resume":
            await timed(pilot.press("r"), "resume")
        elif kind == "mode":
            await timed(pilot.press("m"), "mode")
        elif kind == "prefetch":
            await timed(pilot.press("f"), "prefetch")
        elif kind == "workload":  # the same command the workload dialog sends, kept small
            app.send(LaunchWorkload(model=mid, kind=rng.choice(["closed", "poisson"]), rate_per_s=4.0,
                                    concurrency=rng.randint(1, 3), requests=rng.randint(2, 6),
                                    prompt_tokens=rng.randint(8, 48), max_new_tokens=rng.randint(8, 48)))
            counts["workload"] = counts.get("workload", 0) + 1
        elif kind == "cancel":
            await timed(pilot.press("c"), "cancel")
        else:
            await timed(pilot.press(rng.choice(["1", "2", "3", "4"])), "view")

    def check() -> None:
        try:
            eng.check_invariants()
        except AssertionError as e:
            invariant_failures.append(str(e))

    async with app.run_test(size=(140, 44)) as pilot:
        await pilot.pause(1.0)
        # warm-up: one of each action, a workload per model, then measure from here
        for mid in ids:
            app.send(LaunchWorkload(model=mid, requests=2, prompt_tokens=16, max_new_tokens=16))
        t_warm = time.monotonic() + args.warmup_s
        while time.monotonic() < t_warm:
            await action(pilot)
            await pilot.pause(rng.uniform(0.05, 0.3))
        key_s.clear()
        rss_start = _rss_mb()
        t_end = time.monotonic() + args.minutes * 60
        next_check = time.monotonic() + 10
        t_run, rss_samples, next_sample = time.monotonic(), [], time.monotonic() + 30
        while time.monotonic() < t_end:
            await action(pilot)
            await pilot.pause(rng.uniform(0.05, 0.5))
            if time.monotonic() >= next_check:
                check()
                next_check = time.monotonic() + 10
            if time.monotonic() >= next_sample:  # the trend tells a leak from allocator noise
                rss_samples.append((round(time.monotonic() - t_run), round(_rss_mb(), 1)))
                next_sample += 30
        rss_end = _rss_mb()
        # drain: no more actions; everything must finish
        if app.screen is not app.screen_stack[0]:
            await pilot.press("escape")
        eng.set_device_options(memory_gib=max(args.memory_gib, 4.0))
        for m in eng.snapshot().models:
            if m.state == "preempted":
                try:
                    eng.resume(m.id)
                except Exception:  # noqa: BLE001 - resumed by the scheduler meanwhile
                    pass
        t0 = time.monotonic()
        while not eng.wait_idle(0.5) and time.monotonic() - t0 < args.drain_s:
            await pilot.pause(0.2)
        check()
        snap = eng.snapshot()

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
        "key_ms_p50": round(1000 * statistics.median(key_s), 1) if key_s else None,
        "key_ms_p95": round(1000 * _pct(key_s, 0.95), 1) if key_s else None,
        "key_ms_max": round(1000 * max(key_s), 1) if key_s else None,
        "keys": len(key_s),
        "requests_completed": sum(v["completed"] or 0 for v in per_model.values()),
        "requests_cancelled": sum(v["cancelled"] or 0 for v in per_model.values()),
        "tokens": sum(v["tokens"] or 0 for v in per_model.values()),
        "per_model": per_model,
        "stuck": sum(m.queued + m.running for m in snap.models),
        "invariant_failures": invariant_failures,
        "errors": errors[:20],
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
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    out = asyncio.run(soak(args))
    print(json.dumps(out, indent=2))
    ok = out["stuck"] == 0 and not out["invariant_failures"] and not out["errors"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
