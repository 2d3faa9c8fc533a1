"""Bad input to the engine: one line saying what was wrong and what is accepted;
the engine's state is unchanged."""

from __future__ import annotations

import json

import pytest

from labtui.engine import Engine
from labtui.engine.devices import make_device, parse_link
from labtui.errors import LabError


@pytest.fixture(scope="module")
def eng():
    e = Engine(device="sim", memory_gib=1, link="pcie4-x16")
    e.load("zoo:llama-5m", id="m", residency=0.5)
    yield e
    e.close()


def _state(e):
    assert e.wait_idle(30)  # also publishes a fresh snapshot
    s = e.snapshot()
    return [(m.id, m.layer_cells, m.ledger) for m in s.models], s.device.used_bytes


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda e: e.load("zoo:nope-1m"), "unknown zoo model 'nope-1m'; accepted: .*llama-5m"),
        (lambda e: e.load("/no/such/dir"), "/no/such/dir does not exist; accepted: zoo:NAME"),
        (lambda e: e.set_residency("m", 1.5), "less than or equal to 1"),
        (lambda e: e.set_residency("m", -0.1), "greater than or equal to 0"),
        (lambda e: e.set_residency("m", [0, 99]), "no layer 99; accepted: block indices 0..5"),
        (lambda e: e.set_residency("m", 0.5, mode="gpu"), "stream"),
        (lambda e: e.set_residency("ghost", 0.5), "no model 'ghost'; loaded: m"),
        (lambda e: e.set_device_options(link="pcie9"), "unknown link 'pcie9'; accepted: pcie3-x16"),
        (lambda e: e.set_policy("lifo"), "fcfs"),
        (lambda e: e.preempt("m", kv="lose"), "keep"),
        (lambda e: e.load("zoo:llama-5m", id="m"), "already loaded"),
        (lambda e: e.launch_workload("m", kind="poisson"), "rate_per_s"),
    ],
)
def test_bad_input_is_one_line_and_changes_nothing(eng, call, match):
    before = _state(eng)
    with pytest.raises(LabError, match=match) as ei:
        call(eng)
    assert "\n" not in str(ei.value)
    assert _state(eng) == before
    eng.check_invariants()


def test_not_a_causal_lm_is_refused(tmp_path, eng):
    import torch
    from safetensors.torch import save_file

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "t5", "architectures": ["T5ForConditionalGeneration"]}))
    save_file({"x": torch.zeros(1)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(LabError, match="not a causal LM"):
        eng.load(str(tmp_path))


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"kind": "tpu"}, "unknown device 'tpu'; accepted: auto, cuda, sim"),
        ({"kind": "sim", "link": "fast"}, "unknown link 'fast'"),
        ({"kind": "sim", "memory_gib": -1}, "memory_gib"),
        ({"kind": "cuda"}, "no CUDA GPU"),
    ],
)
def test_bad_device_options(kw, match):
    with pytest.raises(LabError, match=match):
        make_device(**kw)


def test_link_presets_and_numbers():
    assert parse_link("pcie4-x16").gbps == 25.0
    assert parse_link(3).gbps == 3.0
    assert parse_link("12.5").gbps == 12.5


def test_generate_api_returns_text_and_timings(eng):
    res = eng.generate("m", "hello there", max_new_tokens=8)
    assert len(res.token_ids) == 8 and isinstance(res.text, str)
    assert res.ttft_s is not None and len(res.token_times_s) == 8
    assert res.token_times_s == sorted(res.token_times_s)
    assert res.finish_reason == "length"


def test_sampling_is_seeded(eng):
    a = eng.generate("m", "seeded", max_new_tokens=12, greedy=False, seed=7).token_ids
    b = eng.generate("m", "seeded", max_new_tokens=12, greedy=False, seed=7).token_ids
    c = eng.generate("m", "seeded", max_new_tokens=12, greedy=False, seed=8).token_ids
    assert a == b and a != c


def test_checkpoint_missing_weights_is_refused(tmp_path, eng, zoo_path):
    """A causal-LM config whose weights file lacks the model's tensors must not be
    silently random-initialised."""
    import shutil

    import torch
    from safetensors.torch import save_file

    src = zoo_path("llama-5m")
    shutil.copy(src / "config.json", tmp_path / "config.json")
    save_file({"x": torch.zeros(1)}, str(tmp_path / "model.safetensors"))
    before = _state(eng)
    with pytest.raises(LabError, match="missing"):
        eng.load(str(tmp_path), id="broken")
    assert _state(eng) == before
