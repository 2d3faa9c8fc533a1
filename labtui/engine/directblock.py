"""A decoder block's one-token step as plain tensor ops (llama, qwen2, qwen3).

Why by hand: at batch 1 on a CPU a llama block's own arithmetic is seven matrix-vector
products, yet transformers' block spends about as long again in Python around them:
thirteen ``nn.Module`` calls (each through ``_call_impl`` and, for the attention and
the layer, a kwarg-renaming decorator), ``Cache.update``'s bookkeeping, the attention
interface's dispatch, and ``rotate_half``'s slice/neg/cat per query and key. This
function runs the *same* operations on the *same* tensors in the same order: the
linears as ``F.linear`` with the module's weight and bias, RMSNorm exactly as
``LlamaRMSNorm`` (float32 inside), the rotary embedding as ``q*cos + rot(q)*sin``,
SDPA with the arguments ``sdpa_attention_forward`` passes for an unmasked one-token
query. Its one rewrite is exact in IEEE arithmetic: ``rotate_half(q) * sin`` is
``roll(q, D/2) * sin'`` with ``sin'`` the sine with its first half negated (negation
is exact), built once per step instead of a slice/neg/cat per query and key per
layer. The logits are bit-identical to the full forward (tests/test_direct_step.py).

A resident block runs it directly; a streamed or host block runs it between its
offload hook's own pre_forward and post_forward (decode._direct_step), so its weights
are streamed in or its compute timed on the host as before. A block with any other
hook, or one this module does not recognise, keeps its module call.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

_BLOCKS = frozenset({"LlamaDecoderLayer", "Qwen2DecoderLayer", "Qwen3DecoderLayer"})
_SILU = (nn.SiLU,)
try:  # transformers' own SiLU module: F.silu as well
    from transformers.activations import SiLUActivation

    _SILU = (nn.SiLU, SiLUActivation)
except ImportError:  # pragma: no cover - older transformers
    pass


class DirectBlock(NamedTuple):
    """The modules of one block whose weights the step reads (read at call time, so a
    placement change that rebinds a parameter is seen)."""

    layer_idx: int
    in_norm: nn.Module
    q: nn.Linear
    k: nn.Linear
    v: nn.Linear
    o: nn.Linear
    q_norm: nn.Module | None  # qwen3: RMSNorm over the head dim of q and k
    k_norm: nn.Module | None
    post_norm: nn.Module
    gate: nn.Linear
    up: nn.Linear
    down: nn.Linear
    silu: bool  # the MLP's activation is SiLU (F.silu in place), else its module
    act: nn.Module
    head_dim: int
    scaling: float
    gqa: bool  # sdpa's enable_gqa, as sdpa_attention_forward decides for mask None


def direct_block(block: nn.Module) -> DirectBlock | None:
    """``block``'s modules when it is a block this step reproduces, else None."""
    if type(block).__name__ not in _BLOCKS or block.training:
        return None
    a, m = getattr(block, "self_attn", None), getattr(block, "mlp", None)
    need = ("q_proj", "k_proj", "v_proj", "o_proj", "head_dim", "scaling", "num_key_value_groups", "layer_idx")
    if a is None or m is None or not all(hasattr(a, n) for n in need):
        return None
    if not all(hasattr(m, n) for n in ("gate_proj", "up_proj", "down_proj", "act_fn")):
        return None
    if getattr(a, "sliding_window", None) is not None:
        return None
    groups = a.num_key_value_groups
    if groups > 1 and a.head_dim > 256:
        return None  # transformers packs GQA by hand there instead of enable_gqa
    return DirectBlock(
        a.layer_idx, block.input_layernorm, a.q_proj, a.k_proj, a.v_proj, a.o_proj,
        getattr(a, "q_norm", None), getattr(a, "k_norm", None), block.post_attention_layernorm,
        m.gate_proj, m.up_proj, m.down_proj, isinstance(m.act_fn, _SILU), m.act_fn,
        a.head_dim, a.scaling, groups > 1,
    )


def has_hook(block: nn.Module) -> bool:
    """True when calling ``block`` would run more than its forward: a patched forward
    (what accelerate's ``add_hook_to_module`` installs, offload hooks included) or a
    torch forward hook."""
    return "forward" in block.__dict__ or bool(block._forward_pre_hooks) or bool(block._forward_hooks)


def rms_norm(x: torch.Tensor, norm: nn.Module) -> torch.Tensor:
    """``LlamaRMSNorm.forward`` op for op (float32 inside, the weight applied in the
    input's dtype); the fresh mean and rsqrt are updated in place."""
    dt = x.dtype
    xf = x if dt is torch.float32 else x.to(torch.float32)
    xf = xf * xf.pow(2).mean(-1, keepdim=True).add_(norm.variance_epsilon).rsqrt_()
    return norm.weight * (xf if dt is torch.float32 else xf.to(dt))


def rotary_tables(cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The step's cos and sin' (sine with its first half negated), shaped [B, 1, 1, D]
    to broadcast over the heads of q/k laid out [B, 1, H, D]."""
    half = sin.shape[-1] // 2
    sin_signed = torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)
    return cos.unsqueeze(2), sin_signed.unsqueeze(2)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin_signed: torch.Tensor) -> torch.Tensor:
    # (x * cos) + (rotate_half(x) * sin), exactly: rotate_half(x) = cat(-x2, x1) and
    # roll(x, D/2) = cat(x2, x1), so rotate_half(x) * sin = roll(x, D/2) * sin'.
    r = torch.roll(x, x.shape[-1] // 2, dims=-1).mul_(sin_signed)
    return (x * cos).add_(r)


def step(d: DirectBlock, h: torch.Tensor, rot: tuple[torch.Tensor, torch.Tensor], cache) -> torch.Tensor:
    """One token through block ``d``: h [B, 1, hidden] -> [B, 1, hidden]; writes its
    KV into ``cache`` (the batch's GrowableCache) as the block's attention would."""
    b = h.shape[0]
    x = rms_norm(h, d.in_norm)
    q = F.linear(x, d.q.weight, d.q.bias).view(b, 1, -1, d.head_dim)
    k = F.linear(x, d.k.weight, d.k.bias).view(b, 1, -1, d.head_dim)
    v = F.linear(x, d.v.weight, d.v.bias).view(b, 1, -1, d.head_dim)
    if d.q_norm is not None:
        q, k = rms_norm(q, d.q_norm), rms_norm(k, d.k_norm)
    cos, sin_signed = rot
    q, k = _rotate(q, cos, sin_signed), _rotate(k, cos, sin_signed)
    keys, values = cache.layers[d.layer_idx].update(k.transpose(1, 2), v.transpose(1, 2))
    o = F.scaled_dot_product_attention(q.transpose(1, 2), keys, values, attn_mask=None, dropout_p=0.0,
                                       scale=d.scaling, is_causal=False, enable_gqa=d.gqa)
    o = o.transpose(1, 2).contiguous().reshape(b, 1, -1)
    h = h + F.linear(o, d.o.weight, d.o.bias)
    x = rms_norm(h, d.post_norm)
    g = F.linear(x, d.gate.weight, d.gate.bias)
    g = F.silu(g, inplace=True) if d.silu else d.act(g)
    return h + F.linear(g.mul_(F.linear(x, d.up.weight, d.up.bias)), d.down.weight, d.down.bias)
