"""The lab stays light while open: what an input or a layer move costs on screen,
and the heap handed back to the OS (no torch: a FrozenEngine)."""

from __future__ import annotations

import asyncio
import time

from labtui.tui.app import LabApp
from labtui.tui.frozen import FrozenEngine, demo_events, demo_snapshot
from labtui.tui.trim import HeapTrimmer
from labtui.tui.widgets.layer_map import LayerMap


async def _until(pilot, cond, timeout: float = 5.0) -> bool:
    for _ in range(int(timeout / 0.05)):
        if cond():
            return True
        await pilot.pause(0.05)
    return cond()


def test_focus_changes_do_not_rebuild_the_footer_but_a_dialog_does():
    async def go():
        app = LabApp(FrozenEngine(demo_snapshot(), demo_events()))
        async with app.run_test(size=(100, 30)) as pilot:
            assert await _until(pilot, lambda: app.selected == "small")
            await pilot.pause(0.3)
            keys = list(app.query("FooterKey"))
            assert keys
            await pilot.press("tab")  # focus moves to the other card's slider
            assert await _until(pilot, lambda: app.selected == "big")
            await pilot.pause(0.3)
            assert list(app.query("FooterKey")) == keys  # the same widgets: no recompose
            await pilot.press("p")  # a dialog: other keys, a new footer
            await pilot.pause(0.3)
            await pilot.press("escape")
            await pilot.pause(0.3)
            assert [str(k.description) for k in app.query("FooterKey")] == [str(k.description) for k in keys]

    asyncio.run(go())


def test_a_layer_move_repaints_the_map_without_a_layout():
    async def go():
        app = LabApp(FrozenEngine(demo_snapshot(), demo_events()))
        async with app.run_test(size=(100, 30)) as pilot:
            await pilot.pause(0.3)
            lm = app.query(LayerMap).first()
            n = len(lm.cells)
            await pilot.pause(0.3)
            before = lm._layout_updates
            lm.cells = ("R" if lm.cells[0] != "R" else "S") + lm.cells[1:]
            assert lm._layout_updates == before  # same number of cells: repaint only
            lm.cells = lm.cells + lm.cells[-1]
            assert lm._layout_updates == before + 1 and len(lm.cells) == n + 1

    asyncio.run(go())


def test_heap_trimmer_trims_until_stopped():
    t = HeapTrimmer(period=0.02).start()
    if not t.available:  # not glibc: nothing to trim, nothing started
        t.stop()
        return
    deadline = time.monotonic() + 5
    while t.trims < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    t.stop()
    t._thread.join(1)
    assert t.trims >= 3 and not t._thread.is_alive()


def test_dialogs_do_not_leak_the_footer_keys_they_replace():
    """Each dialog recomposes the footer twice (open, close); the replaced keys must
    be freed, not kept by the footer's data-bind watchers (Textual issue #6666)."""
    import gc

    from textual.widgets._footer import FooterKey

    def live_keys() -> int:
        gc.collect()
        return sum(1 for o in gc.get_objects() if isinstance(o, FooterKey))

    async def go():
        app = LabApp(FrozenEngine(demo_snapshot(), demo_events()))
        async with app.run_test(size=(100, 30)) as pilot:
            assert await _until(pilot, lambda: app.selected == "small")
            await pilot.pause(0.3)
            shown = len(app.query("FooterKey"))
            assert shown
            for _ in range(6):
                await pilot.press("p")  # the preempt dialog: its own keys
                await pilot.pause(0.2)
                await pilot.press("escape")
                await pilot.pause(0.2)
            assert len(app.query("FooterKey")) == shown
            # the main screen's keys and the last dialog's at most, not 12 rebuilds' worth
            assert live_keys() <= 2 * shown + 8

    asyncio.run(go())
