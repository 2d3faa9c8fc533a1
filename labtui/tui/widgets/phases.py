"""A preemption's cost in the study's four phases (+ recompute), as one stacked bar.

The study's finding (docs/study.md) (reload dominates, KV moves are ~1%) is visible at a glance:
each non-zero phase gets at least one cell so small phases never vanish.
"""

from __future__ import annotations

from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

from labtui.engine.snapshot import PhaseReport
from labtui.tui.format import fmt_bytes, fmt_s

PHASES = ("kv_out", "release", "reload", "kv_in", "recompute")


def allocate(values: list[float], width: int) -> list[int]:
    """Split ``width`` cells among ``values`` in proportion, >= 1 cell per non-zero value."""
    total = sum(values)
    if total <= 0 or width <= 0:
        return [0] * len(values)
    nonzero = [i for i, v in enumerate(values) if v > 0]
    cells = [0] * len(values)
    width = max(width, len(nonzero))
    spare = width - len(nonzero)
    raw = {i: values[i] / total * spare for i in nonzero}
    for i in nonzero:
        cells[i] = 1 + int(raw[i])
    left = width - sum(cells)
    for i in sorted(nonzero, key=lambda i: raw[i] - int(raw[i]), reverse=True)[:left]:
        cells[i] += 1
    return cells


class PhaseBar(Widget):
    COMPONENT_CLASSES = {f"phase--{p}" for p in PHASES} | {"phase--title", "phase--dim"}

    report: reactive[PhaseReport | None] = reactive(None, layout=True)

    def get_content_height(self, container, viewport, width: int) -> int:
        return 3 if self.report is not None else 0

    def render(self) -> Text:
        r = self.report
        t = Text(no_wrap=True, overflow="ellipsis")
        if r is None:
            return t
        width = max(10, self.content_size.width)
        title = self.get_component_rich_style("phase--title")
        dim = self.get_component_rich_style("phase--dim")
        state = "resumed" if r.complete else "paused"
        # Until resume completes, only the pause's phases (kv_out, release) are known.
        values = [r.kv_out_s, r.release_s, r.reload_s, r.kv_in_s, r.recompute_s]
        if not r.complete:
            values = values[:2] + [0.0, 0.0, 0.0]
        t.append(f"{state} ", title)
        t.append(f"kv={r.kv} weights={r.weights} @{r.at_tokens} tok  ", dim)
        t.append(f"cost {fmt_s(sum(values))}" + ("" if r.complete else " so far"), title)
        if r.complete and r.paused_s and width >= 64:
            t.append(f"  (paused {fmt_s(r.paused_s)})", dim)
        t.append("\n")
        cells = allocate(values, width)
        for p, n in zip(PHASES, cells, strict=True):
            if n:
                t.append("█" * n, self.get_component_rich_style(f"phase--{p}"))
        if not any(cells):
            t.append("·" * width, dim)
        t.append("\n")
        parts = [
            ("kv_out", r.kv_out_s, r.kv_out_bytes),
            ("release", r.release_s, r.release_bytes),
            ("reload", r.reload_s, r.reload_bytes),
            ("kv_in", r.kv_in_s, r.kv_in_bytes),
        ]
        if r.recompute_s or r.kv == "drop":
            parts.append(("recompute", r.recompute_s, 0))
        legend = Text(no_wrap=True, overflow="ellipsis")
        for name, s, b in parts:
            legend.append("■ ", self.get_component_rich_style(f"phase--{name}"))
            pending = not r.complete and name in ("reload", "kv_in", "recompute")
            legend.append(f"{name} {'pending' if pending else fmt_s(s)}")
            if b and width >= 70 and not pending:
                legend.append(f" {fmt_bytes(b, 0)}", dim)
            legend.append("  ")
        legend.rstrip()
        legend.truncate(width, overflow="ellipsis")
        t.append_text(legend)
        return t
