"""Result bundles: the folder a run writes, and a reader that survives a killed run.

Layout (docs/scenarios.md, "Bundle"):

- ``scenario.toml``  the scenario as run (--quick/--device applied, noted on top)
- ``env.json``       eng.env_info() + labtui version, argv, start time
- ``events.jsonl``   one JSON object per line, flushed as it happens; every line
                     has ``point``, ``rep`` and ``phase`` (setup|warmup|run) besides
                     the engine event; the runner adds ``point_start``/``point_end``
- ``metrics.csv``    snapshots sampled every SAMPLE_S, one row per model, flushed
- ``summary.json``   written last (also on Ctrl-C, marked interrupted)

Because every line is flushed whole, SIGKILL leaves valid lines up to the last
complete one; the reader skips a torn last line and says so.
"""

from __future__ import annotations

import csv
import io
import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labtui.errors import LabError, one_line

METRICS_COLUMNS = (
    "t", "model", "state", "residency", "resident_layers", "mode", "served_tok_s", "decode_tok_s",
    "paused_weights", "paused_kv", "tokens", "accel_weights_bytes", "accel_kv_bytes", "host_bytes", "queued", "running",
    "completed", "device_used_bytes", "point", "rep",
)  # fmt: skip
SAMPLE_S = 0.25


THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "LABTUI_THREADS",
              "TORCH_NUM_THREADS")


