"""The bench's decode comparison does the same work on both sides: no logits
processor on generate's side that the engine does not run, and a run that met EOS
before its token count is reported, not counted as full."""

from __future__ import annotations

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
