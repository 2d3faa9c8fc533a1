"""Devices: the accelerator a model's blocks live on, the host, and the link between.

Two kinds share one interface:

- ``cuda``: a real GPU. Memory from NVML and torch's allocator; host copies of
  offloaded weights are pinned; copies are non_blocking on a side stream.
- ``sim``: a simulated accelerator for machines without a GPU. Compute runs on
  the CPU; a memory budget is enforced; every host<->accelerator transfer is a
  real copy between separate tensors, paced to the link's bandwidth and latency;
  blocks executed on the host are slowed by ``host_slowdown``. Freed accelerator
  buffers are kept, pre-faulted, for the next buffer of the same size (a caching
  allocator like torch's, bounded by the free budget, emptied by
  ``empty_cache``). It never claims to be a GPU: ``simulated`` is True and every
  label says "simulated".

Budget accounting is explicit on both kinds, so a move that would not fit is
refused before anything is copied: ``reserve``/``release`` keep ``used`` equal to
the hosted models' ledgers (bytes held now), ``set_hold`` keeps ``reserved``, the
headroom promised to admitted requests (their KV still to come and the step's
workspace, see reservation.py). ``free`` = budget - used - reserved.
"""

from __future__ import annotations

import os
import platform
import threading
import time
from dataclasses import dataclass

import psutil
import torch

from labtui.errors import LabError

GiB = 1024**3


@dataclass(frozen=True)
class LinkSpec:
    """A host<->accelerator path: achievable GB/s per direction and fixed cost per copy.

    ``gbps`` is both directions unless ``h2d_gbps`` / ``d2h_gbps`` say otherwise (a
    hardware profile can set them apart: real links are often asymmetric). The
    link reads its pacing from ``pacing()`` only (transfer.Link.pacing)."""

    name: str
    gbps: float  # 1e9 bytes/s, per direction
    latency_s: float  # fixed cost per copy (one DMA / one tensor)
    h2d_gbps: float | None = None  # host -> accelerator, if not ``gbps``
    d2h_gbps: float | None = None  # accelerator -> host, if not ``gbps``

    @property
    def label(self) -> str:
        return self.name if not self.name.endswith("GB/s") else f"{self.gbps:g} GB/s"

    def pacing(self, direction: str) -> tuple[float, float]:
        """(bytes per second, latency per copy) of one direction ("h2d" | "d2h")."""
        g = self.h2d_gbps if direction == "h2d" else self.d2h_gbps
        return (g or self.gbps) * 1e9, self.latency_s


# Achievable unidirectional figures, below the theoretical peaks (x16: PCIe3 15.75,
# PCIe4 31.5, PCIe5 63 GB/s; NVLink-C2C 900 GB/s total = 450 per direction) since
# real copies pay protocol overhead; the study measured 9-16 GB/s for layer-wise KV
# copies over PCIe4 because of the fixed cost per copy, modelled by the latency.
LINK_PRESETS: dict[str, LinkSpec] = {
    "pcie3-x16": LinkSpec("pcie3-x16", 12.0, 10e-6),
    "pcie4-x16": LinkSpec("pcie4-x16", 25.0, 10e-6),
    "pcie5-x16": LinkSpec("pcie5-x16", 50.0, 8e-6),
    "nvlink-c2c": LinkSpec("nvlink-c2c", 400.0, 2e-6),
}


def parse_link(link: str | float | int | None) -> LinkSpec:
    """A preset name, or a number in GB/s (latency 10 us)."""
    if link is None:
        return LINK_PRESETS["pcie4-x16"]
    if isinstance(link, (int, float)) and not isinstance(link, bool):
        if not (0.001 <= float(link) <= 10_000):
            raise LabError(f"link {link} GB/s is out of range; accepted: 0.001 to 10000 GB/s or a preset ({', '.join(LINK_PRESETS)})")
        return LinkSpec(f"{float(link):g} GB/s", float(link), 10e-6)
    s = str(link).strip()
    if s in LINK_PRESETS:
        return LINK_PRESETS[s]
    try:
        return parse_link(float(s.removesuffix("GB/s").strip()))
    except ValueError:
        pass
    raise LabError(f"unknown link '{link}'; accepted: {', '.join(LINK_PRESETS)} or a number in GB/s")


