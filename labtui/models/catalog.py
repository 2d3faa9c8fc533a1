"""What can be loaded: the zoo plus the causal LMs already in the local Hugging Face
cache, with what each needs from the accelerator.

The cache is read with huggingface_hub's own ``scan_cache_dir`` (offline: nothing is
downloaded, no network is asked). A cached model is listed as ``hf:org/name``, a
source ``resolve_source`` turns into the cached snapshot folder; it loads exactly
like a zoo model. Only what labtui can host is listed: a causal LM with safetensors
weights; the rest is skipped with the reason (pickle weights only, not a causal
LM, ...). Parameters and dtype come from the safetensors headers (a few KB read per
file), never from loading the weights.
"""

from __future__ import annotations

import json
import os
import struct
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from labtui.errors import LabError

DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2,
               "I8": 1, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}
_DTYPE_NAMES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64",
                "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}


@dataclass(frozen=True)
class Candidate:
    source: str  # what Load(source=...) takes: zoo:NAME or hf:org/name
    name: str
    origin: str  # "zoo" | "hf cache"
    family: str
    params: int
    bytes: int  # weights as stored
    dtype: str  # storage dtype
    layers: int | None = None
    path: str | None = None  # the checkpoint folder, when on disk

    def load_bytes(self, simulated: bool) -> int:
        """Bytes the weights take once loaded: the engine loads float32 on sim."""
        if simulated and self.dtype != "float32":
            return self.params * 4
        return self.bytes

    def as_row(self, budget_bytes: int | None, simulated: bool = True) -> dict:
        row = asdict(self)
        need = self.load_bytes(simulated)
        row["load_bytes"] = need
        row["fits"] = None if budget_bytes is None else need <= budget_bytes
        return row


def hub_cache_dir() -> Path:
    """The hub cache as huggingface_hub finds it (HF_HUB_CACHE, else HF_HOME/hub, else
    XDG_CACHE_HOME/huggingface/hub, else ~/.cache/huggingface/hub), read at call time:
    huggingface_hub's own constant is fixed when it is first imported."""
    env = os.environ
    if env.get("HF_HUB_CACHE"):
        return Path(env["HF_HUB_CACHE"]).expanduser()
    if env.get("HUGGINGFACE_HUB_CACHE"):
        return Path(env["HUGGINGFACE_HUB_CACHE"]).expanduser()
    if env.get("HF_HOME"):
        return Path(env["HF_HOME"]).expanduser() / "hub"
    xdg = env.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return Path(xdg).expanduser() / "huggingface" / "hub"


