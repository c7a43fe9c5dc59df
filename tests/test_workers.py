"""Worker processes: their own memory counters, death with the runner, typed messages."""

import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from inferlab import protocol as p
from inferlab.results import EngineDetails, RunSample
from inferlab.worker_handle import WorkerError, WorkerHandle


def start(method, ref):
    return p.Start(method=method, engine=f"tests.fake_engines:{method.title().replace('-', '')}",
                   model=ref, threads=1)


def test_messages_round_trip_with_their_types(tiny_refs):
    for message in (start("hog", tiny_refs["llama"]), p.Generate([[1, 2, 3]], 4, timed=False),
                    p.Generate([[1, 2], [3, 4]], 4, contexts=[[5], [6]], reset_peak=True),
                    p.Generated(RunSample(0.1, 0.5, [0.1, 0.2]), [4, 5], [[4, 5], [6, 7]], 0.3,
                                1 << 19, 1 << 20),
                    p.Loaded(1.5, p.EngineInfo(10, 20, 30, EngineDetails("int4", 4, 8, extra={"a": [1]}))), p.Failed("E: x")):
        back = p.decode(p.encode(message))
        assert back == message and type(back) is type(message)
    assert isinstance(p.decode(p.encode(start("hog", tiny_refs["llama"]))).model, type(tiny_refs["llama"]))


def memory_of_hog(ref, log) -> tuple[int, int]:
    worker = WorkerHandle(start("hog", ref), str(log))
    try:
        worker.request(p.Load(), 60)
        generated = worker.request(p.Generate([[1, 2]], 2), 60)
    finally:
        worker.close()
    return generated.rss_bytes, generated.peak_rss_bytes


def test_peak_memory_is_the_workers_own(tiny_refs, tmp_path):
    """A parent that holds 500 MB does not change the worker's figures (ru_maxrss would: Linux
    keeps it across exec); the peak shows what the worker itself touched and freed."""
    rss, peak = memory_of_hog(tiny_refs["llama"], tmp_path / "a.log")
    ballast = np.ones(500 << 17)  # 500 MB, every page touched
    rss2, peak2 = memory_of_hog(tiny_refs["llama"], tmp_path / "b.log")
    del ballast
    assert abs(peak2 - peak) < 50e6 and abs(rss2 - rss) < 50e6
    assert peak < 450e6  # python + numpy + the hog's 200 MB, never the parent's 500 MB
    assert peak - rss > 80e6  # the hog freed ~100 MB after its peak: steady state is below it


def test_engine_errors_and_crashes_become_one_line_worker_errors(tiny_refs, tmp_path):
    worker = WorkerHandle(start("raising", tiny_refs["llama"]), str(tmp_path / "r.log"))
    with pytest.raises(WorkerError, match="always fails to load"):
        worker.request(p.Load(), 60)
    worker.close()
    worker = WorkerHandle(start("crashing", tiny_refs["llama"]), str(tmp_path / "c.log"))
    worker.request(p.Load(), 60)
    with pytest.raises(WorkerError, match="SIGSEGV") as e:
        worker.request(p.Generate([[1]], 3), 60)
    assert e.value.status == "failed"
    worker.close()
    worker = WorkerHandle(start("hanging", tiny_refs["llama"]), str(tmp_path / "h.log"))
    worker.request(p.Load(), 60)
    with pytest.raises(WorkerError, match="timeout") as e:
        worker.request(p.Generate([[1]], 3), 2)
    assert e.value.status == "timeout" and worker.proc.poll() is not None  # killed


def test_a_worker_dies_with_its_runner(tiny_refs, tmp_path):
    """A runner killed from outside (SIGKILL, closed terminal) leaves no worker running on."""
    script = textwrap.dedent(f"""
        import sys, time
        from inferlab import protocol as p
        from inferlab.models import ModelRef
        from inferlab.worker_handle import WorkerHandle
        ref = ModelRef.from_dict({tiny_refs['llama'].to_dict()!r})
        w = WorkerHandle(p.Start("hanging", "tests.fake_engines:Hanging", ref, 1), {str(tmp_path / 'w.log')!r})
        w.request(p.Load(), 60)
        w._send(p.Generate([[1]], 3))  # hangs inside decode
        print(w.pid, flush=True)
        time.sleep(600)
    """)
    runner = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    worker_pid = int(runner.stdout.readline())
    assert _alive(worker_pid)
    runner.send_signal(signal.SIGKILL)
    runner.wait()
    deadline = time.time() + 10
    while _alive(worker_pid) and time.time() < deadline:
        time.sleep(0.1)
    assert not _alive(worker_pid)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"  # a zombie has ended
    except FileNotFoundError:
        return False


def _maps_torch(pid: int) -> bool:
    with open(f"/proc/{pid}/maps") as f:
        return "libtorch" in f.read()


@pytest.mark.parametrize("method, torch_expected", [("onnx", False), ("onnx-int4", False),
                                                    ("openvino-int8", False), ("kv-cache", True)])
