"""The event log: layer moves (bytes, GB/s), preemptions, refusals, notes.

A residency change moves many blocks at once; consecutive moves of one model in
one direction for one reason arrive together and are folded into one line
("big L8–L15 weights d2h 8 blocks 144 MiB 6.1 ms 24.8 GB/s").
"""

from __future__ import annotations

import time
from collections import deque

from rich.table import Table
from rich.text import Text
from textual.widgets import RichLog

from labtui.engine.events import Event
from labtui.tui.format import fmt_bytes, fmt_s, one_line_text

# kind -> component class (colours live in app.tcss)
KIND_CLASS = {
    "layer_move": "log--move",
    "residency": "log--move",
    "mode": "log--move",
    "prefetch": "log--move",
    "preempt": "log--preempt",
    "resume": "log--resume",
    "refused": "log--refused",
    "error": "log--refused",
    "note": "log--note",
    "load": "log--lifecycle",
    "unload": "log--lifecycle",
    "workload_start": "log--workload",
    "workload_done": "log--workload",
    "workload_cancel": "log--workload",
    "policy": "log--config",
    "device_options": "log--config",
}

LABEL = {
    "layer_move": "move",
    "workload_start": "workload",
    "workload_done": "workload",
    "workload_cancel": "workload",
    "device_options": "device",
}

QUIET = {"request_start", "request_finish", "command"}  # too many to show one per line


def _layers(ls: list) -> str:
    """Block indices as 'L3', 'L3–L7' or 'L1,4'; named units (e.g. 'embed+head') as is."""
    names = [str(x) for x in ls if not isinstance(x, int)]
    ints = sorted(x for x in ls if isinstance(x, int))
    if not ints:
        part = ""
    elif len(ints) == 1:
        part = f"L{ints[0]}"
    elif ints == list(range(ints[0], ints[-1] + 1)):
        part = f"L{ints[0]}–L{ints[-1]}"
    else:
        part = "L" + ",".join(str(i) for i in ints)
    return " ".join(x for x in [*dict.fromkeys(names), part] if x)


def fold_moves(events: list[Event]) -> list[Event | list[Event]]:
    """Group runs of layer_move events with the same model/what/direction/reason."""
    out: list[Event | list[Event]] = []
    run: list[Event] = []

    def key(e: Event) -> tuple:
        d = e.data
        return (d.get("model"), d.get("what"), d.get("direction"), d.get("reason"))

    for e in events:
        if e.kind == "layer_move":
            if run and key(run[-1]) != key(e):
                out.append(run)
                run = []
            run.append(e)
            continue
        if run:
            out.append(run)
            run = []
        out.append(e)
    if run:
        out.append(run)
    return out


def describe(e: Event) -> str:
    d = e.data
    k = e.kind
    m = d.get("model", "")
    if k == "load":
        return f"{m} loaded from {d.get('source')} ({d.get('n_layers')} layers) in {fmt_s(d.get('seconds'))}"
    if k == "unload":
        return f"{m} unloaded"
    if k == "residency":
        n = len(d.get("resident_layers", []))
        return f"{m} residency {100 * d.get('residency', 0):.0f}% ({n} layers on accelerator, rest {d.get('mode')})"
    if k == "mode":
        return f"{m} offload mode → {d.get('mode')}"
    if k == "prefetch":
        return f"{m} prefetch {'on' if d.get('prefetch') else 'off'}"
    if k == "preempt":
        return (
            f"{m} preempted (kv={d.get('kv')}, weights={d.get('weights')}) at {d.get('at_tokens')} tok: "
            f"kv_out {fmt_s(d.get('kv_out_s'))}, release {fmt_s(d.get('release_s'))}, "
            f"freed {fmt_bytes(d.get('freed_bytes', 0))}"
        )
    if k == "resume":
        total = sum(
            d.get(x, 0.0) or 0.0
            for x in ("kv_out_s", "release_s", "reload_s", "kv_in_s", "recompute_s")
        )
        s = (
            f"{m} resumed: reload {fmt_s(d.get('reload_s'))} ({fmt_bytes(d.get('reload_bytes', 0))}), "
            f"kv_in {fmt_s(d.get('kv_in_s'))}"
        )
        if d.get("recompute_s"):
            s += f", recompute {fmt_s(d.get('recompute_s'))}"
        return s + f"; total cost {fmt_s(total)}"
    if k == "refused":
        return f"refused {d.get('command')}: {d.get('reason')}"
    if k == "error":
        return f"error in {d.get('where')}: {d.get('message')}"
    if k == "note":
        return str(d.get("text", ""))
    if k == "policy":
        return f"scheduler policy → {d.get('policy')}"
    if k == "device_options":
        return (
            f"device: link {d.get('link')} ({d.get('link_gbps')} GB/s), budget {d.get('memory_gib')} GiB, "
            f"host slowdown ×{d.get('host_slowdown')}"
        )
    if k.startswith("workload_"):
        what = k.split("_", 1)[1]
        extra = ""
        if "requests" in d:
            extra = f" ({d['requests']} requests)"
        return f"workload {d.get('workload')} on {m} {what}{extra}"
    rest = ", ".join(f"{a}={b}" for a, b in d.items() if a != "model")
    return f"{m} {k} {rest}".strip()


