"""Pipelined resume against the sequential reload: time from resume to next token.

``python -m labtui.engine.policies.resume_bench [--model zoo:llama-30m] [--reps 3]``

A request decodes, is preempted (KV swapped; weights to host RAM or released to
disk) and resumed, either sequentially (every resident block back, then decode) or
pipelined (the embedding and the first block back, the rest offloaded in
``start_mode``, residency climbing back between decode steps). Measured: seconds
from the resume command to the request's next token; printed as the ratio
pipelined / sequential, median over repetitions, same model, link and storage.

Profiles, all on sim (``--profiles``, comma-separated; default ``sim,study-a6000``):

- ``sim``: the lab's default sim device (pcie4-x16 link at 25 GB/s, host 4x slower);
- any hardware profile (labtui/engine/profiles.py, ``labtui profiles``), e.g.
  ``study-a6000``, the study's RTX A6000 workstation: the engine paces link,
  storage and host blocks by the time dilation measured at load (docs/profiles.md),
  so the ratios are the target's, emulated. Only weights on the host there: a disk
  reload under a profile carries the target's fixed storage cost (1.8 s) times
  the dilation (minutes on this CPU), the same for both resumes;
- ``study``: the study's proportions, hand-made (the study's hardware, docs/profiles.md: 8B FP16 weights over PCIe 4.0
  x16 take ~23x one decode step on the RTX A6000; host memory 204.8 GB/s vs the GPU's
  768 GB/s, so a host-executed block is ~3.8x slower). The link is paced so that
  moving this model's weights takes 23x its measured resident decode step.

The first token after a resume needs every block once; pipelining can only overlap
or avoid the weight transfer. Starting in ``host`` mode avoids it (the not-yet-back
blocks run where their weights are); ``stream`` overlaps it with compute. The
benchmark resumes with ``first_blocks = 0`` (only the embedding/head first): any
block brought back before the first token delays it by its transfer.
"""

from __future__ import annotations

import argparse
import statistics
import time

from labtui.engine import commands as C
from labtui.engine.api import Engine
from labtui.errors import LabError

STUDY_TRANSFER_OVER_STEP = 23.0  # 16 GB / 25 GB/s = 0.64 s vs 16 GB / 768 GB/s = 21-28 ms
STUDY_HOST_SLOWDOWN = 768 / 204.8


def _ttnt(eng: Engine, model: str, ids: list[int], weights: str, resume: C.Resume) -> tuple[float, list[int]]:
    req = eng.submit(model, ids, max_new_tokens=48)
    while len(req.out_ids) < 8:
        time.sleep(0.002)
    eng.preempt(model, kv="swap", weights=weights)
    n = len(req.out_ids)
    t0 = time.perf_counter()
    eng.execute(resume)
    while len(req.token_times) <= n and not req.done.is_set():
        time.sleep(0.0005)
    dt = req.token_times[n] - t0
    req.done.wait(120)
    eng.wait_idle(60)
    return dt, list(req.out_ids)


def _step_s(eng: Engine, model: str, ids: list[int]) -> float:
    r = eng.generate(model, ids, max_new_tokens=24)
    gaps = [b - a for a, b in zip(r.token_times_s[4:], r.token_times_s[5:], strict=False)]
    return statistics.median(gaps)


def run(model: str = "zoo:llama-30m", reps: int = 3, profiles=("sim", "study-a6000")) -> list[dict]:
    ids = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3]
    rows = []
    for prof in profiles:
        hw = prof not in ("sim", "study")  # a hardware profile (profiles.py)
        hs = STUDY_HOST_SLOWDOWN if prof == "study" else 4.0
        with Engine(device="sim", memory_gib=2, link="pcie4-x16", host_slowdown=hs,
                    profile=prof if hw else None) as eng:
            eng.load(model, id="m")
            want = eng.generate("m", ids, max_new_tokens=48).token_ids
            step = _step_s(eng, "m", ids)
            if prof == "study":
                wb = eng._models["m"].hm.weight_bytes()
                eng.set_device_options(link=wb / (STUDY_TRANSFER_OVER_STEP * step) / 1e9)
            gbps = eng.device.link.gbps
            pacing = getattr(eng._models["m"].hm, "pacing", None)
            if hw and pacing is not None:  # the profile's link and host, in this machine's clock
                gbps, hs = pacing.h2d_gbps, pacing.host_slowdown_factor
            for weights in (("host",) if hw else ("host", "disk")):
                seq, pipe = {}, {}
                for _ in range(reps):
                    t, out = _ttnt(eng, "m", ids, weights, C.Resume(model="m"))
                    assert out == want, "sequential resume changed the tokens"
                    seq.setdefault("x", []).append(t)
                    for start in ("stream", "host"):
                        t, out = _ttnt(eng, "m", ids, weights,
                                       C.Resume(model="m", pipelined=True, first_blocks=0, start_mode=start))
                        assert out == want, f"pipelined resume ({start}) changed the tokens"
                        pipe.setdefault(start, []).append(t)
                s = statistics.median(seq["x"])
                for start, ts in pipe.items():
                    p = statistics.median(ts)
                    rows.append({"profile": prof, "link_gbps": round(gbps, 3), "host_slowdown": round(hs, 2),
                                 "weights": weights, "start_mode": start, "step_ms": round(step * 1e3, 2),
                                 "sequential_ms": round(s * 1e3, 2), "pipelined_ms": round(p * 1e3, 2),
                                 "ratio": round(p / s, 3)})
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m labtui.engine.policies.resume_bench")
    ap.add_argument("--model", default="zoo:llama-30m")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--profiles", default="sim,study-a6000",
                    help="comma-separated: sim, study (hand-made proportions) or a hardware profile name")
    ap.add_argument("--out", help="also write the table (markdown) to this file")
    args = ap.parse_args(argv)
    profs = [p.strip() for p in args.profiles.split(",") if p.strip()]
    if args.reps < 1 or not profs:
        print("resume_bench: --reps must be >= 1 and --profiles must name at least one profile "
              "(sim, study or one of `labtui profiles`)")
        return 2
    try:
        rows = run(args.model, args.reps, tuple(profs))
    except LabError as e:
        print(f"resume_bench: {e}")
        return 2
    lines = [f"Time from resume to the next token, pipelined / sequential (median of {args.reps}, {args.model}, "
             "first_blocks = 0; `python -m labtui.engine.policies.resume_bench`). A hardware profile's rows are "
             "emulated on sim (time dilation, docs/profiles.md), never measured on that hardware.", "",
             "| profile | link GB/s | host slowdown | weights | start mode | resident step ms | "
             "sequential resume->token ms | pipelined ms | ratio |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['profile']} | {r['link_gbps']} | {r['host_slowdown']} | {r['weights']} | {r['start_mode']} | "
                     f"{r['step_ms']} | {r['sequential_ms']} | {r['pipelined_ms']} | {r['ratio']} |")
    best = {}
    for r in rows:
        if r["profile"] not in best or r["ratio"] < best[r["profile"]]["ratio"]:
            best[r["profile"]] = r
    lines.append("")
    for p, r in best.items():
        lines.append(f"- {p}: best pipelined resume {r['ratio']:.2f}x the sequential reload's time to the next token "
                     f"(weights {r['weights']}, start mode {r['start_mode']}; goal <= 0.25x"
                     f"{': met' if r['ratio'] <= 0.25 else ': not met'})")
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
