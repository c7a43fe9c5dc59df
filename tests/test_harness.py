import numpy as np

from inferlab import harness
from inferlab.engines.base import Engine


class ScriptedEngine(Engine):
    """Predicts token (last + 1) % V; token 1 is EOS-like but must not stop generation."""

    name = "scripted"
    summary = "test"
    V = 5

    def __init__(self):
        self.calls = []

    def load(self):
        pass

    def _logits(self, last):
        x = np.zeros(self.V, dtype=np.float32)
        x[(last + 1) % self.V] = 1.0
        return x

    def prefill(self, token_ids, all_logits=False):
        self.calls.append(("prefill", list(token_ids)))
        return self._logits(token_ids[-1])

    def decode(self, token_id):
        self.calls.append(("decode", token_id))
        return self._logits(token_id)

    def info(self):
        return {}


class FakeClock:
    def __init__(self, step):
        self.t, self.step = 0.0, step

    def __call__(self):
        self.t += self.step
        return self.t


def test_generate_makes_exactly_n_tokens_without_eos_stop(monkeypatch):
    monkeypatch.setattr(harness, "clock", FakeClock(0.01))
    e = ScriptedEngine()
    g = harness.generate(e, [0], new_tokens=12)
    assert g.tokens == [(i + 1) % 5 for i in range(12)]  # passes token 1 (EOS-like) repeatedly
    assert len(g.itl_s) == 11
    assert e.calls[0] == ("prefill", [0]) and len(e.calls) == 12
    assert np.allclose(g.itl_s, 0.01)
    assert np.isclose(g.ttft_s, 0.01) and np.isclose(g.e2e_s, 0.12)
    assert np.isclose(g.tpot_s, 0.01) and np.isclose(g.decode_tps, 100.0)


def test_repeat_until_count_and_time():
    from inferlab.config import RunConfig
    from inferlab.results import MethodResult, RunSample
    from inferlab.runner import needs_more_runs

    def with_runs(n, e2e):
        return MethodResult(method="m", status="running",
                            runs=[RunSample(ttft_s=0.01, e2e_s=e2e, itl_s=[0.01])] * n)

    cfg = RunConfig(min_repeats=3, min_time_s=1.0, max_repeats=50)
    assert needs_more_runs(with_runs(3, 0.1), cfg)  # count reached, time not
    assert not needs_more_runs(with_runs(10, 0.11), cfg)  # both reached
    assert needs_more_runs(with_runs(2, 5.0), cfg)  # time reached, count not
    cfg = RunConfig(min_repeats=3, min_time_s=100.0, max_repeats=4)
    assert not needs_more_runs(with_runs(4, 0.1), cfg)  # the cap wins


def test_around_wraps_every_engine_call_of_the_loop():
    import contextlib

    seen = []

    @contextlib.contextmanager
    def around(phase):
        seen.append(phase)
        yield

    harness.generate(ScriptedEngine(), [0], 4, around=around)
    assert seen == ["prefill", "decode", "decode", "decode"]
