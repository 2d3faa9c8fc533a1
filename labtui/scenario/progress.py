"""The headless runner's progress display on stderr (rich), or plain lines when
stderr is not a terminal (CI logs, tests): a bar over the planned runs with an
ETA (the `run --check` estimate until a run has finished, then the mean measured
run time), the current point's header, and a table of the models."""

from __future__ import annotations

import sys
import time
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text


class Progress:
    def __init__(self, title: str, enabled: bool = True) -> None:
        self.title = title
        self.enabled = enabled
        self.console = Console(stderr=True, file=sys.stderr, highlight=False)
        self.live = self.console.is_terminal and enabled
        self._live: Live | None = None
        self.note = ""
        self.head = ""
        self.total = 0  # planned runs
        self.done = 0
        self.estimate_s: float | None = None  # for the whole plan, before any run finished
        self._t0 = time.monotonic()
        self._run_t0 = self._done_at = self._t0
        self._last: tuple | None = None  # the last update()'s arguments

    def set_plan(self, total_runs: int, estimate_s: float | None = None) -> None:
        self.total, self.estimate_s = total_runs, estimate_s
        self._t0 = self._run_t0 = time.monotonic()

    def run_started(self) -> None:
        self._run_t0 = time.monotonic()

    def run_done(self) -> None:
        self.done += 1
        self._done_at = time.monotonic()
        if not self._live and self.total > 1:  # plain mode: one line per run
            self.line(f"run {self.done}/{self.total} done; {self.eta_text()}")
        elif self._last is not None:  # redraw the bar with this run counted
            self.update(*self._last)

    def eta_s(self) -> float | None:
        """Seconds left: runs left times the mean measured run (or the estimate)."""
        if not self.total:
            return None
        now = time.monotonic()
        if self.done:
            per_run = (self._done_at - self._t0) / self.done
        elif self.estimate_s is not None:
            per_run = self.estimate_s / self.total
        else:
            return None
        left = (self.total - self.done) * per_run - (now - self._run_t0)
        return max(0.0, left)

    def eta_text(self) -> str:
        from labtui.scenario.estimate import fmt_duration

        eta = self.eta_s()
        if eta is None:
            return "ETA unknown"
        return f"ETA {fmt_duration(eta)}" + ("" if self.done else " (estimated)")

    def __enter__(self) -> Progress:
        if self.live:
            self._live = Live(Text(self.title), console=self.console, refresh_per_second=4,
                              transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._live is not None:
            self._live.__exit__(*exc)
            self._live = None

    def line(self, text: str, style: str = "") -> None:
        """A line that stays (point starts and ends, warnings)."""
        if not self.enabled:
            return
        if self._live is not None:
            self._live.console.print(Text(text, style=style))
        else:
            print(f"labtui: {text}", file=sys.stderr, flush=True)

    def update(self, snap: Any, elapsed: float) -> None:
        if self._live is None or snap is None:
            return
        self._last = (snap, elapsed)
        t = Table(box=None, pad_edge=False, header_style="bold")
        for col in ("model", "state", "layers", "mode", "served tok/s", "tokens", "queued", "running", "done"):
            t.add_column(col, justify="right" if col not in ("model", "state", "mode") else "left")
        for m in snap.models:
            t.add_row(m.id, m.state, f"{m.resident_layers}/{m.n_layers}", m.mode,
                      "-" if m.served_tok_s is None else f"{m.served_tok_s:.1f}", str(m.tokens_generated), str(m.queued), str(m.running),
                      str(m.completed))
        dev = snap.device
        head = Text(f"{self.title} · {self.head} · {elapsed:.1f}s · {dev.kind}"
                    f"{' (simulated)' if dev.simulated else ''} · link {dev.link} · {snap.busy}",
                    style="bold")
        parts: list[Any] = [head]
        if self.total > 1:
            bar = Table.grid(padding=(0, 1))
            bar.add_row(ProgressBar(total=self.total, completed=self.done, width=40),
                        Text(f"{self.done}/{self.total} runs done · {self.eta_text()}"))
            parts.append(bar)
        parts.append(t)
        if self.note:
            parts.append(Text(f"note: {self.note}", style="italic"))
        self._live.update(Group(*parts))
