"""Scenario files: the TOML format, validated by pydantic, with one-line errors.

A scenario is data only (TOML, never code): a device, models loaded at the start,
workloads launched at times, a timeline of engine commands (``commands.py``: each
``[[timeline]]`` entry *is* a command plus ``at``), an optional ``[sweep]`` grid and
an optional ``[quick]`` table for smoke runs.

Timeline semantics (the runner follows them, the lab replays them):

- entries run in file order; each waits until ``at`` seconds after the run began
  (so ``at`` must not decrease down the file);
- an entry may also wait for a condition, ``when``:
  ``when = { model = "A", tokens = 100 }``  A has generated >= 100 tokens (counted
  from the start of timing, so warm-up tokens do not count);
  ``when = { model = "B", completed = 1 }``  B has finished >= 1 request;
  ``when = { workload = "b-job" }``           that workload is done;
- ``wait_idle`` waits until no model has queued or running requests;
  ``note`` shows a caption.

Every error is a ``LabError`` with one line: ``FILE:LINE: path: what; accepted``.
"""

from __future__ import annotations

import difflib
import functools
import operator
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from labtui.engine.commands import (
    COMMAND_TYPES,
    KVPolicy,
    LaunchWorkload,
    Load,
    OffloadMode,
    PolicyName,
    WeightsPolicy,
)
from labtui.errors import LabError, one_line

# Mirrors labtui.engine.devices.LINK_PRESETS; kept here so `run --check` does not
# import torch. tests/test_scenario_schema.py checks the two agree.
LINK_PRESET_NAMES = ("pcie3-x16", "pcie4-x16", "pcie5-x16", "nvlink-c2c")
LINK_GBPS_RANGE = (0.001, 10_000.0)

BUILTIN_DIR = Path(__file__).resolve().parent.parent / "scenarios"


class _Strict(BaseModel):
    # Unknown keys are errors: a typo in a scenario must never be silently ignored.
    model_config = ConfigDict(extra="forbid")


def _check_link(v: Any) -> str | float:
    if isinstance(v, bool):
        raise ValueError("expected a preset name or a number in GB/s")
    if isinstance(v, int | float):
        lo, hi = LINK_GBPS_RANGE
        if not lo <= float(v) <= hi:
            raise ValueError(f"{v} GB/s is out of range; accepted: {lo:g} to {hi:g} GB/s")
        return float(v)
    if isinstance(v, str) and v in LINK_PRESET_NAMES:
        return v
    hint = _did_you_mean(str(v), LINK_PRESET_NAMES)
    raise ValueError(
        f"unknown link {v!r}{hint}; accepted: {', '.join(LINK_PRESET_NAMES)} or a number in GB/s"
    )


class LabTable(_Strict):
    name: str = ""  # default: the file's stem
    seed: int = 0
    description: str = ""
    policy: PolicyName = "fcfs"
    timeout_s: float = Field(1800.0, gt=0)  # whole run; the runner stops (and says so) after


class DeviceTable(_Strict):
    kind: Literal["auto", "cuda", "sim"] = "auto"
    memory_gib: float | None = Field(None, gt=0)
    link: str | float = "pcie4-x16"
    host_slowdown: float = Field(4.0, ge=1.0)
    profile: str | None = None  # a hardware profile for sim (labtui/engine/profiles.py)
    # cap on the profile's time dilation D (docs/profiles.md, "Dilation cap"): for
    # scenarios whose paced terms (disk reloads) would take minutes at the full D
    max_dilation: float | None = Field(None, ge=1, le=1e6)

    _link = field_validator("link", mode="before")(classmethod(lambda cls, v: _check_link(v)))

    @field_validator("profile")
    @classmethod
    def _profile(cls, v: str | None) -> str | None:
        # a profile file is checked in check_semantics, once it is resolved
        # against the scenario's folder (not the caller's working directory)
        if v is not None and not v.partition("#")[0].endswith(".toml"):
            from labtui.engine.profiles import get_profile

            try:
                get_profile(v)
            except LabError as e:
                raise ValueError(str(e)) from None
        return v

    def engine_kwargs(self, kind_override: str | None = None) -> dict[str, Any]:
        kw: dict[str, Any] = {
            "device": kind_override or self.kind,
            "link": self.link,
            "host_slowdown": self.host_slowdown,
        }
        if self.memory_gib is not None:
            kw["memory_gib"] = self.memory_gib
        if self.profile is not None:
            kw["profile"] = self.profile
            if self.max_dilation is not None:
                from labtui.engine.profiles import get_profile

                kw["profile"] = get_profile(self.profile).capped(self.max_dilation)
        return kw


