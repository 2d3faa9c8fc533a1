"""The lab: a Textual app over the engine's command/snapshot API.

Everything the user does here is an engine command (``labtui.engine.commands``)
sent with ``engine.submit_command``, so a scenario can do it too and ``s`` can
save it. The engine runs on its own thread; the lab reads ``engine.snapshot()``
and ``engine.events_since(seq)`` on a timer (``POLL_HZ``, 2 Hz) and never touches tensors, so
the screen never freezes: a busy engine shows as busy.

The engine is injected (``LabApp(engine)``), as Harlequin injects its adapters:
tests pass a real engine on tiny zoo models, or a ``FrozenEngine`` with a
hand-built snapshot for deterministic screens. ``main()`` builds the real one on
a worker thread after the first frame, so torch's import never delays the UI.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from concurrent.futures import Future
from datetime import datetime
from pathlib import Path
from typing import Any

from textual import on, work
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import Container, Vertical, VerticalScroll
from textual.css.query import NoMatches
from textual.widgets import Static, Tab, Tabs

from labtui.engine.commands import (
    CancelWorkload,
    Preempt,
    Resume,
    SetMode,
    SetPin,
    SetPrefetch,
    SetResidency,
    Unload,
)
from labtui.errors import LabError, one_line
from labtui.tui.format import one_line_text
from labtui.tui.messages import (
    CommandDone,
    EngineFailed,
    EngineReady,
    ModelAction,
    ModelSelected,
    ResidencyRequested,
)
from labtui.tui.widgets.chart import ChartData, ScatterChart
from labtui.tui.widgets.event_log import EventLog
from labtui.tui.widgets.footer import LabFooter
from labtui.tui.widgets.header import Caption, DeviceBar
from labtui.tui.widgets.layer_map import LEGEND
from labtui.tui.widgets.memory import MemoryPanel, MemoryStrip
from labtui.tui.widgets.model_card import ModelCard

VIEWS = ("cards", "memory", "chart", "log")


class LabApp(App):
    """The lab. ``engine``: an Engine (or anything with its API); ``scenario``: a
    validated Scenario to replay once the engine is ready; ``engine_factory``:
    builds the engine on a worker thread when ``engine`` is None."""

    CSS_PATH = Path(__file__).with_name("app.tcss")  # absolute: subclasses elsewhere work too
    TITLE = "labtui"
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (120, "-wide"), (170, "-xwide")]
    # Snapshots are read and painted twice a second: the figures still move (as
    # top/btop/nvtop update every 1-2 s), and every paint is a compositor pass that
    # takes Python's GIL from the engine's decode (benchmarks/lab_cost.py; at 4 Hz
    # the lab cost ~10% of decode tok/s at 200x50).
    POLL_HZ = 2.0

    BINDINGS = [
        Binding("m", "mode", "mode"),
        Binding("f", "prefetch", "prefetch"),
        Binding("k", "pin", "pin", show=False),
        Binding("p", "preempt", "preempt"),
        Binding("r", "resume", "resume", show=False),  # the card has a resume button
        Binding("w", "workload", "workload"),
        # l and s are left out of the footer (80 columns hold the rest); ? and the
        # palette (ctrl+p) list them
        Binding("l", "load", "load", show=False),
        Binding("s", "save", "save", show=False),
        Binding("question_mark,f1", "help", "help", key_display="?"),
        Binding("q", "lab_quit", "quit"),
        Binding("u", "unload", "unload", show=False),
        Binding("o", "policy", "policy", show=False),
        Binding("d", "device", "device", show=False),
        Binding("c", "cancel_workloads", "cancel workloads", show=False),
        Binding("n", "normalise", "normalise chart", show=False),
        Binding("x", "clear_chart", "clear chart", show=False),
        Binding("1", "view('cards')", "models", show=False),
        Binding("2", "view('memory')", "memory", show=False),
        Binding("3", "view('chart')", "chart", show=False),
        Binding("4", "view('log')", "events", show=False),
        # a scenario's timeline (the tour): pause it, step caption by caption
        Binding("space", "tour_pause", "pause tour", show=False),
        Binding("right_square_bracket", "tour_next", "next caption", key_display="]", show=False),
        Binding("left_square_bracket", "tour_back", "previous caption", key_display="[", show=False),
    ]

    # what the command palette offers (every lab action): action, title, help
    PALETTE = [
        ("mode", "Offload mode: stream ↔ host", "toggle the selected model's offload mode (m)"),
        ("prefetch", "Prefetch on/off", "toggle prefetch for the selected model (f)"),
        ("pin", "Pin / unpin model", "a pinned model is never evicted by a policy nor placed below its minimum (k)"),
        ("preempt", "Preempt model…", "pause the selected model, choosing kv and weights policy (p)"),
        ("resume", "Resume model", "resume the selected preempted model (r)"),
        ("workload", "Launch workload…", "closed or poisson requests for the selected model (w)"),
        ("cancel_workloads", "Cancel workloads", "cancel the selected model's workloads (c)"),
        ("load", "Load model…", "from the zoo, the Hugging Face cache, a folder or a hub id (l)"),
        ("unload", "Unload model", "unload the selected model (u)"),
        ("policy", "Scheduler policy…", "fcfs, round_robin or priority (o)"),
        ("device", "Device options…", "simulated device: link, budget, host slowdown (d)"),
        ("normalise", "Chart: normalise", "absolute tok/s ↔ normalised to 100% residency (n)"),
        ("clear_chart", "Chart: clear", "clear the chart's points (x)"),
        ("save", "Save session as scenario…", "write what you did as a TOML scenario (s)"),
        ("tour_pause", "Tour: pause / resume", "pause or resume the scenario's timeline (space)"),
        ("tour_next", "Tour: next caption", "jump to the next caption and its actions (])"),
        ("tour_back", "Tour: previous caption", "show the previous caption again ([)"),
        ("help", "Keys and legend", "every key, the layer map's legend (?)"),
        ("lab_quit", "Quit the lab", "offers to save unsaved actions first (q)"),
    ]

    def __init__(
        self,
        engine: Any = None,
        scenario: Any = None,
        *,
        engine_factory: Callable[[], Any] | None = None,
        replay: bool = True,
        save_dir: str | Path = ".",
        time_scale: float = 1.0,
    ) -> None:
        super().__init__()
        self.engine = engine
        self.scenario = scenario
        self.engine_factory = engine_factory
        self.replay_enabled = replay
        self.save_dir = Path(save_dir)
        self.frozen = bool(getattr(engine, "frozen", False))
        self.selected: str | None = None
        self._card_marked: str | None = None  # the card drawn as selected
        self.chart_data = ChartData()
        self.series: dict[str, int] = {}
        self.replay = None
        self.recorder = None  # a SessionRecorder once a real engine is up (s saves it)
        self.trimmer = None  # a HeapTrimmer once a real engine is up
        self.snap = None
        self.first_frame_at: float | None = None
        self._seq = -1
        self._seq_changed_at = time.monotonic()
        self._ev_seq = 0
        self._stalled_shown = 0
        self._view = "cards"
        self._zoo_rows: list[dict] | None = None
        self._cached_rows: list | None = None  # the hub cache, scanned by the load dialog
        self._owns_engine = engine is None
        self._chart_drawn = 0.0
        self._shown_at = 0.0
        self.engine_error: str | None = None
        self.engine_error_code = 0
        self.time_scale = time_scale
        self.unsaved = 0  # commands sent from the lab since the last save
        self._captions: list[str] = []  # captions seen, for [ (previous caption)
        self._caption_back = 0  # how many captions back [ has gone

    def notify(self, message, *, title="", severity="information", timeout=None, markup=True):
        # Engine and file messages are plain text: "[...]" in a path or an accepted
        # list must not be read as markup, control characters must not reach the
        # terminal. Every notification in the lab goes through here (screens too).
        return super().notify(
            one_line_text(str(message)),
            title=one_line_text(str(title)),
            severity=severity,
            timeout=timeout,
            markup=False,
        )

    # -- layout ----------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield DeviceBar(id="devicebar")
        yield Caption(id="caption")
        yield MemoryStrip(id="memstrip")
        yield Tabs(
            Tab("1 models", id="tab-cards"),
            Tab("2 memory", id="tab-memory"),
            Tab("3 chart", id="tab-chart"),
            Tab("4 events", id="tab-log"),
            id="viewtabs",
        )
        with Container(id="main"):
            with Vertical(id="left", classes="col"):
                with VerticalScroll(id="cards", classes="pane -active"):
                    yield Static("starting the engine…", id="cards-empty")
                yield ScatterChart(self.chart_data, id="chart", classes="pane")
            with Vertical(id="right", classes="col -off"):
                yield MemoryPanel(id="memory", classes="pane")
                yield EventLog(id="log", classes="pane")
        yield LabFooter(compact=True)

    def on_mount(self) -> None:
        self.first_frame_at = time.monotonic()
        self.query_one("#viewtabs", Tabs).can_focus = False
        self.query_one("#cards", VerticalScroll).can_focus = False
        cards = self.query_one("#cards")
        cards.border_title = "models"
        cards.border_subtitle = LEGEND
        self.query_one("#chart").border_title = "decode tok/s vs residency"
        self.query_one("#chart").border_subtitle = "n normalise · x clear"
        if self.engine is not None:
            self._engine_ready()
        elif self.engine_factory is not None:
            self.query_one(DeviceBar).starting("starting the engine (importing torch)…")
            self._build_engine()
        else:
            self.query_one(DeviceBar).starting("no engine")

    @work(thread=True, exclusive=True, group="engine")
    def _build_engine(self) -> None:
        assert self.engine_factory is not None
        try:
            eng = self.engine_factory()
        except LabError as e:
            self.post_message(EngineFailed(str(e)))
            return
        except Exception as e:  # noqa: BLE001
            self.post_message(EngineFailed(f"engine failed to start: {one_line(e)}", code=1))
            return
        self.post_message(EngineReady(eng))

    def on_engine_ready(self, message: EngineReady) -> None:
        self.engine = message.engine
        self._engine_ready()

    def on_engine_failed(self, message: EngineFailed) -> None:
        self.engine_error = message.message
        self.engine_error_code = message.code
        self.query_one(DeviceBar).starting(message.message)
        self.query_one("#cards-empty", Static).update(message.message)
        self.notify(message.message, severity="error", timeout=10)

    def _engine_ready(self) -> None:
        if hasattr(self.engine, "add_listener"):  # a real engine: record the session
            from labtui.scenario.recorder import SessionRecorder

            self.recorder = SessionRecorder(self.engine)
        self._tick()
        self.set_interval(1.0 / self.POLL_HZ, self._tick)
        if not self.frozen:  # a lab left open for a day: RSS must not creep (trim.py)
            from labtui.tui.trim import HeapTrimmer

            self.trimmer = HeapTrimmer().start()
        if self.scenario is not None and self.replay_enabled and not self.frozen:
            from labtui.tui.bridge import Replay

            self.replay = Replay(
                self.scenario,
                self.engine,
                on_error=lambda m: self.call_from_thread(self.notify, m, severity="error"),
                on_done=lambda m: self.call_from_thread(self._replay_done, m),
                time_scale=self.time_scale,
            ).start()

    def _replay_done(self, msg: str) -> None:
        self.notify(msg, timeout=3)

    # -- the poll loop -----------------------------------------------------------

    def _tick(self) -> None:
        try:
            self._poll()
        except NoMatches:
            pass  # the app is shutting down: its widgets are already gone

    def _poll(self) -> None:
        eng = self.engine
        if eng is None:
            return
        try:
            snap = eng.snapshot()
            events = eng.events_since(self._ev_seq)
        except Exception as e:  # noqa: BLE001 - never a traceback in the lab
            self.query_one(DeviceBar).starting(f"engine unavailable: {one_line(e)}")
            return
        now = time.monotonic()
        changed = snap.seq != self._seq or self.snap is None
        if changed:
            self._seq = snap.seq
            self._seq_changed_at = now
        stalled = 0.0
        if not self.frozen and (snap.busy or "idle") != "idle":
            stalled = now - self._seq_changed_at
        stalled_bucket = int(stalled) if stalled >= 1.5 else 0
        log = self.query_one(EventLog)
        if events:
            self._ev_seq = events[-1].seq
            log.add_events(events)
        else:
            log.flush_due()  # what the last polls buffered
        for e in events:
            if e.kind == "error":
                self.notify(
                    f"engine error in {e.data.get('where')}: {e.data.get('message')}",
                    severity="error",
                )
        # Parts of the screen redraw at most twice a second; a quiet engine still
        # gets one redraw a second so those parts show its final state.
        if changed or stalled_bucket != self._stalled_shown or now - self._shown_at >= 1.0:
            self._stalled_shown = stalled_bucket
            self._shown_at = now
            self.snap = snap
            self._show(snap, stalled)

    def _show(self, snap, stalled: float = 0.0) -> None:
        for m in snap.models:
            if m.id not in self.series:
                self.series[m.id] = len(self.series)
        replay = ""
        if self.replay is not None and self.replay.status:
            replay = f"{self.replay.status} {self.scenario.name}"
        self.query_one(DeviceBar).show(snap, stalled, replay)
        self._show_caption(snap.note)
        self.query_one(MemoryPanel).show(snap, self.series)
        self.query_one(MemoryStrip).show(snap, self.series)
        self._reconcile_cards(snap)
        if self.chart_data.observe(snap, self.series):
            self.refresh_chart(throttle=True)

    def _show_caption(self, note: str | None) -> None:
        if note and (not self._captions or self._captions[-1] != note):
            self._captions.append(note)
            self._caption_back = 0
        shown = note or ""
        if self._caption_back and len(self._captions) > self._caption_back:
            shown = self._captions[-1 - self._caption_back]
        status = ""
        rp = self.replay
        if rp is not None and rp.captions and rp.status == "":  # the timeline is done
            n = rp.notes.index(shown) + 1 if shown in rp.notes else len(self._captions)
            back = " (earlier)" if self._caption_back else ""
            status = f"caption {n}/{rp.captions}{back} · end of the timeline · [ back ] forward"
        elif rp is not None and rp.captions and rp.status == "replaying":
            n = rp.notes.index(shown) + 1 if shown in rp.notes else len(self._captions)
            state = "⏸ paused: space resumes" if rp.clock.paused else "space pauses"
            speed = f" · time ×{rp.clock.time_scale:g}" if rp.clock.time_scale != 1 else ""
            back = " (earlier)" if self._caption_back else ""
            status = f"caption {n}/{rp.captions}{back} · {state} · ] next [ back{speed}"
        self.query_one(Caption).show(shown, status)

    def _reconcile_cards(self, snap) -> None:
        box = self.query_one("#cards", VerticalScroll)
        existing = {c.model_id: c for c in box.query(ModelCard)}
        ids = [m.id for m in snap.models]
        for mid, card in existing.items():
            if mid not in ids:
                card.remove()
                if self.selected == mid:
                    self.selected = None
        new_cards = []
        for m in snap.models:
            card = existing.get(m.id)
            if card is None:
                card = ModelCard(m, self.series.get(m.id, 0))
                new_cards.append(card)
            else:
                card.update_from(m)
        if new_cards:
            box.mount_all(new_cards)
        empty = self.query_one("#cards-empty", Static)
        empty.display = not snap.models
        if not snap.models:
            empty.update("No models loaded. Press l to load one from the zoo.")
        box.set_class(len(snap.models) == 1, "-one")
        if new_cards and self.selected is None:
            self.call_after_refresh(self._select_first)

    def _select_first(self) -> None:
        cards = list(self.query(ModelCard))
        if cards and self.selected is None and self.screen is self.screen_stack[0]:
            cards[0].slider.focus()

    # -- selection ---------------------------------------------------------------

    def on_model_selected(self, message: ModelSelected) -> None:
        if message.model == self.selected and self._card_marked == message.model:
            return  # every focus change inside the card says so again: nothing to do
        self.selected = self._card_marked = message.model
        for card in self.query(ModelCard):
            card.set_class(card.model_id == message.model, "-selected")
            if card.model_id == message.model:
                card.scroll_visible(animate=False)

    def _card(self, model: str | None) -> ModelCard | None:
        if model is None:
            return None
        for card in self.query(ModelCard):
            if card.model_id == model:
                return card
        return None

    def _selected_model(self):
        """The selected model's snapshot, or None (with a hint)."""
        if self.snap is None:
            self.notify("the engine is still starting", severity="warning")
            return None
        m = self.snap.model(self.selected) if self.selected else None
        if m is None:
            if not self.snap.models:
                self.notify("no model loaded: press l to load one", severity="warning")
            else:
                self.notify("select a model first (tab, or click its card)", severity="warning")
        return m

    # -- sending commands ----------------------------------------------------------

    def send(self, cmd, on_fail: Callable[[], None] | None = None) -> Future | None:
        """Submit a command. Validation errors come back at once (LabError) and are
        shown as one-line notifications; the result or failure arrives later as a
        CommandDone message posted from the engine's thread."""
        if self.engine is None:
            self.notify("the engine is still starting", severity="warning")
            return None
        try:
            fut = self.engine.submit_command(cmd)
        except LabError as e:
            self.notify(str(e), severity="error", title=f"{cmd.action} refused")
            if on_fail:
                on_fail()
            return None
        except Exception as e:  # noqa: BLE001
            self.notify(one_line(e), severity="error", title=f"{cmd.action} failed")
            if on_fail:
                on_fail()
            return None

        def done(f: Future) -> None:
            err = f.exception()
            self.post_message(CommandDone(cmd, None if err else f.result(), err))

        fut.add_done_callback(done)
        self.unsaved += 1
        return fut

    def on_command_done(self, message: CommandDone) -> None:
        cmd, err, res = message.cmd, message.error, message.result
        if err is not None:
            title = f"{cmd.action} failed"
            self.notify(one_line(err) or type(err).__name__, severity="error", title=title)
            if isinstance(cmd, SetResidency):
                card = self._card(cmd.model)
                if card:
                    card.slider.request_failed()
            return
        if isinstance(cmd, Preempt) and res is not None and hasattr(res, "kv_out_s"):
            self.notify(
                f"{cmd.model} paused: kv_out {res.kv_out_s * 1e3:.1f} ms, "
                f"release {res.release_s * 1e3:.1f} ms, freed {res.freed_bytes / 2**20:.0f} MiB",
                title="preempted",
            )
        elif isinstance(cmd, Resume) and res is not None and hasattr(res, "total_s"):
            self.notify(
                f"{cmd.model} back: reload {res.reload_s * 1e3:.1f} ms, kv_in "
                f"{res.kv_in_s * 1e3:.1f} ms; total cost {res.total_s * 1e3:.1f} ms",
                title="resumed",
            )

    # -- slider and card buttons -----------------------------------------------------

    def on_residency_requested(self, message: ResidencyRequested) -> None:
        card = self._card(message.model)
        cmd = SetResidency(model=message.model, residency=message.layers / message.n_layers)
        self.send(cmd, on_fail=card.slider.request_failed if card else None)

    def on_model_action(self, message: ModelAction) -> None:
        self.selected = message.model
        action = {
            "mode": self.action_mode,
            "prefetch": self.action_prefetch,
            "pin": self.action_pin,
            "preempt": self.action_preempt,
            "resume": self.action_resume,
            "workload": self.action_workload,
            "unload": self.action_unload,
        }.get(message.action)
        if action:
            action()

    # -- actions -----------------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        # Lab keys (q and ? included) act on the main screen only: under a dialog, q
        # must not quit the lab nor p open a second dialog. ctrl+q quits anywhere.
        if action in ("command_palette", "help_quit", "quit"):
            return True
        return self.screen is self.screen_stack[0]

    def action_preempt(self) -> None:
        m = self._selected_model()
        if m is None:
            return
        if m.state in ("preempted", "preempting"):
            self.notify(f"{m.id} is already {m.state}; r resumes it", severity="warning")
            return
        from labtui.tui.screens.modals import PreemptModal

        self.push_screen(PreemptModal(m.id), self._send_if)

    def action_resume(self) -> None:
        m = self._selected_model()
        if m is None:
            return
        self.send(Resume(model=m.id))

    def action_workload(self) -> None:
        m = self._selected_model()
        if m is None:
            return
        from labtui.tui.screens.modals import WorkloadModal

        self.push_screen(WorkloadModal(m.id), self._send_if)

    def action_cancel_workloads(self) -> None:
        m = self._selected_model()
        if m is None:
            return
        active = [w for w in self.snap.workloads if w.model == m.id and not w.done]
        if not active:
            self.notify(f"{m.id} has no running workload", severity="warning")
        for w in active:
            self.send(CancelWorkload(workload=w.id))

    def action_load(self) -> None:
        from labtui.tui.screens.modals import LoadModal

        taken = {m.id for m in self.snap.models} if self.snap else set()
        dev = self.snap.device if self.snap else None
        # a frozen (screenshot/test) lab lists no cache unless given one: its screen
        # must not depend on this machine's Hugging Face cache
        cached = self._cached_rows if self._cached_rows is not None or not self.frozen else []
        self.push_screen(
            LoadModal(
                taken,
                self._zoo(),
                cached,
                budget_bytes=dev.budget_bytes if dev else None,
                simulated=dev.simulated if dev else True,
            ),
            self._send_if,
        )

    def _zoo(self) -> list[dict]:
        """The zoo's models for the load dialog, from their specs (instant; the zoo's
        list_zoo() counts parameters by building each model on the meta device,
        seconds the UI must not wait for; the size is in each name anyway)."""
        if self._zoo_rows is None:
            try:
                from labtui.models import zoo

                self._zoo_rows = [
                    {
                        "name": s.name,
                        "family": s.family,
                        "layers": s.layers,
                        "built": zoo.is_built(s.name),
                    }
                    for s in zoo.ZOO.values()
                ]
            except Exception:  # noqa: BLE001 - the list is a convenience; a path still works
                self._zoo_rows = []
        return self._zoo_rows

    def action_unload(self) -> None:
        m = self._selected_model()
        if m is None:
            return
        from labtui.tui.screens.modals import ConfirmModal

        def confirmed(ok: bool | None) -> None:
            if ok:
                self.send(Unload(model=m.id))

        self.push_screen(
            ConfirmModal(
                f"Unload {m.id}? Its requests are cancelled and its memory freed.", "Unload"
            ),
            confirmed,
        )

    def action_mode(self) -> None:
        m = self._selected_model()
        if m is not None:
            self.send(SetMode(model=m.id, mode="host" if m.mode == "stream" else "stream"))

    def action_prefetch(self) -> None:
        m = self._selected_model()
        if m is not None:
            self.send(SetPrefetch(model=m.id, prefetch=not m.prefetch))

    def action_pin(self) -> None:
        m = self._selected_model()
        if m is not None:
            self.send(SetPin(model=m.id, pin=not m.pin))

    def action_policy(self) -> None:
        if self.snap is None:
            return
        from labtui.tui.screens.modals import PolicyModal

        self.push_screen(PolicyModal(self.snap.policy), self._send_if)

    def action_device(self) -> None:
        if self.snap is None:
            return
        d = self.snap.device
        if not d.simulated:
            self.notify(
                "device options apply to the simulated accelerator (sim) only", severity="warning"
            )
            return
        from labtui.tui.screens.modals import DeviceModal

        link = d.link if not d.link.endswith("GB/s") else d.link
        self.push_screen(DeviceModal(link, d.budget_bytes / 2**30, d.host_slowdown), self._send_if)

    def _send_if(self, cmd) -> None:
        if cmd is not None:
            self.send(cmd)

    def action_normalise(self) -> None:
        chart = self.query_one(ScatterChart)
        chart.normalised = not chart.normalised

    def action_clear_chart(self) -> None:
        self.chart_data.clear()
        self.refresh_chart()

    def refresh_chart(self, throttle: bool = False) -> None:
        # The live marker moves with every snapshot; redrawing the chart once a second
        # is plenty (points need seconds to settle) and keeps the lab's CPU (and GIL)
        # use low.
        now = time.monotonic()
        if throttle and now - self._chart_drawn < 1.0:
            return
        self._chart_drawn = now
        chart = self.query_one(ScatterChart)
        if throttle:
            chart.redraw_if_changed()
        else:
            chart.refresh()

    def action_help(self) -> None:
        from labtui.tui.screens.help import HelpScreen

        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    def action_save(self) -> None:
        if self.engine is None:
            return
        from labtui.tui.screens.modals import SaveModal

        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        default = str(self.save_dir / f"lab-session-{stamp}.toml")
        n = len(self.recorder) if self.recorder is not None else len(getattr(self.engine, "command_log", []))
        self.push_screen(SaveModal(default, n), self._save_to)

    def _save_to(self, path: str | None) -> bool:
        if not path:
            return False
        from labtui.tui.bridge import save_recording

        try:
            out = save_recording(self.recorder or self.engine, path, self.scenario)
        except LabError as e:
            self.notify(str(e), severity="error", title="not saved")
            return False
        except Exception as e:  # noqa: BLE001
            self.notify(one_line(e), severity="error", title="not saved")
            return False
        self.unsaved = 0
        self.notify(f"saved {out} — replay: labtui run {out}", title="session saved", timeout=8)
        return True

    # -- teaching: the scenario's timeline, paused and stepped -------------------------

    def _tour(self):
        if self.replay is None or self.replay.status != "replaying":
            self.notify("no scenario timeline is playing", severity="warning")
            return None
        return self.replay.clock

    def action_tour_pause(self) -> None:
        clock = self._tour()
        if clock is not None:
            clock.toggle()
            self._show_caption(self.snap.note if self.snap else "")

    def action_tour_next(self) -> None:
        if self._caption_back:  # back in the captions' history: forward through it first
            self._caption_back -= 1
        else:
            clock = self._tour()
            if clock is None:
                return
            clock.request_step()
        self._show_caption(self.snap.note if self.snap else "")

    def action_tour_back(self) -> None:
        if len(self._captions) > self._caption_back + 1:
            self._caption_back += 1
            self._show_caption(self.snap.note if self.snap else "")

    # -- the command palette: every lab action --------------------------------------------

    def get_system_commands(self, screen):
        yield from super().get_system_commands(screen)
        if screen is not self.screen_stack[0]:
            return
        for action, title, help_text in self.PALETTE:
            yield SystemCommand(title, help_text, getattr(self, f"action_{action}"))

    # -- narrow terminals: one pane at a time ------------------------------------------

    def action_view(self, view: str) -> None:
        self.query_one("#viewtabs", Tabs).active = f"tab-{view}"

    @on(Tabs.TabActivated, "#viewtabs")
    def _tab(self, event: Tabs.TabActivated) -> None:
        view = (event.tab.id or "tab-cards").removeprefix("tab-")
        self._view = view
        # The view classes only style a narrow screen (app.tcss); on a wide one a
        # restyle of both columns (every card) would be a key's whole cost. A later
        # switch to narrow restyles the whole screen anyway (its class changes).
        update = self.screen_stack[0].has_class("-narrow")
        for v in VIEWS:
            self.query_one(f"#{v}").set_class(v == view, "-active", update=update)
        # narrow terminals show one pane: hide the column that does not hold it
        self.query_one("#left").set_class(view not in ("cards", "chart"), "-off", update=update)
        self.query_one("#right").set_class(view not in ("memory", "log"), "-off", update=update)

    # -- shutdown -----------------------------------------------------------------------

    async def action_lab_quit(self) -> None:
        if self.unsaved <= 0 or self.engine is None:
            await self.action_quit()
            return
        from labtui.tui.screens.modals import QuitModal

        def chosen(choice: str | None) -> None:
            if choice == "quit":
                self.exit(0)
            elif choice == "save":
                self._save_then_quit()

        self.push_screen(QuitModal(self.unsaved), chosen)

    def _save_then_quit(self) -> None:
        from labtui.tui.screens.modals import SaveModal

        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        default = str(self.save_dir / f"lab-session-{stamp}.toml")
        n = len(getattr(self.engine, "command_log", []))

        def saved(path: str | None) -> None:
            if path and self._save_to(path):
                self.exit(0)  # a failed save keeps the lab open: nothing is lost

        self.push_screen(SaveModal(default, n), saved)

    async def action_quit(self) -> None:
        if self.replay is not None:
            self.replay.stop()
        self.exit(0)

    def on_unmount(self) -> None:
        if self.replay is not None:
            self.replay.stop()
        if self.trimmer is not None:
            self.trimmer.stop()


