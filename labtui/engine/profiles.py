"""Hardware profiles: the target workstation a simulated run speaks for.

On ``sim`` compute runs on this machine's CPU, tens of times slower than a GPU
reads its memory, so a link paced at real PCIe speed makes streaming look free.
A profile describes a target (accelerator memory bandwidth and capacity, host
memory bandwidth for host-executed blocks, link per direction and per copy,
storage) and ``Profile.pacing_for`` turns it into the pacing that keeps every
ratio the study is about equal to the target's, by *time dilation*: this
machine's resident decode step is D times the target's, so the link, storage
and per-copy costs are slowed by the same D (docs/profiles.md).

Profiles come from the built-ins below, from TOML files (``[profiles.NAME]``
tables) in ``~/.config/labtui/profiles/`` (``$XDG_CONFIG_HOME`` honoured), in
the files or folders listed in ``$LABTUI_PROFILES`` (``os.pathsep``-separated),
or from a ``.toml`` path given where a profile name is expected.

Pure data and arithmetic: no torch import, so `labtui profiles` and
`run --check` answer at once.
"""

from __future__ import annotations

import difflib
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from labtui.errors import LabError, one_line

GB = 1e9  # bandwidths are decimal GB/s, as vendors and the PCIe spec give them
GiB = 1024**3