@dataclass(frozen=True)
class MemoryProbe:
    used_bytes: int
    total_bytes: int
    allocator_allocated: int
    allocator_reserved: int
    process_rss: int
    host_used: int
    host_total: int


class Device:
    """The accelerator side of the engine: where resident blocks live and compute."""

    kind: str = "?"
    simulated: bool = False

    def __init__(self, budget_bytes: int, link: LinkSpec, host_slowdown: float = 1.0):
        self.budget_bytes = int(budget_bytes)
        self.link = link
        self.host_slowdown = float(host_slowdown)
        self._reserved = 0  # bytes accounted by ledgers (weights, KV, buffers)
        self._holds: dict[object, int] = {}  # owner -> headroom held for admitted requests
        self._held = 0  # sum of _holds
        self._lock = threading.Lock()
        self._host_mem_t = -1.0
        self._host_mem = (0, 0, 0)
        self._proc: psutil.Process | None = None
        # A hardware profile (labtui.engine.profiles) the run speaks for; sim only.
        # Recorded here; the pacing it implies is applied by the engine.
        self.profile = None
        self.profile_ignored: str | None = None

    # torch devices -------------------------------------------------------
    @property
    def accel(self) -> torch.device:  # where resident blocks compute
        raise NotImplementedError

    @property
    def host(self) -> torch.device:
        return torch.device("cpu")

    @property
    def name(self) -> str:
        raise NotImplementedError

    # budget ---------------------------------------------------------------
    @property
    def used(self) -> int:
        return self._reserved

    @property
    def reserved(self) -> int:
        """Headroom held for admitted requests (not yet used, already promised)."""
        return self._held

    @property
    def free(self) -> int:
        return max(0, self.budget_bytes - self._reserved - self._held)

    def check_fits(self, nbytes: int, what: str) -> None:
        if nbytes > self.free:
            held = f", {fmt_bytes(self._held)} more reserved for admitted requests" if self._held else ""
            raise LabError(
                f"{what} needs {fmt_bytes(nbytes)} on the accelerator but only "
                f"{fmt_bytes(self.free)} of {fmt_bytes(self.budget_bytes)} is free{held}; "
                "lower a model's residency, preempt or unload one, or raise the budget"
            )

    def set_hold(self, owner: object, nbytes: int) -> None:
        """Set the headroom ``owner`` (a hosted model) holds for its admitted requests."""
        nbytes = int(nbytes)
        assert nbytes >= 0, "a negative reservation"
        with self._lock:
            self._held += nbytes - self._holds.get(owner, 0)
            if nbytes:
                self._holds[owner] = nbytes
            else:
                self._holds.pop(owner, None)
            assert self._held >= 0, "reservation accounting went negative"

    def hold_of(self, owner: object) -> int:
        return self._holds.get(owner, 0)

    def holders(self) -> list[object]:
        with self._lock:
            return list(self._holds)

    def reserve(self, nbytes: int) -> None:
        with self._lock:
            self._reserved += int(nbytes)

    def release(self, nbytes: int) -> None:
        with self._lock:
            self._reserved -= int(nbytes)
            assert self._reserved >= 0, "device accounting went negative"

    def set_budget(self, budget_bytes: int) -> None:
        if budget_bytes < self._reserved + self._held:
            held = f" and {fmt_bytes(self._held)} reserved for admitted requests" if self._held else ""
            raise LabError(
                f"a budget of {fmt_bytes(budget_bytes)} is below the {fmt_bytes(self._reserved)} "
                f"already in use{held}; free memory first (lower residency, preempt or unload, or let requests finish)"
            )
        self.budget_bytes = int(budget_bytes)

    # host memory for offloaded weights -------------------------------------
    def host_empty(self, nbytes: int) -> torch.Tensor:
        """A host staging buffer (pinned on cuda, so copies can be asynchronous)."""
        return torch.empty(nbytes, dtype=torch.uint8)

    def accel_empty(self, nbytes: int) -> torch.Tensor:
        """An accelerator buffer ready for a timed copy (on cuda the caching
        allocator's memory is already mapped; sim pre-faults, see SimDevice)."""
        return torch.empty(nbytes, dtype=torch.uint8, device=self.accel)

    def accel_free(self, buf: torch.Tensor | None) -> None:
        """Give back a buffer from ``accel_empty`` (cuda: torch's allocator caches it)."""

    def synchronize(self) -> None:
        pass

    def empty_cache(self) -> None:
        pass

    def _host_memory(self) -> tuple[int, int, int]:
        # /proc reads cost ~0.1 ms; host RAM changes slowly: refresh twice a second.
        now = time.monotonic()
        if now - self._host_mem_t > 0.5:
            vm = psutil.virtual_memory()
            if self._proc is None or self._proc.pid != os.getpid():  # Process() reads /proc/<pid>/stat
                self._proc = psutil.Process()
            self._host_mem = (self._proc.memory_info().rss, vm.total - vm.available, vm.total)
            self._host_mem_t = now
        return self._host_mem

    def probe(self) -> MemoryProbe:
        rss, used, total = self._host_memory()
        return MemoryProbe(
            used_bytes=self.used,
            total_bytes=self.budget_bytes,
            allocator_allocated=0,
            allocator_reserved=0,
            process_rss=rss,
            host_used=used,
            host_total=total,
        )

    def describe(self) -> dict:
        return {
            "kind": self.kind,
            "name": self.name,
            "simulated": self.simulated,
            "budget_bytes": self.budget_bytes,
            "link": self.link.label,
            "link_gbps": self.link.gbps,
            "link_latency_us": self.link.latency_s * 1e6,
            "host_slowdown": self.host_slowdown,
            "compute_threads": torch.get_num_threads(),
            "profile": self.profile.name if self.profile is not None else None,
            **({"profile_ignored": self.profile_ignored} if self.profile_ignored else {}),
        }


