"""inferlab doctor: seconds, every method's answer for the model, what to change, exit 1 when
something needed is missing."""

import time

from inferlab import doctor
from tests.test_cli import run_cli


def test_doctor_answers_for_every_method_in_seconds(tiny_models, capsys):
    t0 = time.perf_counter()
    assert run_cli("doctor", "--model", tiny_models["gpt2"], "--threads", "1") == 0
    assert time.perf_counter() - t0 < 10
    out = capsys.readouterr().out
    for title in ("versions", "CPU", "right now", "methods", "what to change for stable figures"):
        assert f"\n{title}\n" in f"\n{out}"
    # GPT-2 has no GGUF: llama.cpp says why not; the native decoder covers GPT-2
    assert "llama-cpp-q8_0: no GGUF for this model" in out
    assert "  * kv-cache: can run" in out and "  * native-int4: can run" in out


def test_a_missing_library_is_a_problem_and_exit_1(monkeypatch, capsys):
    monkeypatch.setitem(doctor.LIBRARIES, "no_such_library_here", "no-such-library-here")
    monkeypatch.setattr(doctor, "NEEDED", doctor.NEEDED + ("no_such_library_here",))
    assert run_cli("doctor", "--model", "no-such-model-anywhere") == 1
    out = capsys.readouterr().out
    assert "no_such_library_here: missing" in out and "no_such_library_here is not installed" in out


def test_more_threads_than_cpus_is_advice(monkeypatch, capsys):
    assert run_cli("doctor", "--model", "no-such-model-anywhere", "--threads", "4096") == 1
    out = capsys.readouterr().out
    assert "--threads 4096 is more than the" in out and "model no-such-model-anywhere:" in out
