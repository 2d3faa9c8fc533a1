"""Loading a resolved checkpoint into host memory, through transformers' own path.

Every model (zoo or user checkpoint) goes through ``from_pretrained`` with
safetensors only (no pickle) and ``trust_remote_code`` off unless asked for.
"""

from __future__ import annotations

import torch

from labtui.errors import LabError, one_line

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def load_pretrained(src, dtype: str = "float32", trust_remote_code: bool = False):
    """(model on the host in eval mode, tokenizer or None) for a ResolvedSource."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    td = "auto" if dtype == "auto" else _DTYPES[dtype]
    try:
        model, info = AutoModelForCausalLM.from_pretrained(
            str(src.path),
            dtype=td,
            use_safetensors=True,
            trust_remote_code=trust_remote_code,
            device_map=None,
            output_loading_info=True,
        )
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        raise LabError(f"cannot load {src.source}: {one_line(e)[:300]}") from e
    missing = list(info.get("missing_keys") or [])
    if missing:
        # transformers would random-initialise them: a lab must not serve noise.
        raise LabError(
            f"checkpoint {src.source} is missing {len(missing)} tensor(s) of its model "
            f"(e.g. {sorted(missing)[0]}); accepted: a complete safetensors checkpoint"
        )
    model.eval()
    model.requires_grad_(False)
    try:
        tok = AutoTokenizer.from_pretrained(str(src.path), trust_remote_code=trust_remote_code)
    except Exception:  # a checkpoint without tokenizer files still serves token ids
        tok = None
    return model, tok
