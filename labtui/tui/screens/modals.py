"""Modal dialogs. Each returns a ready, validated command (or None when cancelled);
invalid values get a one-line notification and the dialog stays open, so nothing
invalid is ever sent to the engine."""

from __future__ import annotations

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, OptionList, RadioButton, RadioSet, Select, Static
from textual.widgets.option_list import Option

from labtui.engine.commands import LaunchWorkload, Load, Preempt, SetDeviceOptions, SetPolicy
from labtui.errors import LabError
from labtui.tui.format import fmt_bytes, fmt_params
from labtui.tui.validate import build, parse_float, parse_int


class _Modal(ModalScreen):
    BINDINGS = [Binding("escape", "cancel", "cancel")]

    def action_cancel(self) -> None:
        self.dismiss(None)

    @on(Button.Pressed, "#cancel")
    def _cancel(self) -> None:
        self.dismiss(None)

    def _fail(self, e: LabError) -> None:
        self.notify(str(e), severity="error", title="not sent")

    def _buttons(self, ok: str) -> ComposeResult:
        with Horizontal(classes="modal-buttons"):
            yield Button(ok, id="ok", variant="primary")
            yield Button("Cancel", id="cancel")


def _radio(group: str, label: str, value: str, current: str) -> RadioButton:
    return RadioButton(label, value=value == current, name=value, id=f"{group}-{value}")


class PreemptModal(_Modal):
    """kv keep|swap|drop and weights host|disk, then Preempt."""

    def __init__(self, model: str) -> None:
        super().__init__()
        self.model = model

    def compose(self) -> ComposeResult:
        with Vertical(classes="modal", id="preempt-modal") as v:
            v.border_title = f"preempt {self.model}"
            yield Static(
                "Pause the model to free the accelerator; the cost is measured in the "
                "study's phases: kv_out, release now; reload, kv_in on resume.",
                classes="modal-help",
            )
            yield Label("KV cache")
            with RadioSet(id="kv"):
                yield _radio("kv", "swap — copy to host RAM", "swap", "swap")
                yield _radio("kv", "keep — leave on the accelerator", "keep", "swap")
                yield _radio("kv", "drop — recompute on resume", "drop", "swap")
            yield Label("weights")
            with RadioSet(id="weights"):
                yield _radio("weights", "host — keep a copy in host RAM", "host", "host")
                yield _radio(
                    "weights", "disk — release, reload from the checkpoint", "disk", "host"
                )
            yield from self._buttons("Preempt")

    def on_mount(self) -> None:
        self.query_one("#ok", Button).focus()

    @on(Button.Pressed, "#ok")
    def _ok(self) -> None:
        kv = self.query_one("#kv", RadioSet).pressed_button
        w = self.query_one("#weights", RadioSet).pressed_button
        try:
            cmd = build(
                Preempt,
                model=self.model,
                kv=kv.name if kv else "swap",
                weights=w.name if w else "host",
            )
        except LabError as e:
            self._fail(e)
            return
        self.dismiss(cmd)


class WorkloadModal(_Modal):
    """Launch a workload: closed (N in flight) or poisson (rate)."""

    def __init__(self, model: str) -> None:
        super().__init__()
        self.model = model

    def compose(self) -> ComposeResult:
        with Vertical(classes="modal", id="workload-modal") as v:
            v.border_title = f"launch a workload on {self.model}"
            with Grid(classes="form"):
                yield Label("kind")
                yield Select(
                    [
                        ("closed — N requests in flight", "closed"),
                        ("poisson — arrivals at a rate", "poisson"),
                    ],
                    value="closed",
                    allow_blank=False,
                    id="kind",
                    compact=True,
                )
                yield Label("concurrency")
                yield Input("2", id="concurrency", type="integer", compact=True)
                yield Label("rate /s")
                yield Input("", id="rate", placeholder="poisson only", type="number", compact=True)
                yield Label("requests")
                yield Input("8", id="requests", type="integer", compact=True)
                yield Label("prompt tokens")
                yield Input("64", id="prompt", type="integer", compact=True)
                yield Label("output tokens")
                yield Input("128", id="output", type="integer", compact=True)
            yield from self._buttons("Launch")

    def on_mount(self) -> None:
        self.query_one("#concurrency", Input).focus()

    def values(self) -> dict:
        get = lambda i: self.query_one(f"#{i}", Input).value  # noqa: E731
        kind = self.query_one("#kind", Select).value
        return dict(
            model=self.model,
            kind=kind,
            concurrency=parse_int("concurrency", get("concurrency")),
            rate_per_s=parse_float("rate /s", get("rate")),
            requests=parse_int("requests", get("requests")),
            prompt_tokens=parse_int("prompt tokens", get("prompt")),
            max_new_tokens=parse_int("output tokens", get("output")),
        )

    @on(Input.Submitted)
    @on(Button.Pressed, "#ok")
    def _ok(self) -> None:
        try:
            cmd = build(LaunchWorkload, **self.values())
        except LabError as e:
            self._fail(e)
            return
        self.dismiss(cmd)


