"""The zoo: built-in synthetic checkpoints.

Each zoo model is a real Hugging Face checkpoint (config.json, model.safetensors,
tokenizer files, generation_config.json) of a real transformers architecture, with
random weights made from a seed derived from its name. Nothing is downloaded:
`build(name)` writes it once into the cache, atomically, and `path(name)` returns
the folder (building it if missing).

The weights are random but not careless. The lab's test oracle is "the same
greedy tokens whatever the placement", so the models must produce varied,
context-dependent tokens (a model that repeats one token would hide bugs) and must
not end requests early. See `_init_weights` for how.

Cache root: $LABTUI_CACHE/zoo, else $XDG_CACHE_HOME/labtui/zoo, else
~/.cache/labtui/zoo.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labtui.errors import LabError

CORPUS_PATH = Path(__file__).with_name("corpus.txt")

BOS, EOS, UNK, PAD = "<|bos|>", "<|eos|>", "<|unk|>", "<|pad|>"
SPECIAL_TOKENS = [BOS, EOS, UNK, PAD]  # ids 0..3 in every zoo tokenizer
BOS_ID, EOS_ID, UNK_ID, PAD_ID = 0, 1, 2, 3

# Bumped when the recipe changes (init, tokenizer, layout): a checkpoint built by
# another recipe is rebuilt rather than silently reused.
RECIPE_VERSION = 2
_MARKER = "labtui-zoo.json"

# Models up to this many parameters are stored in float32, bigger ones in bfloat16.
FP32_MAX_PARAMS = 40_000_000


@dataclass(frozen=True)
class ZooSpec:
    name: str
    family: str  # config.model_type
    vocab: int
    config: dict[str, Any] = field(default_factory=dict)
    add_bos: bool = False  # tokenizer prepends <|bos|> (llama-like families)
    # Init knobs (see _init_weights): std scale of matrices (times 1/sqrt(fan_in)),
    # std of the token embedding, extra scale of each block's output projections.
    init_gain: float = 2.0
    embed_std: float | None = None  # None: 1/sqrt(hidden)
    out_gain: float = 1.0

    @property
    def layers(self) -> int:
        c = self.config
        return int(c.get("num_hidden_layers", c.get("n_layer", 0)))

    @property
    def hidden(self) -> int:
        c = self.config
        return int(c.get("hidden_size", c.get("n_embd", 0)))


def _llama_like(hidden, layers, heads, kv, inter, tie=True, **extra):
    return dict(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        intermediate_size=inter,
        max_position_embeddings=8192,
        tie_word_embeddings=tie,
        **extra,
    )


def _gpt2(hidden, layers, heads, inner=None):
    return dict(
        n_embd=hidden,
        n_layer=layers,
        n_head=heads,
        n_inner=inner,
        n_positions=2048,
        tie_word_embeddings=True,
    )


_SPECS = [
    ZooSpec("llama-5m", "llama", 2048, _llama_like(256, 6, 4, 2, 704), add_bos=True),
    ZooSpec("llama-30m", "llama", 4096, _llama_like(512, 8, 8, 4, 1792), add_bos=True),
    ZooSpec("llama-150m", "llama", 8192, _llama_like(768, 16, 12, 4, 3200), add_bos=True),
    ZooSpec("qwen2-20m", "qwen2", 4096, _llama_like(384, 8, 6, 2, 1664)),
    ZooSpec("qwen2-100m", "qwen2", 8192, _llama_like(640, 18, 10, 2, 2304)),
    ZooSpec("qwen3-10m", "qwen3", 4096, _llama_like(320, 6, 4, 2, 1248, head_dim=64)),
    ZooSpec("qwen3-150m", "qwen3", 8192, _llama_like(768, 16, 12, 4, 3200, head_dim=64)),
    ZooSpec("qwen3-400m", "qwen3", 8192, _llama_like(1024, 24, 16, 8, 3072, head_dim=128)),
    ZooSpec(
        "mistral-25m",
        "mistral",
        4096,
        _llama_like(448, 8, 8, 2, 1536, tie=False, sliding_window=None, head_dim=56),
        add_bos=True,
    ),
    ZooSpec("gpt2-10m", "gpt2", 4096, _gpt2(320, 6, 5), init_gain=2.5),
    ZooSpec("gpt2-120m", "gpt2", 8192, _gpt2(768, 16, 12), init_gain=2.5),
    ZooSpec(
        "phi3-15m",
        "phi3",
        4096,
        _llama_like(384, 6, 6, 2, 1280, tie=False, original_max_position_embeddings=8192),
        add_bos=True,
    ),
]

ZOO: dict[str, ZooSpec] = {s.name: s for s in _SPECS}


def names() -> list[str]:
    return list(ZOO)


def get_spec(name: str) -> ZooSpec:
    if name.startswith("zoo:"):
        name = name[4:]
    try:
        return ZOO[name]
    except KeyError:
        raise LabError(f"unknown zoo model '{name}'; accepted: {', '.join(ZOO)}") from None


# ---------------------------------------------------------------------------
# cache location and locking


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The folder holding zoo checkpoints (…/zoo)."""
    if cache_dir is not None:
        return Path(cache_dir)
    if os.environ.get("LABTUI_CACHE"):
        return Path(os.environ["LABTUI_CACHE"]) / "zoo"
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "labtui" / "zoo"
    return Path.home() / ".cache" / "labtui" / "zoo"


