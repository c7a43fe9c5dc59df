"""End-to-end: the CLI on tiny models, failures isolated, bad inputs, interrupts."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from inferlab import cli, defaults, engines
from inferlab.results import load

FAST = ["--new-tokens", "6", "--repeats", "2", "--min-time", "0", "--warmup", "1", "--threads", "1"]


def run_cli(*args):
    """The exit code main() returns or argparse exits with."""
    try:
        return cli.main([str(a) for a in args])
    except SystemExit as e:
        return e.code


def only_run_folder(base):
    (folder,) = [os.path.join(base, d) for d in os.listdir(base)]
    return folder


@pytest.mark.real_probe
def test_run_end_to_end_and_report_redraw(tiny_models, tmp_path, capsys):
    out = tmp_path / "results"
    code = run_cli("run", "--model", tiny_models["gpt2"], "--methods",
                   "eager-nocache,kv-cache,torch-int8", "--output", out, "--quiet", *FAST)
    assert code == 0
    folder = only_run_folder(out)
    for name in ("results.json", "report.md", "report.html", "e2e_latency.png",
                 "itl_by_position.png", "speed_vs_size.png"):
        assert os.path.getsize(os.path.join(folder, name)) > 0, name
    r = load(os.path.join(folder, "results.json"))
    assert r.status == "complete" and [m.method for m in r.methods][0] == "kv-cache"
    assert len(r.probes) == 2 and all(p["bandwidth_bytes_per_s"] > 0 and "fixed" not in p["method"]
                                      for p in r.probes)
    for m in r.methods:
        assert m.ok and len(m.runs) == 2 and len(m.tokens) == 6
        assert all(len(run.itl_s) == 5 for run in m.runs)
        assert m.peak_rss_bytes >= m.steady_rss_bytes > 0 and m.weight_bytes > 0
    assert r.derived.methods["eager-nocache"].first_divergence == 6  # same tokens as the reference
    md = open(os.path.join(folder, "report.md")).read()
    assert "| eager-nocache | ok |" in md and "speedup" in md
    assert "TTFT is engine-level" in md and "GenAI-Perf" in md  # names beside other tools
    # what each engine does per new sequence inside TTFT, as the worker recorded it
    assert r.method("kv-cache").details.setup_in_ttft.startswith("a new DynamicCache")
    assert "- **eager-nocache**: none: no cache" in md
    assert "eager-nocache" in capsys.readouterr().out  # the console table
    # redraw without rerunning: remove the report, draw it again from results.json
    os.remove(os.path.join(folder, "report.md"))
    assert run_cli("report", os.path.join(folder, "results.json")) == 0
    assert open(os.path.join(folder, "report.md")).read() == md


def test_runs_never_overwrite_each_other(tmp_path):
    """Two runs in the same second (the folder name's resolution) get two folders; an existing
    folder is never reused. (Run end to end, a run takes seconds: this is the case that can
    collide.)"""
    from inferlab.runner import new_results_folder

    out = str(tmp_path / "results")
    folders = [new_results_folder(out, "tiny/model name") for _ in range(3)]
    assert len(set(folders)) == 3 and sorted(os.listdir(out)) == sorted(map(os.path.basename, folders))
    assert all(os.path.basename(f).count("tiny-model-name") == 1 for f in folders)


def test_failing_and_hanging_engines_are_isolated(tiny_models, tmp_path, monkeypatch):
    monkeypatch.setitem(engines.REGISTRY, "raising", "tests.fake_engines:Raising")
    monkeypatch.setitem(engines.REGISTRY, "crashing", "tests.fake_engines:Crashing")
    monkeypatch.setitem(engines.REGISTRY, "hanging", "tests.fake_engines:Hanging")
    out = tmp_path / "results"
    code = run_cli("run", "--model", tiny_models["llama"], "--methods",
                   "raising,crashing,hanging,kv-cache", "--timeout", "10", "--output", out,
                   "--quiet", *FAST)
    assert code == 1  # finished, but some methods failed
    r = load(os.path.join(only_run_folder(out), "results.json"))
    assert r.status == "complete"
    by = {m.method: m for m in r.methods}
    assert by["kv-cache"].ok
    assert by["raising"].status == "failed" and "always fails to load" in by["raising"].error
    assert by["crashing"].status == "failed" and "SIGSEGV" in by["crashing"].error
    assert by["hanging"].status == "timeout" and "timeout" in by["hanging"].error
    assert "FAILED" in open(os.path.join(only_run_folder(out), "report.md")).read()


@pytest.mark.parametrize("args, message", [
    (["--model", "/no/such/folder"], "model not found"),
    (["--model", "missing.gguf"], "model file not found"),
    (["--methods", "kv-cache,warp-drive"], "unknown method"),
    (["--new-tokens", "0"], "must be at least 1"),
    (["--prompt-file", "/no/such/prompt.txt", "--methods", "kv-cache"], "cannot read --prompt-file"),
    (["--threads", "100000"], "--threads must be between 1 and"),
    (["--min-top1", "1.5"], "must be between 0 and 1"),
    (["--warmup", "-1"], "must be at least 0"),
    (["--min-time", "nan"], "must be a finite number"),
    (["--timeout", "inf"], "must be a finite number"),
    (["--max-kl", "NaN"], "must be a finite number"),
    (["--repeats", "5000000", "--max-repeats", "5000000"], "--repeats 5e+06 is beyond what a run can finish"),
    (["--warmup", "2000000"], "--warmup 2e+06 is beyond what a run can finish"),
    (["--profile-steps", "1000000"], "--profile-steps 1e+06 is beyond"),
])
def test_bad_inputs_exit_2_with_one_line(args, message, tmp_path, capsys):
    assert run_cli("run", "--output", tmp_path / "r", "--quiet", *args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1]
    assert not (tmp_path / "r").exists() or not os.listdir(tmp_path / "r")


def test_not_a_causal_lm(tmp_path, capsys):
    from transformers import ViTConfig

    ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
              intermediate_size=64).save_pretrained(tmp_path / "vit")
    assert run_cli("run", "--model", tmp_path / "vit", "--quiet") == 2
    assert "not a causal language model" in capsys.readouterr().err


def test_folder_without_weights_and_corrupt_gguf(tmp_path, capsys):
    from transformers import LlamaConfig

    LlamaConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                intermediate_size=64).save_pretrained(tmp_path / "empty")
    assert run_cli("run", "--model", tmp_path / "empty", "--quiet") == 2
    assert "no weight files" in capsys.readouterr().err
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf file")
    assert run_cli("run", "--model", tmp_path / "junk.gguf", "--quiet") == 2
    assert "cannot load GGUF" in capsys.readouterr().err


def test_report_of_corrupt_file_exits_2(tmp_path, capsys):
    bad = tmp_path / "results.json"
    bad.write_text("{not json")
    assert run_cli("report", bad) == 2
    err = capsys.readouterr().err.strip()
    assert "corrupt" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("protocol, stop", [("sequential", signal.SIGINT),
                                            ("interleaved", signal.SIGTERM)])
def test_interrupt_saves_what_was_measured(tiny_models, tmp_path, protocol, stop, request):
    """Ctrl-C (or a SIGTERM) during a hanging method: exit 130, what was measured is kept, no
    temp files."""
    out = tmp_path / "results"
    code = (
        # Ctrl-C raises KeyboardInterrupt even where the test runs as a background job, whose
        # children start with SIGINT ignored (Python then installs no handler)
        "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
        "from inferlab import cli, defaults, engines; defaults.PROBE_BYTES = 32 << 20; "
        "engines.REGISTRY['hanging'] = 'tests.fake_engines:Hanging'; "
        "sys.exit(cli.main(sys.argv[1:]))"
    )
    mark = tmp_path / "hanging-in-decode"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "run", "--model", tiny_models["llama"], "--methods",
         "kv-cache,hanging", "--output", str(out), "--quiet", "--protocol", protocol, *FAST],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "INFERLAB_TEST_HANGING_MARK": str(mark)})
    request.addfinalizer(proc.kill)

    def kv_cache_measured(m):  # sequential: finished; interleaved: its first call is in
        return m["status"] == "ok" if protocol == "sequential" else m["first_call_s"] is not None

    measured = False
    deadline = time.time() + 120
    while time.time() < deadline and not (measured and mark.exists()):  # the hanging worker is in decode
        time.sleep(0.2)
        paths = [os.path.join(out, d, "results.json") for d in os.listdir(out)] if out.exists() else []
        if paths and os.path.exists(paths[0]):
            data = json.load(open(paths[0]))
            measured = any(m["method"] == "kv-cache" and kv_cache_measured(m) for m in data["methods"])
    assert measured and mark.exists(), "the run never reached the hanging method's decode"
    proc.send_signal(stop)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    folder = only_run_folder(out)
    r = load(os.path.join(folder, "results.json"))
    assert r.status == "interrupted" and r.method("hanging").status == "interrupted"
    kv = r.method("kv-cache")
    if protocol == "sequential":
        assert kv.ok and len(kv.runs) == 2
    else:
        assert kv.status == "interrupted" and kv.first_call_s > 0 and kv.load_s > 0
    assert os.path.exists(os.path.join(folder, "report.md"))
    assert not [f for f in os.listdir(folder) if f.startswith(".")]


def test_quality_command_judges_without_timing(tiny_models, tmp_path):
    out = tmp_path / "results"
    assert run_cli("quality", "--model", tiny_models["llama"], "--methods",
                   "torch-int8,onnx", "--output", out, "--quiet", "--threads", "1",
                   "--max-kl", "0.5") == 0
    folder = only_run_folder(out)
    r = load(os.path.join(folder, "results.json"))
    assert [m.method for m in r.methods] == ["torch-int8", "onnx"]
    for m in r.methods:
        assert m.ok and not m.runs  # no timing
        assert m.quality.verdict in ("PASS", "FAIL") and m.quality.scored_tokens > 0
    assert r.method("onnx").quality.verdict == "PASS"  # fp32 export: same distributions
    assert r.quality_setup["budget"]["max_kl_mean"] == 0.5  # the budget set on the CLI
    assert all(m.quality.budget["max_kl_mean"] == 0.5 for m in r.methods)
    md = open(os.path.join(folder, "report.md")).read()
    assert "## Quality against the fp32 reference" in md


@pytest.mark.real_probe
def test_profile_command_writes_report_and_traces(tiny_models, tmp_path):
    out = tmp_path / "results"
    assert run_cli("profile", "--model", tiny_models["gpt2"], "--methods", "kv-cache,onnx",
                   "--output", out, "--quiet", "--threads", "1") == 0
    folder = only_run_folder(out)
    r = load(os.path.join(folder, "results.json"))
    assert [p["when"] for p in r.probes] == ["before the measurements", "after the measurements"]
    assert all(p["bandwidth_bytes_per_s"] > 0 for p in r.probes)
    for m in r.methods:
        assert m.profile.decode.calls == 3 and m.profile.unprofiled_decode_step_ms > 0
        assert os.path.getsize(os.path.join(folder, "traces", m.profile.trace_file)) > 0
    assert [s.context for s in r.method("kv-cache").profile.sweep] == [32, 128]  # 512 > n_positions
    text = open(os.path.join(folder, "profiling_report.md")).read()
    assert "## Bottlenecks" in text and "## Roofline" in text and "context tokens" in text


def test_unreadable_text_file_exits_2(tiny_models, tmp_path, capsys):
    assert run_cli("quality", "--model", tiny_models["llama"], "--methods", "kv-cache",
                   "--text-file", tmp_path / "missing.txt", "--output", tmp_path / "r",
                   "--quiet") == 2
    assert "cannot read --text-file" in capsys.readouterr().err
    assert not os.listdir(tmp_path / "r")


@pytest.mark.parametrize("where, message", [
    ("/proc/inferlab-results", "cannot be written"),
    ("{file}/results", "a parent is a file"),
    ("{file}", "is a file, not a folder"),
])
def test_unwritable_output_fails_at_once(tiny_models, tmp_path, capsys, where, message):
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    t0 = time.time()
    assert run_cli("run", "--model", tiny_models["llama"], "--methods", "kv-cache", "--output",
                   where.format(file=a_file), "--quiet", *FAST) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1] and len(err) == 1
    assert time.time() - t0 < 20  # before any model is loaded


def test_new_tokens_beyond_the_context_window_fail_at_once(tiny_models, tmp_path, capsys):
    t0 = time.time()
    assert run_cli("run", "--model", tiny_models["gpt2"], "--methods", "eager-nocache",
                   "--output", tmp_path / "r", "--quiet", "--new-tokens", "100000") == 2
    assert "exceed the model's context window of 256 tokens" in capsys.readouterr().err
    assert time.time() - t0 < 20 and not os.listdir(tmp_path / "r")


def test_a_quality_pass_that_crashes_keeps_the_speed_figures(tiny_models, tmp_path, monkeypatch):
    monkeypatch.setitem(engines.REGISTRY, "quality-crash", "tests.fake_torch_engines:QualityCrash")
    out = tmp_path / "results"
    code = run_cli("run", "--model", tiny_models["llama"], "--methods", "kv-cache,quality-crash",
                   "--output", out, "--quiet", *FAST)
    assert code == 0
    r = load(os.path.join(only_run_folder(out), "results.json"))
    m = r.method("quality-crash")
    assert m.ok and len(m.runs) == 2 and r.derived.methods[m.method].first_divergence == 6
    assert m.quality.verdict == "error" and "SIGSEGV" in m.quality.reasons[0]


def test_competing_load_is_measured_and_warned(tiny_models, tmp_path):
    """A process that keeps a core busy during the timed runs shows up in the method's figures."""
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        out = tmp_path / "results"
        assert run_cli("run", "--model", tiny_models["llama"], "--methods", "kv-cache",
                       "--output", out, "--quiet", "--no-quality", "--new-tokens", "16",
                       "--repeats", "3", "--min-time", "2", "--threads", "1") == 0
    finally:
        burner.kill()
        burner.wait()
    folder = only_run_folder(out)
    m = load(os.path.join(folder, "results.json")).method("kv-cache")
    # what the warning needs, not a bound on how busy the machine was: the burner's share of
    # the machine's CPU time during the timed runs reached the warning's threshold
    assert m.other_load() >= defaults.WARN_OTHER_CPU
    assert "competing load" in open(os.path.join(folder, "report.md")).read()


@pytest.mark.parametrize("terminal", [True, False])
def test_repeats_are_one_live_line_on_a_terminal_and_none_in_a_log(terminal):
    import io

    from inferlab.runner import Display, Transient

    class Stream(io.StringIO):
        def isatty(self):
            return terminal

    stream = Stream()
    show = Display(stream)
    show("a: first call")
    show(Transient("a: timed run 1"))
    show(Transient("a: timed run 2"))
    show("a: ok")
    show(Transient("b: timed run 1"))
    show.finish()
    erase = "\r\x1b[K"
    assert stream.getvalue() == ("a: first call\na: timed run 1" + erase + "a: timed run 2" + erase
                                 + "a: ok\nb: timed run 1" + erase if terminal
                                 else "a: first call\na: ok\n")


@pytest.mark.parametrize("protocol", ["interleaved", "sequential"])
def test_protocols_order_the_timed_runs(tiny_models, tmp_path, protocol):
    """Interleaved: the methods take turns, the order rotating each round (A B, B A, A B);
    sequential: one after the other."""
    from inferlab.config import RunConfig
    from inferlab.runner import run

    messages = []
    config = RunConfig(model=tiny_models["llama"], methods=["kv-cache", "eager-nocache"],
                       new_tokens=4, min_repeats=3, min_time_s=0, warmup=1, threads=1,
                       quality=False, output_dir=str(tmp_path / "r"), protocol=protocol)
    results, _ = run(config, show=messages.append)
    order = [m.split(":")[0] for m in messages if ": timed run " in m]
    if protocol == "interleaved":
        assert order == ["kv-cache", "eager-nocache", "eager-nocache", "kv-cache",
                         "kv-cache", "eager-nocache"]
    else:
        assert order == ["kv-cache"] * 3 + ["eager-nocache"] * 3
    assert all(len(m.runs) == 3 for m in results.methods)
    assert results.config["protocol"] == protocol


def test_a_method_that_does_not_apply_is_skipped_not_failed(tiny_models, tmp_path):
    out = tmp_path / "results"
    assert run_cli("run", "--model", tiny_models["llama"], "--methods", "kv-cache,llama-cpp-q8_0",
                   "--output", out, "--quiet", "--no-quality", *FAST) == 0
    folder = only_run_folder(out)
    m = load(os.path.join(folder, "results.json")).method("llama-cpp-q8_0")
    assert m.status == "skipped" and "not supported for this model" in m.error
    assert "| llama-cpp-q8_0 | SKIPPED |" in open(os.path.join(folder, "report.md")).read()


def test_output_piped_into_a_reader_that_leaves_early_is_not_an_error():
    """`inferlab methods | head -1`: no traceback, exit 0."""
    proc = subprocess.run(f"{sys.executable} -m inferlab.cli methods | head -1", shell=True,
                          capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, PYTHONUNBUFFERED="1"))
    assert proc.stdout.startswith("eager-nocache") and proc.stderr == ""
