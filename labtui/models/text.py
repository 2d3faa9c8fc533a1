"""Decoding generated tokens for display without broken characters.

A byte-level tokenizer (GPT-2 style, the zoo's) can split one UTF-8 character
over several tokens; decoding a window of tokens that starts or ends inside such
a character shows U+FFFD. Here the tokens' bytes are fed to Python's incremental
UTF-8 decoder, which holds an incomplete sequence back until the bytes that finish
it arrive (as vLLM's detokenizer does by text, this does by bytes). Bytes that can
never decode (random weights emit them) are dropped, and so are code points that
do not print (unassigned, control): this text is for display only;
the token ids and their digests are untouched. Tokenizers that are not byte-level
fall back to ``decode`` with trailing U+FFFD held back.
"""

from __future__ import annotations

import codecs
from functools import lru_cache

REPLACEMENT = "\ufffd"


@lru_cache(maxsize=1)
def _unicode_to_byte() -> dict[str, int]:
    # GPT-2's byte<->unicode table, the one every ByteLevel tokenizer uses
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs, strict=True)}


def _is_byte_level(tok) -> bool:
    backend = getattr(tok, "backend_tokenizer", None)
    dec = getattr(backend, "decoder", None)
    return dec is not None and type(dec).__name__ == "ByteLevel"


class TextStream:
    """Push token ids as they are generated; get the text they complete."""

    def __init__(self, tok) -> None:
        self.tok = tok
        self.byte_level = _is_byte_level(tok)
        self.skip = set(getattr(tok, "all_special_ids", []) or [])
        self._dec = codecs.getincrementaldecoder("utf-8")(errors="ignore")
        self._ids: list[int] = []  # fallback: ids not yet shown
        self._shown = ""

    def push(self, ids: list[int]) -> str:
        ids = [i for i in ids if i not in self.skip]
        if self.byte_level:
            return self._dec.decode(self._bytes(ids))
        self._ids += ids
        text = self.tok.decode(self._ids, skip_special_tokens=True)
        stable = text.rstrip(REPLACEMENT)  # the tail may still be completed
        new = stable[len(self._shown):] if stable.startswith(self._shown) else stable
        self._shown = stable
        return new

    def _bytes(self, ids: list[int]) -> bytes:
        table = _unicode_to_byte()
        out = bytearray()
        for t in self.tok.convert_ids_to_tokens(ids):
            if t is None:
                continue
            for ch in t:
                b = table.get(ch)
                out += bytes([b]) if b is not None else ch.encode("utf-8")  # added tokens
        return bytes(out)


def display_text(tok, ids: list[int]) -> str:
    """The text of a window of generated ids (possibly cut inside a character at
    either end) with no broken characters: a partial character at the start is
    dropped, one at the end held back."""
    s = TextStream(tok)
    text = s.push(list(ids))
    if not s.byte_level:
        text = text.lstrip(REPLACEMENT)
    # random bytes also make valid but unassigned or control code points, which a
    # terminal shows as U+FFFD too: keep what prints
    return "".join(ch for ch in text if ch.isprintable() or ch in "\n\t")
