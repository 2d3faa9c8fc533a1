"""Faults, each reproduced and its outcome asserted: nothing lost, nothing corrupted.

- a damaged checkpoint (truncated, corrupt header; also damaged while its model is
  preempted with weights=disk): a one-line refusal, the other models keep serving;
- `labtui run` killed (SIGKILL) mid-run: every complete line of events.jsonl and
  metrics.csv parses, and `labtui report` accepts the partial bundle, saying what
  is missing;
- Ctrl-C (SIGINT) or SIGTERM to `labtui run`: exit 130 / 143, the bundle finished, summary marked
  interrupted;
- an unwritable --out (under a regular file; a read-only mount): one line, exit 2;
  the disk filling up mid-run: the run stops with one line, no traceback;
- an accelerator out-of-memory inside a step (injected: torch.cuda.OutOfMemoryError
  exists on CPU builds): reported as an error event, the failed requests end
  ``failed`` (none lost), the model's residency is lowered, other models serve.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from labtui.engine import Engine
from labtui.errors import LabError

PROMPT = "Faults must not lose requests or corrupt the lab"

SCENARIO = """
[lab]
name = "fault"
timeout_s = 120

[device]
kind = "sim"
memory_gib = 0.5
link = 20.0
host_slowdown = 1.0

[[models]]
id = "a"
source = "zoo:llama-5m"
residency = 0.5

[[workloads]]
model = "a"
kind = "closed"
concurrency = 2
requests = 400
prompt_tokens = 8
max_new_tokens = 8

