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

    def prefill(self, token_ids):
        self.calls.append(("prefill", list(token_ids)))
        return self._logits(token_ids[-1])

    def decode(self, token_id):
        self.calls.append(("decode", token_id))
        return self._logits(token_id)

    def window_logits(self, token_ids):
        return np.stack([self._logits(t) for t in token_ids])

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


def test_measure_runs_until_count_and_time(monkeypatch):
    monkeypatch.setattr(harness, "clock", FakeClock(0.01))  # one generation of 10 tokens = 0.1 s
    m = harness.measure(ScriptedEngine(), [0], 10, warmup=2, min_repeats=3, min_time_s=1.0,
                        max_repeats=50)
    assert len(m.runs) == 10  # count reached at 3, time (1.0 s) only at 10
    assert m.deterministic and m.warmup_runs == 2
    m = harness.measure(ScriptedEngine(), [0], 10, warmup=1, min_repeats=3, min_time_s=100.0,
                        max_repeats=4)
    assert len(m.runs) == 4  # the cap wins
    m = harness.measure(ScriptedEngine(), [0], 10, warmup=0, min_repeats=3, min_time_s=0.0,
                        max_repeats=9)
    assert len(m.runs) == 3


def test_measure_flags_nondeterminism():
    class Flaky(ScriptedEngine):
        n = 0

        def prefill(self, token_ids):
            Flaky.n += 1
            return self._logits(token_ids[-1] + Flaky.n)

    m = harness.measure(Flaky(), [0], 4, warmup=0, min_repeats=2, min_time_s=0, max_repeats=2)
    assert not m.deterministic