class SimDevice(Device):
    """A simulated accelerator on the CPU (see module docstring)."""

    kind = "sim"
    simulated = True

    def __init__(self, budget_bytes: int, link: LinkSpec, host_slowdown: float = 1.0):
        super().__init__(budget_bytes, link, host_slowdown)
        # A GPU copies with copy engines, not with its compute units. The simulated
        # link's copies run on their own thread, so compute keeps one core fewer
        # than the machine has: oversubscribed OpenMP teams stall at every barrier
        # (seen here: a 6 us attention taking 12 ms). LABTUI_THREADS overrides.
        want = int(os.environ.get("LABTUI_THREADS") or max(1, (os.cpu_count() or 2) - 1))
        if torch.get_num_threads() != want:
            torch.set_num_threads(want)
        self.compute_threads = want

        # Freed accelerator buffers by size, pages already faulted in: the simulated
        # accelerator's caching allocator (as torch's on cuda keeps freed blocks),
        # so a timed copy never writes into fresh, unmapped pages.
        self._pool: dict[int, list[torch.Tensor]] = {}
        self._pool_bytes = 0

    @property
    def accel(self) -> torch.device:
        # Same physical memory as the host; "accelerator" tensors are separate
        # allocations made by the link, tracked by the ledgers against the budget.
        return torch.device("cpu")

    def host_empty(self, nbytes: int) -> torch.Tensor:
        return touch(torch.empty(nbytes, dtype=torch.uint8))

    def accel_empty(self, nbytes: int) -> torch.Tensor:
        with self._lock:
            free = self._pool.get(int(nbytes))
            if free:
                self._pool_bytes -= int(nbytes)
                return free.pop()
        with torch.inference_mode(False):  # may be filled by the link's thread later
            return touch(torch.empty(int(nbytes), dtype=torch.uint8))

    def accel_free(self, buf: torch.Tensor | None) -> None:
        if buf is None or buf._base is not None or buf.dim() != 1 or buf.dtype != torch.uint8:
            return  # a view or foreign tensor: let it go
        n = buf.numel()
        with self._lock:
            # Cache no more than the accelerator has free: the pool is memory the
            # simulated device would really hold.
            if self._pool_bytes + n > max(0, self.budget_bytes - self._reserved):
                return
            self._pool.setdefault(n, []).append(buf)
            self._pool_bytes += n

    def empty_cache(self) -> None:
        with self._lock:
            self._pool.clear()
            self._pool_bytes = 0

    @property
    def cached_bytes(self) -> int:
        return self._pool_bytes

    @property
    def name(self) -> str:
        return f"simulated accelerator ({fmt_bytes(self.budget_bytes)} budget, CPU compute)"