[quick]
requests = 400
"""


# ------------------------------------------------------------------ helpers
def _copy_ckpt(zoo_path, tmp_path: Path, name: str = "llama-5m") -> Path:
    dst = tmp_path / name
    shutil.copytree(zoo_path(name), dst)
    return dst


def _tokens(eng: Engine, mid: str, n: int = 8) -> list[int]:
    ids = eng._models[mid].hm.tokenizer(PROMPT)["input_ids"]
    return eng.generate(mid, ids, max_new_tokens=n, timeout=60).token_ids


def _damage(f: Path, how: str) -> None:
    data = f.read_bytes()
    if how == "truncated":
        f.write_bytes(data[: len(data) // 2])
    elif how == "corrupt":  # a header that is not JSON, file size unchanged
        f.write_bytes(data[:8] + b"\xff" * 64 + data[72:])
    else:  # "empty"
        f.write_bytes(b"")


@pytest.fixture(scope="module")
def eng():
    e = Engine(device="sim", memory_gib=0.5, link=20.0, host_slowdown=1.0)
    e.load("zoo:qwen3-10m", id="other", residency=0.5)
    yield e
    e.close()


@pytest.fixture(scope="module")
def other_tokens(eng):
    return _tokens(eng, "other")


# ---------------------------------------------------------- checkpoints
@pytest.mark.parametrize("how", ["truncated", "corrupt", "empty"])
def test_damaged_checkpoint_is_refused_and_others_keep_serving(eng, other_tokens, zoo_path, tmp_path, how):
    ck = _copy_ckpt(zoo_path, tmp_path)
    _damage(ck / "model.safetensors", how)
    assert eng.wait_idle(30)  # and a fresh snapshot
    used = eng.snapshot().device.used_bytes
    with pytest.raises(LabError) as ei:
        eng.load(str(ck), id="broken")
    msg = str(ei.value)
    assert "\n" not in msg and "model.safetensors" in msg, msg
    assert "broken" not in [m.id for m in eng.snapshot().models]
    assert eng.wait_idle(30)
    assert eng.snapshot().device.used_bytes == used
    assert any(e.kind == "refused" and e.data["command"] == "load" for e in eng.events_since(0))
    assert _tokens(eng, "other") == other_tokens
    eng.check_invariants()


def test_checkpoint_damaged_while_preempted_to_disk(eng, other_tokens, zoo_path, tmp_path):
    """weights=disk re-reads the checkpoint on resume. If it was damaged meanwhile,
    the resume must fail cleanly (the model stays preempted, nothing half-loaded),
    and once the file is repaired the resume must work with the same tokens."""
    ck = _copy_ckpt(zoo_path, tmp_path)
    f = ck / "model.safetensors"
    good = f.read_bytes()
    eng.load(str(ck), id="victim", residency=0.5)
    want = _tokens(eng, "victim")
    eng.preempt("victim", kv="drop", weights="disk")
    _damage(f, "truncated")
    with pytest.raises(Exception) as ei:  # noqa: PT011 - LabError or an internal error event
        eng.resume("victim")
    assert "\n" not in str(ei.value)
    assert eng.wait_idle(30)  # and a fresh snapshot
    snap = eng.snapshot()
    assert snap.model("victim").state == "preempted"
    eng.check_invariants()
    assert _tokens(eng, "other") == other_tokens
    f.write_bytes(good)
    eng.resume("victim")
    eng.check_invariants()
    assert _tokens(eng, "victim") == want
    eng.unload("victim")


# ------------------------------------------------------------------ OOM
@pytest.mark.parametrize("where", ["prefill", "decode"])
def test_oom_in_a_step_fails_its_requests_lowers_residency_others_serve(eng, other_tokens, where):
    eng.load("zoo:llama-5m", id="oom", residency=1.0)
    ids = eng._models["oom"].hm.tokenizer(PROMPT)["input_ids"]
    want = eng.generate("oom", ids, max_new_tokens=24).token_ids
    hm = eng._models["oom"].hm
    # the head runs in every forward (prefill, full decode, the direct one-token step)
    head = hm.model.lm_head
    real = head.forward
    state = {"armed": where == "prefill", "fired": 0}

    def forward(*a, **kw):
        if state["armed"]:
            state["armed"] = False
            state["fired"] += 1
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB (injected)")
        return real(*a, **kw)

    head.forward = forward
    try:
        seq0 = eng.snapshot().events_total
        req = eng.submit("oom", ids, max_new_tokens=400)  # long: the OOM lands mid-generation
        if where == "decode":
            while len(req.out_ids) < 3 and not req.done.is_set():
                time.sleep(0.001)
            state["armed"] = True
        assert req.done.wait(30), "the request hit by the OOM was lost (never finished)"
        assert state["fired"] == 1
        assert req.state == "failed" and req.finish_reason == "failed"
        assert eng.wait_idle(30)  # the fallback has run; a fresh snapshot
        evs = eng.events_since(seq0)
        err = [e for e in evs if e.kind == "error"]
        assert len(err) == 1 and err[0].data["oom"] is True and err[0].data["where"] == "step oom"
        assert "out of memory" in err[0].data["message"] and "\n" not in err[0].data["message"]
        fin = [e for e in evs if e.kind == "request_finish" and e.data["request"] == req.id]
        assert len(fin) == 1 and fin[0].data["reason"] == "failed"
        res = [e for e in evs if e.kind == "residency" and e.model == "oom"]
        assert res and res[-1].data["resident_layers"] == [0, 1, 2, 3, 4], "residency not lowered after OOM"
        assert eng.snapshot().model("oom").resident_layers == 5
        eng.check_invariants()
        # others keep serving, and the model itself serves again at its lower residency
        assert _tokens(eng, "other") == other_tokens
        assert eng.generate("oom", ids, max_new_tokens=24).token_ids == want
        assert eng.wait_idle(30)
        eng.check_invariants()
    finally:
        head.forward = real
        eng.unload("oom")


def test_a_snapshot_that_fails_to_build_is_an_error_event_not_a_dead_worker(monkeypatch):
    """Building a snapshot runs on the worker thread after every tick; one that
    raises must be reported and retried, not end the thread (the lab would show
    a stalled engine forever)."""
    eng = Engine(device="sim", memory_gib=0.5, link=20.0, host_slowdown=1.0)
    try:
        eng.load("zoo:llama-5m", id="a")
        real, failed = eng._build_snapshot, []

        def flaky():
            if not failed:
                failed.append(1)
                raise RuntimeError("snapshot broke once")
            return real()

        monkeypatch.setattr(eng, "_build_snapshot", flaky)
        r = eng.submit("a", [5, 6, 7], max_new_tokens=400)  # spans many snapshot periods
        assert r.done.wait(60) and r.state == "done", r.state
        assert failed, "the failing snapshot was never built"
        errs = [e.data for e in eng.events_since(0) if e.kind == "error"]
        assert any(d["where"] == "snapshot" and "snapshot broke once" in d["message"] for d in errs), errs
        assert eng.fresh_snapshot().model("a").tokens_generated >= 400
        assert len(eng.generate("a", [5, 6], max_new_tokens=3).token_ids) == 3  # still serving
    finally:
        eng.close()


# ---------------------------------------------------------------- close
def test_closing_the_engine_ends_every_request_with_an_event():
    """Ctrl-C ends a run by closing its engine: requests still running or queued
    then must end ``cancelled`` (reason "engine closed") with a request_finish
    event, so a stopped run's events still reconcile, and no caller waits forever."""
    eng = Engine(device="sim", memory_gib=0.5, link=20.0, host_slowdown=1.0)
    eng.load("zoo:llama-5m", id="a", max_batch=2)
    running = [eng.submit("a", [5, 6, 7, 8], max_new_tokens=5000) for _ in range(3)]
    while not running[0].out_ids:
        time.sleep(0.005)
    late = [eng.submit("a", [9, 10], max_new_tokens=50) for _ in range(5)]  # some not even queued yet
    eng.close()
    for r in running + late:
        assert r.done.wait(10), f"{r.id} never ended after close"
        assert r.state == "cancelled" and r.finish_reason == "engine closed", (r.id, r.state, r.finish_reason)
    evs = eng.events_since(0)
    fin = [e.data["request"] for e in evs if e.kind == "request_finish"]
    assert sorted(fin) == sorted(r.id for r in running + late), "a request ended without its request_finish event"
    starts = {e.data["request"] for e in evs if e.kind == "request_start"}
    assert starts <= set(fin)
    with pytest.raises(LabError, match="closed"):  # not queued to a worker that is gone
        eng.submit("a", [5, 6], max_new_tokens=2)


