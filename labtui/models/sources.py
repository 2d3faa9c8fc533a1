"""Model sources: what a scenario's `source = "..."` may name, resolved to a folder.

Accepted:
- `zoo:NAME`: a built-in synthetic checkpoint (built into the cache if missing);
- a local Hugging Face directory: config.json plus safetensors weights
  (model.safetensors or model.safetensors.index.json with its shards); a relative
  path is resolved against `base` (e.g. the scenario file's folder), else the cwd;
- `hf:org/name`: a model already in the local Hugging Face cache (HF_HUB_CACHE /
  HF_HOME), its snapshot for refs/main; never downloads (`labtui models` lists them);
- a hub id `org/name`: taken from the local cache when it is there, else fetched
  with huggingface_hub unless HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE is set.

Only causal LMs are hosted, and only safetensors weights are read: a checkpoint
with only pytorch_model.bin (a pickle, which can run code on load) is refused.
Every refusal is a one-line LabError saying what was wrong and what is accepted.
"""

from __future__ import annotations

import json
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path

from labtui.errors import LabError, one_line

ACCEPTED = (
    "accepted: zoo:NAME, hf:org/name (in the local Hugging Face cache), a local Hugging "
    "Face directory with config.json and safetensors weights, or a hub id org/name"
)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_SAFE_INDEX = "model.safetensors.index.json"
_PICKLES = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.ckpt", "tf_model.h5")


@dataclass(frozen=True)
class ResolvedSource:
    source: str  # as given
    kind: str  # 'zoo' | 'dir' | 'hub' (hf:org/name is a hub id taken from the cache)
    path: Path  # local checkpoint folder (for 'hub': the downloaded snapshot)
    name: str  # for display: zoo name, folder name or hub id
    family: str  # config.model_type
    hub_id: str | None = None


def _err(msg: str) -> LabError:
    return LabError(one_line(msg))


def _offline() -> bool:
    def on(var: str) -> bool:
        return os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on")

    return on("HF_HUB_OFFLINE") or on("TRANSFORMERS_OFFLINE")


def causal_lm_types() -> list[str]:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return list(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)


def _check_causal(config: dict, where: str, trust_remote_code: bool) -> str:
    mtype = config.get("model_type")
    if not mtype:
        raise _err(f"{where}: config.json has no model_type; labtui hosts Hugging Face causal LMs")
    if mtype in causal_lm_types():
        return mtype
    auto_map = config.get("auto_map") or {}
    if "AutoModelForCausalLM" in auto_map:
        if trust_remote_code:
            return mtype
        raise _err(
            f"{where} is a '{mtype}' checkpoint with custom code; labtui runs it only with "
            "trust_remote_code = true (accepted: a built-in transformers causal LM)"
        )
    raise _err(
        f"{where} is a {mtype} checkpoint, not a causal LM; labtui hosts causal LMs "
        "(llama, qwen2, qwen3, mistral, gpt2, phi3, …)"
    )


def check_causal_config(config: dict, where: str) -> str:
    """The family (model_type) of a config.json that labtui can host without custom
    code, else LabError."""
    return _check_causal(config, where, trust_remote_code=False)


