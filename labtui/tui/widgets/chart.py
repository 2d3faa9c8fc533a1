"""Decode tok/s against residency, per model: the study's main figure, built by hand.

textual-plotext exists on PyPI, but this chart needs only dots, lines and a few
labels, so it is drawn here with braille cells (2×4 dots per cell): no extra
dependency, and fully deterministic output for snapshot tests.

Points accumulate as the user (or a scenario) moves sliders. A point is one
condition: model, residency, offload mode, prefetch, link and host slowdown (all
that changes a model's speed; batch size is left out, it changes at every request
of a closed workload and points would never settle). Its value is the model's
decode tok/s, the same definition as the card's: decode tokens / seconds of the
model's own decode steps (ModelSnapshot.decode_tokens/decode_s), counted from
when the condition began, so a model sharing the accelerator is not penalised for
waiting its turn and no point averages two conditions. Any change starts a new
measurement; a condition measured again replaces its earlier point. Series are
keyed by everything but residency (residency is the x axis).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

from labtui.engine.snapshot import CELL_MOVING, EngineSnapshot

# Enough decode work in one condition to be a fair measure (no first-sample spike).
MIN_DECODE_S = 0.5
MIN_DECODE_TOKENS = 8
N_SERIES = 6
MARKERS = {"stream": "●", "host": "◆"}

_BRAILLE = ((0x01, 0x08), (0x02, 0x10), (0x04, 0x20), (0x40, 0x80))  # [row][col]


@dataclass
class Series:
    model: str
    mode: str
    index: int  # colour (per model)
    n_layers: int
    prefetch: bool | None = None  # None: not known (hand-added points)
    link: str | None = None
    host_slowdown: float | None = None
    points: dict[int, float] = field(default_factory=dict)  # resident layers -> decode tok/s
    current: tuple[int, float] | None = None

    @property
    def key(self) -> tuple:
        return (self.model, self.mode, self.prefetch, self.link, self.host_slowdown)

    @property
    def label(self) -> str:
        return f"{self.model} {self.mode}"

    def detail(self, parts: set[str]) -> str:
        """The conditions that tell this series from the chart's others."""
        out = []
        if "prefetch" in parts and self.prefetch is not None:
            out.append("pf" if self.prefetch else "no-pf")
        if "link" in parts and self.link is not None:
            out.append(self.link)
        if "host_slowdown" in parts and self.host_slowdown is not None:
            out.append(f"host×{self.host_slowdown:g}")
        return " ".join(out)

    @property
    def marker(self) -> str:
        return MARKERS.get(self.mode, "●")


@dataclass
class _Since:
    cond: tuple  # (resident layers, mode, prefetch, link, host slowdown)
    decode_tokens: int
    decode_s: float


def nice_ceiling(x: float) -> float:
    if x <= 0:
        return 1.0
    exp = math.floor(math.log10(x))
    for m in (1, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10):
        v = m * 10**exp
        if v >= x:
            return v
    return 10 ** (exp + 1)  # pragma: no cover


class ChartData:
    """The accumulating points (kept apart from the widget so tests can read them)."""

    def __init__(self) -> None:
        self.series: dict[tuple, Series] = {}
        self._since: dict[str, _Since] = {}

    def _series(self, model: str, mode: str, n_layers: int, index: int, prefetch=None,
                link=None, host_slowdown=None) -> Series:
        key = (model, mode, prefetch, link, host_slowdown)
        s = self.series.get(key)
        if s is None or s.n_layers != n_layers:
            s = self.series[key] = Series(model, mode, index, n_layers, prefetch, link, host_slowdown)
        return s

    def observe(self, snap: EngineSnapshot, series_index: dict[str, int]) -> bool:
        changed = False
        live = set()
        dev = snap.device
        for m in snap.models:
            if m.n_layers <= 0:
                continue
            s = self._series(m.id, m.mode, m.n_layers, series_index.get(m.id, 0),
                             m.prefetch, dev.link, dev.host_slowdown)
            live.add(s.key)
            k = m.resident_layers
            cond = (k, m.mode, m.prefetch, dev.link, dev.host_slowdown)
            # A measurement runs while the condition stays put; moves, preemption and
            # any change of mode, prefetch, link or host slowdown start a new one
            # (idle gaps between requests do not: decode time does not run in them).
            steady = m.state in ("serving", "idle") and CELL_MOVING not in m.layer_cells
            since = self._since.get(m.id)
            if not steady or since is None or since.cond != cond:
                since = self._since[m.id] = _Since(cond, m.decode_tokens, m.decode_s)
            value = None
            dtok = m.decode_tokens - since.decode_tokens
            ds = m.decode_s - since.decode_s
            if steady and ds >= MIN_DECODE_S and dtok >= MIN_DECODE_TOKENS:
                value = round(dtok / ds, 3)
            if value is not None and s.points.get(k) != value:
                s.points[k] = value
                changed = True
            # the live marker, to 2 significant digits: it moves when the rate moves,
            # not with every jitter (each redraw costs the engine CPU)
            decoding = steady and m.state == "serving" and m.running > 0
            cur = (k, float(f"{value:.2g}")) if decoding and value is not None else None
            if cur != s.current:
                s.current = cur
                changed = True
        for key, s in self.series.items():
            if key not in live and s.current is not None:
                s.current = None
                changed = True
        return changed

    def add_point(
        self,
        model: str,
        layers: int,
        n_layers: int,
        tok_s: float,
        index: int = 0,
        mode: str = "stream",
        prefetch: bool | None = None,
        link: str | None = None,
        host_slowdown: float | None = None,
    ) -> None:
        self._series(model, mode, n_layers, index, prefetch, link, host_slowdown).points[layers] = tok_s

    def clear(self) -> None:
        for s in self.series.values():
            s.points.clear()


