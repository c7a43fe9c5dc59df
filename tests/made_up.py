"""Made-up results with chosen timings and quality: the rules of compare and the reports'
pages tested without measuring anything."""

import numpy as np

from inferlab.results import MethodResult, QualityResult, RunResults, RunSample

MACHINE = {"cpu": "Test CPU", "cpu_flags": ["avx2"], "logical_cpus": 2, "usable_cpus": 2,
           "memory_bytes": 8 << 30, "os": "Linux", "hostname": "box", "python": "3.11",
           "libraries": {"torch": "2.0"}, "thread_env": {}}


def method(name, e2e_ms, spread=0.01, n=20, seed=0, quality=None, peak=100e6, tokens=(1, 2, 3, 4)):
    """A method whose timed runs take e2e_ms (TTFT a tenth of it), spread as a fraction."""
    rng = np.random.default_rng(seed)
    runs = []
    for e in e2e_ms * (1 + spread * rng.standard_normal(n)) / 1e3:
        runs.append(RunSample(ttft_s=e / 10, e2e_s=e, itl_s=[e * 0.9 / 3] * 3))
    return MethodResult(method=name, status="ok", runs=runs, tokens=list(tokens), peak_rss_bytes=int(peak),
                        quality=QualityResult(verdict=quality, kl_mean=0.001, top1=0.99, ppl_increase=0.0)
                        if quality else None)


CONFIG = {"new_tokens": 4, "threads": 2, "min_repeats": 5, "warmup": 1, "min_time_s": 1.0, "max_repeats": 30,
          "protocol": "interleaved"}


def results(*methods, model_hash="aaa", cpu="Test CPU", prompt=(1, 2, 3), name="m"):
    return RunResults(config=dict(CONFIG), machine={**MACHINE, "cpu": cpu},
                      model={"name": name, "spec": name, "source": "made up", "content_hash": model_hash,
                             "prompt_ids": list(prompt)},
                      prompt_tokens=len(prompt), methods=list(methods), status="complete",
                      created="2026-11-30T00:00:00+00:00", inferlab_version="0.1.0")
