"""Memory panel: the accelerator stacked by model and by kind, allocator, host.

The bars are computed from the snapshot's ledgers (what each model holds, by
kind); the histories are Textual Sparklines of samples the lab keeps itself.
"""

from __future__ import annotations

import time
from collections import deque

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Sparkline, Static

from labtui.engine.snapshot import EngineSnapshot
from labtui.tui.format import GIB, fmt_bytes, fmt_gib
from labtui.tui.widgets.phases import allocate

KINDS = ("weights", "kv", "buffers")
N_SERIES = 6
HISTORY = 240


def accel_budget(snap: EngineSnapshot) -> int:
    d = snap.device
    return d.budget_bytes or d.total_bytes or 1


def accel_used(snap: EngineSnapshot) -> tuple[int, int]:
    """(used bytes, bytes not held by any model: CUDA context, other processes)."""
    models = sum(m.ledger.accel_total for m in snap.models)
    used = max(snap.device.used_bytes, models)
    return used, used - models


def model_parts(snap: EngineSnapshot, series: dict[str, int]) -> list[tuple[int, str]]:
    parts = [
        (m.ledger.accel_total, f"series--{series.get(m.id, 0) % N_SERIES}") for m in snap.models
    ]
    _, other = accel_used(snap)
    if other > 0:
        parts.append((other, "memory--other"))
    return parts


def stacked_bar(
    widget, parts: list[tuple[int, str]], total: int, width: int, free_style: str
) -> Text:
    """A bar of ``width`` cells: each (bytes, component class) part in proportion to
    ``total``, the rest as free space."""
    t = Text(no_wrap=True)
    used = sum(b for b, _ in parts)
    values = [float(b) for b, _ in parts] + [float(max(0, total - used))]
    cells = allocate(values, width) if total > 0 else [0] * len(values)
    for (_, cls), n in zip(parts, cells[:-1], strict=True):
        t.append("█" * n, widget.get_component_rich_style(cls))
    t.append("░" * cells[-1], widget.get_component_rich_style(free_style))
    return t


class MemoryBars(Static):
    """The text part of the memory panel (bars and figures)."""

    COMPONENT_CLASSES = (
        {f"series--{i}" for i in range(N_SERIES)}
        | {f"kind--{k}" for k in KINDS}
        | {"memory--free", "memory--label", "memory--other"}
    )

    def __init__(self, **kw) -> None:
        super().__init__("", **kw)
        self._snap: EngineSnapshot | None = None
        self._series: dict[str, int] = {}
        self._shown = ""

    def show(self, snap: EngineSnapshot, series: dict[str, int]) -> None:
        self._snap = snap
        self._series = series
        text = self._render_text()
        if text.plain != self._shown:  # bytes change rarely; skip identical repaints
            self._shown = text.plain
            self.update(text, layout=False)  # always 6 lines: repaint only

    def on_resize(self) -> None:
        if self._snap is not None:
            self._shown = ""
            self.show(self._snap, self._series)

    def _render_text(self) -> Text:
        snap = self._snap
        assert snap is not None
        d = snap.device
        width = max(20, self.content_size.width or 60)
        label = self.get_component_rich_style("memory--label")
        budget = accel_budget(snap)
        used, other = accel_used(snap)
        pct = 100 * used / budget if budget else 0
        t = Text(no_wrap=True, overflow="ellipsis")
        t.append("accelerator " if width >= 44 else "accel ", label)
        t.append(f"{fmt_gib(used)} / {fmt_gib(budget)} GiB", "bold")
        t.append(f" {'budget' if d.simulated else 'total'} ({pct:.0f}%)\n", "dim")

        bar_w = max(8, width - 8)
        parts = model_parts(snap, self._series)
        t.append("model ".ljust(6), label)
        t.append_text(stacked_bar(self, parts, budget, bar_w, "memory--free"))
        t.append("\n")
        legend = Text(no_wrap=True, overflow="ellipsis")
        for m in snap.models:
            cls = f"series--{self._series.get(m.id, 0) % N_SERIES}"
            legend.append("■ ", self.get_component_rich_style(cls))
            legend.append(f"{m.id} {fmt_bytes(m.ledger.accel_total)}  ")
        if other > 0:
            legend.append("■ ", self.get_component_rich_style("memory--other"))
            legend.append(f"other {fmt_bytes(other)}  ")
        legend.append("░ ", self.get_component_rich_style("memory--free"))
        legend.append(f"free {fmt_bytes(max(0, budget - used))}")
        legend.truncate(width - 6, overflow="ellipsis")
        t.append("      ")
        t.append_text(legend)
        t.append("\n")

        kinds = {
            "weights": sum(m.ledger.accel_weights for m in snap.models),
            "kv": sum(m.ledger.accel_kv for m in snap.models),
            "buffers": sum(m.ledger.accel_buffers for m in snap.models),
        }
        t.append("kind ".ljust(6), label)
        t.append_text(
            stacked_bar(
                self, [(kinds[k], f"kind--{k}") for k in KINDS], budget, bar_w, "memory--free"
            )
        )
        t.append("\n")
        legend = Text(no_wrap=True, overflow="ellipsis")
        for k in KINDS:
            legend.append("■ ", self.get_component_rich_style(f"kind--{k}"))
            legend.append(f"{'KV cache' if k == 'kv' else k} {fmt_bytes(kinds[k])}  ")
        legend.rstrip()
        legend.truncate(width - 6, overflow="ellipsis")
        t.append("      ")
        t.append_text(legend)
        t.append("\n")

        t.append("torch ".ljust(6), label)
        a, r = fmt_bytes(d.allocator_allocated), fmt_bytes(d.allocator_reserved)
        t.append(f"allocated {a} · reserved {r}\n" if width >= 46 else f"alloc {a} · resv {r}\n")
        host_w = sum(m.ledger.host_weights for m in snap.models)
        host_kv = sum(m.ledger.host_kv for m in snap.models)
        t.append("host ".ljust(6), label)
        t.append(
            f"RSS {fmt_bytes(d.process_rss)} · RAM {fmt_gib(d.host_used, 1)}/{fmt_gib(d.host_total, 1)} GiB"
        )
        if width >= 50:
            t.append(f" · models {fmt_bytes(host_w + host_kv)}", "dim")
        if width >= 74:
            # host copies kept for resident blocks (transfer.py): part of RSS, not offloaded
            staging = sum(m.ledger.host_staging for m in snap.models)
            t.append(f" · staging {fmt_bytes(staging)}", "dim")
        return t