class Profile(BaseModel):
    """One target workstation. Bandwidths in GB/s (1e9 B/s), capacity in GiB."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")
    description: str = ""
    accel_gbps: float = Field(gt=0, le=100_000)  # accelerator memory bandwidth (spec peak)
    accel_gib: float = Field(gt=0, le=100_000)  # accelerator memory capacity
    host_gbps: float = Field(gt=0, le=100_000)  # host memory bandwidth, for host-executed blocks
    host_block_us: float = Field(0.0, ge=0, le=1e6)  # fixed cost per host-executed block
    h2d_gbps: float = Field(gt=0, le=100_000)  # link, host -> accelerator
    d2h_gbps: float = Field(gt=0, le=100_000)  # link, accelerator -> host
    copy_latency_us: float = Field(0.0, ge=0, le=1e6)  # fixed cost per copy
    storage_gbps: float = Field(gt=0, le=100_000)  # checkpoint read for weights=disk reloads
    storage_fixed_s: float = Field(0.0, ge=0, le=3600)  # fixed cost per model load
    # Emulation, not hardware: the most this machine's clock may be dilated. Every
    # paced term (link, storage, host blocks, their fixed costs) then keeps the
    # profile's ratios to the others, but they are all D/max_dilation times too
    # fast against this CPU's compute (docs/profiles.md, "Dilation cap"). None:
    # no cap, every ratio the profile's (the default).
    max_dilation: float | None = Field(None, ge=1, le=1e6)
    source: str = ""  # where the figures come from (docs/profiles.md has the long form)
    origin: str = "built-in"  # or the TOML file it was read from

    # -- the target's own times (no dilation) ----------------------------
    @property
    def physics(self) -> Physics:
        return Physics(
            accel_gbps=self.accel_gbps, host_gbps=self.host_gbps, host_block_s=self.host_block_us * 1e-6,
            h2d_gbps=self.h2d_gbps, d2h_gbps=self.d2h_gbps, copy_latency_s=self.copy_latency_us * 1e-6,
            storage_gbps=self.storage_gbps, storage_fixed_s=self.storage_fixed_s, dilation=1.0,
        )

    def resident_step_s(self, weight_bytes: float) -> float:
        """Predicted decode step with every block resident: one read of the weights."""
        return weight_bytes / (self.accel_gbps * GB)

    def host_slowdown(self, block_bytes: float) -> float:
        """Host time per block over accelerator time per block, for one block's bytes."""
        return self.physics.host_slowdown(block_bytes)

    def pacing_for(self, resident_step_s: float, weight_bytes: float,
                   block_bytes: float | None = None, n_layers: int | None = None) -> Pacing:
        """What sim must pace so a model whose resident decode step takes
        ``resident_step_s`` here (weights ``weight_bytes``) shows the profile's ratios.

        D = resident_step_s / (weight_bytes / accel GB/s). Every time on the target
        is multiplied by D: bandwidths are divided by D, fixed costs multiplied;
        the host slowdown is a ratio and stays the target's. With ``max_dilation``
        the clock is dilated by min(D, cap) instead (``measured_dilation`` keeps D).
        """
        if not (resident_step_s > 0 and weight_bytes > 0):
            raise LabError(f"pacing needs a measured step > 0 s and weights > 0 bytes "
                           f"(got {resident_step_s!r} s, {weight_bytes!r} bytes)")
        if block_bytes is None:
            block_bytes = weight_bytes / n_layers if n_layers else weight_bytes
        measured = resident_step_s / self.resident_step_s(weight_bytes)
        d = min(measured, self.max_dilation) if self.max_dilation else measured
        p = self.physics
        return Pacing(
            profile=self.name, accel_gbps=p.accel_gbps / d, host_gbps=p.host_gbps / d,
            host_block_s=p.host_block_s * d, h2d_gbps=p.h2d_gbps / d, d2h_gbps=p.d2h_gbps / d,
            copy_latency_s=p.copy_latency_s * d, storage_gbps=p.storage_gbps / d,
            storage_fixed_s=p.storage_fixed_s * d, dilation=d,
            host_slowdown_factor=p.host_slowdown(block_bytes), measured_dilation=measured,
        )

    def capped(self, max_dilation: float | None) -> Profile:
        """This profile with a dilation cap (a scenario's [device].max_dilation)."""
        return self if max_dilation is None else self.model_copy(update={"max_dilation": float(max_dilation)})

    def row(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


@dataclass(frozen=True)
class Physics:
    """Bandwidths and fixed costs in one clock (the target's, or this machine's
    dilated one), and the cost model's terms over them."""

    accel_gbps: float
    host_gbps: float
    host_block_s: float
    h2d_gbps: float
    d2h_gbps: float
    copy_latency_s: float
    storage_gbps: float
    storage_fixed_s: float
    dilation: float

    def host_slowdown(self, block_bytes: float) -> float:
        accel = block_bytes / (self.accel_gbps * GB)
        host = block_bytes / (self.host_gbps * GB) + self.host_block_s
        return host / accel

    def resident_step_s(self, weight_bytes: float) -> float:
        return weight_bytes / (self.accel_gbps * GB)

    def copy_s(self, nbytes: float, copies: int = 1, direction: str = "h2d") -> float:
        """One direction of the link: a fixed cost per copy plus bytes over GB/s."""
        gbps = self.h2d_gbps if direction == "h2d" else self.d2h_gbps
        return copies * self.copy_latency_s + nbytes / (gbps * GB)

    def stream_step_s(self, compute_s: float, streamed_bytes: float, copies: int,
                      prefetch: bool = True) -> float:
        """Decode step with some blocks streamed in: compute overlaps the copies
        with prefetch (max), adds to them without."""
        copy = self.copy_s(streamed_bytes, copies, "h2d")
        return max(compute_s, copy) if prefetch else compute_s + copy

    def host_step_s(self, resident_s_per_block: float, n_layers: int, host_blocks: int,
                    block_bytes: float) -> float:
        """Decode step with ``host_blocks`` of ``n_layers`` executed on the host."""
        c = resident_s_per_block
        return (n_layers - host_blocks) * c + host_blocks * c * self.host_slowdown(block_bytes)

    def reload_s(self, nbytes: float) -> float:
        """Weights read back from the checkpoint (weights=disk): fixed + bytes/GB/s."""
        return self.storage_fixed_s + nbytes / (self.storage_gbps * GB)

    def kv_copy_s(self, nbytes: float, copies: int, direction: str) -> float:
        return self.copy_s(nbytes, copies, direction)


@dataclass(frozen=True)
class Pacing(Physics):
    """``Physics`` in this machine's clock (see ``Profile.pacing_for``)."""

    profile: str = ""
    host_slowdown_factor: float = 1.0  # the target's, for the measured model's block size
    measured_dilation: float | None = None  # D before a max_dilation cap (= dilation without one)

    def as_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


# ---------------------------------------------------------------------------
# built-ins (figures justified in docs/profiles.md)

_PCIE4_STUDY = ("link: the study's layer-wise copies over PCIe 4.0 x16 (9-12 GB/s D2H, 13-16 GB/s H2D): "
                "upper ends as GB/s, 10 us per copy puts ~0.5 MB copies at the lower ends")
_STUDY_HOST = "host: Threadripper PRO 5995WX, 8 channels DDR4-3200 = 204.8 GB/s (AMD spec)"

BUILTINS: dict[str, Profile] = {p.name: p for p in (
    Profile(
        name="study-rtx5000ada", description="the study's RTX 5000 Ada workstation (PCIe 4.0 x16, NVMe)",
        accel_gbps=576, accel_gib=32, host_gbps=204.8, host_block_us=20, h2d_gbps=16, d2h_gbps=12,
        copy_latency_us=10, storage_gbps=5.17, storage_fixed_s=1.84,
        source="accel: NVIDIA RTX 5000 Ada spec, 32 GB GDDR6 256-bit 18 Gbps = 576 GB/s; " + _STUDY_HOST
               + "; " + _PCIE4_STUDY + "; storage: fitted to the study's 3B and 14B preemption totals "
               "on this GPU (fixed + bytes / GB/s)"),
    Profile(
        name="study-a6000", description="the study's RTX A6000 workstation (PCIe 4.0 x16, NVMe)",
        accel_gbps=768, accel_gib=48, host_gbps=204.8, host_block_us=20, h2d_gbps=16, d2h_gbps=12,
        copy_latency_us=10, storage_gbps=7.20, storage_fixed_s=1.80,
        source="accel: NVIDIA RTX A6000 spec, 48 GB GDDR6 384-bit 16 Gbps = 768 GB/s; " + _STUDY_HOST
               + "; " + _PCIE4_STUDY + "; storage: fitted to the study's 3B and 14B preemption totals "
               "on this GPU"),
    Profile(
        name="h100-pcie5", description="H100 PCIe on a PCIe 5.0 x16 server with a PCIe 5.0 NVMe",
        accel_gbps=2000, accel_gib=80, host_gbps=307.2, host_block_us=20, h2d_gbps=32, d2h_gbps=24,
        copy_latency_us=8, storage_gbps=6.0, storage_fixed_s=1.8,
        source="accel: NVIDIA H100 PCIe spec, 80 GB HBM2e ~2.0 TB/s; host: 12 channels DDR5-3200-class "
               "server (estimate); link: PCIe 5.0 doubles PCIe 4.0's per-lane rate, so the study's "
               "layer-wise figures x2 (scaled, not measured); storage: PCIe 5.0 x4 NVMe reads 12-14 GB/s "
               "sequentially, real loads about half (estimate), study's fixed cost"),
    Profile(
        name="gh200", description="Grace Hopper GH200: H100 with HBM3 on NVLink-C2C to Grace",
        accel_gbps=4000, accel_gib=96, host_gbps=500, host_block_us=10, h2d_gbps=400, d2h_gbps=400,
        copy_latency_us=2, storage_gbps=6.0, storage_fixed_s=1.8,
        source="accel: NVIDIA GH200 spec, 96 GB HBM3 ~4 TB/s; host: Grace LPDDR5X ~500 GB/s; link: "
               "NVLink-C2C 900 GB/s total = 450 per direction, ~90% achievable taken; storage: as "
               "h100-pcie5 (estimate)"),
    Profile(
        name="laptop-4060", description="RTX 4060 Laptop GPU on PCIe 4.0 x8, dual-channel DDR5 laptop",
        accel_gbps=256, accel_gib=8, host_gbps=83.2, host_block_us=20, h2d_gbps=8, d2h_gbps=6,
        copy_latency_us=10, storage_gbps=3.0, storage_fixed_s=1.8,
        source="accel: NVIDIA RTX 4060 Laptop spec, 8 GB GDDR6 128-bit 16 Gbps = 256 GB/s; host: "
               "2 channels DDR5-5200 = 83.2 GB/s; link: PCIe 4.0 x8 is half of x16, so the study's "
               "layer-wise figures / 2 (scaled); storage: PCIe 4.0 x4 laptop NVMe (~7 GB/s sequential), "
               "real loads lower (estimate)"),
)}


# ---------------------------------------------------------------------------
# user profiles (TOML)


def user_profile_files() -> list[Path]:
    """Every TOML file that may define profiles, in precedence order (later wins)."""
    files: list[Path] = []
    cfg = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "labtui" / "profiles"
    if cfg.is_dir():
        files += sorted(cfg.glob("*.toml"))
    for part in (os.environ.get("LABTUI_PROFILES") or "").split(os.pathsep):
        if not part.strip():
            continue
        p = Path(part).expanduser()
        if p.is_dir():
            files += sorted(p.glob("*.toml"))
        elif p.is_file():
            files.append(p)
        else:
            raise LabError(f"LABTUI_PROFILES: {p} not found; accepted: .toml files or folders "
                           f"separated by {os.pathsep!r}")
    return files


_FIELD_HELP = {
    "name": "letters, digits, '_', '.', '-' (1 to 64)",
    "accel_gib": "GiB > 0",
    "host_block_us": "microseconds >= 0",
    "copy_latency_us": "microseconds >= 0",
    "storage_fixed_s": "seconds >= 0",
}


def read_profiles(path: str | Path) -> dict[str, Profile]:
    """The ``[profiles.NAME]`` tables of one TOML file; ``based_on = "NAME"``
    starts from another profile (built-in or earlier in the file)."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise LabError(f"{path}: cannot read: {one_line(e)}") from None
    except tomllib.TOMLDecodeError as e:
        raise LabError(f"{path}: not valid TOML: {one_line(e)}") from None
    extra = sorted(set(data) - {"profiles"})
    tables = data.get("profiles")
    if extra or not isinstance(tables, dict) or not tables:
        raise LabError(f"{path}: expected [profiles.NAME] tables"
                       + (f", got {', '.join(extra)}" if extra else "")
                       + "; see docs/profiles.md")
    out: dict[str, Profile] = {}
    for name, t in tables.items():
        if not isinstance(t, dict):
            raise LabError(f"{path}: profiles.{name}: expected a table, got {t!r}")
        t = dict(t)
        base_name = t.pop("based_on", None)
        fields: dict[str, Any] = {}
        if base_name is not None:
            base = out.get(base_name) or BUILTINS.get(base_name)
            if base is None:
                names = sorted({*BUILTINS, *out})
                raise LabError(f"{path}: profiles.{name}.based_on: unknown profile {base_name!r}"
                               f"{_hint(str(base_name), names)}; accepted: {', '.join(names)}")
            fields = base.model_dump(exclude={"name", "origin"})
        fields.update(t)
        fields.update(name=name, origin=str(path))
        try:
            out[name] = Profile.model_validate(fields)
        except ValidationError as e:
            raise LabError(f"{path}: profiles.{name}.{_validation_line(e)}") from None
    return out


def _validation_line(e: ValidationError) -> str:
    err = e.errors()[0]
    key = ".".join(str(x) for x in err["loc"]) or "?"
    typ, inp, ctx = err["type"], err.get("input"), err.get("ctx") or {}
    if typ == "extra_forbidden":
        fields = [f for f in Profile.model_fields if f not in ("origin",)]
        return f"{key}: unknown key{_hint(key, fields)}; accepted: {', '.join(fields)}, based_on"
    if typ == "missing":
        return f"{key}: missing; give it or start from a built-in with based_on = \"NAME\""
    unit = _FIELD_HELP.get(key, "GB/s > 0" if key.endswith("_gbps") else "")
    bound = next((f"{op} {ctx[k]}" for k, op in (("gt", ">"), ("ge", ">="), ("le", "<="), ("lt", "<"))
                  if k in ctx), "")
    accepted = unit or (f"a number {bound}" if bound else err["msg"])
    if key.endswith(("_gbps", "_us", "_s", "_gib")) and bound and not unit.endswith(bound):
        accepted = f"{unit}, {bound}" if unit else f"a number {bound}"
    return f"{key}: got {inp!r}; accepted: {accepted}"


def _hint(word: str, choices: list[str]) -> str:
    m = difflib.get_close_matches(word, choices, n=1, cutoff=0.5)
    return f" (did you mean {m[0]!r}?)" if m else ""


def all_profiles() -> dict[str, Profile]:
    """Built-ins, then user files (a user profile may replace a built-in name)."""
    out = dict(BUILTINS)
    for f in user_profile_files():
        out.update(read_profiles(f))
    return out


def get_profile(ref: str | Profile | None) -> Profile | None:
    """A profile by name, or a ``.toml`` path (``FILE`` with one profile, or
    ``FILE#NAME``); None stays None (sim as measured, no profile)."""
    if ref is None or isinstance(ref, Profile):
        return ref
    ref = str(ref).strip()
    path, _, name = ref.partition("#")
    if path.endswith(".toml"):
        found = read_profiles(Path(path).expanduser())
        if name:
            if name not in found:
                raise LabError(f"profile {name!r} not in {path}; accepted: {', '.join(found)}")
            return found[name]
        if len(found) != 1:
            raise LabError(f"{path} defines {len(found)} profiles; say which: "
                           + ", ".join(f"{path}#{n}" for n in found))
        return next(iter(found.values()))
    profs = all_profiles()
    if ref in profs:
        return profs[ref]
    raise LabError(f"unknown profile {ref!r}{_hint(ref, list(profs))}; accepted: {', '.join(profs)} "
                   "or a .toml file (see `labtui profiles`)")


def profile_names() -> list[str]:
    return list(all_profiles())


# ---------------------------------------------------------------------------
# `labtui profiles`


def cli_profiles(args: Any) -> int:
    import json

    profs = all_profiles()
    if getattr(args, "json", False):
        print(json.dumps([p.row() for p in profs.values()], indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    t = Table(title="labtui profiles (sim with a profile shows the target's ratios; docs/profiles.md)")
    for col in ("name", "accel GB/s", "accel GiB", "host GB/s", "host/block", "H2D GB/s", "D2H GB/s",
                "per copy", "storage GB/s", "per load", "from"):
        t.add_column(col, no_wrap=True)
    for p in profs.values():
        t.add_row(p.name, f"{p.accel_gbps:g}", f"{p.accel_gib:g}", f"{p.host_gbps:g}",
                  f"{p.host_block_us:g} us", f"{p.h2d_gbps:g}", f"{p.d2h_gbps:g}",
                  f"{p.copy_latency_us:g} us", f"{p.storage_gbps:g}", f"{p.storage_fixed_s:g} s",
                  p.origin)
    con = Console()
    if not con.is_terminal:  # piped: whole rows, never wrapped to 80 columns
        con = Console(width=160)
    con.print(t)
    return 0