def zoo_options(rows: list[dict]) -> list[tuple[str, str]]:
    """(source, description) for the zoo's rows (labtui.models.zoo.list_zoo())."""
    out = []
    for r in rows:
        name = r.get("name") if isinstance(r, dict) else str(r)
        if not name:
            continue
        bits = ["zoo"]
        if isinstance(r, dict):
            if r.get("family"):
                bits.append(str(r["family"]))
            if r.get("params"):
                bits.append(fmt_params(int(r["params"])))
            if r.get("layers"):
                bits.append(f"{r['layers']} layers")
            if r.get("bytes"):
                bits.append(fmt_bytes(int(r["bytes"]), 0))
            if r.get("built") is False:
                bits.append("builds on first load")
        out.append((f"zoo:{name}", " · ".join(bits)))
    return out


_SHORT_DTYPE = {"float32": "f32", "bfloat16": "bf16", "float16": "f16"}


def cached_options(cands: list, budget_bytes: int | None, simulated: bool) -> list[tuple[str, str]]:
    """(source, description) for models in the local Hugging Face cache
    (labtui.models.catalog.Candidate), with whether each fits the budget."""
    out = []
    for c in cands:
        bits = ["hf", c.family, fmt_params(c.params)]
        if c.layers:
            bits.append(f"{c.layers} layers")
        need = c.load_bytes(simulated)
        bits.append(f"{fmt_bytes(c.bytes, 0)} {_SHORT_DTYPE.get(c.dtype, c.dtype)}")
        if budget_bytes:
            on = f" ({fmt_bytes(need, 0)} on sim)" if simulated and need != c.bytes else ""
            bits.append(("fits" if need <= budget_bytes else "over budget") + on)
        out.append((c.source, " · ".join(bits)))
    return out


def matches(query: str, source: str, desc: str) -> bool:
    """Every word of the query appears in the source or its description."""
    hay = f"{source} {desc}".lower()
    return all(w in hay for w in query.lower().split())


