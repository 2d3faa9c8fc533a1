"""The device bar: which accelerator (and whether it is simulated, with budget and
link) is always visible, with the scheduler policy, what the engine is doing now,
and (Caption) the latest note."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from labtui.engine.snapshot import EngineSnapshot
from labtui.tui.format import device_line, ellipsize, one_line_text

SPINNER = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"


class Caption(Static):
    """The latest `note` (teaching tours' captions), on its own line(s) when set."""

    def show(self, note: str, status: str = "") -> None:
        """`status`: a second, dim line (the tour's position and keys)."""
        if (note, status) != getattr(self, "_note", None):
            self._note = (note, status)
            text = Text(f"✎ {one_line_text(note)}") if note else Text()  # plain, not markup
            if status:
                text.append(("\n" if note else "") + status, style="not bold dim")
            self.update(text)
            self.display = bool(note or status)


class DeviceBar(Static):
    COMPONENT_CLASSES = {
        "devicebar--brand",
        "devicebar--device",
        "devicebar--sim",
        "devicebar--dim",
        "devicebar--busy",
        "devicebar--stalled",
        "devicebar--note",
    }

    def __init__(self, **kw) -> None:
        super().__init__("", **kw)
        self._args: tuple | None = None
        self._shown = ""

    def starting(self, what: str) -> None:
        t = Text(no_wrap=True, overflow="ellipsis")
        t.append(" labtui ", self.get_component_rich_style("devicebar--brand"))
        t.append(f" {what}", self.get_component_rich_style("devicebar--busy"))
        self.update(t, layout=False)

    def show(self, snap: EngineSnapshot, stalled_s: float = 0.0, replay: str = "") -> None:
        self._args = (snap, stalled_s, replay)
        width = max(20, self.content_size.width or 80)
        d = snap.device
        dim = self.get_component_rich_style("devicebar--dim")
        t = Text(no_wrap=True, overflow="ellipsis")
        t.append(" labtui ", self.get_component_rich_style("devicebar--brand"))
        t.append(" ")
        dev = device_line(d)
        extra = f" · host ×{d.host_slowdown:g}" if d.simulated else ""
        profiles = sorted({m.profile for m in snap.models if m.profile})
        emulated = d.simulated and bool(profiles)
        if emulated:  # paced by a hardware profile (engine/dilation.py)
            extra = f" · as on {', '.join(profiles)} (time dilated, emulated)"
        style = self.get_component_rich_style(
            "devicebar--sim" if d.simulated else "devicebar--device"
        )
        room = width - 9
        if len(dev) + len(extra) <= room:
            t.append(dev, style)
            t.append(extra, dim)
        elif emulated and room - len(extra) >= 12:  # the profile is never the part cut
            t.append(ellipsize(dev, room - len(extra)), style)
            t.append(extra, dim)
        else:
            t.append(ellipsize(dev, room), style)
        t.append("\n")
        # line 2: policy, busy, models/workloads, time, note
        line = Text(no_wrap=True, overflow="ellipsis")
        line.append(" policy ", dim)
        line.append(snap.policy)
        busy = snap.busy or "idle"
        if stalled_s >= 1.5:
            line.append("  ⚠ engine busy ", self.get_component_rich_style("devicebar--stalled"))
            line.append(
                f"{stalled_s:.0f} s: {busy}", self.get_component_rich_style("devicebar--stalled")
            )
        elif busy != "idle":
            # the spinner turns twice a second of engine time, not per snapshot
            frame = SPINNER[int(snap.t * 2) % len(SPINNER)]
            line.append(f"  {frame} ", self.get_component_rich_style("devicebar--busy"))
            line.append(busy, self.get_component_rich_style("devicebar--busy"))
        else:
            line.append("  ○ idle", dim)
        active = sum(1 for w in snap.workloads if not w.done)
        n = len(snap.models)
        line.append(f"  {n} model{'s' * (n != 1)} · {active} workload{'s' * (active != 1)}", dim)
        line.append(f"  t {snap.t:.0f} s", dim)
        if replay:
            line.append(f"  ▶ {replay}", self.get_component_rich_style("devicebar--busy"))
        line.truncate(width, overflow="ellipsis")
        t.append_text(line)
        if t.plain != self._shown:  # skip identical repaints
            self._shown = t.plain
            self.update(t, layout=False)  # fixed height: repaint only

    def on_resize(self) -> None:
        if self._args is not None:
            self._shown = ""
            self.show(*self._args)
