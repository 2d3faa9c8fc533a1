"""The admission reservation: accelerator bytes an admitted batch will need at its
longest, held from admission on, so the budget holds while KV grows (vLLM reserves
KV blocks for the same reason). On a real GPU, memory that is promised but not held
is an out-of-memory error in the middle of serving.

A model with admitted rows holds, beside its ledger (weights, KV so far, stream
buffers), the *headroom* ``projected KV - KV so far + step workspace``:

- projected KV = rows x longest projected row x KV bytes per token. A row's
  projection is prompt + max_new_tokens tokens. Rows are left-padded to the longest
  one (decode.Batch), so every row costs as much as the longest row of the batch.
  Bytes per token count only blocks whose KV lives on the accelerator (not ``host``
  blocks); they come from the model config until the first prefill measures them.
- step workspace (activations, not in any ledger): see ``workspace_bytes``.

Used + reserved <= budget is the invariant: a decode step moves bytes from the
headroom into the ledger (the sum stays put); a request is admitted only if its
extra headroom fits what is free (budget - used - reserved).
"""

from __future__ import annotations

import functools

from labtui.engine.placement import HOST


def dtype_size(model) -> int:
    """Element size of the model's floating weights (what its KV cache is made of)."""
    for p in model.parameters():
        if p.is_floating_point():
            return p.element_size()
    return 4


def _cfg(config, *names, default=None):
    for n in names:
        v = getattr(config, n, None)
        if v:
            return int(v)
    return default


def config_kv_bytes_per_token(config, n_layers: int, elsize: int) -> list[int]:
    """KV bytes one token adds per decoder block, from the config: keys + values of
    num_key_value_heads x head_dim (head_dim = hidden_size / num_attention_heads when
    the config has none) in the model's dtype."""
    text = getattr(config, "get_text_config", lambda: config)()
    hidden = _cfg(text, "hidden_size", "n_embd", "d_model", default=0)
    heads = _cfg(text, "num_attention_heads", "n_head", default=1)
    kv_heads = _cfg(text, "num_key_value_heads", "num_kv_heads", default=heads)
    head_dim = _cfg(text, "head_dim", default=hidden // max(1, heads))
    return [2 * kv_heads * head_dim * elsize] * n_layers


def workspace_bytes(config, elsize: int, rows: int, longest: int, prefill_tokens: int = 0,
                    merge_bytes: int = 0, layer_kv: int = 0) -> int:
    """Activation workspace of one step, an estimate from the config (h = hidden,
    i = intermediate (4h when absent), v = vocab, a = attention heads, d = dtype bytes):

    - per decoded row: d x (6h + 3i) (hidden state, residual, norm, q/k/v/o, MLP
      gate/up/act) + v x (d + 4) (logits and their float32 copy) + a x longest x d
      (attention scores of one query); plus ``layer_kv``, the one block whose KV
      buffer is regrown at a time (kvbuffer.py: old + new live for one block);
    - a prefill of p tokens: p x d x (6h + 3i) + v x (d + 4) (logits of the last
      position only); fused attention (sdpa) never holds the p x p scores, eager
      attention does: a x p^2 x d; plus ``merge_bytes``, the batch's KV once more
      while the new row joins it (the prefill's own cache and, when the batch has no
      free slot, the reallocated buffer, alive beside the old one).

    The step's workspace is the larger of the two (a step is a prefill or a decode).
    """
    if rows <= 0:
        return 0
    return _workspace(config_dims(config), elsize, rows, longest, prefill_tokens, merge_bytes, layer_kv)


def config_dims(config) -> tuple[int, int, int, int, bool]:
    """(hidden, intermediate, vocab, attention heads, eager attention) from the config."""
    text = getattr(config, "get_text_config", lambda: config)()
    h = _cfg(text, "hidden_size", "n_embd", "d_model", default=0)
    inter = _cfg(text, "intermediate_size", "n_inner", "ffn_dim", default=4 * h)
    vocab = _cfg(text, "vocab_size", default=0)
    heads = _cfg(text, "num_attention_heads", "n_head", default=1)
    eager = getattr(text, "_attn_implementation", None) == "eager"
    return h, inter, vocab, heads, eager


def _workspace(dims, elsize: int, rows: int, longest: int, prefill_tokens: int, merge_bytes: int, layer_kv: int) -> int:
    if rows <= 0:
        return 0
    h, inter, vocab, heads, eager = dims
    per_tok = elsize * (6 * h + 3 * inter)
    logits = vocab * (elsize + 4)
    decode = rows * (per_tok + logits + heads * longest * elsize) + layer_kv
    prefill = 0
    if prefill_tokens:
        p = prefill_tokens
        prefill = p * per_tok + logits + (heads * p * p * elsize if eager else 0) + merge_bytes
    return max(decode, prefill)




class Reservation:
    """Mixed into ``HostedModel``: the admitted batch's plan and the headroom it holds
    on the device (``Device.set_hold``), kept up to date by ``sync_reservation``."""

    def set_plan(self, rows: int, longest: int, prefill_tokens: int = 0, merge_bytes: int = 0) -> None:
        """The admitted rows (count, longest projected row in tokens) and, while a
        request is being admitted, its prefill's length and the batch merge's bytes."""
        self.plan = (int(rows), int(longest), int(prefill_tokens), int(merge_bytes))

    def _accel_kv_layers(self, resident: set[int] | None, mode: str | None) -> list[int]:
        if resident is None:
            return [b for i, b in enumerate(self.kv_bytes_per_token) if not self.kv_on_host(i)]
        return [b for i, b in enumerate(self.kv_bytes_per_token) if i in resident or mode != HOST]

    def headroom(self, rows: int, longest: int, kv_accel: int, prefill_tokens: int = 0, merge_bytes: int = 0,
                 resident: set[int] | None = None, mode: str | None = None) -> int:
        """Bytes to hold beyond the ledger for ``rows`` rows of ``longest`` tokens at most,
        given ``kv_accel`` bytes of KV already on the accelerator (at the current
        placement, or at ``resident``/``mode``)."""
        if rows <= 0:
            return 0
        layers = self._accel_kv_layers(resident, mode)
        projected = rows * longest * sum(layers)
        ws = _workspace(self._config_dims, self.elsize, rows, longest, prefill_tokens, merge_bytes,
                        layer_kv=rows * longest * max(layers, default=0))
        return max(0, projected - kv_accel) + ws

    @functools.cached_property
    def _config_dims(self) -> tuple[int, int, int, int, bool]:
        # The config's sizes, read once: transformers' config attribute access is slow
        # and this runs for every admission check (the candidates pass, each tick).
        return config_dims(self.config)

    def hold_for(self, ledger) -> int:
        """The headroom the plan needs now: none while preempted (nothing runs)."""
        if self._paused_window:
            return 0
        rows, longest, p, m = self.plan
        return self.headroom(rows, longest, ledger.accel_kv, p, m)

    @property
    def claimed(self) -> int:
        """What the device accounts to this model: its ledger plus its headroom."""
        return self._reserved + self._hold

    def claim_bytes(self, resident: set[int], mode: str) -> int:
        """Accelerator bytes this model claims once placed at ``resident``/``mode`` and
        serving its admitted rows: weights, stream window, KV at its projected longest
        (at least the KV it has) and the step workspace."""
        base = self.placement_bytes(resident, mode)
        kv_now = self.placement_bytes(resident, mode, kv=True) - base
        rows, longest, _, _ = self.plan
        return base + kv_now + self.headroom(rows, longest, kv_now, resident=resident, mode=mode)
