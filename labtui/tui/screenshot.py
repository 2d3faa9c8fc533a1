"""`labtui screenshot [--out screenshots/]`: SVG screenshots of the lab's main states.

A real engine on the simulated accelerator, two zoo models, driven through the
lab's own keys by Textual's Pilot (App.run_test), saved with App.save_screenshot:

- lab-default.svg / lab-default-80x24.svg: the opening scene, numbers moving;
- lab-chart.svg / lab-chart-80x24.svg: decode tok/s vs residency, built by
  stepping both models' sliders down as a user would;
- lab-moving.svg: a model mid-move (the link slowed so the move is visible);
- lab-preemption.svg: a preemption (kv swap, weights disk) and its resume, with
  the four-phase breakdown;
- lab-preempted.svg / lab-preempted-80x24.svg: both models preempted at once,
  llama's weights parked in host RAM (▄), qwen's released to disk (▁);
- lab-load-cached-80x24.svg: the load dialog listing a Hugging Face cache (a
  temporary one holding copies of two zoo checkpoints, laid out as huggingface_hub
  writes it), filtered by typing "hf";
- lab-tour-paused-80x24.svg: `labtui open tour` on a fresh engine, stepped to its
  second caption and paused.

Timings are real, so numbers differ between runs; the states are the same.
Takes about a minute.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from pathlib import Path

from labtui.errors import LabError, one_line

WIDE = (200, 50)
NARROW = (80, 24)


def cli_screenshot(args) -> int:
    out = Path(getattr(args, "out", None) or "screenshots")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise LabError(f"cannot create {out}: {one_line(e)}") from None
    written = asyncio.run(shoot(out, log=lambda m: print(m, file=sys.stderr)))
    for p in written:
        print(p)
    return 0


def make_engine():
    from labtui.engine import Engine

    eng = Engine(device="sim", memory_gib=2, link="pcie4-x16", host_slowdown=4.0, seed=0)
    eng.load("zoo:llama-30m", id="llama", residency=1.0, offload="stream")
    eng.load("zoo:qwen3-10m", id="qwen", residency=0.5, offload="stream")
    for m in ("llama", "qwen"):
        eng.launch_workload(
            m, kind="closed", concurrency=1, requests=100_000, prompt_tokens=48, max_new_tokens=96
        )
    return eng


async def wait_for(pilot, cond: Callable[[], bool], timeout: float, step: float = 0.1) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        await pilot.pause(step)
    return cond()


async def set_layers(pilot, app, model: str, k: int) -> None:
    """Move a model's slider to k layers, as one request (the slider's own action, so
    a loaded machine cannot split the key presses across the debounce)."""
    card = app._card(model)
    card.slider.focus()
    await pilot.pause()
    card.slider.action_set_to(k)
    await pilot.pause(card.slider.DEBOUNCE_S + 0.1)


async def _preempt_both(pilot, eng) -> None:
    eng.preempt("llama", kv="swap", weights="host")
    eng.preempt("qwen", kv="drop", weights="disk")
    await pilot.pause(1.5)  # the lab's next refreshes


def _layers(eng, model: str) -> int:
    m = eng.snapshot().model(model)
    return m.resident_layers if m else -1


def demo_hub_cache(root: Path, names: tuple[str, ...] = ("llama-30m", "gpt2-10m")) -> Path:
    """A Hugging Face cache under `root` holding copies of zoo checkpoints as
    `zoo-copies/NAME` (blobs, refs/main, snapshots/<hash>/ symlinks, as
    huggingface_hub lays them out), for the load dialog's screenshot."""
    import hashlib
    import os

    from labtui.models import zoo

    hub = root / "hub"
    for name in names:
        src = zoo.build(name)
        repo = hub / f"models--zoo-copies--{name}"
        commit = hashlib.sha1(name.encode()).hexdigest()
        snap = repo / "snapshots" / commit
        snap.mkdir(parents=True, exist_ok=True)
        (repo / "blobs").mkdir(exist_ok=True)
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / "main").write_text(commit)
        for f in sorted(p for p in src.iterdir() if p.is_file()):
            data = f.read_bytes()
            blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
            blob.write_bytes(data)
            if not (snap / f.name).exists():
                os.symlink(os.path.relpath(blob, snap), snap / f.name)
    return hub


async def shoot_teaching(out: Path, save, log: Callable[[str], None]) -> None:
    """The tour paused on a caption, and the load dialog with a cached checkpoint list."""
    import os
    import tempfile

    from labtui.engine import Engine
    from labtui.scenario.schema import load_scenario
    from labtui.tui.app import LabApp
    from labtui.tui.bridge import engine_kwargs

    scn = load_scenario("tour")
    eng = Engine(**engine_kwargs(scn, "sim"))
    old = os.environ.get("HF_HUB_CACHE")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            os.environ["HF_HUB_CACHE"] = str(demo_hub_cache(Path(tmp)))
            log("the tour, stepped to its second caption and paused…")
            app = LabApp(eng, scn)
            async with app.run_test(size=NARROW) as pilot:
                await wait_for(pilot, lambda: bool(app._captions), 60)
                await pilot.press("space")
                await pilot.press("right_square_bracket")
                await wait_for(pilot, lambda: len(app._captions) >= 2, 10)
                await wait_for(pilot, lambda: _layers(eng, "llama") == 4, 20)
                await pilot.pause(2.0)
                save(app, "lab-tour-paused-80x24.svg")

                log("the load dialog with a Hugging Face cache…")
                await pilot.press("l")
                await wait_for(pilot, lambda: app._cached_rows is not None, 30)
                for ch in "hf":
                    await pilot.press(ch)
                await pilot.pause(0.5)
                save(app, "lab-load-cached-80x24.svg")
                await pilot.press("escape")
    finally:
        if old is None:
            os.environ.pop("HF_HUB_CACHE", None)
        else:
            os.environ["HF_HUB_CACHE"] = old
        eng.close()


