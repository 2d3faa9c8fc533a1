"""The engine's main oracle: the same greedy tokens whatever the placement.

For every zoo family, tokens at every placement (all resident; fractions in
stream and host mode; all offloaded; explicit layer sets; prefetch on and off;
residency changed in the middle of a generation) equal transformers' own
``generate`` on the same checkpoint. After every move the ledger is exact.
"""

from __future__ import annotations

import time

import pytest
from conftest import SMALLEST, reference_tokens

PROMPT = "The link between host and accelerator decides how fast tokens arrive"
N_NEW = 24

PLACEMENTS = [
    ("resident", 1.0, "stream", True),
    ("half-stream", 0.5, "stream", True),
    ("half-stream-noprefetch", 0.5, "stream", False),
    ("half-host", 0.5, "host", True),
    ("none-stream", 0.0, "stream", True),
    ("none-host", 0.0, "host", True),
    ("odd-layers-host", "odd", "host", True),
    ("even-layers-stream", "even", "stream", True),
]


@pytest.mark.parametrize("family", sorted(SMALLEST))
def test_greedy_tokens_match_transformers_at_every_placement(family, engine, zoo_path):
    name = SMALLEST[family]
    m = engine.load(f"zoo:{name}")
    hm_layers = engine.snapshot().model(m).n_layers
    prompt_ids = engine._models[m].hm.tokenizer(PROMPT)["input_ids"]
    want = reference_tokens(zoo_path(name), prompt_ids, N_NEW)
    assert len(set(want)) > 4, "the zoo model should not be degenerate"
    for label, res, mode, prefetch in PLACEMENTS:
        if res == "odd":
            res = [i for i in range(hm_layers) if i % 2]
        elif res == "even":
            res = [i for i in range(hm_layers) if i % 2 == 0]
        engine.set_prefetch(m, prefetch)
        engine.set_residency(m, res, mode=mode)
        engine.check_invariants()
        got = engine.generate(m, prompt_ids, max_new_tokens=N_NEW).token_ids
        assert got == want, f"{name} {label}: tokens differ"
        engine.check_invariants()


@pytest.mark.parametrize("name", ["llama-5m", "gpt2-10m"])
def test_residency_changed_mid_generation(name, zoo_path):
    from labtui.engine import Engine

    # A slow link makes each step long enough to land moves between steps.
    with Engine(device="sim", memory_gib=2, link=2.0, host_slowdown=1.0) as eng:
        m = eng.load(f"zoo:{name}", residency=0.5, offload="stream")
        prompt_ids = eng._models[m].hm.tokenizer(PROMPT)["input_ids"]
        n = 40
        want = reference_tokens(zoo_path(name), prompt_ids, n)
        req = eng.submit(m, prompt_ids, max_new_tokens=n)
        plan = [(5, 0.0, "host"), (12, 1.0, "stream"), (20, [0, 2], "host"), (28, 0.25, "stream")]
        for at, res, mode in plan:
            while len(req.out_ids) < at and not req.done.is_set():
                time.sleep(0.001)
            assert not req.done.is_set(), "generation ended before the move"
            eng.set_residency(m, res, mode=mode)
            eng.check_invariants()
        assert req.done.wait(60)
        assert req.out_ids == want
        moves = [e for e in eng.events_since(0) if e.kind == "layer_move" and e.data["reason"] == "residency"]
        assert any(e.data["what"] == "kv" for e in moves), "KV must follow blocks that change side"
        eng.check_invariants()
