"""Decoding: requests, a model's running batch, prefill and one decode step.

Small named steps, as gpt-fast's generate.py: ``prefill`` runs one request's
prompt (batch 1, exactly what transformers' ``generate`` computes), ``Batch.admit``
merges its KV cache into the running batch (left padding + attention mask, the
layout ``generate`` uses for batched prompts), ``Batch.decode_step`` runs one
token for every row. Each layer's KV tensors stay on the side where that layer
executes; the ops here index them on their own device.
"""

from __future__ import annotations

import hashlib
import inspect
import threading
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from transformers import DynamicCache

from labtui.engine.hosted import HostedModel


@dataclass(eq=False)
class Request:
    id: str
    model: str
    prompt_ids: list[int]
    max_new_tokens: int
    greedy: bool = True
    temperature: float = 1.0
    seed: int | None = None
    workload: str | None = None
    t_submit: float = 0.0  # engine clock (perf_counter)
    t_start: float | None = None  # admitted into the batch
    t_first: float | None = None
    token_times: list[float] = field(default_factory=list)
    out_ids: list[int] = field(default_factory=list)
    state: str = "queued"  # queued | running | paused | done | cancelled | failed
    finish_reason: str | None = None
    error: str | None = None
    paused_s: float = 0.0
    # this request's share of its decode steps' time (a step's time split evenly over
    # the rows it made a token for): summed over requests, the model's decode time
    decode_s: float = 0.0
    done: threading.Event = field(default_factory=threading.Event)
    generator: torch.Generator | None = None

    def digest(self) -> str:
        return hashlib.sha1(",".join(map(str, self.out_ids)).encode()).hexdigest()[:16]

    @property
    def ttft_s(self) -> float | None:
        return None if self.t_first is None else self.t_first - self.t_submit

    @property
    def tpot_s(self) -> float | None:
        n = len(self.token_times)
        return None if n < 2 else (self.token_times[-1] - self.token_times[0]) / (n - 1)


def _cache_kwarg(model) -> str:
    # transformers 5.x renamed past_key_values -> cache (old name deprecated).
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def forward(hm: HostedModel, ids: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor, cache) -> torch.Tensor:
    """One forward; returns float32 logits of the last position, shape [B, V]."""
    key = hm.cache_kwarg
    if key is None:
        key = hm.cache_kwarg = _cache_kwarg(hm.model)
    hm.begin_forward()
    with torch.inference_mode():
        out = hm.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=pos,
            use_cache=True,
            logits_to_keep=1,
            **{key: cache},
        )
    return out.logits[:, -1, :].to(dtype=torch.float32)


def prefill(hm: HostedModel, token_ids: list[int]):
    """Batch-1 prefill of ``token_ids``: (cache, last logits)."""
    dev = hm.device.accel
    ids = torch.tensor([token_ids], dtype=torch.long, device=dev)
    mask = torch.ones_like(ids)
    pos = torch.arange(len(token_ids), device=dev).unsqueeze(0)
    cache = DynamicCache(config=hm.config)
    logits = forward(hm, ids, mask, pos, cache)
    return cache, logits


def select_tokens(logits: torch.Tensor, rows: list[Request]) -> list[int]:
    greedy = logits.argmax(dim=-1)
    out = greedy.tolist()
    for r, req in enumerate(rows):
        if not req.greedy:
            probs = torch.softmax(logits[r].float().cpu() / req.temperature, dim=-1)
            out[r] = int(torch.multinomial(probs, 1, generator=req.generator).item())
    return out


def _kv_layers(cache):
    return [] if cache is None else [ly for ly in cache.layers if getattr(ly, "keys", None) is not None and ly.keys.numel() > 0]