class MemoryPanel(Vertical):
    """Bars + two sparklines (accelerator used, process RSS) of the lab's own samples."""

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.bars = MemoryBars(classes="memory-bars")
        self.accel_hist: deque[float] = deque(maxlen=HISTORY)
        self.rss_hist: deque[float] = deque(maxlen=HISTORY)
        self._last_seq = -1
        self._drawn = 0.0
        self._bars_drawn = 0.0

    def compose(self) -> ComposeResult:
        yield self.bars
        with Horizontal(classes="mem-spark-row"):
            yield Static("accel", classes="spark-label")
            yield Sparkline([0.0], id="accel-spark", classes="mem-spark")
            yield Static("", id="accel-spark-now", classes="spark-now")
        with Horizontal(classes="mem-spark-row"):
            yield Static("RSS", classes="spark-label")
            yield Sparkline([0.0], id="rss-spark", classes="mem-spark")
            yield Static("", id="rss-spark-now", classes="spark-now")

    def on_mount(self) -> None:
        self.border_title = "memory"

    def show(self, snap: EngineSnapshot, series: dict[str, int]) -> None:
        if not self.is_mounted:
            return
        # Bars twice a second (KV bytes change with every token; moves still show
        # within half a second), histories once a second: repaints cost the engine.
        now = time.monotonic()
        if now - self._bars_drawn >= 0.5:
            self._bars_drawn = now
            self.bars.show(snap, series)
        if snap.seq != self._last_seq:
            self._last_seq = snap.seq
            used, _ = accel_used(snap)
            self.accel_hist.append(used / GIB)
            self.rss_hist.append(snap.device.process_rss / GIB)
        # The histories redraw once a second: memory moves slowly, and every repaint
        # costs CPU the engine's thread could use.
        now = time.monotonic()
        if now - self._drawn < 1.0:
            return
        self._drawn = now
        for wid, hist in (("#accel-spark", self.accel_hist), ("#rss-spark", self.rss_hist)):
            spark = self.query_one(wid, Sparkline)
            spark.data = _spark(hist, spark.size.width)
        for wid, hist in (("#accel-spark-now", self.accel_hist), ("#rss-spark-now", self.rss_hist)):
            text = f"{hist[-1]:.2f} GiB" if hist else ""
            label = self.query_one(wid, Static)
            if str(label.content) != text:
                label.update(text, layout=False)


def _spark(hist, width: int = 0) -> list[float]:
    return spark_data(list(hist), width)


def spark_data(data: list[float], width: int) -> list[float]:
    """At most ``width`` points (the max of each bucket, as Sparkline draws them):
    Sparkline buckets with Fractions, which is slow for long histories; and at
    least two points (a single value would draw a full-height bar)."""
    if not data:
        return [0.0, 0.0]
    if len(data) == 1:
        return data * 2
    if width > 0 and len(data) > width:
        n = len(data)
        data = [
            max(data[i * n // width : max(i * n // width + 1, (i + 1) * n // width)])
            for i in range(width)
        ]
    return data


class MemoryStrip(Static):
    """One line for narrow terminals: the accelerator bar by model, always visible."""

    COMPONENT_CLASSES = {f"series--{i}" for i in range(N_SERIES)} | {
        "memory--free",
        "memory--label",
        "memory--other",
    }

    def show(self, snap: EngineSnapshot, series: dict[str, int]) -> None:
        width = max(20, self.content_size.width or 78)
        budget = accel_budget(snap)
        used, _ = accel_used(snap)
        tail = f" {fmt_gib(used)}/{fmt_gib(budget)} GiB"
        head = "accel "
        bar_w = max(6, width - len(head) - len(tail))
        parts = model_parts(snap, series)
        t = Text(no_wrap=True, overflow="ellipsis")
        t.append(head, self.get_component_rich_style("memory--label"))
        t.append_text(stacked_bar(self, parts, budget, bar_w, "memory--free"))
        t.append(tail, "bold")
        key = (t.plain, tuple(t.spans))  # text and colours
        if key != getattr(self, "_shown", None):  # skip identical repaints
            self._shown = key
            self.update(t, layout=False)