class When(_Strict):
    """A timeline entry's condition (see the module docstring)."""

    model: str | None = None
    tokens: int | None = Field(None, ge=0)
    completed: int | None = Field(None, ge=1)
    workload: str | None = None

    @model_validator(mode="after")
    def _one_form(self) -> When:
        by_model = self.model is not None and (self.tokens is None) != (self.completed is None)
        by_workload = self.workload is not None and self.model is None and self.tokens is None
        by_workload = by_workload and self.completed is None
        if not (by_model or by_workload):
            raise ValueError(
                "accepted: { model = ID, tokens = N }, { model = ID, completed = N } "
                "or { workload = ID }"
            )
        return self


# [[models]] = a Load command without `action`; [[workloads]] = LaunchWorkload + `at`;
# [[timeline]] = any command + `at` (+ `when`). Subclassing keeps one source of truth.
ModelEntry = create_model("ModelEntry", __base__=Load)
WorkloadEntry = create_model(
    "WorkloadEntry", __base__=LaunchWorkload, at=(float, Field(0.0, ge=0))
)
_TIMELINE_TYPES = {
    action: create_model(
        f"Timeline_{action}",
        __base__=cls,
        at=(float, Field(0.0, ge=0)),
        when=(When | None, None),
    )
    for action, cls in COMMAND_TYPES.items()
}
TimelineEntry = Annotated[
    functools.reduce(operator.or_, _TIMELINE_TYPES.values()),
    Field(discriminator="action"),
]

Residency = Annotated[float, Field(ge=0.0, le=1.0)]


class Sweep(_Strict):
    """A grid: every combination of the axes given, each point a clean run.

    Per-model axes apply to the models named in ``models`` (default: every
    [[models]] entry); workload axes to those models' workloads; ``link`` to the
    device; ``pause_after_tokens`` to every timeline ``when.tokens`` (0 = no pause:
    that entry and every entry after it are skipped, the uninterrupted baseline);
    ``weights``/``kv`` to every ``preempt`` entry; ``sources`` is a list of
    ``{ id = "zoo:..." }`` tables (e.g. A/B pairs).
    """

    models: list[str] | None = None
    residency: list[Residency] | None = None
    layers: list[Annotated[int, Field(ge=0)]] | None = None
    offload: list[OffloadMode] | None = None
    prefetch: list[bool] | None = None
    max_new_tokens: list[Annotated[int, Field(ge=1, le=100_000)]] | None = None
    prompt_tokens: list[Annotated[int, Field(ge=1, le=32_768)]] | None = None
    concurrency: list[Annotated[int, Field(ge=1, le=256)]] | None = None
    link: list[str | float] | None = None
    model: list[Annotated[str, Field(min_length=1)]] | None = None
    sources: list[dict[str, str]] | None = None
    pause_after_tokens: list[Annotated[int, Field(ge=0)]] | None = None
    weights: list[WeightsPolicy] | None = None
    kv: list[KVPolicy] | None = None
    policy: list[PolicyName] | None = None  # the scheduling policy ([lab].policy)
    repeat: int | None = Field(None, ge=1, le=100)  # at least this many repetitions per point
    warmup_tokens: int | None = Field(None, ge=0, le=4096)
    # measurement protocol (labtui/scenario/stats.py Protocol): repeat a point until
    # its timed runs add up to min_seconds and the 95% CI of the median decode tok/s
    # is within +/- ci_rel_width, at most max_repeat times
    min_seconds: float | None = Field(None, ge=0, le=3600)
    max_repeat: int | None = Field(None, ge=1, le=100)
    ci_rel_width: float | None = Field(None, gt=0, le=1)
    # each repetition's timed phase lasts at least this: a steady workload's request
    # count is raised from the warm-up's speed (a 0.2 s repetition is mostly jitter)
    rep_seconds: float | None = Field(None, ge=0, le=600)

    @field_validator("link", mode="before")
    @classmethod
    def _links(cls, v: Any) -> Any:
        return v if not isinstance(v, list) else [_check_link(x) for x in v]

    @model_validator(mode="after")
    def _axes_ok(self) -> Sweep:
        if self.residency is not None and self.layers is not None:
            raise ValueError("give residency (fractions) or layers (counts), not both")
        if self.max_repeat is not None and self.repeat is not None and self.max_repeat < self.repeat:
            raise ValueError(f"max_repeat {self.max_repeat} is below repeat {self.repeat}; "
                             "accepted: max_repeat >= repeat (repeat is the minimum)")
        for name in AXES:
            v = getattr(self, name)
            if v is not None and len(v) == 0:
                raise ValueError(f"{name}: empty list; give at least one value")
        return self

    def axes(self) -> dict[str, list]:
        return {a: getattr(self, a) for a in AXES if getattr(self, a) is not None}