class Batch:
    """The running batch of one model: rows of requests sharing one KV cache."""

    def __init__(self, hm: HostedModel):
        self.hm = hm
        self.rows: list[Request] = []
        self.mask: torch.Tensor | None = None  # [B, T] 1 = real token, 0 = left pad
        self.next_ids: list[int] = []
        self.pos: list[int] = []  # logical position of next_ids per row
        self.needs_recompute = False  # KV dropped by a preemption
        self.padded = False  # some row has left padding in the mask

    @property
    def cache(self):
        return self.hm.cache

    def __len__(self) -> int:
        return len(self.rows)

    # ------------------------------------------------------------------ admit
    def admit(self, req: Request, now: float, eos: set[int]) -> None:
        """Prefill ``req`` and merge it into the batch; emits its first token."""
        req.t_start = now
        req.state = "running"
        if req.seed is not None and not req.greedy:
            req.generator = torch.Generator().manual_seed(req.seed)
        cache, logits = prefill(self.hm, req.prompt_ids)
        tok = select_tokens(logits, [req])[0]
        self._merge(cache, req, len(req.prompt_ids), tok)
        self._record(req, tok, time.perf_counter(), eos)

    def _merge(self, cache, req: Request, length: int, next_id: int) -> None:
        dev = self.hm.device.accel
        if not self.rows:
            self.hm.cache = cache
            self.mask = torch.ones(1, length, dtype=torch.long, device=dev)
        else:
            tb = self.mask.shape[1]
            t = max(tb, length)
            for old, new in zip(self.cache.layers, cache.layers, strict=True):
                if getattr(new, "keys", None) is None or new.keys.numel() == 0:
                    continue
                for attr in ("keys", "values"):
                    a = F.pad(getattr(old, attr), (0, 0, t - tb, 0))
                    b = F.pad(getattr(new, attr), (0, 0, t - length, 0))
                    setattr(old, attr, torch.cat([a, b], dim=0))
            m_old = F.pad(self.mask, (t - tb, 0))
            m_new = F.pad(torch.ones(1, length, dtype=torch.long, device=dev), (t - length, 0))
            self.mask = torch.cat([m_old, m_new], dim=0)
        self.rows.append(req)
        self.next_ids.append(next_id)
        self.pos.append(length)
        self.padded = bool((self.mask == 0).any().item())

    # ----------------------------------------------------------------- decode
    def decode_step(self, eos: set[int]) -> list[Request]:
        """One token for every row; returns the rows that finished."""
        dev = self.hm.device.accel
        ids = torch.tensor(self.next_ids, dtype=torch.long, device=dev).unsqueeze(1)
        pos = torch.tensor(self.pos, dtype=torch.long, device=dev).unsqueeze(1)
        self.mask = torch.cat([self.mask, torch.ones(len(self.rows), 1, dtype=torch.long, device=dev)], dim=1)
        # Without left padding the mask is all ones: pass None, which transformers
        # turns into the same causal path without checking every element each step.
        logits = forward(self.hm, ids, self.mask if self.padded else None, pos, self.cache)
        toks = select_tokens(logits, self.rows)
        now = time.perf_counter()
        for r, req in enumerate(self.rows):
            self.pos[r] += 1
            self.next_ids[r] = toks[r]
            self._record(req, toks[r], now, eos)
        return self.remove_finished()

    def _record(self, req: Request, tok: int, now: float, eos: set[int]) -> None:
        req.out_ids.append(tok)
        req.token_times.append(now)
        if req.t_first is None:
            req.t_first = now
        if tok in eos:
            req.finish_reason = "eos"
        elif len(req.out_ids) >= req.max_new_tokens:
            req.finish_reason = "length"

    def remove_finished(self) -> list[Request]:
        done = [r for r in self.rows if r.finish_reason is not None]
        if done:
            self.remove([r for r in self.rows if r.finish_reason is None])
        return done

    def remove(self, keep: list[Request]) -> None:
        """Keep only ``keep`` rows (cancel / finish), then trim shared left padding."""
        idx = [i for i, r in enumerate(self.rows) if r in keep]
        if len(idx) == len(self.rows):
            return
        if not idx:
            self.clear()
            return
        for layer in _kv_layers(self.cache):
            sel = torch.tensor(idx, device=layer.keys.device)
            layer.keys = layer.keys.index_select(0, sel)
            layer.values = layer.values.index_select(0, sel)
        self.mask = self.mask.index_select(0, torch.tensor(idx, device=self.mask.device))
        self.rows = [self.rows[i] for i in idx]
        self.next_ids = [self.next_ids[i] for i in idx]
        self.pos = [self.pos[i] for i in idx]
        # Columns that are padding for every row carry nothing: drop them (a view).
        lead = int((self.mask.cumsum(dim=1) == 0).sum(dim=1).min().item())
        if lead > 0:
            self.mask = self.mask[:, lead:]
            for layer in _kv_layers(self.cache):
                layer.keys = layer.keys[:, :, lead:, :]
                layer.values = layer.values[:, :, lead:, :]
        self.padded = bool((self.mask == 0).any().item())

    def clear(self) -> None:
        self.rows, self.next_ids, self.pos = [], [], []
        self.mask = None
        self.hm.cache = None
        self.needs_recompute = False
        self.padded = False

    # ------------------------------------------------------- preemption (drop)
    def drop_kv(self) -> int:
        """Free the KV cache; rows keep their tokens and are recomputed on resume."""
        freed = sum(ly.keys.numel() * ly.keys.element_size() * 2 for ly in _kv_layers(self.cache))
        if self.rows:
            self.needs_recompute = True
        self.hm.cache = None
        self.mask = None
        return freed

    def recompute(self) -> int:
        """Rebuild the KV cache of every row by prefilling prompt + generated tokens."""
        rows = self.rows
        self.rows, self.next_ids, self.pos = [], [], []
        self.mask = None
        self.hm.cache = None
        tokens = 0
        for req in rows:
            seq = req.prompt_ids + req.out_ids[:-1]
            cache, _ = prefill(self.hm, seq)
            self._merge(cache, req, len(seq), req.out_ids[-1])
            tokens += len(seq)
        self.needs_recompute = False
        return tokens
