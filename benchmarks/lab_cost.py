"""The lab's cost to decode: the same engine and workload, with the lab open
(LabApp headless through Textual's Pilot, at 80x24 and 200x50) and without it,
in interleaved windows; the figure is the ratio of decode tok/s (tokens the
engine generated per wall second in the window). The lab's rendering shares the
process, and the GIL, with the engine's worker: this is what a user pays for
watching. Beside it, the lab thread's own CPU seconds per wall second
(``ui_cpu_share``), the mechanism of that cost and a far steadier figure than a
tok/s ratio on a shared machine. Prints one JSON object (wall and process CPU
time beside each window).

    python benchmarks/lab_cost.py                      # 3 reps x 10 s windows
    python benchmarks/lab_cost.py --reps 5 --window-s 8 --model llama-30m
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SIZES = {"80x24": (80, 24), "200x50": (200, 50)}


def _tokens(eng) -> int:
    return sum(m.tokens_generated for m in eng.snapshot().models)


async def _window(eng, seconds: float, size: tuple[int, int] | None) -> dict:
    """Tokens per second over `seconds` of steady decode, the lab open at `size`
    (None: headless, the event loop just sleeps)."""

    async def measure() -> dict:
        eng.fresh_snapshot()
        n0, t0, c0, u0 = _tokens(eng), time.perf_counter(), time.process_time(), time.thread_time()
        await asyncio.sleep(seconds)
        eng.fresh_snapshot()
        n1, t1, c1, u1 = _tokens(eng), time.perf_counter(), time.process_time(), time.thread_time()
        # the event loop's thread is the lab's (Pilot runs the app on this loop)
        return {"tok_s": (n1 - n0) / (t1 - t0), "wall_s": t1 - t0, "cpu_s": c1 - c0,
                "ui_cpu_share": (u1 - u0) / (t1 - t0)}

    if size is None:
        return await measure()
    from labtui.tui.app import LabApp

    app = LabApp(eng)
    async with app.run_test(size=size) as pilot:
        await pilot.pause(2.0)  # first frames and card mounts are not steady state
        out = await measure()
    # the closed app's widgets are garbage now: collect them here, not in the
    # next window (whose engine thread would otherwise pay for this one's teardown)
    gc.collect()
    return out


async def run(args) -> dict:
    from labtui.engine import Engine
    from labtui.tui.trim import tune_malloc

    tune_malloc()  # as the lab does before its engine starts; the headless windows share it
    eng = Engine(device="sim", memory_gib=2, link="pcie4-x16", seed=0)
    names = [n.strip() for n in args.model.split(",") if n.strip()]
    for i, name in enumerate(names):
        eng.load(f"zoo:{name}", id=f"m{i}")
        # closed workload, enough requests for the whole run: decode never pauses
        eng.launch_workload(f"m{i}", concurrency=4, requests=100_000, prompt_tokens=16, max_new_tokens=64)
    await asyncio.sleep(2.0)  # warm-up: batch full, caches warm
    raw: dict[str, list[dict]] = {"headless": [], **{k: [] for k in SIZES}}
    for _ in range(args.reps):  # interleaved: drift of the shared machine hits all alike
        for key in ("headless", *SIZES):
            raw[key].append(await _window(eng, args.window_s, SIZES.get(key)))
    eng.close()
    base = statistics.median(w["tok_s"] for w in raw["headless"])
    out: dict = {"models": names, "window_s": args.window_s, "reps": args.reps,
                 "headless_tok_s": round(base, 1)}
    for key in SIZES:
        med = statistics.median(w["tok_s"] for w in raw[key])
        out[f"lab_{key}_tok_s"] = round(med, 1)
        out[f"lab_{key}_ratio"] = round(med / base, 3) if base else None
        out[f"lab_{key}_ui_cpu_share"] = round(statistics.median(w["ui_cpu_share"] for w in raw[key]), 4)
    out["windows"] = {k: [{kk: round(vv, 3) for kk, vv in w.items()} for w in v] for k, v in raw.items()}
    out["cpu_count"] = os.cpu_count()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="llama-30m", help="comma-separated zoo names")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--window-s", type=float, default=10.0)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = p.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    print(json.dumps(asyncio.run(run(args)), indent=1))


if __name__ == "__main__":
    main()
