"""Fast tests of the lab's pieces: formatting, folding, chart points, dialogs and
keys on a FrozenEngine (no torch, no clocks)."""

from __future__ import annotations

import asyncio
import functools
from dataclasses import replace

import pytest

from labtui.engine.commands import LaunchWorkload, Preempt, SetResidency
from labtui.engine.events import Event
from labtui.errors import LabError
from labtui.tui.app import LabApp
from labtui.tui.format import device_line, ellipsize, fmt_bytes, fmt_s
from labtui.tui.frozen import FrozenEngine, demo_device, demo_events, demo_model, demo_snapshot
from labtui.tui.validate import build
from labtui.tui.widgets.chart import ChartData
from labtui.tui.widgets.event_log import describe_moves, fold_moves
from labtui.tui.widgets.model_card import metrics_line
from labtui.tui.widgets.phases import allocate
from labtui.tui.widgets.slider import ResidencySlider


def run_async(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return asyncio.run(fn(*args, **kwargs))

    return wrapper


def test_device_line_says_simulated_budget_and_link():
    assert device_line(demo_device()) == (
        "sim (simulated accelerator) · 4.0 GiB budget · link pcie4-x16 25 GB/s"
    )


def test_formatting():
    assert fmt_bytes(1536) == "1.5 KiB" and fmt_bytes(3 * 1024**3) == "3.0 GiB"
    assert fmt_s(0.0042) == "4.2 ms" and fmt_s(12.3) == "12.30 s" and fmt_s(None) == "–"
    assert ellipsize("abcdef", 4) == "abc…" and ellipsize("abc", 4) == "abc"


@pytest.mark.parametrize(
    "values,width", [([0.004, 0.012, 0.42, 0.0036, 0], 40), ([1, 1], 7), ([0, 0], 5)]
)
def test_phase_cells_fill_the_width_and_keep_small_phases(values, width):
    cells = allocate(values, width)
    if sum(values):
        assert sum(cells) == width
    for v, c in zip(values, cells, strict=True):
        assert (c >= 1) == (v > 0)


def test_layer_moves_fold_into_one_line():
    ev = [
        Event(
            i,
            1.0,
            "layer_move",
            {
                "model": "big",
                "layer": i,
                "what": "weights",
                "direction": "d2h",
                "bytes": 1 << 20,
                "seconds": 0.001,
                "gbps": 1.0,
                "reason": "residency",
            },
        )
        for i in range(4, 8)
    ] + [Event(9, 1.1, "residency", {"model": "big", "residency": 0.5})]
    folded = fold_moves(ev)
    assert len(folded) == 2 and isinstance(folded[0], list) and len(folded[0]) == 4
    line = describe_moves(folded[0])
    assert "big L4–L7 weights → host 4 blocks 4.0 MiB" in line and "GB/s" in line


def test_metrics_line_drops_least_important_first():
    m = demo_model()
    wide = metrics_line(m, 200).plain
    narrow = metrics_line(m, 50).plain
    assert "MiB/tok" in wide and "TTFT" in narrow and "MiB/tok" not in narrow


def test_build_gives_one_line_errors():
    with pytest.raises(LabError) as e:
        build(LaunchWorkload, model="a", kind="poisson")
    assert "rate_per_s" in str(e.value) and "\n" not in str(e.value)
    assert build(Preempt, model="a", kv="drop").kv == "drop"


def _snap_with(model, t):
    s = demo_snapshot()
    return replace(s, t=t, models=(model,))


def _key(m, snap):
    return (m.id, m.mode, m.prefetch, snap.device.link, snap.device.host_slowdown)


def test_chart_uses_busy_time_rate_when_engine_reports_decode_work():
    data = ChartData()
    m = replace(demo_model("small", served=50.0), decode_tokens=100, decode_s=1.0)
    s1 = _snap_with(m, 1.0)
    data.observe(s1, {"small": 0})
    m2 = replace(m, decode_tokens=180, decode_s=1.5)  # 80 tokens in 0.5 s of decode
    data.observe(_snap_with(m2, 2.0), {"small": 0})
    assert data.series[_key(m, s1)].points == {8: 160.0}
    # a move starts a new measurement at the new residency
    m3 = replace(m2, layer_cells="RRRRSSSS", decode_tokens=200, decode_s=1.6)
    data.observe(_snap_with(m3, 2.5), {"small": 0})
    assert 4 not in data.series[_key(m, s1)].points


def test_chart_never_averages_two_conditions():
    """Prefetch, link or host slowdown changing mid-measurement starts a new point
    (its own series), the old point keeps the old condition's rate."""
    data = ChartData()
    m = replace(demo_model("small", served=50.0), decode_tokens=0, decode_s=0.0)
    s0 = _snap_with(m, 0.0)
    data.observe(s0, {"small": 0})
    fast = replace(m, decode_tokens=200, decode_s=1.0)  # 200 tok/s with prefetch
    data.observe(_snap_with(fast, 1.0), {"small": 0})
    slow = replace(fast, prefetch=False)
    data.observe(_snap_with(slow, 1.1), {"small": 0})  # the condition changes here
    slow2 = replace(slow, decode_tokens=250, decode_s=2.0)  # 50 tok/s without
    data.observe(_snap_with(slow2, 2.2), {"small": 0})
    assert data.series[_key(fast, s0)].points == {8: 200.0}
    assert data.series[_key(slow, s0)].points == {8: 50.0}  # not (250/2.0 = 125)
    # a slower link: again a fresh measurement
    s3 = replace(_snap_with(slow2, 2.3), device=replace(s0.device, link="1 GB/s"))
    data.observe(s3, {"small": 0})
    s4 = replace(_snap_with(replace(slow2, decode_tokens=260, decode_s=3.0), 3.3), device=s3.device)
    data.observe(s4, {"small": 0})
    assert data.series[_key(slow2, s3)].points == {8: 10.0}
    assert data.series[_key(slow, s0)].points == {8: 50.0}


def test_chart_shows_no_point_before_enough_decode_work():
    data = ChartData()
    m = replace(demo_model("small", served=50.0), decode_tokens=0, decode_s=0.0)
    data.observe(_snap_with(m, 0.0), {"small": 0})
    # 4 tokens in 4 ms: ~1000 tok/s, a first-sample spike; no point yet
    data.observe(_snap_with(replace(m, decode_tokens=4, decode_s=0.004), 0.1), {"small": 0})
    assert all(not s.points and s.current is None for s in data.series.values())


async def wait_for(pilot, cond, timeout: float = 5.0) -> bool:
    for _ in range(int(timeout / 0.05)):
        if cond():
            return True
        await pilot.pause(0.05)
    return cond()


def frozen(kind="default"):
    return FrozenEngine(demo_snapshot(kind), demo_events(kind))


def test_slider_keys_send_one_request_after_the_pause(monkeypatch):
    # a longer pause than the lab's 0.4 s, so a loaded CI machine cannot split the burst
    monkeypatch.setattr(ResidencySlider, "DEBOUNCE_S", 1.5)
    asyncio.run(_slider_keys())


async def _slider_keys():
    eng = frozen()
    app = LabApp(eng)
    async with app.run_test(size=(100, 30)) as pilot:
        assert await wait_for(pilot, lambda: app.selected == "small")
        slider = app.query(ResidencySlider).first()
        assert slider.has_focus and slider.model == "small"
        await pilot.press("left", "left", "left", "left")
        assert eng.submitted == []  # nothing per key
        await pilot.pause(ResidencySlider.DEBOUNCE_S + 0.2)
        assert eng.submitted == [SetResidency(model="small", residency=0.5)]


@run_async
async def test_tab_moves_between_cards_and_keys_act_on_the_selected_one():
    eng = frozen()
    app = LabApp(eng)
    async with app.run_test(size=(100, 30)) as pilot:
        assert await wait_for(pilot, lambda: app.selected == "small")
        await pilot.press("tab")
        assert await wait_for(pilot, lambda: app.selected == "big")
        await pilot.press("f")
        await pilot.press("p")
        await pilot.pause(0.1)
        await pilot.press("p")  # under the dialog, lab keys do nothing
        await pilot.click("#kv-drop")
        await pilot.click("#ok")
        await pilot.pause(0.1)
        names = [type(c).__name__ for c in eng.submitted]
        assert names == ["SetPrefetch", "Preempt"]
        assert eng.submitted[1] == Preempt(model="big", kv="drop", weights="host")


@run_async
async def test_refused_command_is_a_notification_not_a_traceback():
    class Refusing(FrozenEngine):
        def submit_command(self, cmd):
            raise LabError("big: 16/16 layers need 3.1 GiB, only 1.7 GiB free on sim")

    app = LabApp(Refusing(demo_snapshot(), []))
    async with app.run_test(size=(100, 30)) as pilot:
        assert await wait_for(pilot, lambda: app.selected == "small")
        await pilot.press("tab", "end")
        await pilot.pause(ResidencySlider.DEBOUNCE_S + 0.2)
        msgs = [n.message for n in app._notifications]
        assert any("only 1.7 GiB free" in m for m in msgs)
        slider = app.query(ResidencySlider).last()
        assert slider.value == slider.applied == 8  # snapped back to what the engine has


@run_async
async def test_engine_error_event_is_a_notification():
    eng = FrozenEngine(demo_snapshot(), [])
    app = LabApp(eng)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause(0.3)
        eng.add_events([Event(seq=10_000, t=1.0, kind="error",
                              data={"where": "step small", "message": "out of memory on sim"})])
        assert await wait_for(pilot, lambda: any("out of memory on sim" in n.message for n in app._notifications))
        n = next(n for n in app._notifications if "out of memory" in n.message)
        assert n.severity == "error" and "step small" in n.message


@run_async
async def test_busy_engine_shows_as_busy():
    class Stuck(FrozenEngine):
        frozen = False

    snap = replace(demo_snapshot(), busy="moving big L10")
    app = LabApp(Stuck(snap, []))
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause(2.2)
        bar = app.query_one("#devicebar")
        assert "engine busy" in str(bar.render())


@run_async
async def test_help_lists_every_binding():
    from labtui.tui.screens.help import KEYS, HelpScreen

    app = LabApp(frozen())
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        await pilot.press("f1")
        assert isinstance(app.screen, HelpScreen)
    documented = " ".join(k for k, _ in KEYS)
    for b in LabApp.BINDINGS:
        for key in b.key.split(","):
            shown = {"question_mark": "?", "f1": "F1", "right_square_bracket": "]",
                     "left_square_bracket": "["}.get(key, key)
            assert shown in documented, key


@run_async
async def test_invalid_workload_values_send_nothing():
    eng = frozen()
    app = LabApp(eng)
    async with app.run_test(size=(80, 24)) as pilot:
        assert await wait_for(pilot, lambda: app.selected == "small")
        await pilot.press("w")
        await pilot.pause(0.1)
        app.screen.query_one("#kind").value = "poisson"  # needs a rate
        await pilot.click("#ok")
        await pilot.pause(0.1)
        assert eng.submitted == []
        assert any("rate_per_s" in n.message for n in app._notifications)
        rate = app.screen.query_one("#rate")
        rate.value = "2.5"
        rate.focus()
        await pilot.press("enter")  # (the error toast may cover the button now)
        await pilot.pause(0.1)
        assert eng.submitted[0].kind == "poisson" and eng.submitted[0].rate_per_s == 2.5


@run_async
async def test_policy_device_and_cancel_keys_send_commands():
    from labtui.engine.commands import CancelWorkload, SetDeviceOptions, SetPolicy

    eng = frozen()
    app = LabApp(eng)
    async with app.run_test(size=(100, 30)) as pilot:
        assert await wait_for(pilot, lambda: app.selected == "small")
        await pilot.press("o", "down", "enter")  # fcfs -> round_robin
        await pilot.pause(0.1)
        await pilot.press("d")
        await pilot.pause(0.1)
        app.screen.query_one("#gbps").value = "8"
        app.screen.query_one("#memory").value = "3"
        await pilot.click("#ok")
        await pilot.pause(0.1)
        await pilot.press("c")
        await pilot.pause(0.1)
    assert eng.submitted == [
        SetPolicy(policy="round_robin"),
        SetDeviceOptions(link=8.0, memory_gib=3.0, host_slowdown=4.0),
        CancelWorkload(workload="w1"),
    ]


@run_async
async def test_model_output_and_notes_cannot_drive_the_terminal_or_break_svg():
    import xml.etree.ElementTree as ET

    snap = demo_snapshot()
    small = replace(snap.models[0], last_text="ok\x0e then \x1b[31mred\x07 [b]not markup[/b]")
    snap = replace(snap, models=(small,) + snap.models[1:], note="see [red]this[/red]\x0e")
    app = LabApp(FrozenEngine(snap, [Event(1, 1.0, "note", {"text": "a\x1bnote [b]x"})]))
    async with app.run_test(size=(120, 36)) as pilot:
        await pilot.pause(0.3)
        app.notify("path [with] brackets\x0e")
        await pilot.pause(0.1)
        svg = app.export_screenshot()
    ET.fromstring(svg)  # well-formed
    assert (
        "\x1b" not in svg
        and "\x0e" not in svg
        and "[b]not markup[/b]" in svg.replace("&#160;", " ")
    )
