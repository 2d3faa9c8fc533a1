"""`labtui bench`: engine figures as ratios against baselines measured in the same run.

1. decode tok/s of the engine vs transformers ``generate`` (fully resident,
   batch 1 and batch 8), on the same checkpoint;
2. stream offload at residency 0.5 with a link paced so that streaming a token's
   offloaded weights takes about as long as computing it: time per token with
   prefetch vs max(compute, bytes / link), compute measured again (resident) in
   each repetition, and vs the same run without prefetch; on sim also against
   the compute measured while the same copies run beside it (``_CopyLoad``: the
   simulated link's memcpy shares the CPU with the compute, a GPU's copy engines
   do not share the SMs);
3. ``set_residency`` move throughput as a fraction of the link bandwidth;
4. achieved bandwidth (bytes read per token x tokens/s), as gpt-fast reports it;
5. residency moves of llama-150m blocks on an 8 GB/s link (below this machine's
   memcpy), alone and while a second model decodes a closed workload: median over
   moves of achieved GB/s / link GB/s, with the link's queueing time.

Each timing is the median of a few repetitions after a warm-up; nothing here is
a pass/fail test (the machine may be shared and noisy).
"""

from __future__ import annotations

import json
import statistics
import sys
import threading
import time

import torch

from labtui.engine.api import Engine

DEFAULT_MODELS = ["llama-5m", "qwen3-10m", "llama-30m"]


def _median(xs):
    return statistics.median(xs) if xs else float("nan")


def _hf_decode_s(model, ids, n_new: int) -> tuple[float, float, int]:
    """(wall, process CPU) seconds of one ``generate``, and the fewest new tokens of a row.

    No ``min_new_tokens``: it adds a logits processor (EOS masked on every step, ~6%
    of a llama-5m step) that the engine does not run. Both sides stop at EOS the
    same way; ``decode_ratio`` reports a run that stopped before ``n_new``.
    """
    mask = torch.ones_like(ids)
    t0, c0 = time.perf_counter(), time.process_time()
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=mask, max_new_tokens=n_new, do_sample=False)
    if ids.is_cuda:
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
    new = out[:, ids.shape[1]:].tolist()
    fewest = min(next((k + 1 for k, t in enumerate(row) if t in eos), len(row)) for row in new)
    return wall, cpu, fewest


def _engine_decode_s(eng: Engine, m: str, prompt_ids, batch: int, n_new: int) -> tuple[float, float, int]:
    """(wall, process CPU) seconds of ``batch`` requests served together, and the
    fewest new tokens of a request."""
    t0, c0 = time.perf_counter(), time.process_time()
    reqs = [eng.submit(m, prompt_ids, max_new_tokens=n_new) for _ in range(batch)]
    for r in reqs:
        r.done.wait(600)
    return time.perf_counter() - t0, time.process_time() - c0, min(len(r.out_ids) for r in reqs)


def _rate(tokens: int, long: tuple, short: tuple) -> tuple[float, float]:
    """Tokens per wall second and per CPU second of the difference of two runs."""
    return tokens / max(1e-9, long[0] - short[0]), tokens / max(1e-9, long[1] - short[1])


