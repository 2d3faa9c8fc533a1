"""Events: what happened, in order, for logs, bundles and the TUI.

Every event has a sequence number, a time (seconds since engine start), a kind
and a flat JSON-able payload. Kinds and their payload keys:

- ``load`` / ``unload``: model, source, family, params, n_layers, seconds (load: also
  weight_bytes, profile, dilation: None without a hardware profile, dilation.py)
- ``layer_move``: model, layer, what (weights|kv), direction (h2d|d2h), bytes,
  seconds, gbps, reason (residency|preempt|resume|mode)
- ``residency``: model, residency, resident_layers (list), mode
- ``mode`` / ``prefetch``: model, mode / prefetch
- ``preempt``: model, kv, weights, kv_out_s, kv_out_bytes, release_s,
  release_bytes, freed_bytes, at_tokens
- ``resume``: model, the full PhaseReport fields (all four phases + recompute)
- ``request_start``: model, request, workload, prompt_tokens, queue_s
- ``request_finish``: model, request, workload, prompt_tokens, new_tokens,
  digest (sha1 of the generated token ids), ttft_s, tpot_s, e2e_s, queue_s,
  decode_s (its share of its decode steps' time: summed, the model's decode time), reason
  (eos|length; cancelled: its workload was cancelled; unloaded: its model was;
  failed: its step raised, see the ``error`` event; engine closed). Every request
  submitted to the engine ends with exactly one request_finish.
- ``workload_start`` / ``workload_done`` / ``workload_cancel``: workload, model, ...
- ``policy_decision``: policy, model, action, ok, reason, refused, command (an
  action a scheduling policy took or had refused; docs/policies.md)
- ``climb_done``: model, residency, mode (a pipelined resume is back in place)
- ``policy``: policy;  ``device_options``: link, link_gbps, memory_gib, host_slowdown
- ``note``: text
- ``refused``: command (action), reason (the one-line message)
- ``error``: where, message (an internal failure caught by the worker)
- ``command``: the executed command as a dict (the recording)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)  # slots: the engine keeps 10,000 of them
class Event:
    seq: int
    t: float
    kind: str
    data: dict[str, Any]

    @property
    def model(self) -> str | None:
        return self.data.get("model")

    def to_json(self) -> str:
        return json.dumps({"seq": self.seq, "t": round(self.t, 6), "kind": self.kind, **self.data})