def test_request_accepted_just_before_its_model_is_unloaded_is_cancelled_with_an_event():
    """submit() accepted the request, then an unload was applied before the worker
    picked the request up: it must end like any request of an unloaded model
    (cancelled, reason "unloaded", one request_finish), not fail without a trace."""
    import threading

    from labtui.engine import commands as C

    with Engine(device="sim", memory_gib=0.5, link=20.0) as eng:
        eng.load("zoo:llama-5m", id="a")
        busy = threading.Thread(target=eng.on_worker, args=(lambda: time.sleep(0.5),))
        busy.start()  # the worker is inside a step: what follows is applied together
        time.sleep(0.1)
        req = eng.submit("a", [5, 6, 7], max_new_tokens=4)
        fut = eng.submit_command(C.Unload(model="a"))
        busy.join()
        fut.result(10)
        assert req.done.wait(10)
        assert (req.state, req.finish_reason) == ("cancelled", "unloaded"), (req.state, req.finish_reason, req.error)
        fin = [e for e in eng.events_since(0) if e.kind == "request_finish" and e.data["request"] == req.id]
        assert len(fin) == 1 and fin[0].data["reason"] == "unloaded"


def test_close_ends_queued_commands_with_a_lab_error_promptly():
    """close() while a slow command runs and another is queued behind it: the queued
    one's future raises LabError("the engine is closed") at once (its caller does not
    wait for the slow one, nor forever), the slow one completes, and nothing can be
    queued afterwards."""
    import threading

    from labtui.engine import commands as C

    eng = Engine(device="sim", memory_gib=0.5, link=20.0)
    try:
        eng.load("zoo:llama-5m", id="a")
        started = threading.Event()

        def slow():
            started.set()
            time.sleep(1.5)
            return "slow done"

        slow_fut = eng.submit_command(C.Note(text="x"))  # a real command ahead of the slow one
        busy = threading.Thread(target=lambda: eng.on_worker(slow, timeout=30))
        busy.start()
        assert started.wait(10)
        queued = eng.submit_command(C.Note(text="queued behind the slow one"))
        closer = threading.Thread(target=eng.close)
        t0 = time.monotonic()
        closer.start()
        with pytest.raises(LabError, match="the engine is closed"):
            queued.result(timeout=1.0)  # promptly: long before the slow command ends
        assert time.monotonic() - t0 < 1.0
        assert slow_fut.result(5) is None
        closer.join(30)
        busy.join(30)
        with pytest.raises(LabError, match="closed"):
            eng.submit_command(C.Note(text="after close"))
        with pytest.raises(LabError, match="closed"):
            eng.on_worker(lambda: None, timeout=1)
    finally:
        eng.close()


