"""`labtui models` and hf:org/name sources, on a fake Hugging Face cache built from
zoo checkpoints: the scan (offline), the listing, and loading from the cache giving
the same greedy tokens as the zoo model it was made from."""

from __future__ import annotations

import json

import pytest
from _hubcache import fake_hub

from labtui.cli import main
from labtui.errors import LabError
from labtui.models import catalog, zoo


@pytest.fixture
def hub(tmp_path, zoo_path, monkeypatch):
    h = fake_hub(tmp_path, zoo_path)
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # the cache is HF_HOME/hub
    return h


def test_scan_lists_hostable_models_and_says_why_others_are_skipped(hub):
    assert catalog.hub_cache_dir() == hub
    found, skipped = catalog.scan_hub_cache()
    by = {c.source: c for c in found}
    assert sorted(by) == ["hf:acme/tiny-gpt2", "hf:acme/tiny-llama"]
    llama = by["hf:acme/tiny-llama"]
    assert (llama.family, llama.origin, llama.dtype) == ("llama", "hf cache", zoo.storage_dtype("llama-5m"))
    assert llama.params == zoo.param_count("llama-5m")
    assert llama.layers == zoo.get_spec("llama-5m").layers
    size = (zoo.path("llama-5m") / "model.safetensors").stat().st_size
    assert 0.95 * size < llama.bytes <= size  # tensor data, without the header
    assert by["hf:acme/tiny-gpt2"].family == "gpt2"
    text = "\n".join(skipped)
    assert "pytorch_model.bin" in text and "pickle" in text
    assert "vit" in text and "not a causal LM" in text


def test_hf_hub_cache_wins_and_a_missing_cache_is_empty(hub, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "elsewhere"))
    assert catalog.scan_hub_cache() == ([], [])
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    assert len(catalog.scan_hub_cache()[0]) == 2


def test_cli_lists_zoo_and_cache_with_fit(hub, capsys):
    assert main(["models", "--json", "--memory-gib", "0.05"]) == 0
    out = json.loads(capsys.readouterr().out)
    rows = {r["source"]: r for r in out["models"]}
    assert set(rows) >= {"hf:acme/tiny-llama", "hf:acme/tiny-gpt2", *(f"zoo:{n}" for n in zoo.names())}
    assert out["budget_bytes"] == int(0.05 * 2**30)
    for r in rows.values():  # fits is the loaded (float32 on sim) size against the budget
        assert r["fits"] == (r["load_bytes"] <= out["budget_bytes"])
    assert rows["hf:acme/tiny-llama"]["fits"] is True
    assert rows["zoo:qwen2-100m"]["fits"] is False
    assert main(["models"]) == 0
    table = capsys.readouterr().out
    assert "tiny-llama" in table and "random weights" in table and "skipped" in table


def test_cli_bad_budget_is_one_line(hub, capsys):
    assert main(["models", "--memory-gib", "-1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "accepted" in err


def test_loading_from_the_cache_gives_the_zoo_models_tokens(hub, engine):
    a = engine.load("zoo:llama-5m", id="zoo")
    b = engine.load("hf:acme/tiny-llama")
    c = engine.load("acme/tiny-llama", id="hubid")  # a plain hub id: taken from the cache
    snap = next((hub / "models--acme--tiny-llama" / "snapshots").iterdir())
    d = engine.load(str(snap), id="snapdir")
    assert b == "tiny-llama"
    want = engine.generate(a, "the link decides", max_new_tokens=16).token_ids
    assert len(set(want)) > 3
    for m in (b, c, d):
        assert engine.generate(m, "the link decides", max_new_tokens=16).token_ids == want
    s = engine.snapshot().model(b)
    assert s.family == "llama" and s.source == "hf:acme/tiny-llama"


def test_cache_refusals_are_one_line(hub, engine):
    for src, why in [("hf:acme/nothing", "not in the local Hugging Face cache"),
                     ("hf:acme/pickled", "pickle"), ("hf:acme/encoder", "not a causal LM"),
                     ("hf:no-slash", "not hf:org/name")]:
        with pytest.raises(LabError) as e:
            engine.load(src)
        assert why in str(e.value) and "\n" not in str(e.value)
    assert engine.snapshot().models == ()  or not engine.snapshot().models


def test_load_dialog_searches_the_cache_and_loads_from_it(hub, engine):
    import asyncio

    from textual.widgets import OptionList

    from labtui.tui.app import LabApp
    from labtui.tui.screens.modals import LoadModal

    async def body():
        app = LabApp(engine)
        async with app.run_test(size=(100, 30)) as pilot:
            await pilot.pause(0.5)
            await pilot.press("l")
            for _ in range(100):  # the dialog scans the cache on a thread
                await pilot.pause(0.05)
                if app._cached_rows is not None:
                    break
            assert isinstance(app.screen, LoadModal)
            assert [c.source for c in app._cached_rows] == ["hf:acme/tiny-gpt2", "hf:acme/tiny-llama"]
            for ch in "tiny-ll":
                await pilot.press(ch)
            await pilot.pause(0.2)
            ol = app.screen.query_one(OptionList)
            shown = [ol.get_option_at_index(i).id for i in range(ol.option_count)]
            assert shown == ["hf:acme/tiny-llama"]  # filtered as typed
            await pilot.press("enter")  # loads the first match
            for _ in range(300):
                await pilot.pause(0.1)
                m = engine.snapshot().model("tiny-llama")
                if m is not None and m.n_layers:
                    break
            assert m is not None and m.source == "hf:acme/tiny-llama" and m.family == "llama"

    asyncio.run(body())
