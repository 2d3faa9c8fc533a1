"""Help: every key, the layer-map legend, and what the panels mean."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from labtui.tui.widgets.layer_map import LEGEND
from labtui.tui.widgets.model_card import RATES_TIP

KEYS: list[tuple[str, str]] = [
    ("tab / shift+tab", "next / previous model card"),
    ("← / →", "residency −/+ one layer (applies after 0.4 s)"),
    ("shift+← / →, pgup/pgdn", "residency −/+ 25%"),
    ("home / end", "no layers / all layers on the accelerator"),
    ("enter", "apply the slider now"),
    ("p", "preempt the selected model (choose kv and weights policy)"),
    ("r", "resume the selected model"),
    ("w", "launch a workload on the selected model"),
    ("c", "cancel the selected model's workloads"),
    ("l", "load a model: the zoo, the Hugging Face cache (type to search), a path, a hub id"),
    ("u", "unload the selected model"),
    ("m", "toggle offload mode: stream ↔ host"),
    ("f", "toggle prefetch"),
    ("k", "pin / unpin: never evicted by a policy, never below its minimum"),
    ("o", "scheduler policy: fcfs, round_robin, priority"),
    ("d", "device options (simulated device: link, budget, host slowdown)"),
    ("n", "chart: absolute tok/s ↔ normalised to 100% residency"),
    ("x", "chart: clear points"),
    ("1 2 3 4", "narrow terminals: models, memory, chart, events"),
    ("s", "save this session as a scenario (labtui run / open replay it)"),
    ("space", "a scenario's timeline (the tour): pause / resume (the models keep serving)"),
    ("] / [", "next caption (its actions run) / show the previous caption again"),
    ("ctrl+p", "command palette: every lab action by name"),
    ("? / F1", "this help"),
    ("q / ctrl+q", "quit (q offers to save unsaved actions first; ctrl+q quits anywhere)"),
]

MOUSE = (
    "Mouse: drag a slider (applies on release), click a card to select it, click its "
    "buttons, scroll the cards and the event log."
)


class HelpScreen(ModalScreen):
    BINDINGS = [
        Binding("escape,q,question_mark,f1", "dismiss", "close"),
    ]

    def compose(self) -> ComposeResult:
        table = Table(box=None, show_header=False, padding=(0, 2, 0, 0), expand=False)
        table.add_column(style="bold", no_wrap=True)
        table.add_column()
        for k, v in KEYS:
            table.add_row(k, v)
        with VerticalScroll(classes="modal", id="help") as v:
            v.border_title = "labtui keys"
            v.border_subtitle = "esc closes"
            yield Static(table)
            yield Static(Text(MOUSE), classes="modal-help")
            yield Static(Text("Layer map: " + LEGEND), classes="modal-help")
            yield Static(Text("Speed: " + RATES_TIP), classes="modal-help")
            yield Static(
                Text(
                    "Residency = decoder blocks whose weights live on the accelerator. "
                    "Non-resident blocks are streamed (copied in per forward) or run on the "
                    "host (mode). Preemption cost: kv_out + release when paused, reload + "
                    "kv_in (+ recompute if the KV was dropped) when resumed. Everything you "
                    "do here is an engine command, recorded for `s`."
                ),
                classes="modal-help",
            )

    async def action_dismiss(self, result=None) -> None:
        self.dismiss(None)
