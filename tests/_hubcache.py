"""A fake local Hugging Face hub cache made from zoo checkpoints, laid out as
huggingface_hub writes it: models--org--name/{blobs,refs/main,snapshots/<hash>/}."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path


def add_repo(hub: Path, repo_id: str, files: dict[str, bytes]) -> Path:
    """Write one cached model repo; returns its snapshot folder."""
    repo = hub / f"models--{repo_id.replace('/', '--')}"
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    snap = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snap.mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    for name, data in files.items():
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        link = snap / name
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(blob, link.parent), link)
    return snap


def add_zoo_repo(hub: Path, repo_id: str, zoo_folder: Path) -> Path:
    files = {p.name: p.read_bytes() for p in sorted(zoo_folder.iterdir()) if p.is_file()}
    return add_repo(hub, repo_id, files)


def fake_hub(root: Path, zoo_path) -> Path:
    """A cache with two hostable models (from zoo:llama-5m and zoo:gpt2-10m), one
    with pickle weights only, one that is not a causal LM."""
    hub = root / "hub"
    add_zoo_repo(hub, "acme/tiny-llama", zoo_path("llama-5m"))
    add_zoo_repo(hub, "acme/tiny-gpt2", zoo_path("gpt2-10m"))
    add_repo(hub, "acme/pickled", {
        "config.json": json.dumps({"model_type": "llama"}).encode(),
        "pytorch_model.bin": b"\x80\x04not really a pickle",
    })
    add_repo(hub, "acme/encoder", {
        "config.json": json.dumps({"model_type": "vit"}).encode(),
        "model.safetensors": (zoo_path("llama-5m") / "model.safetensors").read_bytes(),
    })
    return hub
