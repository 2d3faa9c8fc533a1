"""Model sources: zoo names, local folders, hub ids; every refusal is one line."""

from __future__ import annotations

import json
import shutil

import pytest

from labtui.errors import LabError
from labtui.models import zoo
from labtui.models.sources import ResolvedSource, check_weights, resolve_source


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("src-cache")


@pytest.fixture
def zoo_env(cache, monkeypatch):
    monkeypatch.setenv("LABTUI_CACHE", str(cache))
    return cache


@pytest.fixture(scope="module")
def ckpt(cache):
    return zoo.build("llama-5m", cache_dir=cache / "zoo")


def _copy(src, dst, skip=()):
    dst.mkdir(parents=True)
    for f in src.iterdir():
        if f.name not in skip and f.is_file():
            shutil.copy(f, dst / f.name)
    return dst


def _refused(source, **kw) -> str:
    with pytest.raises(LabError) as e:
        resolve_source(source, **kw)
    msg = str(e.value)
    assert msg and "\n" not in msg, msg
    return msg


def test_zoo_source(zoo_env, ckpt):
    r = resolve_source("zoo:llama-5m")
    assert isinstance(r, ResolvedSource)
    assert (r.kind, r.name, r.family, r.path) == ("zoo", "llama-5m", "llama", ckpt)


def test_unknown_zoo_name(zoo_env):
    msg = _refused("zoo:llama-9000m")
    assert "unknown zoo model 'llama-9000m'" in msg and "qwen3-150m" in msg


def test_local_dir_absolute_and_relative(tmp_path, ckpt):
    d = _copy(ckpt, tmp_path / "models" / "mine")
    r = resolve_source(str(d))
    assert (r.kind, r.family, r.path, r.name) == ("dir", "llama", d.resolve(), "mine")
    r2 = resolve_source("models/mine", base=tmp_path)
    assert r2.path == d.resolve()
    r3 = resolve_source("./mine", base=tmp_path / "models")
    assert r3.path == d.resolve()


def test_missing_dir(tmp_path):
    msg = _refused(str(tmp_path / "nowhere"))
    assert "does not exist" in msg and "zoo:NAME" in msg
    _refused("./nowhere/else", base=tmp_path)
    _refused("a/b/c", base=tmp_path)


def test_empty_source():
    assert "empty" in _refused("  ")


def test_file_not_dir(tmp_path):
    f = tmp_path / "weights.safetensors"
    f.write_bytes(b"x")
    assert "not a checkpoint directory" in _refused(str(f))


def test_dir_without_config(tmp_path, ckpt):
    d = _copy(ckpt, tmp_path / "noconf", skip={"config.json"})
    assert "config.json" in _refused(str(d))


def test_bad_config_json(tmp_path, ckpt):
    d = _copy(ckpt, tmp_path / "badconf")
    (d / "config.json").write_text("{not json")
    assert "not valid JSON" in _refused(str(d))


def test_not_a_causal_lm(tmp_path, ckpt):
    d = _copy(ckpt, tmp_path / "vit")
    (d / "config.json").write_text(json.dumps({"model_type": "vit"}))
    msg = _refused(str(d))
    assert "is a vit checkpoint, not a causal LM" in msg and "llama" in msg


def test_custom_code_needs_trust(tmp_path, ckpt):
    d = _copy(ckpt, tmp_path / "custom")
    cfg = {"model_type": "mything", "auto_map": {"AutoModelForCausalLM": "m.MyLM"}}
    (d / "config.json").write_text(json.dumps(cfg))
    assert "trust_remote_code" in _refused(str(d))
    assert resolve_source(str(d), trust_remote_code=True).family == "mything"


def test_pickle_only_checkpoint_refused(tmp_path, ckpt):
    d = _copy(ckpt, tmp_path / "pickle", skip={"model.safetensors"})
    (d / "pytorch_model.bin").write_bytes(b"\x80\x02}q\x00.")
    msg = _refused(str(d))
    assert "pytorch_model.bin" in msg and "pickle" in msg and "safetensors" in msg


def test_no_weights(tmp_path, ckpt):
    d = _copy(ckpt, tmp_path / "empty", skip={"model.safetensors"})
    assert "no weights" in _refused(str(d))


def test_sharded_index(tmp_path, ckpt):
    from safetensors import safe_open

    d = _copy(ckpt, tmp_path / "sharded", skip={"model.safetensors"})
    shutil.copy(ckpt / "model.safetensors", d / "model-00001-of-00001.safetensors")
    with safe_open(str(ckpt / "model.safetensors"), framework="pt") as f:
        wmap = {k: "model-00001-of-00001.safetensors" for k in f.keys()}
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": wmap}))
    assert resolve_source(str(d)).family == "llama"
    (d / "model-00001-of-00001.safetensors").unlink()
    assert "missing" in _refused(str(d))


@pytest.mark.parametrize("cut", [4, 100, -1000])
def test_truncated_safetensors(tmp_path, ckpt, cut):
    d = _copy(ckpt, tmp_path / f"trunc{cut}")
    w = d / "model.safetensors"
    data = w.read_bytes()
    w.write_bytes(data[:cut])
    with pytest.raises(LabError) as e:
        check_weights(d)
    msg = str(e.value)
    assert "\n" not in msg and "is truncated or corrupt" in msg and "model.safetensors" in msg
    assert "truncated or corrupt" in _refused(str(d))


def test_corrupt_header(tmp_path, ckpt):
    d = _copy(ckpt, tmp_path / "garbage")
    w = d / "model.safetensors"
    data = bytearray(w.read_bytes())
    data[8:20] = b"!!!!garbage!"
    w.write_bytes(bytes(data))
    assert "truncated or corrupt" in _refused(str(d))


def test_check_weights_ok(ckpt):
    assert check_weights(ckpt) == [ckpt / "model.safetensors"]
    assert check_weights(ckpt / "model.safetensors") == [ckpt / "model.safetensors"]


def test_hub_id_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    msg = _refused("Qwen/Qwen3-0.6B")
    assert "Qwen/Qwen3-0.6B" in msg and "OFFLINE" in msg and "zoo:" in msg


def test_hub_id_without_network(monkeypatch):
    import huggingface_hub

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)

    def boom(*a, **k):
        raise ConnectionError("Failed to resolve 'huggingface.co'\nretry later")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", boom)
    msg = _refused("org/name")
    assert "could not fetch hub id 'org/name'" in msg and "no network" in msg


def test_hub_id_fetched_snapshot_is_checked(monkeypatch, tmp_path, ckpt):
    import huggingface_hub

    snap = _copy(ckpt, tmp_path / "snap")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda *a, **k: str(snap))
    r = resolve_source("org/tiny-llama")
    assert (r.kind, r.hub_id, r.name, r.family, r.path) == (
        "hub",
        "org/tiny-llama",
        "org/tiny-llama",
        "llama",
        snap,
    )