# Product order: outermost first; residency innermost so a run walks the curve.
AXES = (
    "policy",
    "model",
    "sources",
    "link",
    "offload",
    "prefetch",
    "weights",
    "kv",
    "concurrency",
    "prompt_tokens",
    "max_new_tokens",
    "pause_after_tokens",
    "residency",
    "layers",
)


class Quick(_Strict):
    """What ``--quick`` changes. Without this table: requests <= 2, max_new_tokens
    <= 32, prompt_tokens <= 32, repeat 1, each sweep axis thinned to 3 values."""

    sweep: Sweep | None = None  # axes given here replace the [sweep] ones
    requests: int | None = Field(None, ge=1)
    max_new_tokens: int | None = Field(None, ge=1)
    prompt_tokens: int | None = Field(None, ge=1)
    time_scale: float = Field(1.0, gt=0, le=1.0)  # multiplies every `at`
    timeout_s: float | None = Field(None, gt=0)


class Scenario(_Strict):
    lab: LabTable = Field(default_factory=LabTable)
    device: DeviceTable = Field(default_factory=DeviceTable)
    models: list[ModelEntry] = Field(default_factory=list)  # type: ignore[valid-type]
    workloads: list[WorkloadEntry] = Field(default_factory=list)  # type: ignore[valid-type]
    timeline: list[TimelineEntry] = Field(default_factory=list)  # type: ignore[valid-type]
    sweep: Sweep | None = None
    quick: Quick | None = None

    _path: Path | None = PrivateAttr(None)
    _raw: str = PrivateAttr("")

    @property
    def path(self) -> Path | None:
        return self._path

    @property
    def raw(self) -> str:
        return self._raw

    @property
    def name(self) -> str:
        return self.lab.name or (self._path.stem if self._path else "scenario")

    def model_ids(self) -> list[str]:
        """Every model id the scenario declares or loads, in order."""
        ids = [m.id or default_model_id(m.source) for m in self.models]
        ids += [t.id or default_model_id(t.source) for t in self.timeline if t.action == "load"]
        return ids

    def commands(self) -> list[tuple[float, Any]]:
        """(at, Command) in run order: [[models]] loads at 0, then workloads and
        timeline merged by time (stable: timeline order kept). `when` is dropped:
        this is the plain replay view (the lab's), the runner honours `when`."""
        out: list[tuple[float, int, Any]] = [(0.0, 0, as_command(m)) for m in self.models]
        out += [(w.at, 1, as_command(w)) for w in self.workloads]
        out += [(t.at, 1, as_command(t)) for t in self.timeline]
        return [(t, c) for t, _, c in sorted(out, key=lambda x: (x[0], x[1]))]

    def with_updates(self, data: dict) -> Scenario:
        """A copy re-validated from `data` (a dict like model_dump's), path kept."""
        new = Scenario.model_validate(data)
        new._path, new._raw = self._path, self._raw
        return new


