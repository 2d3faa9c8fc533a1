"""The preallocated KV cache (engine/kvbuffer.py): what attention sees equals the
left-padded concatenation transformers' DynamicCache would hold, across chunk
growth, admission into a partly filled batch (free slots, longer rows), removal and
trimming; and in the engine, greedy tokens stay those of each request alone while
rows join, leave, cross chunk boundaries and are preempted."""

from __future__ import annotations

import time

import pytest
import torch
from transformers import DynamicCache

from labtui.engine import Engine
from labtui.engine.kvbuffer import CHUNK_TOKENS, GrowableCache, capacity_for

H, D, LAYERS = 2, 4, 2


class Ref:
    """The oracle: each row's real tokens, left-padded with zeros to the longest."""

    def __init__(self):
        self.rows: list[list[torch.Tensor]] = []  # per row, per layer: [H, len, D] keys

    def window(self, layer: int) -> torch.Tensor:
        t = max(r[layer].shape[1] for r in self.rows)
        return torch.stack([torch.nn.functional.pad(r[layer], (0, 0, t - r[layer].shape[1], 0)) for r in self.rows])


def _prefill(length: int, gen: torch.Generator) -> tuple[DynamicCache, list[torch.Tensor]]:
    c = DynamicCache()
    ks = []
    for i in range(LAYERS):
        k = torch.randn(1, H, length, D, generator=gen)
        c.update(k, k + 1, i)
        ks.append(k[0])
    return c, ks


def _check(cache: GrowableCache, ref: Ref) -> None:
    for i, ly in enumerate(cache.layers):
        want = ref.window(i)
        got_k = ly.keys[: ly.n, :, ly.start : ly.end]
        got_v = ly.values[: ly.n, :, ly.start : ly.end]
        assert got_k.shape == want.shape
        assert torch.equal(got_k, want)
        pad = want == 0
        assert torch.equal(got_v, torch.where(pad, torch.zeros_like(want), want + 1))
        # the ledger counts the whole buffer: capacity, never less than what is used
        assert ly.keys.shape[0] >= ly.n and ly.keys.shape[-2] >= ly.end


@torch.inference_mode()  # as in the model's forward: buffers grown here are inference tensors
def _step(cache: GrowableCache, ref: Ref, gen: torch.Generator) -> None:
    n = len(ref.rows)
    for i in range(LAYERS):
        k = torch.randn(n, H, 1, D, generator=gen)
        keys, values = cache.update(k, k + 1, i)
        for r in range(n):
            ref.rows[r][i] = torch.cat([ref.rows[r][i], k[r]], dim=1)
        # attention gets views of the used window, not copies
        assert keys.data_ptr() >= cache.layers[i].keys.data_ptr()
        assert keys.shape[-2] == cache.get_seq_length(i)


def test_capacity_grows_by_chunks_and_stops_at_the_plan():
    assert capacity_for(1, 0) == CHUNK_TOKENS
    assert capacity_for(CHUNK_TOKENS + 1, 0) == 2 * CHUNK_TOKENS
    assert capacity_for(CHUNK_TOKENS + 1, 100) == 100  # capped at the longest projected row
    assert capacity_for(120, 100) == 120  # never below what is needed


def test_growth_stops_at_the_longest_projected_row():
    gen = torch.Generator().manual_seed(2)
    cache, ref = GrowableCache(LAYERS, cap=lambda: 70), Ref()
    src, ks = _prefill(10, gen)
    cache.add_row(src, 10)
    ref.rows.append(ks)
    caps = set()
    for _ in range(60):
        _step(cache, ref, gen)
        caps.add(cache.layers[0].keys.shape[-2])
    _check(cache, ref)
    assert caps == {CHUNK_TOKENS, 70}, caps  # no chunk beyond what admission reserved


def test_growth_across_a_chunk_boundary_keeps_every_token():
    gen = torch.Generator().manual_seed(0)
    cache, ref = GrowableCache(LAYERS), Ref()
    for length in (5, 9):
        src, ks = _prefill(length, gen)
        cache.add_row(src, length)
        ref.rows.append(ks)
    _check(cache, ref)
    caps = set()
    for _ in range(2 * CHUNK_TOKENS + 5):
        _step(cache, ref, gen)
        caps.add(cache.layers[0].keys.shape[-2])
    _check(cache, ref)
    assert caps == {CHUNK_TOKENS, 2 * CHUNK_TOKENS, 3 * CHUNK_TOKENS}, caps


