"""The planner on a model card: its current plan (one line) and the pin toggle.

The plan comes from the snapshot (ModelSnapshot.plan: target resident blocks and
offload mode, predicted tok/s and TPOT, the binding constraint), which only the
planner policy fills; the line is hidden under every other policy. The pin toggle
works under every policy (a pinned model is never evicted, never placed below its
min_residency): a click here or the lab's k key sends a SetPin command.
"""

from __future__ import annotations

from rich.text import Text
from textual import events
from textual.widgets import Static

from labtui.engine.snapshot import ModelSnapshot
from labtui.tui.messages import ModelAction

PIN_TIP = "pin: a policy never evicts this model nor places it below its minimum residency (k or click)"


def pin_text(ms: ModelSnapshot) -> Text:
    """'◆ pinned ≥50%' or '◇ pin' (the toggle's label)."""
    if ms.pin:
        low = f" ≥{ms.min_residency:.0%}" if ms.min_residency > 0 else ""
        return Text.assemble(("◆ pinned", "bold"), (low, "dim"))
    return Text("◇ pin", "dim")


def plan_text(ms: ModelSnapshot) -> Text | None:
    """'plan → 6/8 stream · 31 tok/s · TPOT 32 ms · slo met' (None: no plan)."""
    p = ms.plan
    if p is None:
        return None
    where = "whole" if p.resident >= p.n_layers else f"{p.resident}/{p.n_layers} {p.mode}"
    t = Text(no_wrap=True, overflow="ellipsis")
    t.append("plan ", "dim")
    arrow = "=" if p.resident == ms.resident_layers and (p.mode == ms.mode or p.resident >= p.n_layers) else "→"
    t.append(f"{arrow} {where}", "bold")
    if p.predicted_tok_s > 0:
        t.append(f" · {p.predicted_tok_s:.0f} tok/s · TPOT {p.predicted_tpot_s * 1e3:.0f} ms", "")
    t.append(f" · {p.binding}", "italic")
    return t


class PinToggle(Static):
    """The card's pin mark; a click toggles it (the app sends SetPin)."""

    DEFAULT_CSS = "PinToggle { width: auto; height: 1; padding-left: 1; }"

    def __init__(self, model: str, **kw) -> None:
        super().__init__("", classes="pin-toggle", **kw)
        self.model_id = model
        self.tooltip = PIN_TIP

    def on_click(self, event: events.Click) -> None:
        event.stop()
        self.post_message(ModelAction(self.model_id, "pin"))


class PlanLine(Static):
    """One line: the planner's plan for this model; hidden without one."""

    DEFAULT_CSS = "PlanLine { height: 1; color: $text-muted; }"

    def __init__(self, **kw) -> None:
        super().__init__("", classes="card-plan", **kw)
        self.display = False

    def show(self, ms: ModelSnapshot) -> None:
        t = plan_text(ms)
        if t is None:
            if self.display:
                self.display = False
            return
        if not self.display:
            self.display = True
        self.update(t, layout=False)