async def shoot(out: Path, log: Callable[[str], None] = lambda m: None) -> list[Path]:
    from labtui.tui.app import LabApp
    from labtui.tui.widgets.chart import MIN_DECODE_S

    log("starting the engine (sim, llama-30m + qwen3-10m)…")
    eng = make_engine()
    written: list[Path] = []

    def save(app, name: str) -> None:
        path = out / name
        app.save_screenshot(name, path=str(out))
        written.append(path)
        log(f"wrote {path}")

    try:
        app = LabApp(eng)
        async with app.run_test(size=NARROW) as pilot:
            await pilot.pause(5.0)
            save(app, "lab-default-80x24.svg")

        app = LabApp(eng)
        async with app.run_test(size=WIDE) as pilot:
            await pilot.pause(3.0)
            save(app, "lab-default.svg")

            log("building the tok/s vs residency chart (about 30 s)…")
            steps = list(zip([8, 7, 6, 5, 4, 2, 0], [6, 5, 4, 3, 2, 1, 0], strict=True))
            for k_llama, k_qwen in steps:
                await set_layers(pilot, app, "llama", k_llama)
                await set_layers(pilot, app, "qwen", k_qwen)
                await wait_for(
                    pilot,
                    lambda a=k_llama, b=k_qwen: (
                        _layers(eng, "llama") == a and _layers(eng, "qwen") == b
                    ),
                    20,
                )
                # enough decode time at each condition for a point (the model's own
                # time: sharing the CPU with the other model, about twice that)
                await pilot.pause(3 * MIN_DECODE_S + 1.5)
            save(app, "lab-chart.svg")
            chart_points = [(s, dict(s.points)) for s in app.chart_data.series.values()]

            log("a model mid-move (link slowed to 0.02 GB/s)…")
            from labtui.engine.commands import SetDeviceOptions

            await set_layers(pilot, app, "qwen", 6)
            await wait_for(pilot, lambda: _layers(eng, "qwen") == 6, 20)
            # llama runs its non-resident blocks on the host meanwhile, so its decode
            # does not stream weights over the slowed link
            app._card("llama").slider.focus()
            await pilot.press("m")
            await wait_for(pilot, lambda: eng.snapshot().model("llama").mode == "host", 20)
            eng.execute(SetDeviceOptions(link=0.02))
            await set_layers(pilot, app, "llama", 8)
            await wait_for(
                pilot, lambda: "M" in eng.snapshot().model("llama").layer_cells, 20, 0.05
            )
            await pilot.pause(0.8)
            save(app, "lab-moving.svg")
            await wait_for(pilot, lambda: _layers(eng, "llama") == 8, 60)
            eng.execute(SetDeviceOptions(link="pcie4-x16"))
            await pilot.press("m")
            await wait_for(pilot, lambda: eng.snapshot().model("llama").mode == "stream", 20)

            log("preempting llama (kv swap, weights disk) and resuming it…")
            app._card("llama").slider.focus()
            await pilot.pause(2.0)
            await pilot.press("p")
            await pilot.pause(0.3)
            await pilot.click("#weights-disk")
            await pilot.click("#ok")
            await wait_for(pilot, lambda: eng.snapshot().model("llama").state == "preempted", 30)
            await pilot.pause(2.0)
            await pilot.press("r")
            await wait_for(
                pilot,
                lambda: (
                    (lp := eng.snapshot().model("llama").last_preemption) is not None
                    and lp.complete
                ),
                30,
            )
            await pilot.pause(2.0)
            save(app, "lab-preemption.svg")

            log("both models preempted: llama's weights on the host, qwen's on disk…")
            await _preempt_both(pilot, eng)
            save(app, "lab-preempted.svg")
            for m in ("llama", "qwen"):
                eng.resume(m)

        app = LabApp(eng)
        async with app.run_test(size=NARROW) as pilot:
            await pilot.pause(0.5)  # first snapshot: series colours assigned
            await _preempt_both(pilot, eng)
            save(app, "lab-preempted-80x24.svg")
            for m in ("llama", "qwen"):
                eng.resume(m)
            for s, pts in chart_points:
                for k, v in pts.items():
                    app.chart_data.add_point(s.model, k, s.n_layers, v, index=app.series.get(s.model, 0),
                                             mode=s.mode, prefetch=s.prefetch, link=s.link,
                                             host_slowdown=s.host_slowdown)
            await pilot.press("3")
            await pilot.pause(1.0)
            save(app, "lab-chart-80x24.svg")
    finally:
        eng.close()
    await shoot_teaching(out, save, log)
    return written