def decode_ratio(eng: Engine, m: str, hf, prompt_ids, batch: int, n_new: int, reps: int) -> dict:
    """Engine vs transformers generate, interleaved so that load drift hits both.

    Decode rate = (n_new - 1) x batch / (T(n_new) - T(1)): prefill and request
    set-up cancel out, as in gpt-fast's per-token timing. T is wall time; the same
    rate per second of the process's CPU time is reported beside it (on a shared
    machine, CPU time is what other processes disturb least).
    """
    ids = torch.tensor([prompt_ids] * batch, device=hf.device)
    _hf_decode_s(hf, ids, 4)
    _engine_decode_s(eng, m, prompt_ids, batch, 4)
    n = (n_new - 1) * batch
    eng_r, hf_r, ratios, cpu_ratios = [], [], [], []
    fewest = n_new
    for _ in range(reps):
        el, es = _engine_decode_s(eng, m, prompt_ids, batch, n_new), _engine_decode_s(eng, m, prompt_ids, batch, 1)
        hl, hs = _hf_decode_s(hf, ids, n_new), _hf_decode_s(hf, ids, 1)
        fewest = min(fewest, el[2], hl[2])
        e, e_cpu = _rate(n, el, es)
        h, h_cpu = _rate(n, hl, hs)
        eng_r.append(e)
        hf_r.append(h)
        ratios.append(e / h)
        cpu_ratios.append(e_cpu / h_cpu)
    out = {
        "engine_tok_s": round(_median(eng_r), 2),
        "generate_tok_s": round(_median(hf_r), 2),
        "ratio": round(_median(ratios), 3),
        "ratio_min": round(min(ratios), 3),
        "ratio_max": round(max(ratios), 3),
        "cpu_ratio": round(_median(cpu_ratios), 3),
    }
    if fewest < n_new:  # a row met EOS: the rates above count tokens never made
        out["stopped_early_at"] = fewest
    return out


