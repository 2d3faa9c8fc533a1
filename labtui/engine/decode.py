"""Decoding: requests, a model's running batch, prefill and one decode step.

Small named steps, as gpt-fast's generate.py: ``prefill`` runs one request's
prompt (batch 1, exactly what transformers' ``generate`` computes), ``Batch.admit``
writes its KV into a free slot of the running batch's cache (kvbuffer.py; left
padding + attention mask, the layout ``generate`` uses for batched prompts),
``Batch.decode_step`` runs one token for every row. Each layer's KV tensors stay on the side where that layer
executes; the ops here index them on their own device.
"""

from __future__ import annotations

import hashlib
import inspect
import threading
import time
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from transformers import DynamicCache

from labtui.engine.directblock import direct_block, has_hook, rotary_tables
from labtui.engine.directblock import step as block_step
from labtui.engine.hosted import HostedModel
from labtui.engine.kvbuffer import GrowableCache
from labtui.engine.streaming import offload_hook


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


# Families whose decoder is embed_tokens -> rotary_emb -> layers -> norm, then lm_head.
_DIRECT_FAMILIES = frozenset({"llama", "qwen2", "qwen3"})


class DirectDecoder(NamedTuple):
    """The modules a direct one-token step calls, looked up once per model."""

    embed: torch.nn.Module
    rotary: torch.nn.Module
    blocks: tuple  # the decoder blocks (not a ModuleList slice, which builds a module per step)
    norm: torch.nn.Module
    head: torch.nn.Module
    plain: tuple  # per block, its directblock.DirectBlock (None: always the module call)


def direct_decoder(model) -> DirectDecoder | None:
    """The decoder's modules when an unpadded one-token step may call its blocks directly.

    Why by hand: for a one-token step without padding, transformers' model-level
    forward (argument decorators, output capture, ``create_causal_mask``, output
    dataclasses) only works out that the mask is None and the positions are the ones
    given, about 1 ms of Python on a 2-core machine, 28% of a llama-5m step. The same
    blocks (as plain ops, directblock.py, inside their offload hooks), norm and head
    then run and the logits are bit-identical (tests/test_direct_step.py). Only for the
    families above with full attention in every layer and the sdpa kernel (where that
    mask is None); everything else, and every prefill, takes the full forward.
    """
    cfg = model.config
    inner = getattr(model, "model", None)
    if getattr(cfg, "model_type", None) not in _DIRECT_FAMILIES or inner is None:
        return None
    if not all(hasattr(inner, a) for a in ("embed_tokens", "rotary_emb", "layers", "norm")):
        return None
    if not hasattr(model, "lm_head") or getattr(cfg, "_attn_implementation", None) != "sdpa":
        return None
    if any(t != "full_attention" for t in (getattr(cfg, "layer_types", None) or [])):
        return None
    blocks = tuple(inner.layers[: cfg.num_hidden_layers])
    return DirectDecoder(inner.embed_tokens, inner.rotary_emb, blocks, inner.norm, model.lm_head,
                         tuple(direct_block(b) for b in blocks))


def _direct_step(hm: HostedModel, ids: torch.Tensor, pos: torch.Tensor, cache) -> torch.Tensor:
    d = hm.direct
    h = d.embed(ids)
    pe = d.rotary(h, position_ids=pos)
    rot = host_rot = None
    kw = {hm.cache_kwarg: cache}
    for block, plain in zip(d.blocks, d.plain, strict=True):
        hook = offload_hook(block)
        if plain is None or (hook is None and has_hook(block)):  # not ours to unwrap: the module call
            h = block(h, attention_mask=None, position_embeddings=pe, position_ids=pos, use_cache=True, **kw)
            continue
        if rot is None:
            rot = rotary_tables(*pe)
        if hook is None:  # resident: its ops without the module calls
            h = block_step(plain, h, rot, cache)
            continue
        # streamed or on the host: the offload hook's own pre/post around the same ops
        # (binds the streamed weights / moves the activations and times the host block)
        args, hkw = hook.pre_forward(block, h, position_embeddings=pe)
        pe_b = hkw["position_embeddings"]  # moved to the host once per forward for host blocks
        if pe_b is not pe and (host_rot is None or host_rot[0] is not pe_b):
            host_rot = (pe_b, rotary_tables(*pe_b))
        h = hook.post_forward(block, block_step(plain, args[0], rot if pe_b is pe else host_rot[1], cache))
    return d.head(d.norm(h))[:, -1, :]


def forward(hm: HostedModel, ids: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor, cache) -> torch.Tensor:
    """One forward; returns float32 logits of the last position, shape [B, V]."""
    key = hm.cache_kwarg
    if key is None:
        key = hm.cache_kwarg = _cache_kwarg(hm.model)
        hm.direct = direct_decoder(hm.model)
    hm.begin_forward()
    with torch.inference_mode():
        if mask is None and ids.shape[1] == 1 and hm.direct is not None and isinstance(cache, GrowableCache):
            return _direct_step(hm, ids, pos, cache).to(dtype=torch.float32)
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


def select_tokens(logits: torch.Tensor, rows: list[Request]) -> tuple[list[int], torch.Tensor]:
    """The next token of every row: (as ints, for the requests; as a [B] tensor on the
    accelerator, fed to the next step without a host round trip when all greedy)."""
    greedy = logits.argmax(dim=-1)
    out = greedy.tolist()  # the step's one host sync
    sampled = False
    for r, req in enumerate(rows):
        if not req.greedy:
            probs = torch.softmax(logits[r].float().cpu() / req.temperature, dim=-1)
            out[r] = int(torch.multinomial(probs, 1, generator=req.generator).item())
            sampled = True
    if sampled:
        greedy = torch.tensor(out, dtype=torch.long, device=logits.device)
    return out, greedy


