"""labtui stream offload vs accelerate's device_map CPU offload, same model, same residency.

accelerate (as `from_pretrained(device_map=...)` uses it) keeps the offloaded
blocks' weights on the CPU and copies them to the GPU inside each block's forward,
synchronously, with no prefetch. labtui streams the same blocks from pinned memory
with prefetch on a side stream. Both decode greedily from the same prompt.
Prints one JSON object. On a machine without a GPU it runs labtui on sim and
reports that accelerate has nothing to offload to (no comparison is claimed).
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def _tok_s(times: list[float]) -> float:
    gaps = [b - a for a, b in zip(times[1:], times[2:], strict=False)]
    return 1.0 / (sorted(gaps)[len(gaps) // 2]) if gaps else 0.0


def accelerate_decode_tok_s(path: str, residency: float, n_new: int) -> float:
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.from_pretrained(path)
    n = cfg.num_hidden_layers
    k = int(round(residency * n))
    probe = AutoModelForCausalLM.from_config(cfg)
    from labtui.engine.hosted import find_decoder_blocks

    blocks_name, _ = find_decoder_blocks(probe)
    device_map = {"": 0}
    for i in range(n):
        device_map[f"{blocks_name}.{i}"] = 0 if i < k else "cpu"
    del probe
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16, device_map=device_map).eval()
    ids = torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12]], device="cuda")
    times = []

    from transformers import LogitsProcessor, LogitsProcessorList

    class Clock(LogitsProcessor):
        def __call__(self, input_ids, scores):
            torch.cuda.synchronize()
            times.append(time.perf_counter())
            return scores

    with torch.inference_mode():
        model.generate(ids, max_new_tokens=8, min_new_tokens=8, do_sample=False)
        model.generate(ids, max_new_tokens=n_new, min_new_tokens=n_new, do_sample=False,
                       logits_processor=LogitsProcessorList([Clock()]))
    return _tok_s(times)


def labtui_decode_tok_s(source: str, residency: float, n_new: int, device: str) -> float:
    from labtui.engine import Engine

    with Engine(device=device, host_slowdown=1.0) as eng:
        m = eng.load(source, residency=residency, offload="stream", dtype="bfloat16" if device == "cuda" else None)
        eng.generate(m, [5, 6, 7, 8, 9, 10, 11, 12], max_new_tokens=8)
        res = eng.generate(m, [5, 6, 7, 8, 9, 10, 11, 12], max_new_tokens=n_new)
        return _tok_s(res.token_times_s)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="zoo:qwen3-400m")
    ap.add_argument("--residency", type=float, default=0.5)
    ap.add_argument("--tokens", type=int, default=64)
    a = ap.parse_args()
    from labtui.models.sources import resolve_source

    path = str(resolve_source(a.model).path)
    out = {"model": a.model, "residency": a.residency, "tokens": a.tokens}
    if torch.cuda.is_available():
        out["device"] = torch.cuda.get_device_name(0)
        out["labtui_stream_tok_s"] = round(labtui_decode_tok_s(a.model, a.residency, a.tokens, "cuda"), 2)
        out["accelerate_cpu_offload_tok_s"] = round(accelerate_decode_tok_s(path, a.residency, a.tokens), 2)
        out["speedup"] = round(out["labtui_stream_tok_s"] / out["accelerate_cpu_offload_tok_s"], 3)
    else:
        out["device"] = "sim (no GPU: accelerate has no accelerator to offload from; no comparison claimed)"
        out["labtui_stream_tok_s"] = round(labtui_decode_tok_s(a.model, a.residency, a.tokens, "sim"), 2)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
