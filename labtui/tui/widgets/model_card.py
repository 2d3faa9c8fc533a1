"""One card per hosted model: what it is, where its layers live, how fast it runs."""

from __future__ import annotations

import time

from rich.text import Text
from textual import events, on
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.markup import escape
from textual.widgets import Button, Sparkline, Static

from labtui.engine.snapshot import CELL_MOVING, CELL_PARKED, CELL_RELEASED, ModelSnapshot
from labtui.tui.format import ellipsize, fmt_bytes, fmt_params, fmt_rate, fmt_s, one_line_text
from labtui.tui.messages import ModelAction, ModelSelected
from labtui.tui.widgets.layer_map import LayerMap
from labtui.tui.widgets.memory import spark_data
from labtui.tui.widgets.phases import PhaseBar
from labtui.tui.widgets.plan import PinToggle, PlanLine, pin_text
from labtui.tui.widgets.slider import ResidencySlider

STATE_GLYPH = {
    "loading": "◌",
    "serving": "●",
    "idle": "○",
    "preempting": "◐",
    "preempted": "⏸",
    "resuming": "◑",
    "unloading": "◌",
}
WEIGHTS_AT = {"host": "weights in host RAM", "disk": "weights on disk"}
KV_AT = {"host": "KV on host", "accelerator": "KV kept", "dropped": "KV dropped"}
# The card's two speeds (the same words, the same definitions, as the chart,
# metrics.csv and summary.json; see docs/engine-api.md)
RATES_TIP = (
    "served tok/s: tokens made by decode steps per wall second (waits for other models, "
    "prefill and pauses count). decode tok/s: the same tokens per second of this model's "
    "own decode steps. Both over the last 3 s; '-' until 1 s and 8 tokens were measured."
)


def fmt_maybe_rate(x: float | None) -> str:
    return "-" if x is None else fmt_rate(x)


def rates_text(ms: ModelSnapshot) -> Text:
    return Text.assemble(
        ("served ", "dim"),
        (fmt_maybe_rate(ms.served_tok_s).rjust(5), "bold"),
        ("  decode ", "dim"),
        (fmt_maybe_rate(ms.decode_tok_s).rjust(5), "bold"),
        (" tok/s", "dim"),
    )


def state_line(ms: ModelSnapshot) -> str:
    """The card's subtitle: the state, and while preempted where weights and KV are."""
    sub = f"{STATE_GLYPH.get(ms.state, '●')} {ms.state}"
    where = ms.paused_where
    if where is not None:
        sub += f": {WEIGHTS_AT.get(where[0], where[0])}, {KV_AT.get(where[1], where[1])}"
    if ms.profile and ms.dilation:
        # sim paced in a hardware profile's ratios (engine/dilation.py): never real timings
        sub += f" · as on {ms.profile} (time ×{ms.dilation:.0f}, emulated)"
    return sub


def layer_count(ms: ModelSnapshot) -> str:
    """'3/6' blocks on the accelerator now, plus those moving (▒), parked in host
    RAM (▄) or released to disk (▁) while preempted."""
    count = f"{ms.resident_layers}/{ms.n_layers}"
    for cell, glyph in ((CELL_MOVING, "▒"), (CELL_PARKED, "▄"), (CELL_RELEASED, "▁")):
        n = ms.layer_cells.count(cell)
        if n:
            count += f" {glyph}{n}"
    return count


def metrics_line(ms: ModelSnapshot, width: int) -> Text:
    """The card's figures, as many as fit in ``width`` (least important dropped first)."""
    parts: list[tuple[str, str]] = [
        ("TTFT ", fmt_s(ms.ttft_p50)),
        ("TPOT ", fmt_s(ms.tpot_p50)),
        ("q ", str(ms.queued)),
        ("run ", str(ms.running)),
        ("done ", str(ms.completed)),
        ("", f"{ms.achieved_gbps:.2g} GB/s"),  # 2 digits: no repaint for jitter
        ("", f"{fmt_bytes(ms.bytes_per_token, 0)}/tok"),
    ]
    while parts:
        plain = "  ".join(a + b for a, b in parts)
        if len(plain) <= width or len(parts) <= 5:
            break
        parts.pop()
    t = Text(no_wrap=True, overflow="ellipsis")
    for i, (label, value) in enumerate(parts):
        if i:
            t.append("  ")
        t.append(label, "dim")
        t.append(value)
    return t