def main(scenario_path: str | None, device: str | None, time_scale: float = 1.0) -> int:
    """`labtui` / `labtui open SCENARIO`: validate the scenario first (bad input
    exits 2 with one line), then show the lab at once and start the engine on a
    worker thread."""
    from labtui.tui.bridge import engine_kwargs, load_scenario

    scn = load_scenario(scenario_path)  # LabError -> cli prints one line, exit 2
    kw = engine_kwargs(scn, device)

    def factory():
        from labtui.engine import Engine

        return Engine(**kw)

    if not time_scale > 0:
        raise LabError(f"--time-scale {time_scale:g} is not > 0; accepted: a number > 0 "
                       "(2 = the timeline at half speed, 0.5 = twice as fast)")
    from labtui.tui.trim import tune_malloc

    tune_malloc()  # before the engine's threads start (trim.py)
    app = LabApp(scenario=scn, engine_factory=factory, time_scale=time_scale)
    try:
        rc = app.run()
    finally:
        eng = app.engine
        if eng is not None:
            try:
                eng.close()
            except Exception:  # noqa: BLE001
                pass
    if app.engine_error:  # e.g. --device cuda without a GPU: say it again on the terminal
        print(f"labtui: {app.engine_error}", file=sys.stderr)
        return app.engine_error_code
    if app.return_code not in (None, 0):
        return app.return_code or 1
    return rc if isinstance(rc, int) else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else None, None))