def test_wait_idle_waits_for_a_request_between_the_incoming_queue_and_its_model():
    """wait_idle is exact: a request the worker has taken from the incoming queue but
    not yet put in its model's queue is neither queued nor running, and wait_idle
    must still wait for it (found by reading: it returned early)."""
    with Engine(device="sim", memory_gib=0.5, link=20.0) as eng:
        eng.load("zoo:llama-5m", id="a")
        assert eng.wait_idle(10)
        real = eng._enqueue

        def slow_enqueue(req):
            time.sleep(0.4)  # the worker is between the two queues
            real(req)

        eng._enqueue = slow_enqueue  # the worker calls self._enqueue
        try:
            req = eng.submit("a", [5, 6, 7], max_new_tokens=3)
            time.sleep(0.1)  # the worker has taken it from the incoming queue
            assert eng.wait_idle(30)
            assert req.done.is_set() and req.state == "done", "wait_idle returned before the request finished"
        finally:
            eng._enqueue = real


# ---------------------------------------------------------- labtui run
def _scenario(tmp_path: Path) -> Path:
    p = tmp_path / "fault.toml"
    p.write_text(SCENARIO)
    return p


def _start_run(tmp_path: Path, out: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    return subprocess.Popen(
        [sys.executable, "-m", "labtui", "run", str(_scenario(tmp_path)), "--out", str(out), "--quick"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )


def _wait_for_finishes(p: subprocess.Popen, out: Path, n: int, timeout: float = 90) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        assert p.poll() is None, f"the run ended early: {p.communicate()}"
        f = out / "events.jsonl"
        if f.is_file() and f.read_text(errors="replace").count('"request_finish"') >= n:
            return
        time.sleep(0.2)
    p.kill()
    raise AssertionError("the run made no progress")


def _complete_lines(text: str) -> list[str]:
    """Lines ended by a newline (a killed writer may leave a torn last one)."""
    return text.split("\n")[:-1]


def test_killed_run_leaves_a_readable_partial_bundle(tmp_path):
    out = tmp_path / "bundle"
    p = _start_run(tmp_path, out)
    try:
        _wait_for_finishes(p, out, 5)
        time.sleep(0.6)  # a few metric samples
    finally:
        p.send_signal(signal.SIGKILL)
        p.communicate(timeout=30)
    assert p.returncode == -signal.SIGKILL
    assert not (out / "summary.json").exists()
    events = [json.loads(line) for line in _complete_lines((out / "events.jsonl").read_text())]
    assert sum(e["kind"] == "request_finish" for e in events) >= 5
    seqs = [e["seq"] for e in events if e.get("seq") is not None]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "events missing in the middle"
    rows = list(csv.reader(io.StringIO("\n".join(_complete_lines((out / "metrics.csv").read_text())))))
    assert len(rows) >= 2 and all(len(r) == len(rows[0]) for r in rows)
    # a write cut short by the kill: the reader skips the torn line and says so
    with open(out / "events.jsonl", "a") as fh:
        fh.write('{"seq": 999999, "kind": "request_fin')
    from labtui.cli import main

    rep = tmp_path / "report"
    assert main(["report", str(out), "--out", str(rep)]) == 0
    md = (rep / "report.md").read_text()
    assert "no summary.json" in md and "cut short" in md, md[:2000]


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["sigint", "sigterm"])
def test_ctrl_c_stops_the_run_and_finishes_the_bundle(tmp_path, sig, code):
    """Ctrl-C, and SIGTERM (kill, a service manager, a CI timeout) the same way: the
    run stops after this step, the bundle is finished, summary.json marked interrupted,
    exit 128 + the signal's number, as a shell reports a process ended by it."""
    out = tmp_path / "bundle"
    p = _start_run(tmp_path, out)
    _wait_for_finishes(p, out, 3)
    p.send_signal(sig)
    t0 = time.monotonic()
    stdout, stderr = p.communicate(timeout=60)
    assert time.monotonic() - t0 < 30, f"{sig.name} took too long to stop the run"
    assert p.returncode == code, (p.returncode, stderr[-2000:])
    assert "Traceback" not in stderr
    assert "interrupted" in stderr.splitlines()[-1]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["interrupted"] is True and summary["runs_done"] == 1
    assert summary["interrupted_by"] == sig.name
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    assert "point_end" in [e["kind"] for e in events]
    finished = sum(e["kind"] == "request_finish" for e in events)
    assert 3 <= finished < 400, "the run must stop early, not play the whole workload"
    starts = {e["request"] for e in events if e["kind"] == "request_start"}
    ends = [e["request"] for e in events if e["kind"] == "request_finish"]
    assert starts <= set(ends) and len(ends) == len(set(ends)), "a started request has no (or two) outcomes"
    rows = list(csv.reader(io.StringIO((out / "metrics.csv").read_text())))
    assert len(rows) >= 2 and all(len(r) == len(rows[0]) for r in rows)


# ------------------------------------------------------------- output dir
def _tmpfs(path: Path, opts: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True)
    return r.returncode == 0


def _umount(path: Path) -> None:
    if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)  # busy: detach anyway