class LoadModal(_Modal):
    """Load a model: the zoo and the local Hugging Face cache, filtered as you type
    in the search box; or any source typed in the source field."""

    BINDINGS = [Binding("down", "to_list", "list", show=False)]

    def __init__(
        self,
        taken: set[str],
        zoo_rows: list[dict] | None = None,
        cached: list | None = None,
        budget_bytes: int | None = None,
        simulated: bool = True,
    ) -> None:
        super().__init__()
        self.taken = taken
        self.budget, self.simulated = budget_bytes, simulated
        self.options = zoo_options(zoo_rows or [])
        self.cached = cached
        if cached is not None:
            self.options += cached_options(cached, budget_bytes, simulated)

    def compose(self) -> ComposeResult:
        with Vertical(classes="modal", id="load-modal") as v:
            v.border_title = "load a model"
            yield Input(
                "",
                id="search",
                placeholder="search the zoo and the Hugging Face cache (↓ to the list)",
                compact=True,
            )
            yield OptionList(id="zoo-list")
            yield Static("", id="load-note", classes="modal-help")
            with Grid(classes="form"):
                yield Label("source")
                yield Input(
                    self.options[0][0] if self.options else "",
                    id="source",
                    placeholder="zoo:NAME, hf:org/name, a folder, or a hub id",
                    compact=True,
                )
                yield Label("id")
                yield Input(
                    "",
                    id="model-id",
                    placeholder="optional (default: from the source)",
                    compact=True,
                )
                yield Label("residency")
                yield Input("1.0", id="residency", type="number", compact=True)
                yield Label("offload")
                yield Select(
                    [("stream", "stream"), ("host", "host")],
                    value="stream",
                    allow_blank=False,
                    id="offload",
                    compact=True,
                )
            yield from self._buttons("Load")

    def on_mount(self) -> None:
        self._fill("")
        self.query_one("#search", Input).focus()
        if self.cached is None:
            self._note("scanning the local Hugging Face cache…")
            self.run_worker(self._scan, thread=True, exclusive=True, group="hub-scan")
        else:
            self._cache_note(len(self.cached))

    def _scan(self) -> None:
        # off the UI thread: the scan reads a few KB of every cached safetensors file
        from labtui.models.catalog import scan_hub_cache

        try:
            found, _ = scan_hub_cache()
        except Exception:  # noqa: BLE001 - the list is a convenience; a typed source still works
            found = []
        self.app.call_from_thread(self._scanned, found)

    def _scanned(self, found: list) -> None:
        self.cached = found
        self.app._cached_rows = found  # the next dialog opens with them at once
        self.options += cached_options(found, self.budget, self.simulated)
        self._fill(self.query_one("#search", Input).value)
        self._cache_note(len(found))

    def _cache_note(self, n: int) -> None:
        from labtui.models.catalog import hub_cache_dir

        self._note(
            f"zoo weights are random: text is noise, timing is real · Hugging Face cache "
            f"{hub_cache_dir()}: {n} model(s)"
        )

    def _note(self, text: str) -> None:
        from rich.text import Text

        self.query_one("#load-note", Static).update(Text(text))

    def _fill(self, query: str) -> None:
        ol = self.query_one("#zoo-list", OptionList)
        ol.clear_options()
        shown = [(s, d) for s, d in self.options if matches(query, s, d)]
        ol.add_options(
            [Option(Text.assemble(s, "  ", (d, "dim")) if d else s, id=s) for s, d in shown]
        )
        if shown:
            ol.highlighted = 0

    @on(Input.Changed, "#search")
    def _search(self, event: Input.Changed) -> None:
        self._fill(event.value)

    def action_to_list(self) -> None:
        if isinstance(self.focused, Input) and self.focused.id == "search":
            self.query_one("#zoo-list", OptionList).focus()

    @on(OptionList.OptionHighlighted, "#zoo-list")
    def _hl(self, event: OptionList.OptionHighlighted) -> None:
        if event.option.id:
            self.query_one("#source", Input).value = event.option.id

    @on(OptionList.OptionSelected, "#zoo-list")
    def _picked(self, event: OptionList.OptionSelected) -> None:
        if event.option.id:
            self.query_one("#source", Input).value = event.option.id
        self._ok()

    @on(Input.Submitted)
    def _submitted(self, event: Input.Submitted) -> None:
        if event.input.id == "search":  # enter in the search box loads the first match
            ol = self.query_one("#zoo-list", OptionList)
            if not ol.option_count:
                self._fail(LabError(f"nothing matches {event.value!r}; type a source below"))
                return
            opt = ol.get_option_at_index(ol.highlighted or 0)
            self.query_one("#source", Input).value = opt.id or ""
        self._ok()

    @on(Button.Pressed, "#ok")
    def _ok(self) -> None:
        get = lambda i: self.query_one(f"#{i}", Input).value.strip()  # noqa: E731
        try:
            mid = get("model-id") or None
            if mid and mid in self.taken:
                raise LabError(f"id {mid!r} is already loaded; pick another id")
            cmd = build(
                Load,
                source=get("source"),
                id=mid,
                residency=parse_float("residency", get("residency")),
                offload=self.query_one("#offload", Select).value,
            )
        except LabError as e:
            self._fail(e)
            return
        self.dismiss(cmd)


class ConfirmModal(_Modal):
    def __init__(self, question: str, ok: str = "OK") -> None:
        super().__init__()
        self.question = question
        self.ok = ok

    def compose(self) -> ComposeResult:
        with Vertical(classes="modal", id="confirm-modal"):
            yield Static(self.question, classes="modal-help")
            yield from self._buttons(self.ok)

    def on_mount(self) -> None:
        self.query_one("#ok", Button).focus()

    @on(Button.Pressed, "#ok")
    def _ok(self) -> None:
        self.dismiss(True)


POLICIES = {
    "fcfs": "first come, first served across models",
    "round_robin": "take turns between models with work",
    "priority": "highest model priority first",
}