def _kv_layers(cache):
    return [] if cache is None else [ly for ly in cache.layers if getattr(ly, "keys", None) is not None and ly.keys.numel() > 0]


class Batch:
    """The running batch of one model: rows of requests sharing one KV cache
    (kvbuffer.GrowableCache, written in place), left-padded to a common length."""

    def __init__(self, hm: HostedModel):
        self.hm = hm
        self.rows: list[Request] = []
        self.pads: list[int] = []  # left padding of each row in the cache window
        self.length = 0  # tokens in the cache window (the longest row)
        self.next_ids: list[int] = []
        self._next_t: torch.Tensor | None = None  # next_ids on the accelerator, [B, 1]
        self.pos: list[int] = []  # logical position of next_ids per row
        self._pos_t: torch.Tensor | None = None  # pos on the accelerator, [B, 1]
        self.needs_recompute = False  # KV dropped by a preemption
        self.padded = False  # some row has left padding
        self.version = 0  # bumped whenever the rows change

    @property
    def cache(self):
        return self.hm.cache

    @property
    def mask(self) -> torch.Tensor | None:
        """[B, length] 1 = real token, 0 = left pad (built on demand, from ``pads``)."""
        if not self.rows:
            return None
        return self._mask(self.length)

    def _mask(self, t: int) -> torch.Tensor:
        dev = self.hm.device.accel
        pads = torch.tensor(self.pads, dtype=torch.long, device=dev).unsqueeze(1)
        return (torch.arange(t, device=dev).unsqueeze(0) >= pads).long()

    def __len__(self) -> int:
        return len(self.rows)

    def _rows_changed(self) -> None:
        self.version += 1  # admission's cached need (admission.py) depends on the rows
        self._next_t = self._pos_t = None
        self.padded = any(self.pads)

    # ------------------------------------------------------------------ admit
    def admit(self, req: Request, now: float, eos: set[int]) -> None:
        """Prefill ``req`` and merge it into the batch; emits its first token."""
        req.t_start = now
        req.state = "running"
        if req.seed is not None and not req.greedy:
            req.generator = torch.Generator().manual_seed(req.seed)
        cache, logits = prefill(self.hm, req.prompt_ids)
        tok = select_tokens(logits, [req])[0][0]
        self._merge(cache, req, len(req.prompt_ids), tok)
        self._record(req, tok, time.perf_counter(), eos)

    def _merge(self, cache, req: Request, length: int, next_id: int) -> None:
        """Write the prefill's KV (batch 1) into a free slot of the batch's cache; a
        row longer than the window gives the others more left padding."""
        hm = self.hm
        if hm.cache is None:
            hm.cache = GrowableCache(hm.n_layers, cap=lambda: hm.plan[1])
        hm.cache.add_row(cache, length)
        t = max(self.length, length)
        self.pads = [p + t - self.length for p in self.pads] + [t - length]
        self.length = t
        self.rows.append(req)
        self.next_ids.append(next_id)
        self.pos.append(length)
        self._rows_changed()

    # ----------------------------------------------------------------- decode
    def decode_step(self, eos: set[int]) -> list[Request]:
        """One token for every row; returns the rows that finished."""
        dev = self.hm.device.accel
        if self._next_t is None:
            self._next_t = torch.tensor(self.next_ids, dtype=torch.long, device=dev).unsqueeze(1)
            self._pos_t = torch.tensor(self.pos, dtype=torch.long, device=dev).unsqueeze(1)
        # Without left padding the mask is all ones: pass None, which transformers
        # turns into the same causal path without building or checking a mask.
        mask = self._mask(self.length + 1) if self.padded else None
        logits = forward(self.hm, self._next_t, mask, self._pos_t, self.cache)
        toks, toks_t = select_tokens(logits, self.rows)
        self.length += 1
        self._next_t = toks_t.unsqueeze(1)
        self._pos_t = self._pos_t + 1
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
        if self.cache is not None:
            self.cache.keep_rows(idx)
        self.rows = [self.rows[i] for i in idx]
        self.next_ids = [self.next_ids[i] for i in idx]
        self.pos = [self.pos[i] for i in idx]
        self.pads = [self.pads[i] for i in idx]
        # Columns that are padding for every row carry nothing: drop them (no copy).
        lead = min(self.pads)
        if lead > 0:
            if self.cache is not None:
                self.cache.trim_left(lead)
            self.pads = [p - lead for p in self.pads]
            self.length -= lead
        self._rows_changed()

    def clear(self) -> None:
        self.rows, self.next_ids, self.pos, self.pads = [], [], [], []
        self.length = 0
        self.hm.cache = None
        self.needs_recompute = False
        self._rows_changed()

    # ------------------------------------------------------- preemption (drop)
    def drop_kv(self) -> int:
        """Free the KV cache; rows keep their tokens and are recomputed on resume."""
        freed = sum(ly.keys.numel() * ly.keys.element_size() * 2 for ly in _kv_layers(self.cache))
        if self.rows:
            self.needs_recompute = True
        self.hm.cache = None
        return freed

    def recompute(self) -> int:
        """Rebuild the KV cache of every row by prefilling prompt + generated tokens."""
        rows = self.rows
        self.rows, self.next_ids, self.pos, self.pads = [], [], [], []
        self.length = 0
        self.hm.cache = None
        tokens = 0
        for req in rows:
            seq = req.prompt_ids + req.out_ids[:-1]
            cache, _ = prefill(self.hm, seq)
            self._merge(cache, req, len(seq), req.out_ids[-1])
            tokens += len(seq)
        self.needs_recompute = False
        return tokens
