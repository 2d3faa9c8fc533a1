"""Commands: the one vocabulary every frontend speaks to the engine.

The TUI, the headless runner, scenario timelines and scripts all send these same
objects to ``Engine.execute``. A scenario's ``[[timeline]]`` entry *is* a command
(its ``action`` field picks the class), and recording a lab session is writing
down the commands the engine executed, with their times. Field-level validation
(types, ranges, enums) lives here, in pydantic; validation that needs engine state
(does the model exist, does the layer exist, does it fit) happens in the engine
before the command is queued.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

OffloadMode = Literal["stream", "host"]
KVPolicy = Literal["keep", "swap", "drop"]
WeightsPolicy = Literal["host", "disk"]
# Every scheduling policy (labtui/engine/policies/; docs/policies.md).
PolicyName = Literal["fcfs", "round_robin", "priority", "ollama", "llamacpp-router", "static-split", "planner"]
# Policies that resume the models they preempted on their own (a run that waits on
# such a model is not stuck).
SELF_RESUMING = ("priority", "ollama", "llamacpp-router", "planner")
WorkloadKind = Literal["closed", "poisson"]
DistKind = Literal["fixed", "uniform", "lognormal"]

ModelId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")]


class _Cmd(BaseModel):
    # Unknown keys are errors everywhere: a typo in a scenario must not be ignored.
    model_config = ConfigDict(extra="forbid", frozen=True)

    def to_toml_dict(self) -> dict:
        """Plain dict for a scenario's [[timeline]] entry (None fields dropped)."""
        return {k: v for k, v in self.model_dump(mode="json").items() if v is not None}


class Load(_Cmd):
    action: Literal["load"] = "load"
    id: ModelId | None = None
    source: str = Field(min_length=1)
    residency: float = Field(1.0, ge=0.0, le=1.0)
    offload: OffloadMode = "stream"
    prefetch: bool = True
    max_batch: int = Field(8, ge=1, le=256)
    priority: int = 0
    dtype: Literal["float32", "float16", "bfloat16"] | None = None
    trust_remote_code: bool = False
    # Service-level objectives and pinning, read by the planner policy (docs/policies.md):
    # time to first token and time per output token targets, the model's weight in the
    # objective; a pinned model is never evicted nor placed below min_residency.
    slo_ttft_s: float | None = Field(None, gt=0)
    slo_tpot_s: float | None = Field(None, gt=0)
    slo_weight: float = Field(1.0, gt=0)
    pin: bool = False
    min_residency: float = Field(0.0, ge=0.0, le=1.0)


class Unload(_Cmd):
    action: Literal["unload"] = "unload"
    model: ModelId


class SetResidency(_Cmd):
    """Fraction of decoder blocks on the accelerator (first k blocks, as llama.cpp's
    -ngl), or an explicit list of block indices."""

    action: Literal["set_residency"] = "set_residency"
    model: ModelId
    residency: float | None = Field(None, ge=0.0, le=1.0)
    layers: list[int] | None = None
    mode: OffloadMode | None = None

    @field_validator("layers")
    @classmethod
    def _layers_ok(cls, v: list[int] | None) -> list[int] | None:
        if v is None:
            return v
        if any(i < 0 for i in v):
            raise ValueError("layer indices must be >= 0")
        if len(set(v)) != len(v):
            raise ValueError("layer indices must not repeat")
        return sorted(v)

    @model_validator(mode="after")
    def _one_of(self) -> SetResidency:
        if (self.residency is None) == (self.layers is None):
            raise ValueError("give exactly one of residency (0..1) or layers (list of indices)")
        return self


class SetMode(_Cmd):
    action: Literal["set_mode"] = "set_mode"
    model: ModelId
    mode: OffloadMode


class SetPrefetch(_Cmd):
    action: Literal["set_prefetch"] = "set_prefetch"
    model: ModelId
    prefetch: bool


class SetPin(_Cmd):
    """Pin a model (never evicted by a policy, never placed below ``min_residency``)
    or unpin it. ``min_residency`` None keeps the one it has (from its Load or an
    earlier SetPin). Policies read pins live (docs/policies.md)."""

    action: Literal["set_pin"] = "set_pin"
    model: ModelId
    pin: bool
    min_residency: float | None = Field(None, ge=0.0, le=1.0)