def as_command(entry: BaseModel) -> Any:
    """The engine Command inside a [[models]]/[[workloads]]/[[timeline]] entry."""
    action = entry.action  # type: ignore[attr-defined]
    return COMMAND_TYPES[action].model_validate(entry.model_dump(exclude={"at", "when"}))


# ---------------------------------------------------------------------------
# ids and sources


def default_model_id(source: str) -> str:
    """The id a model gets when its entry gives none: zoo name or folder name."""
    s = source.removeprefix("zoo:").rstrip("/")
    s = s.rsplit("/", 1)[-1] or "model"
    s = re.sub(r"[^A-Za-z0-9_.\-]", "-", s)[:64]
    return s or "model"


def zoo_names() -> list[str] | None:
    """The zoo's model names, or None while the zoo is not importable."""
    try:
        from labtui.models.zoo import ZOO
    except Exception:  # noqa: BLE001 - the zoo may be mid-development; skip the check
        return None
    return list(ZOO)


def zoo_layers(source: str) -> int | None:
    """Decoder blocks of a source, if we can know without loading it."""
    if source.startswith("zoo:"):
        try:
            from labtui.models.zoo import ZOO

            return int(ZOO[source[4:]].layers)
        except Exception:  # noqa: BLE001
            return None
    cfg = Path(source) / "config.json"
    if cfg.is_file():
        import json

        try:
            c = json.loads(cfg.read_text())
        except (OSError, ValueError):
            return None
        for k in ("num_hidden_layers", "n_layer", "num_layers"):
            if isinstance(c.get(k), int):
                return c[k]
    return None


def resolve_source(source: str, base: Path | None) -> str:
    """zoo:NAME stays; a path (relative to the scenario file) becomes absolute;
    anything else is a hub id. Raises ValueError with what is accepted."""
    if source.startswith("zoo:"):
        names = zoo_names()
        if names is not None and source[4:] not in names:
            hint = _did_you_mean(source[4:], names)
            raise ValueError(f"unknown zoo model {source[4:]!r}{hint}; accepted: {', '.join(names)}")
        return source
    if source.startswith("hf:"):  # a model in the local hub cache; checked on load
        if not re.fullmatch(r"[A-Za-z0-9][\w.\-]*/[\w.\-]+", source[3:]):
            raise ValueError(f"{source!r} is not hf:org/name; accepted: hf:org/name of a cached model")
        return source
    p = Path(source).expanduser()
    if not p.is_absolute() and base is not None:
        p = base / p
    pathlike = source.startswith((".", "/", "~")) or "\\" in source
    if p.exists():
        return str(p.resolve())
    if pathlike:
        raise ValueError(f"local checkpoint folder {source!r} not found (looked at {p.resolve()})")
    if source.count("/") > 1 or not re.fullmatch(r"[A-Za-z0-9_.\-]+(/[A-Za-z0-9_.\-]+)?", source):
        raise ValueError(
            f"{source!r} is not a zoo name, an existing folder or a hub id; "
            "accepted: zoo:NAME, a checkpoint folder, or org/name"
        )
    return source


# ---------------------------------------------------------------------------
# loading


def builtin_names() -> list[str]:
    return sorted(p.stem for p in BUILTIN_DIR.glob("*.toml"))


def find_scenario(ref: str | Path) -> Path:
    """A path to a .toml file, or the name of a built-in scenario."""
    p = Path(ref).expanduser()
    if p.is_file():
        return p
    if p.is_dir():
        raise LabError(f"{ref}: is a folder; give a scenario .toml file or a built-in name")
    builtin = BUILTIN_DIR / f"{ref}.toml"
    if "/" not in str(ref) and builtin.is_file():
        return builtin
    hint = _did_you_mean(str(ref), builtin_names())
    raise LabError(
        f"scenario {str(ref)!r} not found{hint}; give a .toml file or a built-in name: "
        + ", ".join(builtin_names())
    )