class CardButton(Button):
    """Compact, mouse-only button: the keyboard reaches the same action through the
    app's keys (p, r, w, m, f, u), so tab moves between cards, not buttons."""

    can_focus = False

    def __init__(self, label: str, action: str, **kw) -> None:
        super().__init__(label, compact=True, id=f"btn-{action}", classes="card-btn", **kw)
        self.action_name = action


class ModelCard(Vertical):
    def __init__(self, ms: ModelSnapshot, series: int = 0) -> None:
        super().__init__(id=f"card-{ms.id}", classes=f"model-card series-{series % 6}")
        self.model_id = ms.id
        self.series = series
        self._ms = ms
        self._cache: dict[str, object] = {}
        self._spark_drawn = 0.0
        self._widgets: dict[str, object] = {}
        self._shown_ms: ModelSnapshot | None = None  # the snapshot last drawn
        self.slider = ResidencySlider(ms.id, ms.n_layers, ms.resident_layers, classes="slider")
        self.layer_map = LayerMap(ms.layer_cells, classes="layer-map")
        self.phase_bar = PhaseBar(classes="phase-bar")
        self.phase_bar.display = False
        self.spark = Sparkline([], classes="toks-spark")
        self.pin_toggle = PinToggle(ms.id)
        self.plan_line = PlanLine()

    def compose(self) -> ComposeResult:
        with Horizontal(classes="card-row"):
            yield Static("layers", classes="row-label")
            yield self.layer_map
            yield Static("", classes="layer-count")
            yield self.pin_toggle
        with Horizontal(classes="card-row"):
            yield Static("resid.", classes="row-label")
            yield self.slider
        with Horizontal(classes="card-row card-buttons"):
            yield CardButton(
                "stream", "mode", tooltip="offload mode of non-resident blocks: stream or host (m)"
            )
            yield CardButton(
                "prefetch", "prefetch", tooltip="copy the next streamed block during compute (f)"
            )
            yield CardButton("preempt", "preempt", variant="warning")
            yield CardButton("resume", "resume", variant="success")
            yield CardButton("workload", "workload", variant="primary")
            yield CardButton("unload", "unload", variant="error")
        with Horizontal(classes="card-row toks-row"):
            rates = Static("", classes="toks-now")
            rates.tooltip = RATES_TIP
            yield rates
            yield self.spark
        yield Static("", classes="card-metrics")
        yield self.plan_line
        yield self.phase_bar
        yield Static("", classes="card-text")

    def on_mount(self) -> None:
        self.update_from(self._ms, force=True)

    # -- updates ---------------------------------------------------------------

    def _set(self, key: str, widget: Static, value) -> None:
        # One-line, fixed-size fields: repaint only (a layout pass per tick would cost
        # the engine's thread CPU time through the GIL).
        if self._cache.get(key) != value:
            self._cache[key] = value
            widget.update(value, layout=False)

    def _w(self, selector: str):
        # the card's fixed children, found once (a CSS query per field per tick adds up)
        w = self._widgets.get(selector)
        if w is None:
            w = self._widgets[selector] = self.query_one(selector)
        return w

    def _label(self, button: str, label: str) -> None:
        if self._cache.get(button) != label:
            self._cache[button] = label
            self._w(f"#{button}").label = label

    def _disable(self, button: str, disabled: bool) -> None:
        b = self._w(f"#{button}")
        if b.disabled != disabled:
            b.disabled = disabled

    def update_from(self, ms: ModelSnapshot, force: bool = False) -> None:
        self._ms = ms
        if not self.is_mounted:
            return
        # Snapshot diffing: an unchanged model (idle, paused) costs one comparison of
        # frozen dataclasses, not a rebuild of every line of its card.
        if not force and ms == self._shown_ms:
            return
        self._shown_ms = ms
        if ms.n_layers == 0:  # still loading: family and size not known yet
            title = f"[b]{ms.id}[/b] · {escape(ms.source)}"  # a path may hold "["
        else:
            title = f"[b]{ms.id}[/b] · {escape(ms.family)} {fmt_params(ms.params)} · {ms.n_layers} layers"
        if self.border_title != title:
            self.border_title = title
        sub = state_line(ms)
        if self.border_subtitle != sub:
            self.border_subtitle = sub
        # One class change, one restyle of the card's subtree (set_class per state
        # would restyle it twice per change: serving <-> idle flips often).
        want = {f"-state-{ms.state}"} if ms.state in STATE_GLYPH else set()
        have = {c for c in self.classes if c.startswith("-state-")}
        if want != have:
            self.set_classes((set(self.classes) - have) | want)

        self.layer_map.cells = ms.layer_cells
        self.slider.set_layers_total(ms.n_layers)
        self.slider.sync(ms.resident_layers)
        # the planner's target: a marker where it is taking the slider (widgets/plan.py)
        self.slider.target = ms.plan.resident if ms.plan is not None else None
        self._set("pin", self.pin_toggle, pin_text(ms))
        if self._cache.get("plan") != ms.plan:
            self._cache["plan"] = ms.plan
            self.plan_line.show(ms)

        self._set("count", self._w(".layer-count"), layer_count(ms))

        self._label("btn-mode", ms.mode)
        self._label("btn-prefetch", "prefetch✓" if ms.prefetch else "prefetch✗")
        paused = ms.state in ("preempted", "preempting")
        self._disable("btn-preempt", paused or ms.state == "resuming")
        self._disable("btn-resume", ms.state != "preempted")

        self._set("toks", self._w(".toks-now"), rates_text(ms))
        # The history and the figures below redraw once a second (tok/s now at every
        # tick, as btop/nvitop do): each repaint costs CPU, and through the GIL, the
        # engine's decode (measured: the lab must cost the engine < 5% tok/s).
        now = time.monotonic()
        if force or now - self._spark_drawn >= 1.0:
            self._spark_drawn = now
            hist = list(ms.served_tok_s_history)
            if self._cache.get("hist") != hist:
                self._cache["hist"] = hist
                self.spark.data = spark_data(hist, self.spark.size.width)
            width = self._w(".card-metrics").content_size.width or 60
            metrics = metrics_line(ms, width)
            self._set("metrics", self._w(".card-metrics"), metrics)
        else:
            self._shown_ms = None  # the figures wait their turn: draw them next tick

        if self.phase_bar.report != ms.last_preemption:
            self.phase_bar.report = ms.last_preemption
            self.phase_bar.display = ms.last_preemption is not None

        text_w = max(10, self._w(".card-text").content_size.width or 60)
        last = one_line_text(ms.last_text)
        # zoo checkpoints have random weights: say so where their noise is shown
        hint = "random weights: " if ms.source.startswith("zoo:") and last else ""
        shown = Text.assemble(
            ("» ", "dim"),
            (hint, "dim italic"),
            ellipsize(last, text_w - 2 - len(hint)) if last else ("(no output yet)", "dim italic"),
        )
        self._set("text", self._w(".card-text"), shown)

    def _fit_buttons(self) -> None:
        width = self.content_size.width
        buttons = list(self.query(CardButton))
        need = sum(len(str(b.label)) + 3 for b in buttons)  # line-pad 1+1, margin 1
        for b in reversed(buttons[-2:]):  # unload first, then workload
            fits = need - 1 <= width
            b.display = fits
            if not fits:
                need -= len(str(b.label)) + 3

    def on_resize(self, event: events.Resize) -> None:
        # Below 80 columns the button row would be cut: the least used buttons step
        # aside (their keys, w and u, still work).
        self._fit_buttons()
        self._cache.pop("text", None)
        self._cache.pop("metrics", None)
        self.update_from(self._ms, force=True)

    # -- input -----------------------------------------------------------------

    @on(Button.Pressed, ".card-btn")
    def _button(self, event: Button.Pressed) -> None:
        event.stop()
        assert isinstance(event.button, CardButton)
        self.slider.focus()
        self.post_message(ModelAction(self.model_id, event.button.action_name))

    def on_click(self, event: events.Click) -> None:
        # a click anywhere on the card selects it (and puts the keys on its slider)
        self.slider.focus()
        self.post_message(ModelSelected(self.model_id))

    def on_descendant_focus(self, event: events.DescendantFocus) -> None:
        self.post_message(ModelSelected(self.model_id))