class CudaDevice(Device):
    kind = "cuda"
    simulated = False

    def __init__(self, index: int, budget_bytes: int | None, link: LinkSpec, host_slowdown: float = 1.0):
        self.index = index
        free, total = torch.cuda.mem_get_info(index)
        super().__init__(budget_bytes or int(total * 0.92), link, host_slowdown)
        self._total = total
        self._nvml = _nvml_handle(index)

    @property
    def accel(self) -> torch.device:
        return torch.device("cuda", self.index)

    @property
    def name(self) -> str:
        return torch.cuda.get_device_name(self.index)

    def host_empty(self, nbytes: int) -> torch.Tensor:
        return torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)

    def synchronize(self) -> None:
        torch.cuda.synchronize(self.index)

    def empty_cache(self) -> None:
        torch.cuda.empty_cache()

    def probe(self) -> MemoryProbe:
        p = super().probe()
        used, total = self.used, self._total
        if self._nvml is not None:
            try:
                import pynvml

                info = pynvml.nvmlDeviceGetMemoryInfo(self._nvml)
                used, total = int(info.used), int(info.total)
            except Exception:  # NVML can vanish under us (driver reset); fall back
                pass
        return MemoryProbe(
            used_bytes=used,
            total_bytes=total,
            allocator_allocated=torch.cuda.memory_allocated(self.index),
            allocator_reserved=torch.cuda.memory_reserved(self.index),
            process_rss=p.process_rss,
            host_used=p.host_used,
            host_total=p.host_total,
        )


def _nvml_handle(index: int):
    try:
        import pynvml

        pynvml.nvmlInit()
        return pynvml.nvmlDeviceGetHandleByIndex(index)
    except Exception:
        return None


DEVICE_KINDS = ("auto", "cuda", "sim")


def make_device(
    kind: str = "auto",
    memory_gib: float | None = None,
    link: str | float | None = None,
    host_slowdown: float = 4.0,
    profile=None,
) -> Device:
    if kind not in DEVICE_KINDS:
        raise LabError(f"unknown device '{kind}'; accepted: auto, cuda, sim")
    if memory_gib is not None and not (0 < float(memory_gib) <= 4096):
        raise LabError(f"memory_gib {memory_gib} is out of range; accepted: a number of GiB > 0")
    if not (1.0 <= float(host_slowdown) <= 1000):
        raise LabError(f"host_slowdown {host_slowdown} is out of range; accepted: 1 to 1000")
    budget = int(float(memory_gib) * GiB) if memory_gib is not None else None
    from labtui.engine.profiles import get_profile

    prof = get_profile(profile)  # unknown name: one line listing the accepted ones
    has_cuda = torch.cuda.is_available()
    if kind == "cuda" and not has_cuda:
        raise LabError("device 'cuda' asked for but torch sees no CUDA GPU; accepted here: auto or sim")
    if kind == "cuda" or (kind == "auto" and has_cuda):
        # On a real GPU the link is what it is; a preset only labels it, and a
        # profile (the physics sim emulates) does not apply: noted, not used.
        dev: Device = CudaDevice(0, budget, parse_link(link), host_slowdown)
        dev.profile_ignored = getattr(prof, "name", None)
        return dev
    dev = SimDevice(budget or 4 * GiB, parse_link(link), host_slowdown)
    dev.profile = prof
    return dev