def safetensors_stats(files: list[Path]) -> tuple[int, int, str]:
    """(parameters, bytes, dtype) from the headers of safetensors files; the dtype is
    the one holding most bytes."""
    params = nbytes = 0
    by_dtype: Counter = Counter()
    for f in files:
        with open(f, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        for k, v in header.items():
            if k == "__metadata__":
                continue
            count = 1
            for d in v["shape"]:
                count *= int(d)
            size = int(v["data_offsets"][1]) - int(v["data_offsets"][0])
            params += count
            nbytes += size
            by_dtype[v["dtype"]] += size
    top = by_dtype.most_common(1)[0][0] if by_dtype else "F32"
    return params, nbytes, _DTYPE_NAMES.get(top, top.lower())


def _layers(config: dict) -> int | None:
    for k in ("num_hidden_layers", "n_layer", "num_layers"):
        if isinstance(config.get(k), int):
            return config[k]
    return None


def scan_hub_cache(cache_dir: str | os.PathLike | None = None) -> tuple[list[Candidate], list[str]]:
    """(hostable cached models, skipped lines "org/name: why"). An absent cache is
    an empty list, not an error."""
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    from labtui.models.sources import check_causal_config, weight_files

    root = Path(cache_dir) if cache_dir is not None else hub_cache_dir()
    try:
        info = scan_cache_dir(root)
    except CacheNotFound:
        return [], []
    found, skipped = [], []
    for repo in sorted(info.repos, key=lambda r: r.repo_id.lower()):
        if repo.repo_type != "model":
            continue
        revs = sorted(repo.revisions, key=lambda r: ("main" not in r.refs, -r.last_modified))
        if not revs:
            continue
        snap = Path(revs[0].snapshot_path)
        try:
            cfg = json.loads((snap / "config.json").read_text())
            if not isinstance(cfg, dict):
                raise ValueError("config.json is not a JSON object")
        except (OSError, ValueError) as e:
            skipped.append(f"{repo.repo_id}: no readable config.json ({type(e).__name__})")
            continue
        try:
            family = check_causal_config(cfg, repo.repo_id)
            files = weight_files(snap)
            params, nbytes, dtype = safetensors_stats(files)
        except LabError as e:
            skipped.append(str(e))
            continue
        except (OSError, ValueError, KeyError, TypeError, struct.error) as e:
            skipped.append(f"{repo.repo_id}: unreadable safetensors header ({type(e).__name__})")
            continue
        found.append(Candidate(f"hf:{repo.repo_id}", repo.repo_id, "hf cache", family, params,
                               nbytes, dtype, _layers(cfg), str(snap)))
    return found, skipped


def zoo_candidates(exact: bool = True) -> list[Candidate]:
    """The zoo. `exact` counts parameters by building each model on the meta device
    (a second or two); otherwise they are estimated from the spec (instant, for the
    lab's dialog)."""
    from labtui.models import zoo

    out = []
    if exact:
        for r in zoo.list_zoo():
            out.append(Candidate(f"zoo:{r['name']}", r["name"], "zoo", r["family"], r["params"],
                                 r["bytes"], r["dtype"], r["layers"],
                                 str(zoo.path(r["name"])) if r["built"] else None))
        return out
    for s in zoo.ZOO.values():
        out.append(Candidate(f"zoo:{s.name}", s.name, "zoo", s.family, 0, 0,
                             zoo.storage_dtype(s.name), s.layers))
    return out


def catalog(exact_zoo: bool = True, cache_dir: str | os.PathLike | None = None):
    """(candidates: zoo first, then the hub cache; skipped lines)."""
    cached, skipped = scan_hub_cache(cache_dir)
    return zoo_candidates(exact_zoo) + cached, skipped


def _fmt_params(n: int) -> str:
    return "?" if not n else f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"


def _fmt_bytes(n: int) -> str:
    return "?" if not n else f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


# short dtype names keep the table within 80 columns (--json has the full names)
_SHORT_DTYPE = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16", "float64": "fp64"}


def cli_models(args) -> int:
    """`labtui models [--memory-gib G] [--json]`."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    from labtui.engine.devices import GiB

    gib = getattr(args, "memory_gib", None)
    if gib is not None and not (0 < gib <= 4096):
        raise LabError(f"--memory-gib {gib:g} is out of range; accepted: a number of GiB > 0")
    # the budget is the simulated accelerator's (its default 4 GiB unless given); the
    # engine loads float32 there, so that is what each model needs
    budget = int((gib if gib is not None else 4.0) * GiB)
    cands, skipped = catalog(exact_zoo=True)
    rows = [c.as_row(budget, simulated=True) for c in cands]
    if getattr(args, "json", False):
        print(json.dumps({"budget_bytes": budget, "hub_cache": str(hub_cache_dir()),
                          "models": rows, "skipped": skipped}, indent=1))
        return 0
    console = Console(highlight=False)
    table = Table(title=f"models labtui can load (sim budget {budget / GiB:g} GiB)",
                  box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1))
    # the source is what you type: never cut it, squeeze the other columns instead
    table.add_column("source", no_wrap=True, min_width=max((len(r["source"]) for r in rows), default=6))
    for col in ("family", "params", "layers", "bytes", "dtype", "on sim", "fits"):
        table.add_column(col, no_wrap=True, min_width=len(col),  # headers stay whole at 80 columns
                         justify="right" if col in ("params", "layers", "bytes", "on sim") else "left")
    for r in rows:
        table.add_row(r["source"], r["family"], _fmt_params(r["params"]), str(r["layers"] or "?"),
                      _fmt_bytes(r["bytes"]), _SHORT_DTYPE.get(r["dtype"], r["dtype"]), _fmt_bytes(r["load_bytes"]),
                      "yes" if r["fits"] else "no")
    console.print(table)
    console.print("on sim: bytes once loaded (sim computes in float32); fits: all layers "
                  "resident within the budget (a model that does not fit still loads with "
                  "some layers offloaded).")
    n_hf = sum(r["origin"] == "hf cache" for r in rows)
    console.print(f"zoo: synthetic checkpoints with random weights (their text is noise, their "
                  f"timing is real). Hugging Face cache {hub_cache_dir()}: {n_hf} causal LM(s) "
                  "with safetensors weights (scanned offline, nothing downloaded).")
    for s in skipped:
        console.print(f"skipped {s}", style="dim")
    return 0