def thread_settings() -> dict[str, Any]:
    """What decides CPU compute speed on this run (for env.json): torch's intra-
    and inter-op threads, the thread env variables, the CPUs this process may use
    and the load average when the run began (other work on the machine is noise)."""
    out: dict[str, Any] = {"cpu_count": os.cpu_count(),
                           "env": {k: os.environ.get(k) for k in THREAD_ENV}}
    try:
        out["affinity_cpus"] = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on every platform
        out["affinity_cpus"] = None
    try:
        out["loadavg"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        out["loadavg"] = None
    try:
        import torch

        out["torch_num_threads"] = torch.get_num_threads()
        out["torch_num_interop_threads"] = torch.get_num_interop_threads()
    except ImportError:
        pass
    return out


class CpuShare:
    """The share of the machine's CPU time that went to *other* processes while a
    point ran (0..1): contention from outside this run, the main source of noise
    on a shared machine. /proc/stat counts every process on the machine, also
    ones this process cannot list, which loadavg in a container may not."""

    def __init__(self) -> None:
        import psutil

        self._p = psutil.Process()
        self._g0, self._p0 = self._read()

    def _read(self) -> tuple:
        import psutil

        g = psutil.cpu_times()
        busy = sum(getattr(g, k, 0.0) for k in ("user", "nice", "system", "irq", "softirq", "steal"))
        pt = self._p.cpu_times()
        return (busy, busy + g.idle + getattr(g, "iowait", 0.0)), pt.user + pt.system

    def other(self) -> float | None:
        (b1, t1), p1 = self._read()
        (b0, t0), p0 = self._g0, self._p0
        if t1 - t0 <= 0:
            return None
        return round(max(0.0, min(1.0, ((b1 - b0) - (p1 - p0)) / (t1 - t0))), 3)


def loadavg() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def _json_default(o: Any) -> Any:
    if hasattr(o, "__dataclass_fields__"):
        from dataclasses import asdict

        return asdict(o)
    if hasattr(o, "model_dump"):
        return o.model_dump(mode="json")
    if isinstance(o, set | tuple):
        return list(o)
    return str(o)


def dumps(obj: Any, **kw: Any) -> str:
    return json.dumps(obj, default=_json_default, **kw)


class BundleWriter:
    """Creates the bundle folder (refusing to overwrite results) and writes its files."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if self.path.exists() and (not self.path.is_dir() or any(self.path.iterdir())):
            raise LabError(f"{self.path}: exists and is not an empty folder; results are never "
                           "overwritten, give another --out")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self._events = open(self.path / "events.jsonl", "w", encoding="utf-8")  # noqa: SIM115
            self._metrics_fh = open(self.path / "metrics.csv", "w", encoding="utf-8", newline="")  # noqa: SIM115
        except OSError as e:
            raise LabError(f"cannot write the bundle to {self.path}: {one_line(e.strerror or e)}; "
                           "give a writable --out folder") from None
        self._metrics = csv.writer(self._metrics_fh)
        self._metrics.writerow(METRICS_COLUMNS)
        self._metrics_fh.flush()
        self._lock = threading.Lock()
        # A write that fails mid-run (disk full, folder removed) is recorded once,
        # further writes are skipped, and on_fail tells the runner to stop.
        self.failed: OSError | None = None
        self.on_fail = None

    def _fail(self, e: OSError) -> None:
        if self.failed is None:
            self.failed = e
            for fh in (self._events, self._metrics_fh):
                try:
                    fh.close()
                except OSError:
                    pass  # its buffer cannot reach the disk either
            if self.on_fail is not None:
                self.on_fail(e)

    def failure_message(self) -> str:
        e = self.failed
        return (f"cannot write the bundle in {self.path}: {one_line(e.strerror or e) if e else '?'}; "
                "what was written before is complete up to its last line; free space or give another --out")

    def write_text(self, name: str, text: str) -> None:
        # tmp + rename: a reader never sees half a file.
        tmp = self.path / f".{name}.tmp"
        try:
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, self.path / name)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            self._fail(e)
            raise LabError(self.failure_message()) from None

    def write_json(self, name: str, obj: Any) -> None:
        self.write_text(name, dumps(obj, indent=2) + "\n")

    def event(self, record: dict) -> None:
        line = dumps(record)
        with self._lock:
            if self.failed is None and not self._events.closed:
                try:
                    self._events.write(line + "\n")
                    self._events.flush()
                except OSError as e:
                    self._fail(e)

    def metric_rows(self, rows: list[dict]) -> None:
        with self._lock:
            if self.failed is not None or self._metrics_fh.closed:
                return
            try:
                for r in rows:
                    self._metrics.writerow([_cell(r.get(c)) for c in METRICS_COLUMNS])
                self._metrics_fh.flush()
            except OSError as e:
                self._fail(e)

    def close(self) -> None:
        with self._lock:
            for fh in (self._events, self._metrics_fh):
                try:
                    fh.close()
                except OSError as e:  # the last flush of a full disk
                    if self.failed is None:
                        self.failed = e


def _cell(v: Any) -> Any:
    if isinstance(v, float):
        return f"{v:.6g}"
    return "" if v is None else v


# ---------------------------------------------------------------------------
# reading


@dataclass
class Bundle:
    path: Path
    scenario_text: str | None = None
    env: dict | None = None
    events: list[dict] = field(default_factory=list)
    metrics: list[dict] = field(default_factory=list)
    summary: dict | None = None
    notes: list[str] = field(default_factory=list)  # what is missing or damaged

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def complete(self) -> bool:
        return self.summary is not None and not self.summary.get("interrupted")


def read_bundle(path: str | os.PathLike) -> Bundle:
    p = Path(path)
    if not p.is_dir():
        raise LabError(f"{p}: not a bundle folder; give the folder `labtui run` wrote "
                       "(with events.jsonl, metrics.csv, summary.json)")
    b = Bundle(p)
    if not any((p / n).exists() for n in ("events.jsonl", "summary.json", "metrics.csv")):
        raise LabError(f"{p}: not a bundle (no events.jsonl, metrics.csv or summary.json)")
    sc = p / "scenario.toml"
    if sc.is_file():
        b.scenario_text = sc.read_text(encoding="utf-8", errors="replace")
    else:
        b.notes.append("scenario.toml missing")
    b.env = _read_json(p / "env.json", b.notes)
    b.summary = _read_json(p / "summary.json", b.notes)
    if b.summary is None:
        b.notes.append("no summary.json: the run did not finish (killed?); figures use "
                       "events.jsonl and metrics.csv")
    elif b.summary.get("interrupted"):
        b.notes.append("the run was interrupted (Ctrl-C); results are partial")
    b.events = _read_jsonl(p / "events.jsonl", b.notes)
    b.metrics = _read_csv(p / "metrics.csv", b.notes)
    return b


def _read_json(f: Path, notes: list[str]) -> dict | None:
    if not f.is_file():
        if f.name != "summary.json":
            notes.append(f"{f.name} missing")
        return None
    try:
        return json.loads(f.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        notes.append(f"{f.name} unreadable ({one_line(e)})")
        return None


def _read_jsonl(f: Path, notes: list[str]) -> list[dict]:
    if not f.is_file():
        notes.append("events.jsonl missing")
        return []
    text = f.read_text(encoding="utf-8", errors="replace")
    lines = text.split("\n")
    out: list[dict] = []
    bad = 0
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except ValueError:
            if i == len(lines) - 1:
                notes.append("events.jsonl: last line cut short (run killed while writing); skipped")
            else:
                bad += 1
    if bad:
        notes.append(f"events.jsonl: {bad} unreadable line(s) skipped")
    return out


def _read_csv(f: Path, notes: list[str]) -> list[dict]:
    if not f.is_file():
        notes.append("metrics.csv missing")
        return []
    text = f.read_text(encoding="utf-8", errors="replace")
    torn = bool(text) and not text.endswith("\n")
    rows = list(csv.reader(io.StringIO(text)))
    if not rows:
        return []
    head, body = rows[0], rows[1:]
    if torn and body:
        body = body[:-1]
        notes.append("metrics.csv: last row cut short; skipped")
    out = []
    for r in body:
        if len(r) != len(head):
            continue
        out.append({k: _num(v) for k, v in zip(head, r, strict=True)})
    return out


def _num(v: str) -> Any:
    if v == "":
        return None
    try:
        return int(v)
    except ValueError:
        pass
    try:
        return float(v)
    except ValueError:
        return v