class Preempt(_Cmd):
    action: Literal["preempt"] = "preempt"
    model: ModelId
    kv: KVPolicy = "swap"
    weights: WeightsPolicy = "host"


class Resume(_Cmd):
    """Resume a preempted model. ``residency``/``mode``: resume to another placement
    (default: the one it had). ``pipelined``: decode as soon as the embedding and the
    first ``first_blocks`` blocks are back (the rest offloaded in ``start_mode``), then
    raise residency block by block between decode steps up to the target placement."""

    action: Literal["resume"] = "resume"
    model: ModelId
    residency: float | None = Field(None, ge=0.0, le=1.0)
    mode: OffloadMode | None = None
    pipelined: bool = False
    first_blocks: int = Field(1, ge=0)
    start_mode: OffloadMode = "stream"


class LaunchWorkload(_Cmd):
    action: Literal["launch_workload"] = "launch_workload"
    model: ModelId
    id: str | None = None
    kind: WorkloadKind = "closed"
    concurrency: int = Field(1, ge=1, le=256)
    rate_per_s: float | None = Field(None, gt=0)
    requests: int = Field(8, ge=1, le=100_000)
    prompt_tokens: int = Field(64, ge=1, le=32_768)
    max_new_tokens: int = Field(128, ge=1, le=100_000)
    prompt_dist: DistKind = "fixed"
    output_dist: DistKind = "fixed"
    greedy: bool = True
    temperature: float = Field(1.0, gt=0)
    seed: int | None = None

    @model_validator(mode="after")
    def _rate(self) -> LaunchWorkload:
        if self.kind == "poisson" and self.rate_per_s is None:
            raise ValueError("a poisson workload needs rate_per_s (requests per second, > 0)")
        return self


class CancelWorkload(_Cmd):
    action: Literal["cancel_workload"] = "cancel_workload"
    workload: str


class SetPolicy(_Cmd):
    action: Literal["set_policy"] = "set_policy"
    policy: PolicyName


class SetDeviceOptions(_Cmd):
    action: Literal["set_device_options"] = "set_device_options"
    link: str | float | None = None
    memory_gib: float | None = Field(None, gt=0)
    host_slowdown: float | None = Field(None, ge=1.0)


class Note(_Cmd):
    """A caption for teaching tours: shown in the lab, written to the events."""

    action: Literal["note"] = "note"
    text: str


class WaitIdle(_Cmd):
    """Scenario-only: wait until no model has queued or running requests."""

    action: Literal["wait_idle"] = "wait_idle"
    timeout_s: float = Field(600.0, gt=0)


Command = Annotated[
    Load
    | Unload
    | SetResidency
    | SetMode
    | SetPrefetch
    | SetPin
    | Preempt
    | Resume
    | LaunchWorkload
    | CancelWorkload
    | SetPolicy
    | SetDeviceOptions
    | Note
    | WaitIdle,
    Field(discriminator="action"),
]

COMMAND_TYPES: dict[str, type[_Cmd]] = {
    c.model_fields["action"].default: c
    for c in (
        Load,
        Unload,
        SetResidency,
        SetMode,
        SetPrefetch,
        SetPin,
        Preempt,
        Resume,
        LaunchWorkload,
        CancelWorkload,
        SetPolicy,
        SetDeviceOptions,
        Note,
        WaitIdle,
    )
}


def validation_message(e: ValidationError, what: str = "") -> str:
    """One line for a pydantic error: where, what was wrong, what was given."""
    err = e.errors()[0]
    loc = ".".join(str(x) for x in err.get("loc", ()))
    msg = err.get("msg", "invalid value").removeprefix("Value error, ")
    given = err.get("input")
    got = "" if isinstance(given, dict) or given is None else f" (got {given!r})"
    head = f"{what} " if what else ""
    return f"{head}{loc + ': ' if loc else ''}{msg}{got}"


def build(action: str | type[_Cmd], **fields) -> _Cmd:
    """Make a command from plain values; bad values raise LabError (one line)."""
    from labtui.errors import LabError

    cls = COMMAND_TYPES.get(action) if isinstance(action, str) else action
    if cls is None:
        raise LabError(f"unknown action '{action}'; accepted: {', '.join(COMMAND_TYPES)}")
    try:
        return cls(**fields)
    except ValidationError as e:
        raise LabError(validation_message(e, cls.model_fields["action"].default)) from None
