"""The headless runner's progress display on stderr (rich), or plain lines when
stderr is not a terminal (CI logs, tests)."""

from __future__ import annotations

import sys
from typing import Any

from rich.console import Console, Group
from rich.live import Live
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
        parts: list[Any] = [head, t]
        if self.note:
            parts.append(Text(f"note: {self.note}", style="italic"))
        self._live.update(Group(*parts))
