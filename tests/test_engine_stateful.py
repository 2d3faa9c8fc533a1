"""Reliability under random actions: nothing lost, nothing corrupted.

A hypothesis state machine drives the public engine API with three tiny zoo
models on the simulated accelerator: load/unload, residency (fractions and
explicit layer sets, both offload modes), mode, prefetch, preempt/resume with
every KV and weights policy, workloads launched and cancelled, single greedy
requests, scheduling policy and device options (budget changes included, some of
which must be refused).

After every step:
- ``check_invariants()``: every unit in exactly one place, ledgers equal to the
  bytes of real tensors, device accounting equal to the ledgers, each model's
  admission reservation equal to what its admitted requests still need (projected
  KV + step workspace), nothing negative, used + reserved <= budget. Long
  generations, several models admitting at once and budgets tightened to just above
  what is used and reserved make admission reach the limit (requests wait);
- a refused command (LabError, one line) changed nothing and left a ``refused``
  event; an accepted one did what it says;
- every finished single request produced exactly the tokens the model gives for
  that prompt alone (transformers ``generate``, greedy), or was cancelled by an
  explicit unload; batched rows (left padding) and recompute after a KV drop may
  differ from batch-1 only by float rounding, so a differing token is accepted
  only where the reference's logits tie within ``TIE`` at the first difference;
- events are contiguous (no sequence number missing).

At the end of each example: the budget is raised, preempted models resumed, the
engine drained (no request stuck), and the events reconciled: every request has
exactly one ``request_finish``, at most one ``request_start``, workload counts
match, cancellations only where a command asked for them, no ``error`` event.

Profiles: the default (CI) runs a bounded number of examples; set LABTUI_LONG=1
(or HYPOTHESIS_PROFILE=long) for thousands, e.g.
``LABTUI_LONG=1 LABTUI_LONG_EXAMPLES=3000 nice -n 10 pytest tests/test_engine_stateful.py``.
"""

from __future__ import annotations

import functools
import json
import os
import re
import time
from collections import Counter

import pytest
import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    rule,
    run_state_machine_as_test,
)

from labtui.engine import Engine
from labtui.errors import LabError

NAMES = {"llama": "llama-5m", "qwen3": "qwen3-10m", "gpt2": "gpt2-10m"}
IDS = sorted(NAMES)
N_LAYERS = 6  # all three have 6 decoder blocks (checked on load)
PROMPTS = (
    "The lab moves layers between the host and the accelerator",
    "Preemption pauses a model",
    "tokens",
    "A workstation shares one accelerator among several language models while",
)
MAX_NEW = 6
LONG_NEW = (60, 150)  # long generations: the KV grows until the budget is reached
REF_NEW = max(LONG_NEW)  # the reference generates this many tokens once per prompt
NEW = st.one_of(st.integers(1, MAX_NEW), st.sampled_from(LONG_NEW))
TIE = 1e-4  # logit margin under which batched vs batch-1 rounding may flip a token
BUDGETS_GIB = (0.01, 0.03, 0.05, 0.08, 0.25)  # weights at full residency: 20, 40, 37 MB
FRACTIONS = (0.0, 1 / 6, 0.25, 0.5, 2 / 3, 1.0)

_HC = list(HealthCheck)
PROFILES = {
    "ci": settings(max_examples=15, stateful_step_count=12, deadline=None, suppress_health_check=_HC, print_blob=True),
    "long": settings(
        max_examples=int(os.environ.get("LABTUI_LONG_EXAMPLES", "2000")),
        stateful_step_count=int(os.environ.get("LABTUI_LONG_STEPS", "30")),
        deadline=None,
        suppress_health_check=_HC,
        print_blob=True,
    ),
}


def _profile() -> settings:
    if os.environ.get("LABTUI_LONG", "") not in ("", "0") or os.environ.get("HYPOTHESIS_PROFILE") == "long":
        return PROFILES["long"]
    return PROFILES["ci"]


# ------------------------------------------------------------------ oracle
@functools.cache
def _hf(name: str):
    from transformers import AutoModelForCausalLM

    from labtui.models.zoo import path

    return AutoModelForCausalLM.from_pretrained(str(path(name)), dtype=torch.float32).eval()


