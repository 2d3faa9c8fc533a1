"""Shared test setup: a persistent zoo cache and small helpers.

Zoo checkpoints are built once per machine into pytest's cache folder (they are
deterministic, so reuse is safe) unless LABTUI_CACHE is set.
"""

from __future__ import annotations

import os

import pytest

SMALLEST = {
    "llama": "llama-5m",
    "qwen2": "qwen2-20m",
    "qwen3": "qwen3-10m",
    "mistral": "mistral-25m",
    "gpt2": "gpt2-10m",
    "phi3": "phi3-15m",
}


def pytest_configure(config):
    if not os.environ.get("LABTUI_CACHE"):
        os.environ["LABTUI_CACHE"] = str(config.cache.mkdir("labtui-zoo"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def zoo_path():
    from labtui.models.zoo import path

    return path


@pytest.fixture
def engine():
    """A small simulated engine; closed after the test."""
    from labtui.engine import Engine

    eng = Engine(device="sim", memory_gib=2, link=40.0, host_slowdown=1.0)
    yield eng
    eng.close()


def reference_tokens(path, prompt_ids, max_new_tokens):
    """transformers' own greedy generate on the same checkpoint: the oracle."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    ids = torch.tensor([prompt_ids])
    with torch.inference_mode():
        out = model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False
        )
    return out[0, len(prompt_ids) :].tolist()