def fmt_gbps(x: float) -> str:
    return f"{x:.1f} GB/s" if x >= 1 else f"{x:.2g} GB/s"


def describe_moves(run: list[Event]) -> str:
    d0 = run[0].data
    total_b = sum(e.data.get("bytes", 0) for e in run)
    total_s = sum(e.data.get("seconds", 0.0) for e in run)
    gbps = total_b / total_s / 1e9 if total_s > 0 else 0.0
    layers = _layers([e.data.get("layer", 0) for e in run])
    arrow = "→ accel" if d0.get("direction") == "h2d" else "→ host"
    n = f" {len(run)} blocks" if len(run) > 1 else ""
    return (
        f"{d0.get('model')} {layers} {d0.get('what')} {arrow}{n} {fmt_bytes(total_b)} "
        f"in {fmt_s(total_s)} = {fmt_gbps(gbps)} ({d0.get('reason')})"
    )


class EventLog(RichLog):
    COMPONENT_CLASSES = set(KIND_CLASS.values()) | {"log--time", "log--other"}

    def __init__(self, **kw) -> None:
        # min_width: RichLog renders at >= 78 columns by default, wider than the pane.
        # max_lines: an event wraps to about four lines in the pane, so the log holds
        # about the KEEP events it re-wraps on a resize. Each line is a Strip (~2.5 KB
        # with its caches): 1,000 lines are ~6 MB, filled in a few busy minutes and
        # then flat (2,000 were 11 MB and took the first 6 minutes of a soak).
        super().__init__(
            max_lines=4 * self.KEEP, wrap=True, markup=False, highlight=False, min_width=20, **kw
        )
        self.can_focus = False
        self._pending: list[Event] = []  # not yet written (flush_due)
        self._flushed = 0.0

    def on_mount(self) -> None:
        self.border_title = "events"
        self._items: deque[Event | list[Event]] = deque(maxlen=self.KEEP)
        self._width = 0

    KEEP = 250  # events kept to re-wrap on a resize (the whole run goes to the bundle)

    def on_resize(self) -> None:
        # Lines are wrapped when written; re-wrap the kept events when the pane's
        # width changes (terminal resized, narrow/wide layout switch).
        width = self.scrollable_content_region.width
        if width != self._width and self._items:
            self._width = width
            self.clear()
            for item in list(self._items):
                self._write_item(item)
        self._width = width

    # Why batched: each write grows the log's virtual height, and Textual answers
    # that with a layout of the whole screen; two flushes a second instead of one
    # per poll (4 Hz) keep the lab's frames cheap and the log still live.
    FLUSH_S = 0.5

    def add_events(self, events: list[Event]) -> None:
        self._pending.extend(e for e in events if e.kind not in QUIET)
        self.flush_due()

    def flush_due(self) -> None:
        now = time.monotonic()
        if not self._pending or now - self._flushed < self.FLUSH_S:
            return
        self._flushed = now
        pending, self._pending = self._pending, []
        for item in fold_moves(pending):
            self._items.append(item)
            self._write_item(item)

    def _write_item(self, item: Event | list[Event]) -> None:
        if isinstance(item, list):
            e = item[0]
            msg = describe_moves(item)
            kind = "layer_move"
        else:
            e = item
            msg = one_line_text(describe(e))  # notes and errors are free text
            kind = e.kind
        # A grid row per event, so a long message wraps under itself.
        narrow = self.scrollable_content_region.width < 56
        row = Table.grid(padding=(0, 1), expand=True)
        row.add_column(width=6 if narrow else 7, justify="right", no_wrap=True)
        style = self.get_component_rich_style(KIND_CLASS.get(kind, "log--other"))
        label = Text(LABEL.get(kind, kind)[:10], style)
        time_t = Text(
            f"{e.t:.1f}" if narrow else f"{e.t:.2f}", self.get_component_rich_style("log--time")
        )
        if narrow:
            row.add_column(ratio=1)
            row.add_row(time_t, Text.assemble(label, " ", msg))
        else:
            row.add_column(width=10, no_wrap=True)
            row.add_column(ratio=1)
            row.add_row(time_t, label, Text(msg))
        self.write(row)