def test_each_engine_loads_only_its_own_framework(tiny_refs, tmp_path, method, torch_expected):
    """An ONNX Runtime or OpenVINO method's memory must not carry libtorch (read from the process's own
    memory map, an outside witness); the PyTorch method is the control."""
    from inferlab.engines import engine_path

    s = p.Start(method=method, engine=engine_path(method), model=tiny_refs["llama"], threads=1)
    preparing = WorkerHandle(s, str(tmp_path / "w.log"))  # its own process, as in a run
    preparing.request(p.Prepare(), 300)
    preparing.close()
    worker = WorkerHandle(s, str(tmp_path / "w.log"))
    try:
        worker.request(p.Load(), 120)
        worker.request(p.Generate([[1, 2, 3]], 3), 60)
        assert _maps_torch(worker.pid) is torch_expected
    finally:
        worker.close()


def test_a_context_is_rewound_to_between_runs_not_continued(tiny_refs, tmp_path):
    """The same context twice: the second run starts again right after it (the engine's tokens
    follow what its cache holds, so a cache left as the first run ended would show)."""
    worker = WorkerHandle(start("positional", tiny_refs["llama"]), str(tmp_path / "w.log"))

    def tokens(prompt, n, contexts=()):
        return worker.request(p.Generate([prompt], n, contexts=list(contexts)), 60).tokens

    def alone(ids, n):  # what the engine's rule gives for this sequence from scratch
        out = []
        for _ in range(n):
            out.append((len(ids) + sum(ids)) % 7)
            ids = ids + [out[-1]]
        return out

    try:
        worker.request(p.Load(), 60)
        first = tokens([9, 9], 4, [[1, 2, 3]])
        assert first == alone([1, 2, 3, 9, 9], 4)
        assert tokens([9, 9], 4, [[1, 2, 3]]) == first
        # the same context before a longer prompt (the next cell of a sweep): cut back to it
        assert tokens([4, 4, 4], 3, [[1, 2, 3]]) == alone([1, 2, 3, 4, 4, 4], 3)
        # another context, then none, then the first again: each time what the cache must hold
        assert tokens([9, 9], 2, [[1]]) == alone([1, 9, 9], 2)
        assert tokens([5], 3) == alone([5], 3)
        assert tokens([9, 9], 2, [[1]]) == alone([1, 9, 9], 2)
        assert tokens([9, 9], 4, [[1, 2, 3]]) == first
    finally:
        worker.close()


def test_competing_load_is_read_around_the_generation_not_the_fill(tiny_refs, monkeypatch):
    """A fill before the timed generation (an engine that cannot rewind prefills the depth's
    context) is the worker's own untimed work: the machine's CPU counted beside the
    generation's must leave it out, or every such method reads as crowded by other processes
    (seen: openvino-int8 at depth 2048, 13 CPU-s of 'others' over 2.5 s timed on two CPUs)."""
    from inferlab import worker as w

    # the machine's counter stands in as this process's own CPU time: other processes on the
    # machine (a parallel test) cannot move it
    monkeypatch.setattr(w, "machine_cpu_seconds", lambda: (time.process_time(), 0.0))
    worker = w.Worker(start("slow-fill", tiny_refs["llama"]))
    worker.on_load(p.Load())
    out = worker.on_generate(p.Generate([[9, 9]], 4, contexts=[[1, 2, 3]]))
    busy, _ = out.machine_s
    assert abs(busy - out.cpu_s) < 0.1  # no 'other process': the fill's 0.4 s left out of both


def test_waiting_for_a_process_to_go_quiet():
    """A process whose threads spin on after their work (ONNX Runtime's pools: 40-60 ms) is
    waited for until a window passes with no CPU time; an idle one at once."""
    from inferlab.procstat import wait_until_idle

    code = "import time\nend = time.perf_counter() + {}\nwhile time.perf_counter() < end: pass\ntime.sleep(30)"
    spinning = subprocess.Popen([sys.executable, "-c", code.format(0.4)])
    idle = subprocess.Popen([sys.executable, "-c", code.format(0)])
    try:
        time.sleep(0.1)  # both started; the first spins for 0.3 s more
        assert 0.2 < wait_until_idle(spinning.pid, 0.02, 2.0) < 1.0
        assert wait_until_idle(idle.pid, 0.02, 2.0) < 0.1
        assert wait_until_idle(spinning.pid, 0.02, 2.0) < 0.1  # quiet now
        spinning.kill()
        spinning.wait()
        assert wait_until_idle(spinning.pid, 0.02, 2.0) < 0.1  # gone
    finally:
        spinning.kill()
        idle.kill()


def test_a_timed_generation_waits_for_the_method_that_answered_before_it(monkeypatch):
    from inferlab import runner

    class FakeWorker:
        def __init__(self, pid):
            self.pid = pid

        def request(self, message, timeout_s):
            return p.Generated(RunSample(0.1, 0.2, [0.1]), [1], [], 0.1, None, None)

    waited = []
    monkeypatch.setattr(runner, "wait_until_idle", lambda pid, window, limit: waited.append(pid))
    monkeypatch.setattr(runner, "_last_answered", None)
    a, b = FakeWorker(11), FakeWorker(22)
    timed, untimed = p.Generate([[1]], 1), p.Generate([[1]], 1, timed=False)
    for worker, request in [(a, untimed), (a, timed), (b, untimed), (b, timed), (a, timed), (a, timed), (b, timed)]:
        runner.request_generation(worker, request, 10)
    # each timed generation after another method's answer waits for that method's process
    assert waited == [22, 11]
