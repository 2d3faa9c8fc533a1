"""The zoo: honest sizes, deterministic atomic builds, loadable, varied greedy output."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys

import pytest

from labtui.errors import LabError
from labtui.models import zoo

SMALL = ["llama-5m", "qwen2-20m", "qwen3-10m", "mistral-25m", "gpt2-10m", "phi3-15m"]
PROMPTS = ["The graphics processor", "A good teacher does not", "Rivers offer another picture."]


@pytest.fixture(scope="session")
def cache(tmp_path_factory):
    """A zoo cache of this test session (small models only)."""
    return tmp_path_factory.mktemp("zoo-cache")


@pytest.fixture(scope="session")
def built(cache):
    return {n: zoo.build(n, cache_dir=cache) for n in SMALL}


def _sha(p):
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _claimed(name: str) -> float:
    return float(re.search(r"-(\d+)m$", name).group(1)) * 1e6


def test_registry_shape():
    families = {s.family for s in zoo.ZOO.values()}
    assert {"llama", "qwen2", "qwen3", "mistral", "gpt2", "phi3"} <= families
    assert "llama-30m" in zoo.ZOO and "qwen3-150m" in zoo.ZOO
    for fam in families:
        sizes = [zoo.param_count(s.name) for s in zoo.ZOO.values() if s.family == fam]
        assert sizes
    multi = [f for f in families if sum(s.family == f for s in zoo.ZOO.values()) >= 2]
    assert len(multi) >= 2
    for s in zoo.ZOO.values():
        n = zoo.param_count(s.name)
        assert 4 <= s.layers <= 28
        if n > 100e6:
            assert s.layers >= 12, s.name
        assert zoo._max_positions(s) >= 2048


@pytest.mark.parametrize("name", list(zoo.ZOO))
def test_names_are_honest(name):
    n = zoo.param_count(name)  # meta device, nothing built
    assert 0.75 <= n / _claimed(name) <= 1.25, (name, n)


def test_built_models_load_with_matching_ids(built):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    for name, p in built.items():
        for f in ("config.json", "model.safetensors", "generation_config.json", "tokenizer.json"):
            assert (p / f).is_file(), (name, f)
        tok = AutoTokenizer.from_pretrained(p)
        model = AutoModelForCausalLM.from_pretrained(p, dtype=torch.float32)
        gen = GenerationConfig.from_pretrained(p)
        cfg = model.config
        assert cfg.vocab_size == len(tok) == zoo.ZOO[name].vocab
        assert sum(q.numel() for q in model.parameters()) == zoo.param_count(name)
        for attr in ("bos_token_id", "eos_token_id", "pad_token_id"):
            assert getattr(cfg, attr) == getattr(tok, attr) == getattr(gen, attr), (name, attr)
        assert zoo.storage_dtype(name) == "float32"
        text = "Memory plays a large part in learning."
        assert tok.decode(tok(text).input_ids, skip_special_tokens=True) == text


def test_build_is_deterministic(tmp_path, built):
    name = "llama-5m"
    again = zoo.build(name, cache_dir=tmp_path / "other")
    for f in ("model.safetensors", "tokenizer.json", "config.json"):
        assert _sha(again / f) == _sha(built[name] / f), f
    assert zoo.seed_for(name) == zoo.seed_for(name) != zoo.seed_for("llama-30m")


def test_in_memory_model_equals_checkpoint(built):
    import torch
    from safetensors.torch import load_file

    name = "qwen3-10m"
    sd = load_file(built[name] / "model.safetensors")
    mem = zoo.make_model(name).state_dict()
    for k, v in sd.items():
        assert torch.equal(mem[k], v), k


def test_greedy_output_is_varied_and_never_stops_early(built):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    for name, p in built.items():
        tok = AutoTokenizer.from_pretrained(p)
        model = AutoModelForCausalLM.from_pretrained(p, dtype=torch.float32).eval()
        conts = []
        for prompt in PROMPTS:
            ids = tok(prompt, return_tensors="pt").input_ids
            with torch.inference_mode():
                out = model.generate(
                    ids, attention_mask=torch.ones_like(ids), max_new_tokens=32, do_sample=False
                )
            new = out[0, ids.shape[1] :].tolist()
            assert len(new) == 32, name
            assert len(set(new)) >= 8, (name, prompt, new)
            assert all(not torch.isnan(t).any() for t in [out.float()])
            conts.append(tuple(new))
        assert len(set(conts)) == len(conts), name
        # runs to max_new_tokens: EOS (a generation stop token) is never chosen
        ids = tok(PROMPTS[0], return_tensors="pt").input_ids
        with torch.inference_mode():
            out = model.generate(
                ids, attention_mask=torch.ones_like(ids), max_new_tokens=160, do_sample=False
            )
            logits = model(out).logits
        new = out[0, ids.shape[1] :].tolist()
        assert len(new) == 160 and tok.eos_token_id not in new, name
        assert torch.isfinite(logits).all()


def test_bos_only_prompt_generates(built):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(built["llama-5m"], dtype=torch.float32)
    ids = torch.tensor([[zoo.BOS_ID]])
    out = model.generate(
        ids, attention_mask=torch.ones_like(ids), max_new_tokens=16, do_sample=False
    )
    assert len(set(out[0, 1:].tolist())) >= 8


def test_concurrent_builds_end_with_one_good_checkpoint(tmp_path, built):
    code = (
        "import sys; from labtui.models import zoo; "
        "print(zoo.build('gpt2-10m', cache_dir=sys.argv[1]))"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=120)[0].decode().strip() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert outs[0] == outs[1] == str(tmp_path / "gpt2-10m")
    assert sorted(x.name for x in tmp_path.iterdir() if not x.name.endswith(".lock")) == [
        "gpt2-10m"
    ]
    assert zoo.is_built("gpt2-10m", tmp_path)
    from labtui.models.sources import check_weights

    check_weights(tmp_path / "gpt2-10m")
    # built in another process: the same bytes (weights and trained tokenizer)
    for f in ("model.safetensors", "tokenizer.json"):
        assert _sha(tmp_path / "gpt2-10m" / f) == _sha(built["gpt2-10m"] / f), f


def test_killed_build_leftovers_are_ignored_and_cleaned(tmp_path):
    stale = tmp_path / ".qwen3-10m.tmp-dead"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")
    half = tmp_path / "qwen3-10m"  # a folder without the completion marker is not built
    half.mkdir()
    (half / "config.json").write_text("{}")
    assert not zoo.is_built("qwen3-10m", tmp_path)
    p = zoo.build("qwen3-10m", cache_dir=tmp_path)
    assert not stale.exists()
    assert zoo.is_built("qwen3-10m", tmp_path)
    assert json.loads((p / "config.json").read_text())["model_type"] == "qwen3"


def test_force_rebuild_replaces_atomically(tmp_path):
    p = zoo.build("llama-5m", cache_dir=tmp_path)
    h = _sha(p / "model.safetensors")
    (p / "junk").write_text("x")
    p2 = zoo.build("llama-5m", cache_dir=tmp_path, force=True)
    assert p2 == p and not (p / "junk").exists() and _sha(p / "model.safetensors") == h
    assert [x.name for x in tmp_path.iterdir() if x.name.startswith(".llama-5m.")] == [
        ".llama-5m.lock"
    ]


def test_cache_root_env(monkeypatch, tmp_path):
    monkeypatch.setenv("LABTUI_CACHE", str(tmp_path / "a"))
    assert zoo.cache_root() == tmp_path / "a" / "zoo"
    monkeypatch.delenv("LABTUI_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert zoo.cache_root() == tmp_path / "x" / "labtui" / "zoo"


def test_unknown_name_is_one_line_lab_error():
    with pytest.raises(LabError) as e:
        zoo.build("llama-7b")
    msg = str(e.value)
    assert "\n" not in msg and "unknown zoo model 'llama-7b'" in msg and "llama-30m" in msg
    with pytest.raises(LabError):
        zoo.path("zoo:nope")


def test_list_zoo_and_cli(built, cache, monkeypatch, capsys):
    rows = {r["name"]: r for r in zoo.list_zoo(cache_dir=cache)}
    assert set(rows) == set(zoo.ZOO)
    r = rows["llama-5m"]
    assert r["built"] and r["family"] == "llama" and r["layers"] == 6 and r["vocab"] == 2048
    assert r["bytes"] == (built["llama-5m"] / "model.safetensors").stat().st_size
    assert not rows["qwen3-400m"]["built"] and rows["qwen3-400m"]["bytes"] > 500e6

    from types import SimpleNamespace

    monkeypatch.setenv("LABTUI_CACHE", str(cache.parent / "cli"))
    monkeypatch.setattr("rich.console.Console.width", 200, raising=False)
    assert zoo.cli_zoo(SimpleNamespace(action="list", name=None)) == 0
    out = capsys.readouterr().out
    assert "qwen3-150m" in out and "phi3" in out
    assert zoo.cli_zoo(SimpleNamespace(action="build", name="qwen3-10m")) == 0
    assert "qwen3-10m" in capsys.readouterr().out
    with pytest.raises(LabError):
        zoo.cli_zoo(SimpleNamespace(action="build", name="nope"))
    with pytest.raises(LabError):
        zoo.cli_zoo(SimpleNamespace(action="build", name=None))


def test_cli_exit_codes(cache, monkeypatch, capsys):
    from labtui.cli import main

    assert main(["zoo", "build", "nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown zoo model 'nope'" in err


def test_corpus_is_substantial():
    text = zoo.corpus_text()
    assert 30_000 <= len(text.encode()) <= 60_000
