"""The stream ring's hot path: the ring holds its window and no more, cached binds
swap Parameter objects without going stale, and aliased tensors stay aliased.
The token oracle holds throughout."""

from __future__ import annotations

import pytest
import torch
from conftest import reference_tokens
from torch import nn

from labtui.engine import Engine
from labtui.engine.placement import STREAM
from labtui.engine.units import split_units

PROMPT = "The link between host and accelerator decides how fast tokens arrive"


@pytest.mark.parametrize("depth", [2, 4])
def test_the_ring_holds_its_window_and_keeps_the_next_blocks_in_flight(depth, zoo_path):
    # llama-5m at residency 0.5 streams 3 blocks: the ring has min(3, depth) slots
    with Engine(device="sim", memory_gib=2, link=40.0, host_slowdown=1.0, prefetch_depth=depth) as eng:
        m = eng.load("zoo:llama-5m", residency=0.5, offload="stream")
        hm = eng._models[m].hm
        order = [i for i, p in enumerate(hm.placement) if p == STREAM]
        window = min(len(order), depth)
        held = []
        take = hm._take_buf

        def counting_take(nbytes):
            buf = take(nbytes)
            held.append(len(hm._buf_of) + 1)  # slots held once this one is
            return buf

        hm._take_buf = counting_take
        prompt_ids = hm.tokenizer(PROMPT)["input_ids"]
        got = eng.generate(m, prompt_ids, max_new_tokens=12).token_ids
        assert got == reference_tokens(zoo_path("llama-5m"), prompt_ids, 12)
        assert max(held) == window, "the ring holds exactly its window of slots"
        # between forwards the next forward's first streamed blocks are on their way
        assert sorted(hm._inflight) == order[: window - 1]
        eng.check_invariants()


def _mlp_model():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 4, bias=False)
            self.b = nn.Linear(4, 4, bias=False)

    class Model(nn.Module):
        _no_split_modules = ["Block"]

        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList([Block(), Block()])
            self.head = nn.Linear(4, 2, bias=False)

    return Model()


def _packed(u, fill: float) -> torch.Tensor:
    buf = torch.zeros(u.nbytes, dtype=torch.uint8)
    for s in u.slots:
        buf[s.offset : s.offset + s.nbytes].view(s.dtype).fill_(fill)
    return buf


def _v(t: torch.Tensor) -> float:
    return float(t.detach()[0, 0])


def test_a_cached_bind_never_returns_to_a_buffer_an_uncached_bind_moved_away_from():
    model = _mlp_model()
    _, blocks = split_units(model)
    u = blocks[0]
    a, b = _packed(u, 1.0), _packed(u, 2.0)
    u.bind(a, cached=True)
    w_a = model.layers[0].a.weight
    assert isinstance(w_a, nn.Parameter) and _v(w_a) == 1.0
    u.bind(b)  # a move: sets .data on the Parameter that a's cache handed out
    assert _v(model.layers[0].a.weight) == 2.0
    u.bind(a, cached=True)  # must not reuse the object now pointing into b
    assert _v(model.layers[0].a.weight) == 1.0
    assert model.layers[0].a.weight.data_ptr() == a.data_ptr() + u.slots[0].offset
    w_a = model.layers[0].a.weight
    u.bind(b, cached=True)
    assert _v(model.layers[0].a.weight) == 2.0
    u.bind(a, cached=True)  # both cached now: plain swaps of ready-made objects
    assert model.layers[0].a.weight is w_a


def test_tensors_registered_twice_stay_one_tensor_through_cached_binds():
    model = _mlp_model()
    model.layers[0].b.weight = model.layers[0].a.weight  # tied inside block 0
    _, blocks = split_units(model)
    assert blocks[0].aliased and not blocks[1].aliased
    u = blocks[0]
    buf = _packed(u, 3.0)
    u.bind(buf, cached=True)
    la = model.layers[0]
    assert la.a.weight is la.b.weight, "a cached bind split a tied weight"
    assert la.b.weight.data_ptr() == buf.data_ptr() + u.slots[0].offset
