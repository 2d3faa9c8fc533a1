"""The lab driven by Textual's Pilot against a REAL engine on tiny zoo models (sim).

What the user does in the lab must be exactly what the engine does: a slider
moves exactly the layers it shows; preempt/resume from the UI produce the same
events as the API; a launched workload produces tokens; a saved session replays
headless to the same commands.
"""

from __future__ import annotations

import asyncio
import functools
import time

import pytest

from labtui.engine.commands import (
    LaunchWorkload,
    Preempt,
    Resume,
    SetMode,
    SetPrefetch,
    SetResidency,
)
from labtui.tui.app import LabApp
from labtui.tui.widgets.model_card import ModelCard
from labtui.tui.widgets.slider import ResidencySlider

MODEL = "zoo:llama-5m"  # 6 decoder blocks


@pytest.fixture
def engine():
    from labtui.engine import Engine

    eng = Engine(device="sim", memory_gib=2, link="pcie4-x16", host_slowdown=2.0, seed=0)
    eng.load(MODEL, id="a", residency=1.0)
    yield eng
    eng.close()


def run_async(fn):
    """Run an async test body with asyncio (no pytest async plugin needed)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return asyncio.run(fn(*args, **kwargs))

    return wrapper


def last_seq(eng) -> int:
    ev = eng.events_since(0)
    return ev[-1].seq if ev else 0


async def wait_for(pilot, cond, timeout: float = 20.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        await pilot.pause(0.05)
    return cond()


def cmds(eng, cls=None):
    return [c for _, c in eng.command_log if cls is None or isinstance(c, cls)]


def moves(events):
    return [e for e in events if e.kind == "layer_move"]


def test_slider_keys_move_exactly_those_layers(engine, monkeypatch):
    # a longer pause than the lab's 0.4 s, so a loaded CI machine cannot split the burst
    monkeypatch.setattr(ResidencySlider, "DEBOUNCE_S", 1.5)
    asyncio.run(_slider_keys(engine))


async def _slider_keys(engine):
    seq0 = last_seq(engine)
    app = LabApp(engine)
    async with app.run_test(size=(100, 30)) as pilot:
        assert await wait_for(pilot, lambda: app.selected == "a")  # first card selected
        slider = app.query_one(ResidencySlider)
        assert slider.has_focus  # the first card is selected on start
        await pilot.press("left", "left", "left")  # 6 -> 3 layers, one request after 0.4 s
        assert slider.value == 3
        assert await wait_for(pilot, lambda: engine.snapshot().model("a").layer_cells == "RRRSSS")
        await pilot.pause(0.6)
        moved = moves(engine.events_since(seq0))
        assert sorted(e.data["layer"] for e in moved) == [3, 4, 5]
        assert {(e.data["direction"], e.data["reason"]) for e in moved} == {("d2h", "residency")}
        assert cmds(engine, SetResidency) == [SetResidency(model="a", residency=0.5)]
        # the card shows what the engine reports
        assert app.query_one(ModelCard).layer_map.cells == "RRRSSS"


@run_async
async def test_slider_drag_applies_once_on_release(engine):
    app = LabApp(engine)
    async with app.run_test(size=(100, 30)) as pilot:
        assert await wait_for(pilot, lambda: app.selected == "a")  # first card selected
        slider = app.query_one(ResidencySlider)
        track = slider._track_width()
        knob_x = track - 1  # 6/6 layers: knob at the right end of the track
        await pilot.mouse_down(slider, offset=(knob_x, 0))
        for x in (knob_x - 5, track // 2, track // 3, 2):  # drag left, pausing on the way
            await pilot.hover(slider, offset=(x, 0))
            await pilot.pause(0.5)  # longer than the debounce: still nothing may be sent
        assert cmds(engine, SetResidency) == []
        await pilot.hover(slider, offset=(0, 0))
        await pilot.mouse_up(slider, offset=(0, 0))
        assert await wait_for(pilot, lambda: engine.snapshot().model("a").layer_cells == "SSSSSS")
        await pilot.pause(0.6)
        assert cmds(engine, SetResidency) == [SetResidency(model="a", residency=0.0)]


async def _ui_preempt_resume(pilot, app, eng) -> None:
    await pilot.press("p")
    await pilot.pause(0.2)
    await pilot.click("#weights-disk")
    await pilot.click("#ok")
    assert await wait_for(pilot, lambda: eng.snapshot().model("a").state == "preempted")
    await pilot.press("r")
    assert await wait_for(
        pilot,
        lambda: (lp := eng.snapshot().model("a").last_preemption) is not None and lp.complete,
    )
    await pilot.pause(0.3)


def _shape(events):
    keep = ("layer_move", "preempt", "resume")
    out = []
    for e in events:
        if e.kind not in keep:
            continue
        d = e.data
        out.append(
            (
                e.kind,
                d.get("layer"),
                d.get("what"),
                d.get("direction"),
                d.get("reason"),
                d.get("bytes"),
                d.get("kv"),
                d.get("weights"),
            )
        )
    return out


@run_async
async def test_preempt_resume_from_ui_matches_api(engine):
    from labtui.engine import Engine

    seq0 = last_seq(engine)
    app = LabApp(engine)
    async with app.run_test(size=(100, 30)) as pilot:
        assert await wait_for(pilot, lambda: app.selected == "a")  # first card selected
        await _ui_preempt_resume(pilot, app, engine)
        # the four-phase breakdown is on the card
        card = app.query_one(ModelCard)
        assert card.phase_bar.display and card.phase_bar.report.complete
    ui_events = engine.events_since(seq0)

    with Engine(device="sim", memory_gib=2, link="pcie4-x16", host_slowdown=2.0, seed=0) as api:
        api.load(MODEL, id="a", residency=1.0)
        s0 = last_seq(api)
        api.preempt("a", kv="swap", weights="disk")
        api.resume("a")
        api_events = api.events_since(s0)
        assert cmds(api)[1:] == cmds(engine)[1:]
    assert cmds(engine)[1:] == [Preempt(model="a", kv="swap", weights="disk"), Resume(model="a")]
    assert _shape(ui_events) == _shape(api_events)
    assert [e.kind for e in ui_events if e.kind in ("preempt", "resume")] == ["preempt", "resume"]


@run_async
async def test_launched_workload_produces_tokens(engine):
    app = LabApp(engine)
    async with app.run_test(size=(100, 30)) as pilot:
        assert await wait_for(pilot, lambda: app.selected == "a")  # first card selected
        await pilot.press("w")
        await pilot.pause(0.2)
        modal = app.screen
        modal.query_one("#requests").value = "0"  # invalid: refused in the dialog, nothing sent
        await pilot.click("#ok")
        await pilot.pause(0.2)
        assert app.screen is modal and cmds(engine, LaunchWorkload) == []
        modal.query_one("#requests").value = "2"
        modal.query_one("#prompt").value = "16"
        modal.query_one("#output").value = "8"
        await pilot.click("#ok")
        assert await wait_for(pilot, lambda: engine.snapshot().model("a").completed >= 2, 60)
        await pilot.pause(0.5)
        m = engine.snapshot().model("a")
        assert m.tokens_generated >= 16
        assert cmds(engine, LaunchWorkload) == [
            LaunchWorkload(model="a", concurrency=2, requests=2, prompt_tokens=16, max_new_tokens=8)
        ]
        assert m.last_text and "no output yet" not in str(app.query_one(".card-text").render())


@run_async
async def test_saved_session_replays_headless_to_the_same_commands(engine, tmp_path):
    from labtui.engine import Engine
    from labtui.scenario.runner import run_scenario
    from labtui.scenario.schema import load_scenario

    app = LabApp(engine)
    path = tmp_path / "session.toml"
    async with app.run_test(size=(100, 30)) as pilot:
        assert await wait_for(pilot, lambda: app.selected == "a")  # first card selected
        await pilot.press("m")  # offload mode -> host
        assert await wait_for(pilot, lambda: engine.snapshot().model("a").mode == "host")
        await pilot.press("left", "left")  # 6 -> 4 layers
        assert await wait_for(pilot, lambda: engine.snapshot().model("a").resident_layers == 4)
        await pilot.press("f")  # prefetch off
        assert await wait_for(pilot, lambda: not engine.snapshot().model("a").prefetch)
        await pilot.press("w")
        await pilot.pause(0.2)
        app.screen.query_one("#requests").value = "2"
        app.screen.query_one("#output").value = "8"
        await pilot.click("#ok")
        assert await wait_for(pilot, lambda: engine.snapshot().model("a").completed >= 2, 60)
        await _ui_preempt_resume(pilot, app, engine)
        await pilot.press("s")
        await pilot.pause(0.2)
        app.screen.query_one("#path").value = str(path)
        await pilot.click("#ok")
        assert await wait_for(pilot, path.exists, 5)

    recorded = cmds(engine)
    assert [type(c) for c in recorded[1:]] == [
        SetMode,
        SetResidency,
        SetPrefetch,
        LaunchWorkload,
        Preempt,
        Resume,
    ]
    scn = load_scenario(path)
    engines = []

    def factory(**kw):
        eng = Engine(**kw)
        engines.append(eng)
        return eng

    run_scenario(scn, out=tmp_path / "bundle", progress=False, engine_factory=factory)
    assert len(engines) == 1
    assert cmds(engines[0]) == recorded


SCENARIO = """
[lab]
name = "tiny-replay"

