"""Layer map: one cell per decoder block (snapshot.layer_cells).

Glyph *and* colour encode the state, so the map reads in monochrome too:
█ resident on the accelerator, ▓ streamed (host weights copied in per forward),
░ runs on the host, ▒ moving now; while preempted, ▄ weights parked in host RAM,
▁ weights released (reloaded from the checkpoint on disk). The lower the block,
the further its weights are from the accelerator.
"""

from __future__ import annotations

import math

from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

from labtui.engine.snapshot import (
    CELL_HOST,
    CELL_MOVING,
    CELL_PARKED,
    CELL_RELEASED,
    CELL_RESIDENT,
    CELL_STREAM,
)

ORDER = (CELL_RESIDENT, CELL_STREAM, CELL_HOST, CELL_MOVING, CELL_PARKED, CELL_RELEASED)
GLYPH = {
    CELL_RESIDENT: "█",
    CELL_STREAM: "▓",
    CELL_HOST: "░",
    CELL_MOVING: "▒",
    CELL_PARKED: "▄",
    CELL_RELEASED: "▁",
}
NAME = {
    CELL_RESIDENT: "resident",
    CELL_STREAM: "streamed",
    CELL_HOST: "runs on host",
    CELL_MOVING: "moving",
    CELL_PARKED: "preempted, in host RAM",
    CELL_RELEASED: "preempted, on disk",
}
STYLE = {
    CELL_RESIDENT: "layermap--resident",
    CELL_STREAM: "layermap--stream",
    CELL_HOST: "layermap--host",
    CELL_MOVING: "layermap--moving",
    CELL_PARKED: "layermap--parked",
    CELL_RELEASED: "layermap--released",
}
LEGEND = "  ".join(f"{GLYPH[c]} {NAME[c]}" for c in ORDER)


def cell_width(n: int, width: int) -> int:
    """Cells per block: up to 3 ("██ ") when there is room, "█ " at 2, solid at 1."""
    if n <= 0:
        return 1
    return max(1, min(3, width // n))


class LayerMap(Widget):
    COMPONENT_CLASSES = set(STYLE.values())

    # A repaint when cells change; a layout only when their number does (the map's
    # height depends on it): a layer move must not re-layout the whole screen.
    cells: reactive[str] = reactive("")

    def __init__(self, cells: str = "", **kw) -> None:
        super().__init__(**kw)
        self.set_reactive(LayerMap.cells, cells)
        self.tooltip = LEGEND

    def watch_cells(self, old: str, new: str) -> None:
        if len(old) != len(new):
            self.refresh(layout=True)

    def _style_for(self, c: str):
        return self.get_component_rich_style(STYLE.get(c, "layermap--host"))

    def get_content_height(self, container, viewport, width: int) -> int:
        n = len(self.cells)
        if n == 0 or width <= 0:
            return 1
        cw = cell_width(n, width)
        per_line = max(1, width // cw)
        return math.ceil(n / per_line)

    def render(self) -> Text:
        width = max(1, self.content_size.width)
        n = len(self.cells)
        t = Text(no_wrap=False)
        if n == 0:
            return t
        cw = cell_width(n, width)
        per_line = max(1, width // cw)
        styles = {c: self._style_for(c) for c in set(self.cells)}
        for i, c in enumerate(self.cells):
            if i and i % per_line == 0:
                t.append("\n")
            glyph = GLYPH.get(c, "?")
            if cw >= 2:
                t.append(glyph * (cw - 1), styles[c])
                t.append(" ")
            else:
                t.append(glyph * cw, styles[c])
        return t
