"""The direct one-token step (decode.direct_decoder) is the full forward, bit for bit.

For the families it serves it must give the same float32 logits as transformers'
model-level forward on the same KV, with blocks resident, streamed and on the host
(every block's ops run as plain tensor ops, directblock.py; a streamed or host
block's inside its offload hook's pre/post); other families, padded steps and
prefills keep the full forward.
"""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import SMALLEST

from labtui.engine.decode import direct_decoder, forward, prefill
from labtui.engine.kvbuffer import GrowableCache

DIRECT = ["llama-5m", "qwen2-20m", "qwen3-10m"]  # float32 (qwen2: biases; qwen3: q/k norms)
PROMPTS = ["The link between the host and the accelerator", "Layers move while the"]


def _batch_cache(hm, prompts):
    """A GrowableCache holding equal-length prompts (no padding) and their next ids."""
    ids = [hm.tokenizer(p)["input_ids"] for p in prompts]
    n = min(map(len, ids))
    ids = [x[:n] for x in ids]
    cache = GrowableCache(hm.n_layers, cap=lambda: 0)
    nxt = []
    for x in ids:
        c, logits = prefill(hm, x)
        cache.add_row(c, n)
        nxt.append(int(logits.argmax(-1)))
    return cache, torch.tensor(nxt).unsqueeze(1), torch.full((len(ids), 1), n)


def _assert_direct_equals_full(hm, steps: int = 6) -> None:
    a_cache, ids, pos = _batch_cache(hm, PROMPTS)
    b_cache = copy.deepcopy(a_cache)
    direct = direct_decoder(hm.model)
    assert direct is not None
    for _ in range(steps):  # a few steps: the KV each path wrote is read by the next
        hm.direct = direct
        a = forward(hm, ids, None, pos, a_cache)
        hm.direct = None  # the full transformers forward
        b = forward(hm, ids, None, pos, b_cache)
        assert torch.equal(a, b), f"{hm.source} {hm.placement}: direct step logits differ"
        ids, pos = a.argmax(-1, keepdim=True), pos + 1
    hm.direct = direct


@pytest.mark.parametrize("name", DIRECT)
@pytest.mark.parametrize("res,mode", [(1.0, "stream"), (0.5, "stream"), (0.5, "host")])
def test_direct_step_logits_equal_full_forward(name, res, mode, engine):
    m = engine.load(f"zoo:{name}")
    engine.set_residency(m, res, mode=mode)
    _assert_direct_equals_full(engine._models[m].hm)


@pytest.mark.parametrize("name", ["llama-5m", "qwen3-10m"])
def test_direct_step_bfloat16(name, engine):
    """Loaded in bfloat16: RMSNorm's float32 round trip and the rotary products
    rounded as transformers rounds them."""
    m = engine.load(f"zoo:{name}", dtype="bfloat16")
    hm = engine._models[m].hm
    assert next(hm.model.parameters()).dtype == torch.bfloat16
    _assert_direct_equals_full(hm)


@pytest.mark.parametrize("res,mode", [(1.0, "stream"), (0.5, "stream"), (0.5, "host")])
def test_plain_ops_for_every_block_with_its_offload_hook(res, mode, engine, monkeypatch):
    """Every block runs as plain ops; a streamed or host block's offload hook still
    fires around them (its weights streamed in, or its compute on the host)."""
    import labtui.engine.decode as decode
    from labtui.engine.placement import RESIDENT

    plain = []
    real = decode.block_step
    monkeypatch.setattr(decode, "block_step", lambda d, *a: plain.append(d.layer_idx) or real(d, *a))
    m = engine.load("zoo:llama-5m")
    engine.set_residency(m, res, mode=mode)
    hm = engine._models[m].hm
    offloaded = sum(p != RESIDENT for p in hm.placement)
    streamed0, host0 = hm.stream_bytes_moved, hm.host_compute_s
    engine.generate(m, [1, 5, 6, 7], max_new_tokens=3)  # two decode steps
    assert plain == list(range(hm.n_layers)) * 2
    assert (hm.stream_bytes_moved > streamed0) == (offloaded > 0 and mode == "stream")
    assert (hm.host_compute_s > host0) == (offloaded > 0 and mode == "host")


def test_a_foreign_hook_keeps_the_module_call(engine, monkeypatch):
    """A block with a hook that is not the engine's (a user's forward hook) is called
    as a module, so that hook runs."""
    import labtui.engine.decode as decode

    m = engine.load("zoo:llama-5m")
    hm = engine._models[m].hm
    fired = []
    h = hm.model.model.layers[2].register_forward_hook(lambda *a: fired.append(1))
    plain = []
    real = decode.block_step
    monkeypatch.setattr(decode, "block_step", lambda d, *a: plain.append(d.layer_idx) or real(d, *a))
    try:
        engine.generate(m, [1, 5, 6, 7], max_new_tokens=3)
    finally:
        h.remove()
    assert len(fired) == 3 and 2 not in plain  # the prefill and two decode steps


def test_direct_step_is_taken(engine, monkeypatch):
    """Unpadded one-token steps of a served family go through it (so the equality
    above is about the path the engine really runs)."""
    import labtui.engine.decode as decode

    calls = []
    real = decode._direct_step
    monkeypatch.setattr(decode, "_direct_step", lambda *a: calls.append(1) or real(*a))
    m = engine.load("zoo:llama-5m")
    engine.generate(m, [1, 5, 6, 7], max_new_tokens=5)
    assert len(calls) == 4  # the prefill made the first token


@pytest.mark.parametrize("family", ["gpt2", "mistral", "phi3"])
def test_other_families_keep_the_full_forward(family, engine):
    m = engine.load(f"zoo:{SMALLEST[family]}")
    assert direct_decoder(engine._models[m].hm.model) is None
