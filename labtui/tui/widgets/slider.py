"""The residency slider.

Textual 8 ships no Slider widget (only ProgressBar, which is not interactive), so
this is a small focusable one. It works in whole decoder blocks, because that is
what the engine moves: value ``k`` means "the first k of n blocks on the
accelerator" (llama.cpp's -ngl). Mouse drag and arrow keys only move the knob; the
move is *requested* (one ``ResidencyRequested`` message) when the mouse button is
released, or 0.4 s after the last key press, never once per pixel or per key.
"""

from __future__ import annotations

from rich.text import Text
from textual import events
from textual.binding import Binding
from textual.reactive import reactive
from textual.timer import Timer
from textual.widget import Widget

from labtui.tui.messages import ResidencyRequested


class ResidencySlider(Widget, can_focus=True):
    COMPONENT_CLASSES = {
        "slider--filled",
        "slider--empty",
        "slider--knob",
        "slider--pending",
        "slider--label",
    }

    BINDINGS = [
        Binding("left,minus", "step(-1)", "layers", key_display="←→", show=True),
        Binding("right,plus,equals_sign", "step(1)", "+1 layer", show=False),
        Binding("shift+left,pageup", "step_frac(-0.25)", "−25%", show=False),
        Binding("shift+right,pagedown", "step_frac(0.25)", "+25%", show=False),
        Binding("home", "set_to(0)", "0 layers", show=False),
        Binding("end", "set_to(-1)", "all layers", show=False),
        Binding("enter", "commit", "apply now", show=False),
    ]

    DEBOUNCE_S = 0.4
    LABEL_W = 17  # " 11/16 layers 69%" (fixed so the track does not jump)

    value: reactive[int] = reactive(0)
    """Layers the user wants on the accelerator (what the knob shows)."""
    applied: reactive[int] = reactive(0)
    """Layers the engine reports on the accelerator."""
    target: reactive[int | None] = reactive(None)
    """Where a policy (the planner) is taking the residency: a marker on the track."""

    def __init__(self, model: str, n_layers: int, value: int = 0, **kw) -> None:
        super().__init__(**kw)
        self.model = model
        self.loaded = n_layers > 0  # a model still loading has no layers yet
        self.n_layers = max(1, n_layers)
        self.set_reactive(ResidencySlider.value, value)
        self.set_reactive(ResidencySlider.applied, value)
        self._dragging = False
        self._timer: Timer | None = None
        self._requested: int | None = None  # sent to the engine, not yet reflected

    # -- state from the engine -------------------------------------------------

    def sync(self, resident_layers: int) -> None:
        """Called with each new snapshot. The knob follows the engine unless the user
        is dragging, a debounce is pending, or a request is still in flight."""
        self.applied = resident_layers
        if self._requested is not None and resident_layers == self._requested:
            self._requested = None
        if not self.pending:
            self.value = resident_layers

    def request_failed(self) -> None:
        """The engine refused or failed the move: snap back to what it reports."""
        self._requested = None
        self._cancel_timer()
        self.value = self.applied

    @property
    def pending(self) -> bool:
        return self._dragging or self._timer is not None or self._requested is not None

    # -- geometry --------------------------------------------------------------

    def _track_width(self) -> int:
        return max(4, self.content_size.width - self.LABEL_W)

    def _value_at(self, x: int) -> int:
        w = self._track_width()
        x = min(max(x, 0), w - 1)
        return round(x / (w - 1) * self.n_layers)

    # -- rendering -------------------------------------------------------------

    def render(self) -> Text:
        if not self.loaded:
            return Text("loading…", self.get_component_rich_style("slider--empty"))
        w = self._track_width()
        knob = round(self.value / self.n_layers * (w - 1))
        filled = self.get_component_rich_style("slider--filled")
        empty = self.get_component_rich_style("slider--empty")
        pending = self.get_component_rich_style("slider--pending")
        knob_style = self.get_component_rich_style("slider--knob")
        t = Text(no_wrap=True, overflow="ellipsis")
        t.append("━" * knob, filled if self.value == self.applied else pending)
        t.append("●" if not self.has_focus else "◆", knob_style)
        t.append("─" * (w - 1 - knob), empty)
        if self.target is not None and self.target != self.value:
            # the planner's target block count, marked on the track (▾)
            x = round(min(max(self.target, 0), self.n_layers) / self.n_layers * (w - 1))
            t = t[:x] + Text("▾", knob_style) + t[x + 1 :]
        pct = round(100 * self.value / self.n_layers)
        label = f" {self.value}/{self.n_layers} layers {pct}%"
        if self.value != self.applied:
            label = f" →{self.value}/{self.n_layers} {pct}%"
        t.append(
            label.ljust(self.LABEL_W)[: self.LABEL_W],
            self.get_component_rich_style("slider--label"),
        )
        return t

    def get_content_height(self, container, viewport, width: int) -> int:
        return 1

    # -- input -----------------------------------------------------------------

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.stop()
            self._timer = None

    def _arm(self) -> None:
        self._cancel_timer()
        self._timer = self.set_timer(self.DEBOUNCE_S, self.action_commit)

    def set_layers_total(self, n_layers: int) -> None:
        loaded = n_layers > 0
        if loaded != self.loaded or max(1, n_layers) != self.n_layers:
            self.loaded = loaded
            self.n_layers = max(1, n_layers)
            self.refresh()

    def action_step(self, delta: int) -> None:
        self.value = min(self.n_layers, max(0, self.value + delta))
        self._arm()

    def action_step_frac(self, frac: float) -> None:
        delta = max(1, round(abs(frac) * self.n_layers))
        self.action_step(delta if frac > 0 else -delta)

    def action_set_to(self, v: int) -> None:
        self.value = self.n_layers if v < 0 else min(self.n_layers, max(0, v))
        self._arm()

    def action_commit(self) -> None:
        self._cancel_timer()
        if not self.loaded:
            return
        if self._dragging:
            return
        if self.value == self.applied and self._requested is None:
            return
        if self.value == self._requested:
            return
        self._requested = self.value
        self.post_message(ResidencyRequested(self.model, self.value, self.n_layers))

    def on_mouse_down(self, event: events.MouseDown) -> None:
        if event.button != 1:
            return
        self.focus()
        self._cancel_timer()
        self._dragging = True
        self.capture_mouse()
        offset = event.get_content_offset(self)
        if offset is not None:
            self.value = self._value_at(offset.x)
        event.stop()

    def on_mouse_move(self, event: events.MouseMove) -> None:
        if self._dragging:
            offset = event.get_content_offset_capture(self)
            self.value = self._value_at(offset.x)
            event.stop()

    def on_mouse_up(self, event: events.MouseUp) -> None:
        if self._dragging:
            self._dragging = False
            self.release_mouse()
            self.action_commit()
            event.stop()