def default_scenario_path() -> Path:
    """What `labtui` with no argument opens."""
    return BUILTIN_DIR / "default.toml"


def load_scenario(ref: str | Path) -> Scenario:
    path = find_scenario(ref)
    try:
        raw = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise LabError(f"{path}: cannot read: {one_line(e)}") from None
    return parse_scenario(raw, path)


def parse_scenario(raw: str, path: Path | str | None = None) -> Scenario:
    """Validate TOML text; relative sources resolve against the file's folder."""
    label = str(path) if path is not None else "<scenario>"
    path = Path(path) if path is not None else None
    try:
        data = tomllib.loads(raw)
    except tomllib.TOMLDecodeError as e:
        m = re.search(r"\(at line (\d+), column \d+\)", str(e))
        where = f"{label}:{m.group(1)}" if m else label
        msg = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(e))
        raise LabError(f"{where}: not valid TOML: {one_line(msg)}") from None
    if not data:
        raise LabError(
            f"{label}: empty scenario; give at least a [[models]] table "
            "(see scenarios/default.toml)"
        )
    try:
        scn = Scenario.model_validate(data)
    except ValidationError as e:
        raise LabError(_format_validation(e, raw, label)) from None
    scn._path, scn._raw = path, raw
    problems = check_semantics(scn, base=path.parent if path else None)
    if problems:
        loc, msg = problems[0]
        raise LabError(_one(label, raw, loc, msg))
    return scn


# ---------------------------------------------------------------------------
# semantic checks (need several tables at once)


def check_semantics(scn: Scenario, base: Path | None) -> list[tuple[tuple, str]]:
    """(loc, message) for every cross-table problem; also resolves sources in place."""
    out: list[tuple[tuple, str]] = []
    if not (scn.models or scn.workloads or scn.timeline):
        out.append(((), "nothing to run; give at least one [[models]] table"))
    known: set[str] = set()

    def _source(loc: tuple, entry: Any) -> None:
        if entry.trust_remote_code:
            out.append(((*loc, "trust_remote_code"), "scenario files cannot run code; "
                        "accepted: false (load such models from the Python API)"))
        try:
            object.__setattr__(entry, "source", resolve_source(entry.source, base))
        except ValueError as e:
            out.append(((*loc, "source"), str(e)))

    prof = scn.device.profile
    if prof is not None and prof.partition("#")[0].endswith(".toml"):
        file, sep, name = prof.partition("#")
        p = Path(file).expanduser()
        if not p.is_absolute() and base is not None:
            p = base / p
        resolved = str(p.resolve()) + sep + name
        try:
            from labtui.engine.profiles import get_profile

            get_profile(resolved)
            object.__setattr__(scn.device, "profile", resolved)
        except LabError as e:
            out.append((("device", "profile"), str(e)))

    for i, m in enumerate(scn.models):
        _source(("models", i), m)
        mid = m.id or default_model_id(m.source)
        object.__setattr__(m, "id", mid)  # explicit from here on: the runner passes it
        if mid in known:
            out.append((("models", i, "id"), f"duplicate model id {mid!r}; give each model its own id"))
        known.add(mid)

    def _ref(loc: tuple, mid: str, ids: set[str]) -> None:
        if mid not in ids:
            hint = _did_you_mean(mid, sorted(ids))
            acc = ", ".join(sorted(ids)) or "none declared"
            out.append((loc, f"unknown model {mid!r}{hint}; accepted: {acc} "
                             "(a [[models]] id or one loaded earlier in the timeline)"))

    for i, w in enumerate(scn.workloads):
        _ref(("workloads", i, "model"), w.model, known)

    wl_ids = {w.id for w in scn.workloads if w.id}
    last_at = 0.0
    for i, t in enumerate(scn.timeline):
        loc = ("timeline", i)
        if t.at < last_at:
            out.append(((*loc, "at"), f"{t.at:g} is before the previous entry's {last_at:g}; "
                        "timeline entries run in file order, so give them in time order"))
        last_at = max(last_at, t.at)
        if t.action == "load":
            _source(loc, t)
            object.__setattr__(t, "id", t.id or default_model_id(t.source))
            known.add(t.id)
        elif hasattr(t, "model") and isinstance(getattr(t, "model", None), str):
            _ref((*loc, "model"), t.model, known)
        if t.action == "launch_workload" and t.id:
            wl_ids.add(t.id)
        if t.action == "cancel_workload" and t.workload not in wl_ids:
            out.append(((*loc, "workload"), f"unknown workload {t.workload!r}"
                        f"{_did_you_mean(t.workload, sorted(wl_ids))}; accepted: ids given to "
                        f"earlier workloads: {', '.join(sorted(wl_ids)) or 'none have an id'}"))
        if t.when is not None:
            if t.when.model is not None:
                _ref((*loc, "when", "model"), t.when.model, known)
            if t.when.workload is not None and t.when.workload not in wl_ids:
                hint = _did_you_mean(t.when.workload, sorted(wl_ids))
                out.append(((*loc, "when", "workload"), f"unknown workload {t.when.workload!r}"
                            f"{hint}; accepted: ids of earlier workloads: "
                            f"{', '.join(sorted(wl_ids)) or 'none have an id'}"))
    declared = {m.id or default_model_id(m.source) for m in scn.models}
    if scn.sweep is not None:
        out += _check_sweep(scn.sweep, scn, declared, ("sweep",))
    if scn.quick is not None and scn.quick.sweep is not None:
        merged = merge_sweep(scn.sweep, scn.quick.sweep)
        out += _check_sweep(merged, scn, declared, ("quick", "sweep"))
    return out


