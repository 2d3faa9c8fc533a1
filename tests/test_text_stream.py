"""Streamed text holds incomplete UTF-8 back: no U+FFFD for a character split over
tokens, with the zoo's byte-level tokenizer (which does split them)."""

from __future__ import annotations

import pytest

from labtui.models import zoo
from labtui.models.text import REPLACEMENT, TextStream, display_text

TEXT = "price: 5 € — naïve 日本 ok"


@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(zoo.path("llama-5m")))


def test_the_tokenizer_really_splits_characters(tok):
    ids = tok(TEXT, add_special_tokens=False)["input_ids"]
    assert any(REPLACEMENT in tok.decode([i]) for i in ids)  # what one-by-one decoding shows


def test_token_by_token_holds_bytes_back_until_they_decode(tok):
    ids = tok(TEXT, add_special_tokens=False)["input_ids"]
    s = TextStream(tok)
    parts = [s.push([i]) for i in ids]
    assert all(REPLACEMENT not in p for p in parts)
    assert "".join(parts) == TEXT
    held = [i for i, p in enumerate(parts) if p == ""]
    assert held  # some tokens completed nothing on their own
    assert parts[held[-1] + 1] != ""  # ...and the next one released the character


def test_a_window_cut_inside_characters_shows_no_broken_ones(tok):
    ids = tok(TEXT, add_special_tokens=False)["input_ids"]
    full = tok.decode(ids)
    for a in range(len(ids)):
        for b in range(a + 1, len(ids) + 1):
            text = display_text(tok, ids[a:b])
            assert REPLACEMENT not in text
            assert text in full  # nothing invented, only the broken ends left out


def test_plain_text_decodes_exactly_as_the_tokenizer_does(tok):
    text = zoo.corpus_text()[:2000]
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert display_text(tok, ids) == tok.decode(ids, skip_special_tokens=True) == text


def test_engine_cards_text_has_no_replacement_characters(engine):
    m = engine.load("zoo:llama-5m")
    engine.generate(m, "hello", max_new_tokens=48)
    text = engine.fresh_snapshot().model(m).last_text
    assert text and REPLACEMENT not in text