class ScatterChart(Widget):
    COMPONENT_CLASSES = {f"series--{i}" for i in range(N_SERIES)} | {
        "chart--axis",
        "chart--label",
        "chart--empty",
    }

    normalised: reactive[bool] = reactive(False)

    def __init__(self, data: ChartData, **kw) -> None:
        super().__init__(**kw)
        self.data = data
        self._drawn: tuple | None = None  # (size, text, spans) of the last render

    def redraw_if_changed(self) -> bool:
        """Repaint only if the drawing would differ from what is on screen. A point's
        value moves with every snapshot while it is measured, but in a 36-row chart
        it rarely moves a dot: a repaint of an unchanged chart costs a compositor
        pass over the whole screen (the chart is its tallest widget). Drawing the
        Text (about 1 ms) to compare is much cheaper. Returns whether it repainted."""
        if not self.region:  # not on screen (another tab): repainted when shown
            self.refresh()
            return True
        t = self._draw()
        if self._drawn == (self.content_size, t.plain, t.spans):
            return False
        self.refresh()
        return True

    def render(self) -> Text:
        t = self._draw()
        self._drawn = (self.content_size, t.plain, list(t.spans))
        return t

    def _draw(self) -> Text:
        W = max(10, self.content_size.width)
        H = max(4, self.content_size.height)
        axis = self.get_component_rich_style("chart--axis")
        label = self.get_component_rich_style("chart--label")

        series = [s for s in self.data.series.values() if s.points or s.current]
        shown = series or list(self.data.series.values())
        # name only the conditions that differ between the series on the chart
        varies = {
            name for name, get in (("prefetch", lambda s: s.prefetch), ("link", lambda s: s.link),
                                   ("host_slowdown", lambda s: s.host_slowdown))
            if len({get(s) for s in shown}) > 1
        }
        legend = Text(no_wrap=True, overflow="ellipsis")
        for s in shown:
            legend.append(
                f"{s.marker} ", self.get_component_rich_style(f"series--{s.index % N_SERIES}")
            )
            detail = s.detail(varies)
            legend.append(f"{s.label}{' ' + detail if detail else ''} ({len(s.points)})  ")
        ylab = "decode tok/s ÷ at 100%" if self.normalised else "decode tok/s"
        legend.append(f"y: {ylab}", label)
        legend.truncate(W, overflow="ellipsis")

        def yval(s: Series, v: float) -> float:
            if not self.normalised:
                return v
            base = s.points.get(s.n_layers)
            return v / base if base else float("nan")

        ys = [yval(s, v) for s in series for v in s.points.values()]
        ys += [yval(s, s.current[1]) for s in series if s.current]
        ys = [y for y in ys if not math.isnan(y)]
        ymax = nice_ceiling(max(ys) * 1.05) if ys else 1.0

        yaxis_w = 7
        pw = max(4, W - yaxis_w - 1)  # plot width in cells
        ph = max(2, H - 3)  # legend line + x axis line + x labels line
        dots_w, dots_h = pw * 2, ph * 4
        mask = [[0] * pw for _ in range(ph)]
        color: list[list[int | None]] = [[None] * pw for _ in range(ph)]
        marks: dict[tuple[int, int], tuple[str, int]] = {}

        def to_dot(x: float, y: float) -> tuple[int, int]:
            dx = round(min(max(x, 0.0), 1.0) * (dots_w - 1))
            dy = round((1 - min(max(y / ymax, 0.0), 1.0)) * (dots_h - 1))
            return dx, dy

        def plot(dx: int, dy: int, idx: int) -> None:
            cx, cy = dx // 2, dy // 4
            if 0 <= cx < pw and 0 <= cy < ph:
                mask[cy][cx] |= _BRAILLE[dy % 4][dx % 2]
                color[cy][cx] = idx

        for s in series:
            pts = sorted(
                (k / s.n_layers, yval(s, v))
                for k, v in s.points.items()
                if not math.isnan(yval(s, v))
            )
            dpts = [to_dot(x, y) for x, y in pts]
            for (x0, y0), (x1, y1) in zip(dpts, dpts[1:], strict=False):
                n = max(abs(x1 - x0), abs(y1 - y0), 1)
                for i in range(n + 1):
                    plot(round(x0 + (x1 - x0) * i / n), round(y0 + (y1 - y0) * i / n), s.index)
            for dx, dy in dpts:
                marks[(dx // 2, dy // 4)] = (s.marker, s.index)
            if s.current is not None:
                y = yval(s, s.current[1])
                if not math.isnan(y):
                    dx, dy = to_dot(s.current[0] / s.n_layers, y)
                    marks[(dx // 2, dy // 4)] = ("◉", s.index)

        styles = {
            i: self.get_component_rich_style(f"series--{i % N_SERIES}") for i in range(N_SERIES)
        }
        styles.update(
            {
                s.index: self.get_component_rich_style(f"series--{s.index % N_SERIES}")
                for s in series
            }
        )
        t = Text(no_wrap=True, overflow="ellipsis")
        t.append_text(legend)
        t.append("\n")
        row_labels: dict[int, str] = {}
        for frac in (1.0, 0.75, 0.5, 0.25, 0.0):
            row = round((1 - frac) * (dots_h - 1)) // 4
            if ph < 6 and frac in (0.75, 0.25):
                continue
            row_labels.setdefault(row, _fmt_y(ymax * frac, self.normalised))
        for row in range(ph):
            lab = row_labels.get(row, "")
            t.append(lab.rjust(yaxis_w - 1)[: yaxis_w - 1] + " ", label)
            t.append("┤" if lab else "│", axis)
            # one append per run of cells in the same series (not per cell: cheap)
            run: list[str] = []
            run_idx: int | None = None
            for col in range(pw):
                mk = marks.get((col, row))
                if mk is not None:
                    ch, idx = mk
                elif mask[row][col]:
                    ch, idx = chr(0x2800 + mask[row][col]), color[row][col] or 0
                else:
                    ch, idx = " ", None
                if idx != run_idx and run:
                    t.append("".join(run), styles[run_idx] if run_idx is not None else None)
                    run = []
                run_idx = idx
                run.append(ch)
            if run:
                t.append("".join(run), styles[run_idx] if run_idx is not None else None)
            t.append("\n")
        # x axis
        ticks = [0, 0.25, 0.5, 0.75, 1.0]
        tick_cols = {round(f * (pw - 1)) for f in ticks}
        t.append(" " * yaxis_w, label)
        t.append("└", axis)
        t.append("".join("┬" if c in tick_cols else "─" for c in range(pw)), axis)
        t.append("\n")
        xl = [" "] * (pw + 1)
        for f in ticks:
            s = f"{int(f * 100)}%"
            c = round(f * (pw - 1)) + 1 - (len(s) // 2)
            c = min(max(c, 0), pw + 1 - len(s))
            for i, ch in enumerate(s):
                xl[c + i] = ch
        xlabel = "".join(xl)
        name = " residency "
        mid = (pw + 1) // 2 - len(name) // 2
        if pw > 40:
            # put the axis name between the 25% and 50% ticks if it fits in blanks
            seg = xlabel[mid : mid + len(name)]
            if seg.strip() == "":
                xlabel = xlabel[:mid] + name + xlabel[mid + len(name) :]
        t.append(" " * yaxis_w + xlabel, label)
        if not series:
            t = Text(no_wrap=True)
            t.append_text(legend)
            t.append("\n\n")
            t.append(
                "  No points yet. A point appears when a model has decoded for\n"
                f"  {MIN_DECODE_S:g} s of its own time at one residency, mode, prefetch and link.\n"
                "  Move a slider (←/→) and watch the curve grow.",
                self.get_component_rich_style("chart--empty"),
            )
        return t


def _fmt_y(v: float, normalised: bool) -> str:
    if v == 0:
        return "0"
    if normalised:
        return f"{v:.2f}"
    if v >= 1000:
        return f"{v / 1000:.1f}k"
    return f"{v:.0f}" if v >= 10 else f"{v:.1f}"