def weight_files(path: Path) -> list[Path]:
    """The safetensors files of checkpoint folder `path` (LabError if none)."""
    single = path / "model.safetensors"
    index = path / _SAFE_INDEX
    if single.is_file():
        return [single]
    if index.is_file():
        try:
            wmap = json.loads(index.read_text())["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise _err(f"checkpoint file {index} is truncated or corrupt: {e}") from None
        files = [path / f for f in sorted(set(wmap.values()))]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise _err(f"{path}: safetensors shard(s) missing: {', '.join(missing[:3])}")
        return files
    pickles = [p for p in _PICKLES if (path / p).exists()] or [
        p.name for p in sorted(path.glob("pytorch_model-*.bin"))[:1]
    ]
    if pickles:
        raise _err(
            f"{path} has only {pickles[0]} weights (a pickle, refused for safety); accepted: "
            "safetensors weights (model.safetensors or model.safetensors.index.json)"
        )
    raise _err(
        f"{path} has no weights; accepted: model.safetensors or model.safetensors.index.json "
        "with its shards"
    )


def _check_file(f: Path) -> None:
    def bad(why: str) -> LabError:
        return _err(f"checkpoint file {f} is truncated or corrupt: {why}")

    try:
        size = f.stat().st_size
        with open(f, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise bad(f"{size} bytes, too short for a safetensors header")
            (n,) = struct.unpack("<Q", head)
            if n > size - 8 or n > 100_000_000:
                raise bad(f"header claims {n} bytes, file has {size}")
            header = json.loads(fh.read(n))
    except OSError as e:
        raise bad(str(e)) from None
    except (ValueError, UnicodeDecodeError) as e:
        raise bad(f"header is not valid JSON ({e})") from None
    if not isinstance(header, dict):
        raise bad("header is not a JSON object")
    end = 0
    for k, v in header.items():
        if k == "__metadata__":
            continue
        try:
            end = max(end, int(v["data_offsets"][1]))
        except (KeyError, TypeError, IndexError, ValueError):
            raise bad(f"tensor '{k}' has no valid data_offsets") from None
    if 8 + n + end > size:
        raise bad(f"data needs {8 + n + end} bytes, file has {size}")
    try:
        from safetensors import safe_open

        with safe_open(str(f), framework="pt") as sf:
            sf.keys()
    except Exception as e:  # safetensors raises its own error types
        raise bad(f"{type(e).__name__}: {e}") from None


def check_weights(path: str | os.PathLike) -> list[Path]:
    """Open the safetensors header of every weight file of a checkpoint folder (or of
    one file) and check the data fits the file; LabError if truncated or corrupt."""
    p = Path(path)
    files = [p] if p.is_file() else weight_files(p)
    for f in files:
        _check_file(f)
    return files


def _read_config(path: Path, where: str) -> dict:
    cfg = path / "config.json"
    if not cfg.is_file():
        raise _err(f"{where} has no config.json; {ACCEPTED}")
    try:
        data = json.loads(cfg.read_text())
    except (OSError, ValueError) as e:
        raise _err(f"{cfg} is not valid JSON ({e}); {ACCEPTED}") from None
    if not isinstance(data, dict):
        raise _err(f"{cfg} is not a JSON object; {ACCEPTED}")
    return data


def _check_dir(path: Path, where: str, trust_remote_code: bool) -> str:
    family = _check_causal(_read_config(path, where), where, trust_remote_code)
    check_weights(path)
    return family


def resolve_source(
    source: str, trust_remote_code: bool = False, base: str | os.PathLike | None = None
) -> ResolvedSource:
    """Resolve a model source to a checked local checkpoint folder."""
    if not isinstance(source, str) or not source.strip():
        raise _err(f"empty model source; {ACCEPTED}")
    src = source.strip()
    if src.startswith("zoo:"):
        from labtui.models import zoo

        spec = zoo.get_spec(src[4:])
        folder = zoo.path(spec.name)
        check_weights(folder)
        return ResolvedSource(source, "zoo", folder, spec.name, spec.family)

    if src.startswith("hf:"):
        repo_id = src[3:].strip()
        if not _HUB_ID.match(repo_id):
            raise _err(f"'{src}' is not hf:org/name; {ACCEPTED}")
        folder = _cached_snapshot(repo_id)
        if folder is None:
            from labtui.models.catalog import hub_cache_dir

            raise _err(
                f"'{repo_id}' is not in the local Hugging Face cache ({hub_cache_dir()}); "
                "`labtui models` lists what is there; accepted: hf:org/name of a cached model"
            )
        family = _check_dir(folder, f"cached hub model {repo_id}", trust_remote_code)
        return ResolvedSource(source, "hub", folder, repo_id, family, hub_id=repo_id)

    p = Path(os.path.expanduser(src))
    if not p.is_absolute():
        p = Path(base) / p if base is not None else Path.cwd() / p
    if p.exists():
        if not p.is_dir():
            raise _err(f"model source {src} is a file, not a checkpoint directory; {ACCEPTED}")
        family = _check_dir(p, f"model directory {src}", trust_remote_code)
        return ResolvedSource(source, "dir", p.resolve(), p.resolve().name, family)

    looks_local = src.startswith((".", "/", "~")) or src.count("/") != 1 or os.sep == "\\"
    if looks_local or not _HUB_ID.match(src):
        raise _err(f"model directory {p} does not exist; {ACCEPTED}")
    return _resolve_hub(source, src, trust_remote_code)


def _cached_snapshot(repo_id: str) -> Path | None:
    """The local cache's snapshot of `repo_id` (refs/main), or None; no network."""
    from huggingface_hub import snapshot_download

    from labtui.models.catalog import hub_cache_dir

    root = hub_cache_dir()
    try:
        return Path(snapshot_download(repo_id, local_files_only=True, cache_dir=root))
    except Exception:  # noqa: BLE001 - huggingface_hub's "not cached" errors vary by version
        pass
    # cached at a pinned revision only (no refs/main): its newest snapshot
    snaps = root / f"models--{repo_id.replace('/', '--')}" / "snapshots"
    found = sorted((p for p in snaps.glob("*") if p.is_dir()), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def _resolve_hub(source: str, repo_id: str, trust_remote_code: bool) -> ResolvedSource:
    from labtui.models import zoo

    cached = _cached_snapshot(repo_id)
    if cached is not None:
        family = _check_dir(cached, f"hub model {repo_id}", trust_remote_code)
        return ResolvedSource(source, "hub", cached, repo_id, family, hub_id=repo_id)

    hint = f"accepted offline: zoo:NAME ({', '.join(zoo.names())}) or a local HF directory"
    if _offline():
        raise _err(
            f"hub id '{repo_id}' needs the Hugging Face hub, but HF_HUB_OFFLINE/"
            f"TRANSFORMERS_OFFLINE is set; {hint}"
        )
    try:
        from huggingface_hub import snapshot_download

        folder = Path(
            snapshot_download(
                repo_id,
                allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken"],
            )
        )
    except Exception as e:
        raise _err(
            f"could not fetch hub id '{repo_id}' (no network or hub access? "
            f"{type(e).__name__}: {str(e)[:120]}); {hint}"
        ) from None
    family = _check_dir(folder, f"hub model {repo_id}", trust_remote_code)
    return ResolvedSource(source, "hub", folder, repo_id, family, hub_id=repo_id)