def test_admission_into_a_partly_filled_batch():
    gen = torch.Generator().manual_seed(1)
    plan = {"longest": 0}
    cache, ref = GrowableCache(LAYERS, cap=lambda: plan["longest"]), Ref()
    for length in (6, 3, 11):
        src, ks = _prefill(length, gen)
        cache.add_row(src, length)
        ref.rows.append(ks)
    for _ in range(60):  # past the first chunk: the buffers are regrown inside inference mode
        _step(cache, ref, gen)
    _check(cache, ref)
    assert cache.layers[0].keys.shape[-2] == 2 * CHUNK_TOKENS
    # a row leaves (cancel): rows are compacted, its slot stays free
    cache.keep_rows([0, 2])
    del ref.rows[1]
    _check(cache, ref)
    buf = cache.layers[0].keys
    # a shorter row joins into the free slot: no reallocation
    src, ks = _prefill(4, gen)
    cache.add_row(src, 4)
    ref.rows.append(ks)
    assert cache.layers[0].keys is buf
    _check(cache, ref)
    for _ in range(3):
        _step(cache, ref, gen)
    _check(cache, ref)
    # the longest row leaves: columns that are padding for every row are trimmed
    lens = [r[0].shape[1] for r in ref.rows]
    keep = [i for i in range(len(ref.rows)) if i != lens.index(max(lens))]
    cache.keep_rows(keep)
    ref.rows = [ref.rows[i] for i in keep]
    lead = (cache.layers[0].end - cache.layers[0].start) - max(r[0].shape[1] for r in ref.rows)
    assert lead > 0
    cache.trim_left(lead)
    _check(cache, ref)
    # a row longer than the whole window joins: the others gain left padding
    src, ks = _prefill(60, gen)
    plan["longest"] = 80
    cache.add_row(src, 60)
    ref.rows.append(ks)
    _check(cache, ref)
    for _ in range(25):  # grows past 60, capped at the plan's 80
        _step(cache, ref, gen)
    _check(cache, ref)
    assert cache.used_bytes() == sum(2 * ly.n * (ly.end - ly.start) * H * D * 4 for ly in cache.layers)


PROMPTS = [
    "The link between host and accelerator decides how fast tokens arrive",
    "short",
    "A much longer prompt that keeps going so that it is longer than the window of the batch it joins, "
    "with words and more words about layers, caches and links between them all",
]


def _wait(req, n):
    while len(req.out_ids) < n and not req.done.is_set():
        time.sleep(0.0005)
    assert not req.done.is_set(), "finished too early"


@pytest.fixture(scope="module")
def eng():
    e = Engine(device="sim", memory_gib=2, link=20.0, host_slowdown=1.0)
    e.load("zoo:llama-5m", id="a", max_batch=4)
    yield e
    e.close()


@pytest.fixture(scope="module")
def alone(eng):
    tok = eng._models["a"].hm.tokenizer
    ids = [tok(p)["input_ids"] for p in PROMPTS]
    return ids, [eng.generate("a", p, max_new_tokens=n).token_ids for p, n in zip(ids, (100, 40, 30), strict=True)]


def test_rows_joining_a_partly_filled_cache_match_alone(eng, alone):
    ids, want = alone
    a = eng.submit("a", ids[0], max_new_tokens=100)
    _wait(a, CHUNK_TOKENS - len(ids[0]) + 5)  # the first row is past its first chunk
    b = eng.submit("a", ids[1], max_new_tokens=40)  # joins left-padded
    _wait(b, 3)
    eng.check_invariants()
    c = eng.submit("a", ids[2], max_new_tokens=30)  # longer than the window: the others gain padding
    for r, w in zip((a, b, c), want, strict=True):
        assert r.done.wait(120)
        assert r.out_ids == w
    eng.check_invariants()


def test_cancel_mid_batch_then_admit_into_the_free_slot(eng, alone):
    ids, want = alone
    a = eng.submit("a", ids[0], max_new_tokens=100)
    _wait(a, 10)
    w = eng.launch_workload("a", kind="closed", concurrency=1, requests=1, prompt_tokens=12, max_new_tokens=200)
    while eng._models["a"].batch is not None and len(eng._models["a"].batch) < 2:
        time.sleep(0.001)
    _wait(a, 30)
    eng.cancel_workload(w)  # a row leaves mid-batch
    eng.check_invariants()
    b = eng.submit("a", ids[1], max_new_tokens=40)  # into the freed slot
    for r, wt in ((a, want[0]), (b, want[1])):
        assert r.done.wait(120)
        assert r.out_ids == wt
    eng.check_invariants()


@pytest.mark.parametrize("kv", ["keep", "swap", "drop"])
def test_preempted_batch_with_padding_matches_alone(eng, alone, kv):
    ids, want = alone
    a = eng.submit("a", ids[0], max_new_tokens=100)
    _wait(a, 20)
    b = eng.submit("a", ids[1], max_new_tokens=40)
    _wait(b, 5)
    eng.preempt("a", kv=kv, weights="host")
    eng.check_invariants()
    eng.resume("a")
    eng.check_invariants()
    _wait(a, 70)  # past a chunk boundary after the resume
    eng.set_residency("a", 0.5, mode="host")  # KV of host blocks crosses, capacity and all
    eng.check_invariants()
    for r, w in ((a, want[0]), (b, want[1])):
        assert r.done.wait(120)
        assert r.out_ids == w
    eng.set_residency("a", 1.0, mode="stream")
    eng.check_invariants()