def _run_cli(args: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "labtui", *args], capture_output=True, text=True, timeout=timeout, env=env)


def test_out_under_a_regular_file_is_one_line_exit_2(tmp_path):
    # As root, chmod 555 blocks nothing; a path under a regular file fails for anyone.
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    r = _run_cli(["run", str(_scenario(tmp_path)), "--out", str(blocker / "bundle"), "--quick"])
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot write the bundle" in lines[0] and "Not a directory" in lines[0], r.stderr
    assert blocker.read_text() == "not a folder"


def test_read_only_out_is_one_line_exit_2(tmp_path):
    ro = tmp_path / "ro"
    if not _tmpfs(ro, "ro,size=64k"):
        pytest.skip("cannot mount a read-only tmpfs here (needs root and mount rights)")
    try:
        r = _run_cli(["run", str(_scenario(tmp_path)), "--out", str(ro / "bundle"), "--quick"])
        assert r.returncode == 2, r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "Read-only file system" in lines[0], r.stderr
    finally:
        _umount(ro)


def _fill(disk: Path) -> None:
    with open(disk / "filler", "wb", buffering=0) as fh:
        try:
            while True:
                fh.write(b"\0" * 4096)
        except OSError:
            pass


def test_disk_full_mid_run_stops_with_one_line(tmp_path):
    disk = tmp_path / "disk"
    if not _tmpfs(disk, "size=1m"):
        pytest.skip("cannot mount a small tmpfs here (needs root and mount rights)")
    out = disk / "bundle"
    p = _start_run(tmp_path, out)
    try:
        try:
            _wait_for_finishes(p, out, 3)
            _fill(disk)  # the disk is full from here on, mid-run
            # it can no longer record anything: it must stop, not play the other
            # ~390 requests for nothing, and say why in one line
            _, stderr = p.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            _, stderr = p.communicate()
            raise AssertionError(f"still running 10 s after the disk filled: {stderr[-1500:]}") from None
        assert "Traceback" not in stderr, stderr[-3000:]
        assert p.returncode in (1, 2)
        assert "No space left on device" in stderr.strip().splitlines()[-1]
        assert not list(out.glob(".*.tmp")), "a half-written file was left behind"
        for line in _complete_lines((out / "events.jsonl").read_text()):
            json.loads(line)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
        _umount(disk)