def merge_sweep(base: Sweep | None, over: Sweep) -> Sweep:
    data = base.model_dump(exclude_none=True) if base is not None else {}
    patch = over.model_dump(exclude_none=True)
    if "residency" in patch:
        data.pop("layers", None)
    if "layers" in patch:
        data.pop("residency", None)
    data.update(patch)
    return Sweep.model_validate(data)


def _check_sweep(sw: Sweep, scn: Scenario, declared: set[str], at: tuple) -> list:
    out: list[tuple[tuple, str]] = []
    targets = sw.models if sw.models is not None else [m.id or default_model_id(m.source)
                                                       for m in scn.models]
    for j, mid in enumerate(sw.models or []):
        if mid not in declared:
            hint = _did_you_mean(mid, sorted(declared))
            out.append(((*at, "models", j), f"unknown model {mid!r}{hint}; accepted: "
                        f"{', '.join(sorted(declared))} (sweeps apply to [[models]] entries)"))
    if sw.model is not None:
        if len(targets) != 1:
            out.append(((*at, "model"), "the model axis replaces one model's source; "
                        "set models = [\"ID\"] to say which"))
        for j, src in enumerate(sw.model):
            try:
                sw.model[j] = resolve_source(src, scn.path.parent if scn.path else None)
            except ValueError as e:
                out.append(((*at, "model", j), str(e)))
    loaded = declared | {t.id for t in scn.timeline if t.action == "load"}
    for j, pair in enumerate(sw.sources or []):
        for mid, src in pair.items():
            if mid not in loaded:
                out.append(((*at, "sources", j), f"unknown model {mid!r}; accepted: "
                            f"{', '.join(sorted(loaded))}"))
                continue
            try:
                pair[mid] = resolve_source(src, scn.path.parent if scn.path else None)
            except ValueError as e:
                out.append(((*at, "sources", j), str(e)))
    if sw.pause_after_tokens is not None and not any(
        t.when is not None and t.when.tokens is not None for t in scn.timeline
    ):
        out.append(((*at, "pause_after_tokens"), "no timeline entry has when.tokens to set; "
                    "add e.g. when = { model = \"A\", tokens = 100 } to the preempt entry"))
    for axis in ("weights", "kv"):
        if getattr(sw, axis) is not None and not any(t.action == "preempt" for t in scn.timeline):
            out.append(((*at, axis), "no preempt action in the timeline to apply it to"))
    if sw.layers is not None:
        for mid in targets:
            src = next((m.source for m in scn.models if (m.id or default_model_id(m.source)) == mid), "")
            n = zoo_layers(src)
            if n is not None and sw.model is None and max(sw.layers) > n:
                out.append(((*at, "layers"), f"{max(sw.layers)} is more than {mid}'s {n} "
                            f"decoder blocks; accepted: 0 to {n}"))
    return out