class _CopyLoad:
    """On sim: the simulated link's copies without the streaming, to measure what
    they cost the compute beside them. A thread copies the streamed blocks' bytes
    with the link's own single-threaded memcpy (transfer._engine_copy), one token's
    worth every ``period_s`` (the paced link's time for them), while the model runs
    fully resident.

    Why: on a GPU the copy engines do not slow the SMs, but on sim the copy runs
    on the other core of the same CPU and shares its caches and memory bus, and a
    resident decode measured with such copies beside it ran 20-40% slower here
    (llama-5m, 2 vCPUs). ``prefetch_vs_ideal`` holds that against the engine's
    overlap; ``prefetch_vs_ideal_while_copying`` is the overlap alone: the streamed
    time against max(this compute, bytes / link)."""

    def __init__(self, hm, period_s: float):
        from labtui.engine.devices import touch

        resident = hm.layers_for_fraction(0.5)  # the blocks bench_stream streams
        srcs = [hm.blocks[i].host_buf for i in range(hm.n_layers) if i not in resident]
        self._pairs = [(touch(torch.empty_like(b)), b) for b in srcs]
        self._period = period_s
        self._stop = threading.Event()

    def _run(self) -> None:
        from labtui.engine.transfer import _engine_copy

        nxt = time.perf_counter()
        while not self._stop.is_set():
            for dst, src in self._pairs:
                _engine_copy(dst, src)
            nxt += self._period
            self._stop.wait(max(0.0, nxt - time.perf_counter()))

    def __enter__(self):
        self._thread = threading.Thread(target=self._run, name="labtui-bench-copyload", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def bench_stream(eng: Engine, m: str, prompt: list[int], n_new: int, reps: int) -> dict:
    """Stream offload at residency 0.5, the link paced to match compute (on sim)."""
    hm = eng._models[m].hm
    eng.set_residency(m, 1.0, mode="stream")
    # the pacing's compute: the quickest of three resident runs, so that one busy
    # spell on a shared machine does not pace the link slow (every later ratio
    # would then be link-bound and read ~1.0 whatever the overlap)
    compute_s = min(_median(_gaps(eng.generate(m, prompt, max_new_tokens=n_new).token_times_s)) for _ in range(3))
    eng.set_residency(m, 0.5, mode="stream")
    streamed = hm.streamed_bytes_per_forward()
    if eng.device.simulated:
        # pace the simulated link so that streaming takes as long as computing
        link_gbps = streamed / compute_s / 1e9
        eng.set_device_options(link=round(link_gbps, 4))
    else:  # a real GPU: the link is what it is; take its measured peak
        from labtui.engine.devices import measure_h2d_gbps

        link_gbps = measure_h2d_gbps()
    transfer_s = streamed / (link_gbps * 1e9)

    def per_token() -> float:
        return _median(_gaps(eng.generate(m, prompt, max_new_tokens=n_new).token_times_s))

    # Interleaved repetitions: each one measures resident compute again right
    # before its streamed runs, so a busy spell on a shared machine slows the
    # ideal and the streamed time alike instead of only one of them.
    computes, per_tok, ratios = [], {True: [], False: []}, []
    contended, ratios_contended = [], []
    for _ in range(reps):
        eng.set_prefetch(m, True)
        eng.set_residency(m, 1.0, mode="stream")
        eng.generate(m, prompt, max_new_tokens=8)
        c = per_token()
        computes.append(c)
        if eng.device.simulated:
            with _CopyLoad(hm, transfer_s):
                contended.append(per_token())
        eng.set_residency(m, 0.5, mode="stream")
        for pf in (True, False):
            eng.set_prefetch(m, pf)
            eng.generate(m, prompt, max_new_tokens=8)
            per_tok[pf].append(per_token())
        ratios.append(per_tok[True][-1] / max(c, transfer_s))
        if contended:
            ratios_contended.append(per_tok[True][-1] / max(contended[-1], transfer_s))
    pf_s, nopf_s = _median(per_tok[True]), _median(per_tok[False])
    sim_bound = {}
    if contended:
        sim_bound = {
            "resident_compute_s_per_token_while_copying": round(_median(contended), 6),
            "copy_interference": round(_median([k / c for c, k in zip(computes, contended, strict=True)]), 3),
            "prefetch_vs_ideal_while_copying": round(_median(ratios_contended), 3),
        }
    return {
        **sim_bound,
        "resident_compute_s_per_token": round(_median(computes), 6),
        "pacing_compute_s_per_token": round(compute_s, 6),
        "streamed_bytes_per_token": streamed,
        "link_gbps": round(link_gbps, 4),
        "prefetch_s_per_token": round(pf_s, 6),
        "no_prefetch_s_per_token": round(nopf_s, 6),
        "prefetch_vs_ideal": round(_median(ratios), 3),
        "prefetch_vs_ideal_min": round(min(ratios), 3),
        "prefetch_vs_ideal_max": round(max(ratios), 3),
        "no_prefetch_vs_prefetch": round(_median([n / p for p, n in zip(per_tok[True], per_tok[False], strict=True)]), 3),
        "prefetch_depth": hm.prefetch_depth,
    }


def bench_model(name: str, quick: bool = False, device: str = "sim") -> dict:
    from transformers import AutoModelForCausalLM

    from labtui.models.zoo import path

    p = path(name)
    n_new = 32 if quick else 64
    reps = 2 if quick else 3
    out: dict = {"model": name}
    eng = Engine(device=device, memory_gib=8 if device == "sim" else None, link=1000.0, host_slowdown=1.0)
    try:
        m = eng.load(f"zoo:{name}")
        hm = eng._models[m].hm
        prompt = hm.tokenizer("The accelerator and the host share one link between them")["input_ids"]
        out["compute_threads"] = torch.get_num_threads()
        out["params"] = hm.params
        out["weight_bytes"] = hm.weight_bytes()
        out["n_layers"] = hm.n_layers
        # the same checkpoint, dtype and device as the engine's copy
        hf = AutoModelForCausalLM.from_pretrained(str(p), dtype=next(hm.model.parameters()).dtype).eval()
        hf.to(eng.device.accel)
        for b in (1, 8):
            out[f"batch{b}"] = decode_ratio(eng, m, hf, prompt, b, n_new, 3 if quick else 7)
        del hf
        # achieved bandwidth, batch 1 resident: bytes read per token x tokens/s
        bpt = hm.weight_bytes()
        out["achieved_gbps_batch1"] = round(bpt * out["batch1"]["engine_tok_s"] / 1e9, 3)
        out["bytes_per_token_batch1"] = bpt

        out["stream_half"] = bench_stream(eng, m, prompt, n_new, 3 if quick else 5)
        eng.set_prefetch(m, True)

        # --- move throughput as a fraction of the link ---------------------------
        eng.set_residency(m, 1.0, mode="stream")
        if eng.device.simulated:
            link = 2.0  # below host memcpy speed, so the pacing is what limits
            eng.set_device_options(link=link)
        else:
            from labtui.engine.devices import measure_h2d_gbps

            link = measure_h2d_gbps()
        seq0 = eng.snapshot().events_total
        for _ in range(reps):
            eng.set_residency(m, 0.0, mode="stream")
            eng.set_residency(m, 1.0, mode="stream")
        moves = [e for e in eng.events_since(seq0) if e.kind == "layer_move" and e.data["what"] == "weights"]
        moved_b = sum(e.data["bytes"] for e in moves)
        moved_s = sum(e.data["seconds"] for e in moves)
        out["moves"] = {
            "link_gbps": link,
            "bytes": moved_b,
            "seconds": round(moved_s, 4),
            "achieved_gbps": round(moved_b / moved_s / 1e9, 3),
            "fraction_of_link": round(moved_b / moved_s / 1e9 / link, 3),
        }
    finally:
        eng.close()
    return out


def bench_scheduler(quick: bool = False, device: str = "sim") -> dict:
    """Scheduler overhead per step with 4 models served at once (closed workloads)."""
    names = ["llama-5m", "qwen3-10m", "gpt2-10m", "phi3-15m"]
    with Engine(device=device, memory_gib=4 if device == "sim" else None, link="pcie4-x16", host_slowdown=2.0) as eng:
        for i, n in enumerate(names):
            eng.load(f"zoo:{n}", id=f"m{i}", residency=[1.0, 0.5, 0.5, 1.0][i], offload=["stream", "stream", "host", "stream"][i])
        for i in range(len(names)):
            eng.launch_workload(f"m{i}", kind="closed", concurrency=2, requests=4 if quick else 12,
                                prompt_tokens=16, max_new_tokens=24 if quick else 48)
        eng.wait_idle(600)
        st = dict(eng.sched_stats)
        med_ov = _median(list(eng._sched_samples))
    st["overhead_median_share"] = round(med_ov / max(1e-9, st["step_s"] / max(1, st["steps"])), 4)
    st["overhead_share"] = round(st["overhead_s"] / max(1e-9, st["step_s"] + st["overhead_s"]), 4)
    st["overhead_us_per_step"] = round(st["overhead_s"] / max(1, st["steps"]) * 1e6, 1)
    st["step_ms"] = round(st["step_s"] / max(1, st["steps"]) * 1e3, 3)
    st["models"] = names
    return st


def bench_preemption(name: str = "llama-30m", device: str = "sim") -> dict:
    """The four phases of a preemption at 200 generated tokens: weights=disk vs host."""
    out = {"model": name}
    with Engine(device=device, memory_gib=4 if device == "sim" else None, link="pcie4-x16") as eng:
        m = eng.load(f"zoo:{name}")
        prompt = eng._models[m].hm.tokenizer("Preemption cost is dominated by reloading weights")["input_ids"]
        for weights in ("disk", "host"):
            req = eng.submit(m, prompt, max_new_tokens=260)
            while len(req.out_ids) < 200 and not req.done.is_set():
                time.sleep(0.001)
            eng.preempt(m, kv="swap", weights=weights)
            rep = eng.resume(m)
            req.done.wait(600)
            total = rep.total_s
            out[weights] = {
                "kv_out_s": round(rep.kv_out_s, 5), "release_s": round(rep.release_s, 5),
                "reload_s": round(rep.reload_s, 5), "kv_in_s": round(rep.kv_in_s, 5),
                "kv_bytes": rep.kv_out_bytes, "weight_bytes": rep.reload_bytes,
                "reload_share": round(rep.reload_s / total, 4) if total else None,
                "kv_share": round((rep.kv_out_s + rep.kv_in_s) / total, 4) if total else None,
                "total_s": round(total, 5),
            }
    return out


def bench_moves(name: str = "llama-150m", link_gbps: float = 8.0, reps: int = 3, device: str = "sim") -> dict:
    """Residency moves (every block out, then in) as a fraction of the link, alone and
    with another model decoding on the same engine (its steps run between moves)."""
    out: dict = {"model": name, "link_gbps": link_gbps}
    with Engine(device=device, memory_gib=4 if device == "sim" else None, link=link_gbps, host_slowdown=1.0) as eng:
        if not eng.device.simulated:
            from labtui.engine.devices import measure_h2d_gbps

            link_gbps = out["link_gbps"] = round(measure_h2d_gbps(), 2)
        m = eng.load(f"zoo:{name}", id="mover")
        hm = eng._models[m].hm
        out["block_bytes"] = hm.blocks[0].nbytes
        eng.set_residency(m, 0.0, mode="stream")  # warm-up: buffers allocated, pages faulted
        eng.set_residency(m, 1.0, mode="stream")

        def moves() -> list[dict]:
            seq0 = eng.snapshot().events_total
            for _ in range(reps):
                for frac in (0.0, 1.0):
                    # block by block, so the other model's steps land between moves
                    for k in (range(hm.n_layers - 1, -1, -1) if frac == 0.0 else range(hm.n_layers)):
                        eng.set_residency(m, list(range(k)) if frac == 0.0 else list(range(k + 1)), mode="stream")
            return [e.data for e in eng.events_since(seq0) if e.kind == "layer_move" and e.data["what"] == "weights"
                    and e.data["reason"] == "residency"]

        def memcpy_gbps() -> float:
            # the ceiling: this machine's single-threaded memcpy of one block, now
            # (a shared machine's memcpy can fall below the link: then that limits)
            import numpy as np

            n = hm.blocks[0].nbytes
            a, b = np.ones(n, np.uint8), np.ones(n, np.uint8)
            xs = []
            for _ in range(15):
                t0 = time.perf_counter()
                np.copyto(b, a)
                xs.append(n / (time.perf_counter() - t0) / 1e9)
            return _median(xs)

        def summary(ev: list[dict], ceiling: float) -> dict:
            fr = [e["gbps"] / link_gbps for e in ev]
            return {
                "memcpy_gbps_same_run": round(ceiling, 3),
                "median_fraction_of_ceiling": round(_median([e["gbps"] / min(link_gbps, ceiling) for e in ev]), 3),
                "moves": len(ev),
                "median_fraction_of_link": round(_median(fr), 3),
                "p10_fraction_of_link": round(sorted(fr)[len(fr) // 10], 3) if fr else None,
                "median_gbps": round(_median([e["gbps"] for e in ev]), 3),
                "median_wait_ms": round(_median([e["wait_s"] for e in ev]) * 1e3, 4),
                "max_wait_ms": round(max(e["wait_s"] for e in ev) * 1e3, 4) if ev else None,
                "d2h": round(_median([e["gbps"] / link_gbps for e in ev if e["direction"] == "d2h"]), 3),
                "h2d": round(_median([e["gbps"] / link_gbps for e in ev if e["direction"] == "h2d"]), 3),
            }

        c0 = memcpy_gbps()
        ev = moves()
        out["alone"] = summary(ev, _median([c0, memcpy_gbps()]))
        o = eng.load("zoo:llama-5m", id="decoder", residency=0.5, offload="stream")
        eng.launch_workload(o, kind="closed", concurrency=2, requests=100000, prompt_tokens=16, max_new_tokens=64)
        time.sleep(0.5)
        steps0 = eng.sched_stats["steps"]
        c0 = memcpy_gbps()
        ev = moves()
        out["with_decode"] = summary(ev, _median([c0, memcpy_gbps()]))
        out["with_decode"]["decode_steps_during"] = eng.sched_stats["steps"] - steps0
    return out


def _gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in zip(times[1:], times[2:], strict=False)] or [times[-1]]


def run_bench(models: list[str], quick: bool = False, device: str = "sim") -> dict:
    from labtui.engine.devices import doctor_info

    info = doctor_info()
    return {
        "machine": {k: info[k] for k in ("platform", "cpu_count", "torch", "transformers", "host_memcpy_gbps")},
        "device": device,
        "models": [bench_model(n, quick, device) for n in models],
        "scheduler": bench_scheduler(quick, device),
        "preemption": bench_preemption("llama-30m", device),
        "moves": bench_moves(reps=2 if quick else 3, device=device),
    }


def cli_bench(args) -> int:
    from labtui.errors import LabError
    from labtui.models.zoo import names

    if getattr(args, "only", None) == "moves":
        r = bench_moves(reps=2 if args.quick else 3, device=args.device)
        if args.json:
            print(json.dumps({"moves": r}, indent=2))
        else:
            _print_moves(r)
        return 0
    models = args.models.split(",") if args.models else DEFAULT_MODELS
    for n in models:
        if n not in names():
            raise LabError(f"unknown zoo model '{n}'; accepted: {', '.join(names())}")
    result = run_bench(models, args.quick, args.device)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        _print_table(result)
    return 0


def _print_moves(m: dict) -> None:
    for k, label in (("alone", "alone"), ("with_decode", "while another model decodes")):
        s = m[k]
        print(f"moves of {m['model']} blocks on a {m['link_gbps']:g} GB/s link, {label}: median "
              f"{s['median_fraction_of_link']:.2f} of the link (p10 {s['p10_fraction_of_link']:.2f}, "
              f"{s['moves']} moves; {s['median_fraction_of_ceiling']:.2f} of min(link, memcpy {s['memcpy_gbps_same_run']:.1f} GB/s)), link queueing median {s['median_wait_ms']:.3f} ms, max {s['max_wait_ms']:.3f} ms")


def _print_table(r: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"labtui bench ({r['device']}, {r['machine']['cpu_count']} CPUs)")
    for c in ("model", "b1 engine/generate", "b8 engine/generate", "GB/s b1", "prefetch/ideal", "no-pf/pf", "moves/link"):
        t.add_column(c)
    for m in r["models"]:
        t.add_row(
            m["model"],
            f"{m['batch1']['engine_tok_s']:.0f}/{m['batch1']['generate_tok_s']:.0f} = {m['batch1']['ratio']:.2f}",
            f"{m['batch8']['engine_tok_s']:.0f}/{m['batch8']['generate_tok_s']:.0f} = {m['batch8']['ratio']:.2f}",
            f"{m['achieved_gbps_batch1']:.2f}",
            f"{m['stream_half']['prefetch_vs_ideal']:.2f}"
            + (f" ({m['stream_half']['prefetch_vs_ideal_while_copying']:.2f} copying)"
               if "prefetch_vs_ideal_while_copying" in m["stream_half"] else ""),
            f"{m['stream_half']['no_prefetch_vs_prefetch']:.2f}",
            f"{m['moves']['fraction_of_link']:.2f}",
        )
    c = Console(file=sys.stdout)
    c.print(t)
    s = r["scheduler"]
    _print_moves(r["moves"])
    c.print(f"scheduler overhead: {s['overhead_share']:.2%} of step time, median step {s['overhead_median_share']:.2%} ({s['overhead_us_per_step']} us per {s['step_ms']} ms step, 4 models)")
    for w in ("disk", "host"):
        p = r["preemption"][w]
        c.print(f"preempt {r['preemption']['model']} weights={w}: kv_out {p['kv_out_s']*1e3:.1f} ms, release {p['release_s']*1e3:.1f} ms, "
                f"reload {p['reload_s']*1e3:.1f} ms, kv_in {p['kv_in_s']*1e3:.1f} ms (reload {p['reload_share']:.1%})")