[device]
kind = "sim"
memory_gib = 2
link = "pcie4-x16"
host_slowdown = 2.0

[[models]]
id = "a"
source = "zoo:llama-5m"
residency = 1.0

[[timeline]]
at = 0.3
action = "set_residency"
model = "a"
residency = 0.5

[[timeline]]
at = 0.6
action = "preempt"
model = "a"
kv = "drop"
weights = "host"

[[timeline]]
at = 0.9
action = "resume"
model = "a"

[[timeline]]
at = 1.0
action = "note"
text = "replayed in the lab"
"""


@run_async
async def test_open_scenario_replays_its_timeline(tmp_path):
    from labtui.engine import Engine
    from labtui.scenario.schema import load_scenario
    from labtui.tui.bridge import engine_kwargs

    path = tmp_path / "tiny.toml"
    path.write_text(SCENARIO)
    scn = load_scenario(path)
    eng = Engine(**engine_kwargs(scn, None))
    try:
        app = LabApp(eng, scenario=scn)
        async with app.run_test(size=(100, 30)) as pilot:
            assert await wait_for(pilot, lambda: eng.snapshot().note == "replayed in the lab", 30)
            await pilot.pause(0.5)
            assert app.replay is not None and app.replay.status == ""
            card = app.query_one(ModelCard)
            assert card.layer_map.cells == "RRRSSS"
            assert card.phase_bar.report is not None and card.phase_bar.report.kv == "drop"
        assert [c.action for c in cmds(eng)] == [
            "load",
            "set_residency",
            "preempt",
            "resume",
            "note",
        ]
    finally:
        eng.close()


def test_open_bad_scenario_is_one_line_exit_2(tmp_path, capsys):
    from labtui.cli import main

    bad = tmp_path / "bad.toml"
    bad.write_text('[[models]]\nsource = "zoo:llama-5m"\nresidency = 2.0\n')
    assert main(["open", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "residency" in err[0]


@run_async
async def test_load_and_unload_from_the_lab(engine):
    app = LabApp(engine)
    async with app.run_test(size=(100, 30)) as pilot:
        assert await wait_for(pilot, lambda: app.selected == "a")
        await pilot.press("l")
        await pilot.pause(0.2)
        app.screen.query_one("#source").value = "zoo:llama-5m"
        app.screen.query_one("#model-id").value = "b"
        app.screen.query_one("#residency").value = "0.5"
        await pilot.click("#ok")
        assert await wait_for(pilot, lambda: len(app.query(ModelCard)) == 2, 30)
        assert await wait_for(
            pilot,
            lambda: (m := engine.snapshot().model("b")) is not None and m.layer_cells == "RRRSSS",
            30,
        )
        # a click on a card selects it (clicked again if the new card was still moving
        # into place when the pilot computed where to click)
        for _ in range(5):
            await pilot.pause(0.3)
            await pilot.click("#card-b", offset=(4, 2))
            if await wait_for(pilot, lambda: app.selected == "b", 1.0):
                break
        assert app.selected == "b"
        await pilot.press("u")
        await pilot.pause(0.2)
        await pilot.click("#ok")
        assert await wait_for(pilot, lambda: engine.snapshot().model("b") is None, 30)
        assert await wait_for(pilot, lambda: len(app.query(ModelCard)) == 1)
    assert [c.action for c in cmds(engine)] == ["load", "load", "unload"]


# ---------------------------------------------------------------- pin toggle and the planner's plan


@run_async
async def test_pin_toggle_key_and_click_pin_the_model_in_the_engine(engine):
    from labtui.engine.commands import SetPin
    from labtui.tui.widgets.plan import PinToggle

    app = LabApp(engine)
    async with app.run_test(size=(100, 30)) as pilot:
        assert await wait_for(pilot, lambda: app.selected == "a")
        toggle = app.query_one(PinToggle)
        assert "pin" in str(toggle.render()) and "pinned" not in str(toggle.render())
        await pilot.press("k")
        assert await wait_for(pilot, lambda: engine.snapshot().model("a").pin)
        assert await wait_for(pilot, lambda: "pinned" in str(toggle.render()))
        await pilot.click(PinToggle)  # the mouse unpins it again
        assert await wait_for(pilot, lambda: not engine.snapshot().model("a").pin)
        assert cmds(engine, SetPin) == [SetPin(model="a", pin=True), SetPin(model="a", pin=False)]
        assert await wait_for(pilot, lambda: "pinned" not in str(toggle.render()))  # the card caught up
        # and a policy never evicts it while pinned: the engine's guard reads it live
        await pilot.press("k")
        assert await wait_for(pilot, lambda: engine.snapshot().model("a").pin)
        assert engine._policy_can_evict("a") is False


@run_async
async def test_plan_line_and_target_marker_show_the_planners_plan():
    from labtui.engine import Engine
    from labtui.tui.widgets.plan import PlanLine

    eng = Engine(device="sim", memory_gib=2, link="pcie4-x16", host_slowdown=2.0, seed=0)
    try:
        eng.load(MODEL, id="a", residency=1.0)
        app = LabApp(eng)
        async with app.run_test(size=(100, 30)) as pilot:
            assert await wait_for(pilot, lambda: app.selected == "a")
            line = app.query_one(PlanLine)
            assert not line.display  # fcfs: no plan, no line
            eng.set_policy("planner")
            eng.generate("a", [1, 2, 3], max_new_tokens=8, timeout=60)
            assert await wait_for(pilot, lambda: eng.snapshot().model("a").plan is not None)
            plan = eng.snapshot().model("a").plan
            assert await wait_for(pilot, lambda: line.display)
            shown = str(line.render())
            assert shown.startswith("plan ") and plan.binding in shown
            assert ("whole" if plan.resident == plan.n_layers else f"{plan.resident}/{plan.n_layers}") in shown
            slider = app.query_one(ResidencySlider)
            assert await wait_for(pilot, lambda: slider.target == eng.snapshot().model("a").plan.resident)
            eng.set_policy("fcfs")
            assert await wait_for(pilot, lambda: not line.display)
            assert slider.target is None
    finally:
        eng.close()