@functools.cache
def reference(name: str, prompt_ids: tuple[int, ...]) -> tuple[int, ...]:
    """Greedy tokens of ``name`` for this prompt, alone (batch 1), by transformers."""
    ids = torch.tensor([list(prompt_ids)])
    with torch.inference_mode():
        out = _hf(name).generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=REF_NEW, do_sample=False)
    return tuple(out[0, len(prompt_ids) :].tolist())


def _logits_after(name: str, ids: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        return _hf(name)(torch.tensor([ids])).logits[0, -1].float()


STATS: Counter = Counter()  # summed over examples, printed by the test (pytest -s)


def check_tokens(name: str, prompt_ids: list[int], n: int, got: list[int]) -> None:
    """``got`` must be the batch-1 greedy tokens, but for a near-tie flipped by rounding."""
    want = list(reference(name, tuple(prompt_ids))[:n])
    STATS["requests_checked"] += 1
    if got == want:
        return
    k = next((i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b), None)
    assert k is not None, f"{name}: same tokens but different length (got {got}, alone {want}): a stop was missed or invented"
    logits = _logits_after(name, list(prompt_ids) + want[:k])
    top2 = torch.topk(logits, 2).values
    margin = float(top2[0] - top2[1])
    lag = float(logits.max() - logits[got[k]])
    assert lag <= TIE, (
        f"{name}: token {k} is {got[k]} but {want[k]} alone (logit gap {lag:.3g}, top-2 margin {margin:.3g} > {TIE}): "
        f"got {got}, alone {want}, prompt {prompt_ids}"
    )
    STATS["near_tie_flips"] += 1


# ------------------------------------------------------------------ machine
REFUSED = object()


class EngineMachine(RuleBasedStateMachine):
    workloads = Bundle("workloads")
    models = Bundle("models")  # ids loaded at some point: rules aim mostly at real models
    MID = st.one_of(models, st.sampled_from(IDS))
    paused = Bundle("paused")  # ids preempted at some point: resume aims mostly at those

    def __init__(self):
        super().__init__()
        self.eng: Engine | None = None
        self.unloads = Counter()  # model id -> number of unloads so far
        self.singles: list[tuple] = []  # (request, model id, zoo name, unloads at submit)
        self.open: list[tuple] = []  # singles not finished yet
        self.wl: dict[str, tuple[str, int]] = {}  # workload -> (model id, unloads at launch)
        self.wl_cancelled: set[str] = set()
        self.seq = 0
        self.events: list = []
        self.steps = 0
        STATS["examples"] += 1

    # -- helpers -----------------------------------------------------------
    def _grab(self) -> dict:
        """Worker-side view of everything a command may change."""
        eng = self.eng

        def grab():
            models = {}
            for mid, ms in eng._models.items():
                hm = ms.hm
                if hm is None:
                    models[mid] = ("loading",)
                    continue
                led = hm.ledger()
                models[mid] = {
                    "placement": tuple(hm.placement),
                    "mode": hm.mode,
                    "prefetch": hm.prefetch,
                    "paused": ms.state in ("preempted", "preempting"),
                    "auto": ms.auto_preempted,
                    "weights": (led.accel_weights, led.host_weights, led.accel_buffers, hm.weights_released),
                    "name": ms.source.removeprefix("zoo:"),
                    "n_layers": hm.n_layers,
                }
            dev = eng.device
            return {
                "models": models,
                "policy": eng.policy.name,
                "device": (dev.budget_bytes, dev.link.label, dev.host_slowdown),
                "workloads": sorted(eng._workloads),
            }

        return eng.on_worker(grab)

    @staticmethod
    def _comparable(s: dict) -> dict:
        """What must not change on a refusal. Under the priority policy the scheduler
        itself resumes an auto-preempted model that has work (and may preempt others
        for it), so pause state and ledgers are then not the command's doing."""
        auto = s["policy"] == "priority" and any(m.get("auto") or m.get("paused") for m in s["models"].values() if isinstance(m, dict))
        out = dict(s)
        out["models"] = {
            mid: {k: v for k, v in m.items() if not (auto and k in ("paused", "auto", "weights"))} if isinstance(m, dict) else m
            for mid, m in s["models"].items()
        }
        return out

    def _call(self, what: str, fn, *, must_refuse: bool = False):
        """Run one API call; a refusal must be one line, leave a refused event and
        change nothing. Returns (result or REFUSED, state before, state after)."""
        before = self._grab()
        self._pull_events()
        seq0 = self.seq
        try:
            out = fn()
        except LabError as e:
            msg = str(e)
            assert msg and "\n" not in msg, f"{what}: refusal is not one line: {msg!r}"
            after = self._grab()
            assert self._comparable(after) == self._comparable(before), (
                f"{what} was refused ({msg}) but the state changed:\n before {before}\n after  {after}"
            )
            self._pull_events()
            assert any(e.kind == "refused" and e.seq > seq0 for e in self.events), f"{what}: refused without a refused event"
            STATS["refused"] += 1
            STATS[f"refused {what.split()[0]}"] += 1
            return REFUSED, before, after
        assert not must_refuse, f"{what} should have been refused"
        STATS["accepted"] += 1
        STATS[f"accepted {what.split()[0]}"] += 1
        return out, before, self._grab()

    def _pull_events(self) -> None:
        new = self.eng.events_since(self.seq)
        for e in new:
            assert e.seq == self.seq + 1, f"event sequence jumps from {self.seq} to {e.seq}: events lost"
            self.seq = e.seq
        self.events.extend(new)

    # -- setup -------------------------------------------------------------
    @initialize(
        target=models,
        memory=st.sampled_from((0.037, 0.05, 0.08, 0.25)),
        policy=st.sampled_from(("fcfs", "round_robin", "priority")),
        order=st.permutations(IDS),
        residency=st.tuples(st.sampled_from(FRACTIONS), st.sampled_from(FRACTIONS)),
        offload=st.tuples(st.sampled_from(("stream", "host")), st.sampled_from(("stream", "host"))),
        tight=st.sampled_from((None, 1.0, 1.5)),
    )
    def start(self, memory, policy, order, residency, offload, tight):
        self.eng = Engine(device="sim", memory_gib=memory, link=20.0, host_slowdown=1.0, policy=policy, seed=0)
        for mid, r, o in zip(order[:2], residency, offload, strict=True):
            self.load(mid, r, o, True, 2, 0)
        if tight is not None:
            # both models admit long requests at once on a budget just above their
            # weights: admission reaches the limit (some requests wait) at once
            self.tighten_budget(tight)
            for mid in order[:2]:
                for prompt in PROMPTS[:2]:
                    self._submit(mid, prompt, LONG_NEW[0])
        return multiple(*order[:2])

    # -- rules -------------------------------------------------------------
    @rule(
        target=models,
        mid=st.sampled_from(IDS),
        residency=st.sampled_from(FRACTIONS),
        offload=st.sampled_from(("stream", "host")),
        prefetch=st.booleans(),
        max_batch=st.sampled_from((1, 2, 4)),
        priority=st.integers(0, 2),
    )
    def load(self, mid, residency, offload, prefetch, max_batch, priority):
        already = mid in self._grab()["models"]
        out, _, after = self._call(
            f"load {mid}",
            lambda: self.eng.load(
                f"zoo:{NAMES[mid]}", id=mid, residency=residency, offload=offload, prefetch=prefetch,
                max_batch=max_batch, priority=priority,
            ),
            must_refuse=already,
        )
        if out is REFUSED:
            return multiple()
        m = after["models"][mid]
        assert m["n_layers"] == N_LAYERS
        k = int(round(residency * N_LAYERS + 1e-9))
        assert m["placement"] == tuple(["resident"] * k + [offload] * (N_LAYERS - k))
        assert m["prefetch"] == prefetch
        return mid

    @rule(mid=MID)
    def unload(self, mid):
        loaded = mid in self._grab()["models"]
        out, _, after = self._call(f"unload {mid}", lambda: self.eng.unload(mid), must_refuse=not loaded)
        if out is not REFUSED:
            self.unloads[mid] += 1
            assert mid not in after["models"]

    @rule(
        mid=MID,
        residency=st.one_of(st.sampled_from(FRACTIONS), st.lists(st.integers(0, N_LAYERS), unique=True, max_size=N_LAYERS)),
        mode=st.sampled_from((None, "stream", "host")),
    )
    def set_residency(self, mid, residency, mode):
        out, before, after = self._call(f"set_residency {mid} {residency} {mode}", lambda: self.eng.set_residency(mid, residency, mode=mode))
        if out is REFUSED:
            return
        m = after["models"][mid]
        new_mode = mode or before["models"][mid]["mode"]
        layers = set(range(int(round(residency * N_LAYERS + 1e-9)))) if isinstance(residency, float) else set(residency)
        assert m["placement"] == tuple("resident" if i in layers else new_mode for i in range(N_LAYERS))
        assert out["layers"] == sorted(layers)

    @rule(mid=MID, mode=st.sampled_from(("stream", "host")))
    def set_mode(self, mid, mode):
        out, before, after = self._call(f"set_mode {mid} {mode}", lambda: self.eng.set_mode(mid, mode))
        if out is REFUSED:
            return
        old = before["models"][mid]["placement"]
        assert after["models"][mid]["placement"] == tuple(p if p == "resident" else mode for p in old)

    @rule(mid=MID, prefetch=st.booleans())
    def set_prefetch(self, mid, prefetch):
        out, _, after = self._call(f"set_prefetch {mid} {prefetch}", lambda: self.eng.set_prefetch(mid, prefetch))
        if out is not REFUSED:
            assert after["models"][mid]["prefetch"] == prefetch

    @rule(target=paused, mid=MID, kv=st.sampled_from(("keep", "swap", "drop")), weights=st.sampled_from(("host", "disk")))
    def preempt(self, mid, kv, weights):
        out, before, after = self._call(f"preempt {mid} kv={kv} weights={weights}", lambda: self.eng.preempt(mid, kv=kv, weights=weights))
        if out is REFUSED:
            return multiple()
        assert out.kv == kv and out.weights == weights
        assert after["models"][mid]["placement"] == before["models"][mid]["placement"]
        STATS[f"preempt_{kv}_{weights}"] += 1
        if after["policy"] != "priority":  # the priority policy may resume it at once
            aw, _, ab, released = after["models"][mid]["weights"]
            assert aw == 0 and ab == 0, "a preempted model still holds accelerator weights"
            assert released == (weights == "disk")
        return mid

    @rule(mid=st.one_of(paused, MID))
    def resume(self, mid):
        out, before, after = self._call(f"resume {mid}", lambda: self.eng.resume(mid))
        if out is REFUSED:
            return
        assert out.complete
        assert after["models"][mid]["placement"] == before["models"][mid]["placement"]
        STATS["resumed"] += 1

    @rule(
        target=workloads,
        mid=MID,
        kind=st.sampled_from(("closed", "poisson")),
        concurrency=st.integers(1, 2),
        requests=st.integers(1, 3),
        prompt_tokens=st.integers(1, 16),
        max_new_tokens=NEW,
        greedy=st.booleans(),
    )
    def launch_workload(self, mid, kind, concurrency, requests, prompt_tokens, max_new_tokens, greedy):
        kw = dict(kind=kind, concurrency=concurrency, requests=requests, prompt_tokens=prompt_tokens,
                  max_new_tokens=max_new_tokens, greedy=greedy, seed=7)
        if kind == "poisson":
            kw["rate_per_s"] = 50.0
        out, _, _ = self._call(f"launch_workload {mid}", lambda: self.eng.launch_workload(mid, **kw))
        if out is REFUSED:
            return "no-such-workload"
        self.wl[out] = (mid, self.unloads[mid])
        STATS["workloads"] += 1
        return out

    @rule(wid=st.one_of(workloads, st.just("nope")))
    def cancel_workload(self, wid):
        out, _, _ = self._call(f"cancel_workload {wid}", lambda: self.eng.cancel_workload(wid), must_refuse=wid not in self.wl)
        if out is not REFUSED:
            self.wl_cancelled.add(wid)

    @rule(mid=MID, prompts=st.lists(st.tuples(st.sampled_from(PROMPTS), NEW), min_size=1, max_size=3))
    def submit(self, mid, prompts):
        """Single greedy requests (several at once share the model's batch)."""
        for prompt, n in prompts:
            self._submit(mid, prompt, n)

    def _submit(self, mid, prompt, n):
        try:
            req = self.eng.submit(mid, prompt, max_new_tokens=n)
        except LabError as e:
            assert "\n" not in str(e)
            # refused: no such model, or a request that could never be admitted: it
            # says what it needs and the most that can be free, and the first is larger
            m = re.search(r"needs ([\d.]+ \w+) on the accelerator .* at most ([\d.]+ \w+) of", str(e))
            never = m is not None and _bytes(m.group(1)) > _bytes(m.group(2))
            assert mid not in self._grab()["models"] or never, str(e)
            STATS["refused never-fits"] += never
            return
        entry = (req, mid, NAMES[mid], self.unloads[mid])
        self.singles.append(entry)
        self.open.append(entry)
        STATS["submitted"] += 1

    @rule(policy=st.sampled_from(("fcfs", "round_robin", "priority")))
    def set_policy(self, policy):
        out, _, after = self._call(f"set_policy {policy}", lambda: self.eng.set_policy(policy))
        assert out is not REFUSED and after["policy"] == policy

    @rule(
        memory=st.sampled_from((None, None, *BUDGETS_GIB, 0.0)),
        link=st.sampled_from((None, None, None, "pcie3-x16", "pcie4-x16", 8.0, 40.0, "pcie9-x99")),
        host_slowdown=st.sampled_from((None, None, None, None, 1.0, 2.0, 1.5, 0.5)),
    )
    def set_device_options(self, memory, link, host_slowdown):
        kw = {k: v for k, v in dict(memory_gib=memory, link=link, host_slowdown=host_slowdown).items() if v is not None}
        bad = memory == 0.0 or link == "pcie9-x99" or host_slowdown == 0.5
        out, before, after = self._call(f"set_device_options {kw}", lambda: self.eng.set_device_options(**kw), must_refuse=bad)
        if out is REFUSED:
            return
        budget, label, slow = after["device"]
        if memory is not None:
            assert budget == int(memory * 1024**3)
        if host_slowdown is not None:
            assert slow == host_slowdown

    @rule(headroom_mib=st.sampled_from((0.25, 1.0, 2.0)))
    def tighten_budget(self, headroom_mib):
        """A budget just above what is used and reserved now: admission must hold it
        (requests wait) while the KV of admitted ones grows."""
        dev = self.eng.device
        want = dev.used + dev.reserved + int(headroom_mib * 1024**2)
        out, _, after = self._call("tighten_budget", lambda: self.eng.set_device_options(memory_gib=want / 1024**3))
        if out is not REFUSED:
            STATS["tightened"] += 1

    @rule(seconds=st.sampled_from((0.01, 0.1, 0.3)))
    def let_it_run(self, seconds):
        time.sleep(seconds)

    # -- invariants ----------------------------------------------------------
    @invariant()
    def engine_consistent(self):
        if self.eng is None:
            return
        self.steps += 1
        self.eng.check_invariants()
        self._pull_events()
        errors = [e.data for e in self.events if e.kind == "error"]
        assert not errors, f"internal errors: {errors}"

    @invariant()
    def finished_requests_are_right(self):
        still = []
        for entry in self.open:
            req, mid, name, unloads_then = entry
            if not req.done.is_set():
                still.append(entry)
                continue
            self._check_single(entry)
        self.open = still

    def _check_single(self, entry) -> None:
        req, mid, name, unloads_then = entry
        if req.state == "done":
            assert req.finish_reason in ("eos", "length"), f"{req.id}: finished with reason {req.finish_reason}"
            check_tokens(name, req.prompt_ids, req.max_new_tokens, req.out_ids)
        elif req.state == "cancelled":
            assert req.finish_reason == "unloaded" and self.unloads[mid] > unloads_then, (
                f"{req.id} on {mid} was cancelled ({req.finish_reason}) though no command cancelled it"
            )
            STATS["cancelled_by_unload"] += 1
        else:
            raise AssertionError(f"{req.id} on {mid} ended {req.state}: {req.finish_reason} {req.error}")

    # -- end of an example ---------------------------------------------------
    def teardown(self):
        eng = self.eng
        if eng is None:
            return
        try:
            self._drain_and_reconcile()
        finally:
            eng.close()

    def _drain_and_reconcile(self) -> None:
        eng = self.eng
        eng.set_device_options(memory_gib=1.0)
        for mid, m in self._grab()["models"].items():
            if isinstance(m, dict) and m["paused"]:
                try:
                    eng.resume(mid)
                except LabError:  # resumed by the priority policy meanwhile
                    pass
        if not eng.wait_idle(60):
            snap = eng.snapshot()
            raise AssertionError(f"requests stuck: {[(m.id, m.state, m.queued, m.running) for m in snap.models]}")
        eng.check_invariants()
        self._pull_events()
        self.finished_requests_are_right()
        assert not self.open, f"requests never finished: {[e[0].id for e in self.open]}"

        finishes = [e.data for e in self.events if e.kind == "request_finish"]
        starts = Counter(e.data["request"] for e in self.events if e.kind == "request_start")
        fin = Counter(d["request"] for d in finishes)
        dup = [r for r, c in fin.items() if c > 1] + [r for r, c in starts.items() if c > 1]
        assert not dup, f"requests with more than one start or finish event: {dup}"
        assert set(starts) <= set(fin), f"started, never finished: {set(starts) - set(fin)}"
        by_id = {d["request"]: d for d in finishes}
        for req, mid, _, _ in self.singles:
            d = by_id.get(req.id)
            assert d is not None, f"{req.id} has no request_finish event: {req.state} {req.finish_reason}"
            assert d["new_tokens"] == len(req.out_ids) and d["digest"] == req.digest()
            assert d["model"] == mid
        # workloads: every request they submitted has exactly one outcome
        summary = eng.summary()["workloads"]
        for wid, (mid, unloads_then) in self.wl.items():
            mine = [d for d in finishes if d.get("workload") == wid]
            w = summary[wid]
            assert len(mine) == w["submitted"], f"{wid}: {w['submitted']} submitted, {len(mine)} request_finish events"
            done = [d for d in mine if d["reason"] in ("eos", "length")]
            assert len(done) == w["completed"] and len(mine) - len(done) == w["cancelled"], (wid, w, mine)
            for d in mine:
                if d["reason"] == "cancelled":
                    assert wid in self.wl_cancelled, f"{d['request']} of {wid} cancelled without cancel_workload"
                elif d["reason"] == "unloaded":
                    assert self.unloads[mid] > unloads_then, f"{d['request']} of {wid} 'unloaded' but {mid} was not"
                else:
                    assert d["reason"] in ("eos", "length"), f"{d['request']} of {wid}: reason {d['reason']}"
            assert w["submitted"] == w["total"] or wid in self.wl_cancelled or self.unloads[mid] > unloads_then
        STATS["events"] += len(self.events)
        STATS["admission_waits"] += sum(e.kind == "admission_wait" for e in self.events)
        STATS["finished_events"] += len(finishes)
        STATS["steps"] += self.steps
        if _profile() is PROFILES["long"] and STATS["examples"] % 20 == 0:  # progress of a long run
            print("state machine so far:", json.dumps(dict(STATS), sort_keys=True), flush=True)


def test_engine_state_machine():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two shared cores: intra-op threads only contend
    t0 = time.perf_counter()
    STATS.clear()
    try:
        run_state_machine_as_test(EngineMachine, settings=_profile())
    finally:
        torch.set_num_threads(threads)
        STATS["seconds"] = round(time.perf_counter() - t0, 1)
        print("\nstate machine:", json.dumps(dict(STATS), sort_keys=True))


if __name__ == "__main__":  # pragma: no cover
    pytest.main([__file__, "-s"])


def test_field_level_refusals_leave_a_refused_event():
    """docs/engine-api.md: bad input raises LabError *and* leaves a ``refused`` event,
    also when the value is refused by the command's own field checks (before it is
    queued), as the lab's event log and a run's events.jsonl rely on."""
    with Engine(device="sim", memory_gib=0.05, link=20.0) as eng:
        calls = [
            lambda: eng.set_device_options(host_slowdown=0.5),
            lambda: eng.set_device_options(memory_gib=0),
            lambda: eng.set_residency("m", 1.5),
            lambda: eng.preempt("m", kv="lose"),
            lambda: eng.launch_workload("m", kind="poisson"),
        ]
        for i, call in enumerate(calls):
            with pytest.raises(LabError):
                call()
            refused = [e for e in eng.events_since(0) if e.kind == "refused"]
            assert len(refused) == i + 1, f"call {i}: no refused event"
            assert "\n" not in refused[-1].data["reason"]


def test_cancelled_workload_counts_reconcile_with_its_requests():
    """Found by the state machine: cancelling a workload set its ``submitted`` to the
    total, so a summary claimed requests that were never submitted (submitted !=
    completed + cancelled, and != its request_finish events)."""
    with Engine(device="sim", memory_gib=0.1, link=20.0) as eng:
        eng.load("zoo:llama-5m", id="m")
        wid = eng.launch_workload("m", kind="closed", concurrency=1, requests=5, prompt_tokens=4, max_new_tokens=64)
        while not any(e.kind == "request_start" for e in eng.events_since(0)):
            time.sleep(0.005)
        eng.cancel_workload(wid)
        assert eng.wait_idle(30)
        w = eng.summary()["workloads"][wid]
        fin = [e for e in eng.events_since(0) if e.kind == "request_finish" and e.data["workload"] == wid]
        assert w["submitted"] == len(fin) == w["completed"] + w["cancelled"] < w["total"], (w, len(fin))
        assert next(x for x in eng.snapshot().workloads if x.id == wid).done


def test_refused_residency_under_priority_preempts_nobody():
    """A refusal changes nothing, also under the priority policy, which makes room
    for a placement by preempting idle or lower-priority models: when even that
    would not make it fit, nobody may be left preempted by the refused command."""
    with Engine(device="sim", memory_gib=0.037, link=20.0, policy="priority") as eng:
        eng.load("zoo:llama-5m", id="a", residency=1.0)  # 20 MB, idle
        eng.load("zoo:qwen3-10m", id="b", residency=0.0, offload="host", priority=1)  # 5 MB
        assert eng.wait_idle(10)
        with pytest.raises(LabError, match="needs .* on the accelerator"):
            eng.set_residency("b", 1.0)  # 40 MB: above the 39.7 MB budget whatever happens
        assert eng.wait_idle(10)
        assert eng.snapshot().model("a").state == "idle", "the refused command preempted a"
        assert not [e for e in eng.events_since(0) if e.kind == "preempt"]
        eng.check_invariants()


def test_prefetch_that_does_not_fit_is_refused():
    """Found by the state machine: turning prefetch on grows the stream window (up to
    prefetch_depth streamed blocks on the accelerator), but the check compared the
    new placement with a ledger that already counted the new window, so it always
    passed and the budget was exceeded (31.0 MiB > 30.7 MiB)."""
    with Engine(device="sim", memory_gib=0.03, link=20.0) as eng:
        eng.load("zoo:gpt2-10m", id="g", residency=0.0, offload="stream", prefetch=False)
        eng.set_residency("g", [0])
        used = eng.snapshot().device.used_bytes
        with pytest.raises(LabError, match="prefetch buffers for g needs"):
            eng.set_prefetch("g", True)
        eng.check_invariants()
        assert eng.wait_idle(10)
        snap = eng.snapshot()
        assert snap.model("g").prefetch is False and snap.device.used_bytes == used
        eng.set_device_options(memory_gib=0.05)
        eng.set_prefetch("g", True)  # fits now
        eng.check_invariants()
        assert eng.snapshot().model("g").prefetch is True


def _bytes(text: str) -> float:
    """'27.6 MiB' -> bytes (as fmt_bytes writes them)."""
    num, unit = text.split()
    return float(num) * {"B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3, "TiB": 1024**4}[unit]
