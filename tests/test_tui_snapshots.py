"""SVG snapshot tests of the lab's main screens, on hand-built engine snapshots.

A FrozenEngine shows fixed EngineSnapshot/Event objects (labtui.tui.frozen), so
nothing here depends on clocks, torch or live tok/s; every one of those states is
one the real engine can produce (tests/test_display_truth.py checks them). Update the baselines with
`pytest tests/test_tui_snapshots.py --snapshot-update` and look at the report.
"""

from __future__ import annotations

import pytest

from labtui.tui.app import LabApp
from labtui.tui.frozen import FrozenEngine, demo_events, demo_snapshot, seed_chart

ZOO_ROWS = [
    {
        "name": "llama-5m",
        "family": "llama",
        "params": 5_200_000,
        "layers": 6,
        "bytes": 21 << 20,
        "built": True,
    },
    {
        "name": "llama-30m",
        "family": "llama",
        "params": 30_100_000,
        "layers": 8,
        "bytes": 120 << 20,
        "built": True,
    },
    {
        "name": "qwen3-150m",
        "family": "qwen3",
        "params": 151_000_000,
        "layers": 16,
        "bytes": 302 << 20,
        "built": False,
    },
]


def frozen_app(kind: str = "default") -> LabApp:
    app = LabApp(FrozenEngine(demo_snapshot(kind), demo_events(kind)))
    app._zoo_rows = ZOO_ROWS
    return app


async def _seed(pilot) -> None:
    await pilot.pause()
    seed_chart(pilot.app)
    await pilot.pause()


@pytest.mark.parametrize("size", [(80, 24), (200, 50)], ids=["80x24", "200x50"])
def test_default_lab(snap_compare, size):
    assert snap_compare(frozen_app(), terminal_size=size, run_before=_seed)


def test_model_mid_move(snap_compare):
    assert snap_compare(frozen_app("moving"), terminal_size=(120, 36), run_before=_seed)


def test_preemption_breakdown(snap_compare):
    assert snap_compare(frozen_app("preempted"), terminal_size=(80, 24))


def test_preemption_breakdown_wide(snap_compare):
    assert snap_compare(frozen_app("preempted"), terminal_size=(200, 50), run_before=_seed)


@pytest.mark.parametrize("view", ["2", "3", "4"], ids=["memory", "chart", "events"])
def test_narrow_views(snap_compare, view):
    assert snap_compare(frozen_app(), terminal_size=(80, 24), press=[view], run_before=_seed)


@pytest.mark.parametrize("size", [(80, 24), (200, 50)], ids=["80x24", "200x50"])
def test_preempted_weights_on_host_and_on_disk(snap_compare, size):
    # small's weights parked in host RAM (▄), big's released to disk (▁)
    assert snap_compare(frozen_app("preempted-disk"), terminal_size=size)


def test_no_models(snap_compare):
    assert snap_compare(frozen_app("empty"), terminal_size=(80, 24))


@pytest.mark.parametrize("key", ["p", "w", "l", "o", "d", "question_mark"])
def test_dialogs_80x24(snap_compare, key):
    assert snap_compare(frozen_app(), terminal_size=(80, 24), press=[key])


def _planner_app() -> LabApp:
    # the default lab under the planner: its plan on each card, small pinned (◆),
    # big's slider marked where the planner takes it (▾ at 12/16)
    import dataclasses

    from labtui.engine.snapshot import PlanRow

    snap = demo_snapshot()
    plans = {
        "small": PlanRow("small", 8, 8, "stream", 160.0, 0.007, "slo met"),
        "big": PlanRow("big", 12, 16, "host", 55.0, 0.026, "budget"),
    }
    models = tuple(
        dataclasses.replace(m, plan=plans.get(m.id), pin=m.id == "small", min_residency=0.5 if m.id == "small" else 0.0)
        for m in snap.models
    )
    app = LabApp(FrozenEngine(dataclasses.replace(snap, policy="planner", models=models), demo_events()))
    app._zoo_rows = ZOO_ROWS
    return app


@pytest.mark.parametrize("size", [(80, 24), (200, 50)], ids=["80x24", "200x50"])
def test_planner_plan_and_pins(snap_compare, size):
    assert snap_compare(_planner_app(), terminal_size=size, run_before=_seed)
