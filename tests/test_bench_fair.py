"""The bench's decode comparison does the same work on both sides: no logits
processor on generate's side that the engine does not run, and a run that met EOS
before its token count is reported, not counted as full."""

from __future__ import annotations

import time

import torch
from conftest import reference_tokens

from labtui.engine import Engine
from labtui.engine.bench import _engine_decode_s, _hf_decode_s

PROMPT = "The link between host and accelerator decides how fast tokens arrive"


def test_both_sides_make_the_same_full_length_and_eos_is_seen(zoo_path):
    from transformers import AutoModelForCausalLM

    p = zoo_path("llama-5m")
    hf = AutoModelForCausalLM.from_pretrained(str(p), dtype=torch.float32).eval()
    with Engine(device="sim", memory_gib=2, link=40.0, host_slowdown=1.0) as eng:
        m = eng.load("zoo:llama-5m")
        prompt_ids = eng._models[m].hm.tokenizer(PROMPT)["input_ids"]
        ids = torch.tensor([prompt_ids] * 2)
        assert _hf_decode_s(hf, ids, 12)[2] == 12
        assert _engine_decode_s(eng, m, prompt_ids, 2, 12)[2] == 12
    # make the model's 5th greedy token its EOS: generate stops there, and says so
    want = reference_tokens(p, prompt_ids, 12)
    hf.generation_config.eos_token_id = want[4]
    first = want.index(want[4]) + 1
    assert _hf_decode_s(hf, ids, 12)[2] == first


def test_copy_load_copies_the_streamed_blocks_beside_the_compute_and_stops():
    """The sim bound's copy load moves real bytes (the streamed half's blocks, once
    per period) and its thread ends with the block."""
    from labtui.engine.bench import _CopyLoad

    eng = Engine(device="sim", memory_gib=1, link=1000.0, host_slowdown=1.0)
    try:
        hm = eng._models[eng.load("zoo:llama-5m")].hm
        with _CopyLoad(hm, 0.002) as load:
            deadline = time.monotonic() + 10
            while not all(torch.equal(d, s) for d, s in load._pairs) and time.monotonic() < deadline:
                time.sleep(0.01)
        resident = hm.layers_for_fraction(0.5)
        streamed = [i for i in range(hm.n_layers) if i not in resident]
        assert [s.data_ptr() for _, s in load._pairs] == [hm.blocks[i].host_buf.data_ptr() for i in streamed]
        assert all(torch.equal(d, s) for d, s in load._pairs)
        assert not load._thread.is_alive()
    finally:
        eng.close()