def touch(buf: torch.Tensor) -> torch.Tensor:
    """Fault in every page of a fresh CPU buffer (one write per 4 KiB page), so the
    copy that fills it later is timed as a copy, not as page faults (a fresh 13 MiB
    buffer copies ~5x slower than a touched one here)."""
    if buf.is_contiguous() and buf.numel() * buf.element_size() >= 64 * 1024:  # small ones: heap
        buf.view(-1).view(torch.uint8)[::4096].zero_()
    return buf


def fmt_bytes(n: float) -> str:
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def fmt_bytes_apart(a: float, b: float) -> tuple[str, str]:
    """``fmt_bytes`` of two sizes a message compares ("needs A but at most B"),
    with as many decimals as it takes for unequal sizes to read unequal."""
    fa, fb = fmt_bytes(a), fmt_bytes(b)
    if a == b or fa != fb:
        return fa, fb
    unit = fa.split()[1]
    scale = 1024 ** ("B", "KiB", "MiB", "GiB", "TiB").index(unit)
    for digits in (2, 3, 4):
        fa, fb = f"{a / scale:.{digits}f} {unit}", f"{b / scale:.{digits}f} {unit}"
        if fa != fb:
            return fa, fb
    return f"{a:.0f} B", f"{b:.0f} B"


def measure_memcpy_gbps(nbytes: int = 64 * 1024**2, repeats: int = 3) -> float:
    """Host memcpy bandwidth: the ceiling for the simulated link's real copies."""
    import time

    src = torch.empty(nbytes, dtype=torch.uint8).fill_(1)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t0)
    return nbytes / best / 1e9


def doctor_info() -> dict:
    import transformers

    info: dict = {
        "machine": platform.machine(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "host_ram_bytes": psutil.virtual_memory().total,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cuda_available": torch.cuda.is_available(),
        "gpus": [],
        "nvml": False,
        "host_memcpy_gbps": round(measure_memcpy_gbps(), 2),
    }
    try:
        import accelerate

        info["accelerate"] = accelerate.__version__
    except ImportError:
        pass
    try:
        import pynvml

        pynvml.nvmlInit()
        info["nvml"] = True
        info["nvml_driver"] = str(pynvml.nvmlSystemGetDriverVersion())
    except Exception as e:
        info["nvml_error"] = " ".join(str(e).split())[:120]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            free, total = torch.cuda.mem_get_info(i)
            info["gpus"].append(
                {"index": i, "name": torch.cuda.get_device_name(i), "total_bytes": total, "free_bytes": free}
            )
        info["h2d_pinned_gbps"] = round(measure_h2d_gbps(), 2)
    return info


def measure_h2d_gbps(nbytes: int = 256 * 1024**2) -> float:
    """Raw pinned host->device copy: the link's peak as this machine delivers it."""
    import time

    src = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
    dst = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    dst.copy_(src, non_blocking=True)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(5):
        dst.copy_(src, non_blocking=True)
    torch.cuda.synchronize()
    return 5 * nbytes / (time.perf_counter() - t0) / 1e9


def cli_doctor(args) -> int:
    from rich.console import Console
    from rich.table import Table

    info = doctor_info()
    t = Table(title="labtui doctor", show_header=False)
    t.add_column("what", style="bold")
    t.add_column("value")
    for k in ("platform", "python", "cpu_count", "torch", "transformers", "accelerate", "cuda_available", "nvml"):
        t.add_row(k, str(info.get(k, "-")))
    t.add_row("host RAM", fmt_bytes(info["host_ram_bytes"]))
    t.add_row("host memcpy", f"{info['host_memcpy_gbps']} GB/s (ceiling for the simulated link)")
    for g in info["gpus"]:
        t.add_row(f"GPU {g['index']}", f"{g['name']}, {fmt_bytes(g['total_bytes'])}")
    if "h2d_pinned_gbps" in info:
        t.add_row("link (pinned H2D)", f"{info['h2d_pinned_gbps']} GB/s")
    if not info["gpus"]:
        t.add_row("accelerator", "none: labtui uses the simulated accelerator (device 'sim')")
    t.add_row("link presets", ", ".join(f"{k} {v.gbps:g} GB/s" for k, v in LINK_PRESETS.items()))
    Console().print(t)
    return 0