class PolicyModal(_Modal):
    def __init__(self, current: str) -> None:
        super().__init__()
        self.current = current

    def compose(self) -> ComposeResult:
        with Vertical(classes="modal", id="policy-modal") as v:
            v.border_title = "scheduler policy"
            yield OptionList(
                *[Option(f"{p}  [dim]{d}[/dim]", id=p) for p, d in POLICIES.items()], id="policies"
            )
            yield from self._buttons("Set")

    def on_mount(self) -> None:
        ol = self.query_one("#policies", OptionList)
        ol.highlighted = list(POLICIES).index(self.current) if self.current in POLICIES else 0
        ol.focus()

    @on(OptionList.OptionSelected)
    @on(Button.Pressed, "#ok")
    def _ok(self) -> None:
        ol = self.query_one("#policies", OptionList)
        idx = ol.highlighted or 0
        self.dismiss(build(SetPolicy, policy=list(POLICIES)[idx]))


def link_presets() -> list[str]:
    from labtui.scenario.schema import LINK_PRESET_NAMES

    return list(LINK_PRESET_NAMES)


class DeviceModal(_Modal):
    """Simulated-device options: link, budget, host slowdown."""

    def __init__(self, link: str, memory_gib: float, host_slowdown: float) -> None:
        super().__init__()
        self.link, self.memory_gib, self.host_slowdown = link, memory_gib, host_slowdown

    def compose(self) -> ComposeResult:
        presets = link_presets()
        opts = [(p, p) for p in presets]
        if self.link not in presets:
            opts.insert(0, (self.link, self.link))
        with Vertical(classes="modal", id="device-modal") as v:
            v.border_title = "simulated device"
            with Grid(classes="form"):
                yield Label("link")
                yield Select(opts, value=self.link, allow_blank=False, id="link", compact=True)
                yield Label("or GB/s")
                yield Input(
                    "",
                    id="gbps",
                    placeholder="a number overrides the preset",
                    type="number",
                    compact=True,
                )
                yield Label("budget GiB")
                yield Input(f"{self.memory_gib:g}", id="memory", type="number", compact=True)
                yield Label("host slowdown")
                yield Input(f"{self.host_slowdown:g}", id="slowdown", type="number", compact=True)
            yield from self._buttons("Apply")

    @on(Input.Submitted)
    @on(Button.Pressed, "#ok")
    def _ok(self) -> None:
        get = lambda i: self.query_one(f"#{i}", Input).value  # noqa: E731
        try:
            gbps = parse_float("GB/s", get("gbps"))
            link = gbps if gbps is not None else self.query_one("#link", Select).value
            cmd = build(
                SetDeviceOptions,
                link=link,
                memory_gib=parse_float("budget GiB", get("memory")),
                host_slowdown=parse_float("host slowdown", get("slowdown")),
            )
        except LabError as e:
            self._fail(e)
            return
        self.dismiss(cmd)


class SaveModal(_Modal):
    def __init__(self, default_path: str, n_commands: int) -> None:
        super().__init__()
        self.default_path = default_path
        self.n = n_commands

    def compose(self) -> ComposeResult:
        with Vertical(classes="modal", id="save-modal") as v:
            v.border_title = "save session as a scenario"
            yield Static(
                f"{self.n} commands recorded. `labtui run FILE` replays them headless; "
                "`labtui open FILE` replays them here.",
                classes="modal-help",
            )
            yield Input(self.default_path, id="path", compact=True)
            yield from self._buttons("Save")

    def on_mount(self) -> None:
        self.query_one("#path", Input).focus()

    @on(Input.Submitted)
    @on(Button.Pressed, "#ok")
    def _ok(self) -> None:
        path = self.query_one("#path", Input).value.strip()
        if not path:
            self._fail(LabError("give a file name, e.g. session.toml"))
            return
        if not path.endswith(".toml"):
            path += ".toml"
        self.dismiss(path)


class QuitModal(_Modal):
    """q with actions not saved yet: Save / Quit without saving / Cancel."""

    def __init__(self, n_unsaved: int) -> None:
        super().__init__()
        self.n = n_unsaved

    def compose(self) -> ComposeResult:
        with Vertical(classes="modal", id="quit-modal") as v:
            v.border_title = "quit the lab"
            yield Static(
                f"{self.n} action(s) of this session are not saved. Save the session as a "
                "scenario first (`labtui run FILE` replays it)?",
                classes="modal-help",
            )
            with Horizontal(classes="modal-buttons"):
                yield Button("Save…", id="save", variant="primary")
                yield Button("Quit without saving", id="quit", variant="error")
                yield Button("Cancel", id="cancel")

    def on_mount(self) -> None:
        self.query_one("#save", Button).focus()

    @on(Button.Pressed, "#save")
    def _save(self) -> None:
        self.dismiss("save")

    @on(Button.Pressed, "#quit")
    def _quit(self) -> None:
        self.dismiss("quit")