@contextlib.contextmanager
def _locked(lock_path: Path):
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def is_built(name: str, cache_dir: str | os.PathLike | None = None) -> bool:
    spec = get_spec(name)
    d = cache_root(cache_dir) / spec.name
    try:
        marker = json.loads((d / _MARKER).read_text())
    except (OSError, ValueError):
        return False
    return marker.get("recipe") == RECIPE_VERSION and (d / "model.safetensors").is_file()


# ---------------------------------------------------------------------------
# tokenizer


@functools.cache
def _corpus() -> str:
    return CORPUS_PATH.read_text(encoding="utf-8")


def corpus_text() -> str:
    """The built-in English corpus (for prompts and tokenizers)."""
    return _corpus()


@functools.cache
def _tokenizer_json(vocab: int) -> str:
    """A byte-level BPE of exactly `vocab` tokens trained on corpus.txt, as JSON.

    Ids 0-3 are <|bos|> <|eos|> <|unk|> <|pad|>; if the corpus runs out of merges
    before `vocab`, the rest is filled with <|reserved_N|> special tokens (which
    never occur in text), as real models reserve ids.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        min_frequency=1,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus().splitlines(keepends=True), trainer=trainer)
    n = tok.get_vocab_size()
    if n < vocab:
        tok.add_special_tokens([f"<|reserved_{i}|>" for i in range(vocab - n)])
    assert tok.get_vocab_size() == vocab, (tok.get_vocab_size(), vocab)
    return tok.to_str()


def make_tokenizer(spec: ZooSpec):
    """A transformers PreTrainedTokenizerFast for `spec` (not saved)."""
    from tokenizers import Tokenizer, processors
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer.from_str(_tokenizer_json(spec.vocab))
    if spec.add_bos:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, BOS_ID)]
        )
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        pad_token=PAD,
        model_max_length=_max_positions(spec),
        clean_up_tokenization_spaces=False,
    )
    assert len(fast) == spec.vocab, (len(fast), spec.vocab)
    return fast


# ---------------------------------------------------------------------------
# config and model


def _max_positions(spec: ZooSpec) -> int:
    c = spec.config
    return int(c.get("max_position_embeddings", c.get("n_positions", 2048)))


def make_config(spec: ZooSpec):
    from transformers import AutoConfig

    kw = dict(spec.config)
    kw.update(vocab_size=spec.vocab, bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID)
    if spec.family != "gpt2":
        kw.setdefault("initializer_range", 0.02)
    cfg = AutoConfig.for_model(spec.family, **kw)
    return cfg


def _unique_params(model) -> int:
    return sum(p.numel() for p in model.parameters())  # parameters() dedups tied weights


@functools.cache
def param_count(name: str) -> int:
    """Parameters of zoo model `name` (embedding included, tied weights once),
    computed on the meta device without building anything."""
    import torch
    from transformers import AutoModelForCausalLM

    spec = get_spec(name)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(make_config(spec))
    return _unique_params(model)


def storage_dtype(name: str) -> str:
    return "float32" if param_count(name) <= FP32_MAX_PARAMS else "bfloat16"


def seed_for(name: str) -> int:
    return int.from_bytes(hashlib.sha256(f"labtui-zoo:{name}".encode()).digest()[:8], "little") >> 1


SPECIAL_ROW_SCALE = 0.05

_NORM_HINTS = ("norm", "ln_", ".ln")
_OUT_PROJ = ("o_proj", "down_proj", "c_proj")  # write into the residual stream


def _init_weights(model, spec: ZooSpec) -> None:
    """Fill every parameter from a generator seeded by the model's name.

    Recipe (chosen so that greedy decoding gives varied, context-dependent tokens):
    - norms: weight 1, bias 0; other biases: small normal (std 0.02);
    - token embedding: normal(0, embed_std); gpt2 position embedding: normal(0, 0.02);
    - matrices: normal(0, init_gain / sqrt(fan_in)) so activations keep unit scale
      through the stack instead of shrinking towards a bland, repetitive output;
      the output projections of attention and MLP (o_proj/down_proj/c_proj) get an
      extra out_gain so each block visibly changes the residual stream;
    - an untied lm_head: normal(0, 1/sqrt(hidden));
    - the output rows of special and reserved tokens (eos, bos, pad, …) are scaled
      by SPECIAL_ROW_SCALE, so their logits are ~20x smaller than the best of
      thousands of ordinary ones: greedy decoding never ends a request early nor
      emits a special or reserved token, and sampling rarely does. (Scaled, not
      zeroed: with tied embeddings the same row is the token's input embedding, and
      a zero <|bos|> embedding would make a bos-only prompt produce all-zero logits.
      RMSNorm/LayerNorm undo the scale on input.)
    """
    import torch

    g = torch.Generator(device="cpu").manual_seed(seed_for(spec.name))
    seen: set[int] = set()
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if id(p) in seen:
                continue
            seen.add(id(p))
            buf = torch.empty(p.shape, dtype=torch.float32)
            leaf = pname.rsplit(".", 1)[-1]
            if p.ndim == 1:
                if any(h in pname for h in _NORM_HINTS) and leaf == "weight":
                    buf.fill_(1.0)
                elif any(h in pname for h in _NORM_HINTS):
                    buf.zero_()
                else:
                    buf.normal_(0.0, 0.02, generator=g)
            elif pname.endswith(("embed_tokens.weight", "wte.weight")):
                std = spec.embed_std or 1.0 / (p.shape[1] ** 0.5)
                buf.normal_(0.0, std, generator=g)
            elif pname.endswith("wpe.weight"):
                buf.normal_(0.0, 0.02, generator=g)
            elif pname.startswith("lm_head"):
                buf.normal_(0.0, 1.0 / (p.shape[1] ** 0.5), generator=g)
            else:
                # nn.Linear weight is (out, in); gpt2 Conv1D weight is (in, out)
                fan_in = p.shape[0] if spec.family == "gpt2" else p.shape[1]
                std = spec.init_gain / (fan_in**0.5)
                if any(h in pname for h in _OUT_PROJ):
                    std *= spec.out_gain
                buf.normal_(0.0, std, generator=g)
            p.copy_(buf)
        head = model.get_output_embeddings().weight
        n_text = _text_vocab(spec.vocab)
        head[: len(SPECIAL_TOKENS)] *= SPECIAL_ROW_SCALE
        head[n_text:] *= SPECIAL_ROW_SCALE


def _text_vocab(vocab: int) -> int:
    """Ids below this are special or ordinary tokens; ids at or above are reserved."""
    tj = json.loads(_tokenizer_json(vocab))
    reserved = [t["id"] for t in tj["added_tokens"] if t["content"].startswith("<|reserved_")]
    return min(reserved) if reserved else vocab


def make_model(name: str, dtype: str = "float32"):
    """The zoo model `name`, initialised in memory (not saved)."""
    import torch
    from transformers import AutoModelForCausalLM

    spec = get_spec(name)
    cfg = make_config(spec)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    model.to_empty(device="cpu")
    model.tie_weights()  # to_empty gives tied parameters separate storage again
    _init_weights(model, spec)
    # non-persistent buffers (rotary inv_freq, …) were left empty by to_empty:
    # recompute them the way loading does, so the in-memory model is usable too.
    _reset_buffers(model, cfg)
    model = model.to(getattr(torch, dtype))
    model.eval()
    return model


def _reset_buffers(model, cfg) -> None:
    """Recompute buffers that to_empty left uninitialised (rotary inv_freq, …)
    by building a fresh copy of each module that owns buffers, on the CPU."""
    import torch

    for mod in model.modules():
        own = dict(mod.named_buffers(recurse=False))
        if not own:
            continue
        with torch.device("cpu"):
            fresh = type(mod)(getattr(mod, "config", cfg))
        for k, v in fresh.named_buffers(recurse=False):
            own[k].copy_(v)
        for k, v in vars(fresh).items():  # plain attributes such as attention_scaling
            if not k.startswith("_") and isinstance(v, (int, float)):
                setattr(mod, k, v)


# ---------------------------------------------------------------------------
# build


def _write_checkpoint(spec: ZooSpec, out: Path) -> None:
    from transformers import GenerationConfig

    dtype = storage_dtype(spec.name)
    model = make_model(spec.name, dtype=dtype)
    model.config.dtype = dtype
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # no "Writing model shards" bar in `labtui zoo build`
    try:
        model.save_pretrained(out, safe_serialization=True)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    tok = make_tokenizer(spec)
    tok.save_pretrained(out)
    GenerationConfig(
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
        do_sample=False,
    ).save_pretrained(out)
    marker = {
        "name": spec.name,
        "family": spec.family,
        "recipe": RECIPE_VERSION,
        "seed": seed_for(spec.name),
        "params": param_count(spec.name),
        "dtype": dtype,
    }
    (out / _MARKER).write_text(json.dumps(marker, indent=2) + "\n")


def build(name: str, cache_dir: str | os.PathLike | None = None, force: bool = False) -> Path:
    """Write zoo checkpoint `name` (once) and return its folder.

    Atomic: the checkpoint is written into a temporary folder beside the final one
    and renamed into place, under an fcntl lock on `.<name>.lock`, so a killed or
    concurrent build never leaves a half checkpoint.
    """
    spec = get_spec(name)
    root = cache_root(cache_dir)
    final = root / spec.name
    if not force and is_built(spec.name, root):
        return final
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root / f".{spec.name}.lock"):
        if not force and is_built(spec.name, root):
            return final  # built by another process while we waited
        for stale in root.glob(f".{spec.name}.tmp-*"):  # left by a killed build
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{spec.name}.tmp-", dir=root))
        try:
            _write_checkpoint(spec, tmp)
            if final.exists():
                trash = root / f".{spec.name}.old-{os.getpid()}-{time.monotonic_ns()}"
                os.replace(final, trash)
                os.replace(tmp, final)
                shutil.rmtree(trash, ignore_errors=True)
            else:
                os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final


def path(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """The folder of zoo checkpoint `name`, building it if missing."""
    return build(name, cache_dir=cache_dir)


# ---------------------------------------------------------------------------
# listing and CLI


def list_zoo(cache_dir: str | os.PathLike | None = None) -> list[dict]:
    rows = []
    root = cache_root(cache_dir)
    for spec in ZOO.values():
        n = param_count(spec.name)
        built = is_built(spec.name, root)
        if built:
            nbytes = (root / spec.name / "model.safetensors").stat().st_size
        else:
            nbytes = n * (4 if storage_dtype(spec.name) == "float32" else 2)
        rows.append(
            dict(
                name=spec.name,
                family=spec.family,
                params=n,
                layers=spec.layers,
                hidden=spec.hidden,
                vocab=spec.vocab,
                dtype=storage_dtype(spec.name),
                bytes=nbytes,
                built=built,
            )
        )
    return rows


def fmt_params(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"


def fmt_bytes(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def cli_zoo(args) -> int:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    action = getattr(args, "action", None) or "list"
    name = getattr(args, "name", None)
    if action == "list":
        table = Table(title="labtui zoo (synthetic checkpoints)")
        for col in ("name", "family", "params", "layers", "bytes", "built"):
            table.add_column(
                col, justify="right" if col in ("params", "layers", "bytes") else "left"
            )
        for r in list_zoo():
            table.add_row(
                r["name"],
                r["family"],
                fmt_params(r["params"]),
                str(r["layers"]),
                fmt_bytes(r["bytes"]),
                "yes" if r["built"] else "no",
            )
        console.print(table)
        console.print(f"cache: {cache_root()}")
        return 0
    if action == "build":
        if not name:
            raise LabError(f"zoo build needs a name or 'all'; accepted: all, {', '.join(ZOO)}")
        todo = list(ZOO) if name == "all" else [get_spec(name).name]
        for n in todo:
            t0 = time.perf_counter()
            p = build(n)
            console.print(f"{n}: {p}  ({time.perf_counter() - t0:.1f} s)")
        return 0
    raise LabError(f"unknown zoo action '{action}'; accepted: list, build NAME")