# ---------------------------------------------------------------------------
# one-line errors


def _did_you_mean(word: str, choices: Any) -> str:
    m = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {m[0]!r}?)" if m else ""


def _fields_at(loc: tuple) -> list[str]:
    """Accepted keys of the table at `loc` (for unknown-key messages)."""
    model: Any = Scenario
    for part in loc:
        if isinstance(part, int) or model is None:
            continue
        if part in _TIMELINE_TYPES and model is _TIMELINE_UNION:
            model = _TIMELINE_TYPES[part]
            continue
        f = getattr(model, "model_fields", {}).get(part)
        if f is None:
            return []
        model = _inner_model(f.annotation)
    return list(getattr(model, "model_fields", {})) if model is not None else []


_TIMELINE_UNION = object()


def _inner_model(ann: Any) -> Any:
    args = getattr(ann, "__args__", ())
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    if ann is TimelineEntry or any(a is TimelineEntry for a in args):
        return _TIMELINE_UNION
    for a in args:
        r = _inner_model(a)
        if r is not None:
            return r
    return None


def _path_str(loc: tuple) -> str:
    s = ""
    for part in loc:
        s += f"[{part}]" if isinstance(part, int) else (f".{part}" if s else str(part))
    return s or "(top level)"


def _clean_loc(loc: tuple) -> tuple:
    """Drop pydantic's union-member tags (timeline[2].preempt.kv -> timeline[2].kv)."""
    out: list = []
    for i, part in enumerate(loc):
        if i >= 2 and loc[0] == "timeline" and i == 2 and part in _TIMELINE_TYPES:
            continue
        if isinstance(part, str) and (part.startswith(("function-", "str", "float", "int"))
                                      or part in ("list[", "dict[")):
            continue
        out.append(part)
    return tuple(out)


def _format_validation(e: ValidationError, raw: str, label: str) -> str:
    err = _pick_error(e.errors())
    raw_loc = tuple(err["loc"])
    loc = _clean_loc(raw_loc)
    typ, inp, ctx = err["type"], err.get("input"), err.get("ctx") or {}
    if typ == "extra_forbidden":
        key = loc[-1]
        if raw_loc[0] == "timeline" and len(raw_loc) > 3 and raw_loc[2] in _TIMELINE_TYPES:
            fields = list(_TIMELINE_TYPES[raw_loc[2]].model_fields)
        else:
            fields = _fields_at(loc[:-1])
        hint = _did_you_mean(str(key), fields)
        msg = f"unknown key {key!r}{hint}; accepted: {', '.join(fields)}"
    elif typ == "missing":
        msg = "missing; this key is required"
    elif typ == "union_tag_invalid":
        acts = list(COMMAND_TYPES)
        msg = f"unknown action {inp.get('action')!r}{_did_you_mean(str(inp.get('action')), acts)}; accepted: {', '.join(acts)}"
        loc = (*loc, "action")
    elif typ == "union_tag_not_found":
        msg = f"missing action; accepted: {', '.join(COMMAND_TYPES)}"
        loc = (*loc, "action")
    elif typ == "literal_error":
        msg = f"got {inp!r}; accepted: {ctx.get('expected')}"
    elif typ == "string_pattern_mismatch":
        msg = f"got {inp!r}; accepted: letters, digits, '_', '.', '-' (1 to 64)"
    elif typ in ("model_type", "dict_type"):
        msg = f"expected a table, got {type(inp).__name__} {inp!r}"
    elif typ == "list_type":
        msg = f"expected a list [..], got {type(inp).__name__} {inp!r}"
    elif typ == "value_error":
        msg = str(ctx.get("error", err["msg"]))
        if not isinstance(inp, dict) and repr(inp) not in msg:
            msg = f"got {inp!r}: {msg}"
    elif "residency" in loc and typ in ("less_than_equal", "greater_than_equal"):
        msg = (f"got {inp!r}; accepted: a fraction from 0.0 to 1.0 "
               "(share of decoder blocks on the accelerator)")
    elif typ in _ACCEPTED:
        msg = f"got {inp!r}; accepted: {_ACCEPTED[typ].format(**ctx)}"
    else:
        msg = f"{err['msg'].rstrip('.')} (got {inp!r})" if not isinstance(inp, dict | list) else err["msg"]
    return _one(label, raw, loc, msg)


_ACCEPTED = {
    "less_than_equal": "a number <= {le}",
    "less_than": "a number < {lt}",
    "greater_than_equal": "a number >= {ge}",
    "greater_than": "a number > {gt}",
    "int_parsing": "a whole number",
    "int_type": "a whole number",
    "int_from_float": "a whole number",
    "float_parsing": "a number",
    "float_type": "a number",
    "bool_parsing": "true or false",
    "bool_type": "true or false",
    "string_type": "a quoted string",
    "string_too_short": "at least {min_length} character(s)",
    "string_too_long": "at most {max_length} characters",
    "too_short": "at least {min_length} item(s)",
    "too_long": "at most {max_length} item(s)",
}


def _pick_error(errors: list[dict]) -> dict:
    # pydantic reports every union member's failure; the most specific (deepest
    # non-union) one is what a person needs to read.
    def score(err: dict) -> tuple:
        return (err["type"] not in ("union_tag_invalid",), len(err["loc"]))

    first_top = errors[0]["loc"][:2]
    same = [e for e in errors if tuple(e["loc"][:2]) == tuple(first_top)]
    return max(same, key=score) if same else errors[0]


def _one(label: str, raw: str, loc: tuple, msg: str) -> str:
    line = locate(raw, loc)
    where = f"{label}:{line}" if line else label
    return one_line(f"{where}: {_path_str(loc)}: {msg}")


_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(r"""^\s*(?:"([^"]+)"|'([^']+)'|([A-Za-z0-9_\-]+))\s*(?:\.|=)""")


def locate(raw: str, loc: tuple) -> int | None:
    """The 1-based line of `loc` (e.g. ("models", 1, "residency")) in the raw TOML,
    found by scanning headers and keys; the table's header if the key is absent."""
    lines = raw.splitlines()
    sections: list[tuple[tuple, int]] = [((), 0)]  # (table path, header line index)
    counts: dict[str, int] = {}
    for i, text in enumerate(lines):
        m = _HEADER.match(text)
        if not m or "=" in text.split("]")[0]:
            continue
        name = tuple(p.strip().strip('"') for p in m.group(2).split("."))
        if m.group(1) == "[[":
            key = ".".join(name)
            idx = counts.get(key, 0)
            counts[key] = idx + 1
            sections.append(((*name, idx), i))
        else:
            sections.append((name, i))
    strs = tuple(loc)
    best: tuple[int, int] | None = None  # (matched length, section number)
    for n, (path, _) in enumerate(sections):
        if strs[: len(path)] == path and (best is None or len(path) > best[0]):
            best = (len(path), n)
    if best is None:
        return None
    depth, n = best
    start = sections[n][1]
    end = sections[n + 1][1] if n + 1 < len(sections) else len(lines)
    rest = [p for p in strs[depth:] if isinstance(p, str)]
    if rest:
        for i in range(start + (1 if n else 0), end):
            k = _KEY.match(lines[i])
            if k and (k.group(1) or k.group(2) or k.group(3)) == rest[0]:
                return i + 1
    return start + 1 if n else None
