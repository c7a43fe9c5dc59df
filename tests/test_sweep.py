"""inferlab sweep: lists, cells, the protocol inside a cell, cells.csv, resuming, bad input."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from inferlab import defaults, engines
from inferlab.int_lists import parse_int_list
from inferlab.results import Cell, load
from inferlab.sweep import SweepConfig
from tests.test_cli import only_run_folder, run_cli

QUICK = ["--new-tokens", "3", "--repeats", "2", "--min-time", "0", "--warmup", "1",
         "--threads", "1", "--no-quality", "--quiet"]


@pytest.mark.parametrize("text, values", [
    ("1,2,4", [1, 2, 4]), ("1-8+1", list(range(1, 9))), ("1-64*2", [1, 2, 4, 8, 16, 32, 64]),
    ("4,1-3+1,4", [4, 1, 2, 3]), ("0,1024", [0, 1024]), ("7-7+3", [7]), ("2-9+3", [2, 5, 8]),
])
def test_llama_bench_lists(text, values):
    assert parse_int_list(text) == values


@pytest.mark.parametrize("text, message", [
    ("", "empty"), ("1,,2", "empty"), ("8-1+1", "reversed"), ("1-8+0", "never reaches"),
    ("0-8*2", "never reaches"), ("1-8*1", "never reaches"), ("x", "not a number"),
    ("1.5", "not a number"), ("-2", "not a number"), ("1-100000+1", "more than"),
])
def test_bad_lists_say_what_is_wrong(text, message):
    with pytest.raises(ValueError, match=message):
        parse_int_list(text)


def test_every_combination_is_a_cell_grouped_by_threads():
    config = SweepConfig(methods=["kv-cache"], prompt_token_list=[8, 32], new_token_list=[4],
                         depth_list=[0, 16], thread_list=[2, 1], batch_list=[1, 4])
    cells = config.cells()
    assert len(cells) == 16 and len({c.key for c in cells}) == 16
    assert [c.threads for c in cells] == [1] * 8 + [2] * 8  # one load per thread count
    assert Cell(512, 32, 1024, 2, 4).test == "pp512+tg32 @ d1024"
    assert Cell(512, 32, 0, 2, 4).key == "pp512+tg32 t2 b4"
    assert config.threads == 2 and config.new_tokens == 4  # the quality pass's settings


def test_a_batch_s_sequences_differ_and_keep_their_contexts_across_prompt_lengths():
    from inferlab.workload import TextTokens

    text = TextTokens(list(range(1000)), "test")
    short, long_ = Cell(4, 3, 16, 1, 4), Cell(64, 3, 16, 1, 4)
    sequences = [text.sequence(long_, i) for i in range(4)]
    assert len({tuple(c + q) for c, q in sequences}) == 4
    for i, (context, prompt) in enumerate(sequences):
        assert len(context) == 16 and len(prompt) == 64 and prompt[0] == context[-1] + 1  # one passage
        assert text.sequence(short, i)[0] == context  # a worker's cache is cut back, not refilled
    assert text.sequence(Cell(4, 3, 16, 1, 1))[0] == sequences[0][0]


def test_batching_is_checked_once_per_batch_size_in_its_cheapest_cell():
    config = SweepConfig(methods=["kv-cache"], prompt_token_list=[512, 32], depth_list=[1024, 0],
                         thread_list=[1, 2], batch_list=[1, 4, 8])
    assert config.batch_checks() == ("pp32+tg32 t2 b4", "pp32+tg32 t2 b8")


def test_sweep_end_to_end(tiny_models, tmp_path, capsys, monkeypatch):
    import pandas as pd

    monkeypatch.setitem(engines.REGISTRY, "one-at-a-time", "tests.fake_engines:OneAtATime")
    out = tmp_path / "s"
    code = run_cli("sweep", "--model", tiny_models["llama"], "--methods",
                   "kv-cache,eager-nocache,one-at-a-time", "--prompt-tokens", "4,12", "--depth", "0,6",
                   "--batch", "1,2", "--output", out, *QUICK)
    assert code == 0
    folder = only_run_folder(out)
    r = load(os.path.join(folder, "results.json"))
    assert r.status == "complete" and r.schema_version == defaults.SCHEMA_VERSION and len(r.cells) == 8
    rows = {(row["key"], row["method"]): row for row in r.derived.cells}
    for c in r.cells:
        assert c.status == "complete" and c.conditions["before"] and c.conditions["after"]
        # the streaming bandwidth read around the cell sets its decode floors
        readings = [c.conditions[w]["bandwidth_bytes_per_s"] for w in ("before", "after")]
        assert min(readings) > 1e8
        for m in c.methods:  # and each timed run's, the reading just before it
            assert all(run.bandwidth_bytes_per_s > 1e8 for run in m.runs)
        for m in c.methods:
            if c.cell.batch > 1 and m.method == "one-at-a-time":
                assert m.status == "skipped" and "one sequence at a time" in m.error
                continue
            assert m.ok and len(m.runs) == 2 and len(m.tokens) == 3
            assert m.deterministic  # a depth's context rewound to between runs, not corrupted
            assert m.peak_rss_bytes >= m.steady_rss_bytes > 0
            if m.method != "one-at-a-time":  # the same greedy tokens as kv-cache in this cell
                assert rows[(c.cell.key, m.method)]["first_divergence"] == 3
            # each sequence of a batch generates what it generates alone: checked once per
            # batch size, in its cheapest cell
            assert m.batch_divergence == ([3, 3] if c.cell.key == "pp4+tg3 t1 b2" else None)
    # a deeper context changes what is generated: the cache really held it
    by_key = {c.cell.key: c for c in r.cells}
    assert (by_key["pp4+tg3 t1 b1"].method("kv-cache").tokens
            != by_key["pp4+tg3 @ d6 t1 b1"].method("kv-cache").tokens)
    csv = pd.read_csv(os.path.join(folder, "cells.csv"))
    assert len(csv) == 24 and set(csv["method"]) == {"kv-cache", "eager-nocache", "one-at-a-time"}
    ok = csv[csv["status"] == "ok"]
    assert (ok["pp_tps"] > 0).all() and (ok["tg_tps"] > 0).all() and (ok["ttft_ms_lo"] <= ok["ttft_ms"]).all()
    batched = ok[ok["n_batch"] == 2]
    assert len(batched) == 8 and (batched["tg_tps_total"] == 2 * batched["tg_tps"]).all()
    assert list(csv["test"][:3]) == ["pp4+tg3"] * 3 and "pp4+tg3 @ d6" in set(csv["test"])
    md = open(os.path.join(folder, "report.md")).read()
    assert "## Crossovers" in md and "## Cells" in md and "skipped: batch 2" in md
    assert "## Distance to the hardware limits" in md and (ok["decode_efficiency"] > 0).all()
    for chart in ("sweep_prefill_vs_prompt.png", "sweep_decode_vs_depth.png",
                  "sweep_total_vs_batch.png", "sweep_tpot_vs_batch.png"):
        assert os.path.getsize(os.path.join(folder, chart)) > 0
    assert "pp4+tg3 @ d6" in capsys.readouterr().out
    # redrawn from results.json alone: the same report
    os.remove(os.path.join(folder, "report.md"))
    assert run_cli("report", folder) == 0
    assert open(os.path.join(folder, "report.md")).read() == md


def test_a_failing_method_fails_its_cells_and_the_others_go_on(tiny_models, tmp_path, monkeypatch):
    monkeypatch.setitem(engines.REGISTRY, "raising", "tests.fake_engines:Raising")
    out = tmp_path / "s"
    code = run_cli("sweep", "--model", tiny_models["llama"], "--methods", "raising,kv-cache",
                   "--prompt-tokens", "4,8", "--output", out, *QUICK)
    assert code == 1
    r = load(os.path.join(only_run_folder(out), "results.json"))
    assert r.status == "complete" and len(r.cells) == 2
    for c in r.cells:
        assert c.method("kv-cache").ok
        assert c.method("raising").status == "failed" and "always fails to load" in c.method("raising").error
    assert r.method("raising").status == "failed"


SWEEP_IN_CHILD = (
    "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "from inferlab import cli, defaults; defaults.PROBE_BYTES = 32 << 20; "
    "sys.exit(cli.main(sys.argv[1:]))"
)


def wait_for_a_saved_cell(out, seconds: float) -> None:
    """Until the one sweep under `out` has saved a cell (or `seconds` have passed)."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        time.sleep(0.3)
        paths = [os.path.join(out, d, "results.json") for d in os.listdir(out)] if out.exists() else []
        if paths and os.path.exists(paths[0]) and json.load(open(paths[0]))["cells"]:
            return


def test_an_interrupted_sweep_resumes_with_only_the_missing_cells(tiny_models, tmp_path, request):
    out = tmp_path / "s"
    args = ["sweep", "--model", tiny_models["llama"], "--methods", "kv-cache",
            "--prompt-tokens", "4,8,12,16", "--new-tokens", "3", "--repeats", "40", "--max-repeats",
            "40", "--min-time", "0", "--threads", "1", "--no-quality", "--quiet"]
    proc = subprocess.Popen([sys.executable, "-c", SWEEP_IN_CHILD, *args, "--output", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    request.addfinalizer(proc.kill)
    wait_for_a_saved_cell(out, 120)  # then stop it
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    folder = only_run_folder(out)
    first = load(os.path.join(folder, "results.json"))
    assert first.status == "interrupted"
    complete = {c.cell.key: c for c in first.cells if c.status == "complete"}
    assert 1 <= len(complete) < 4
    assert "--resume" in err
    assert run_cli(*args, "--resume", folder) == 0
    second = load(os.path.join(folder, "results.json"))
    assert second.status == "complete" and len(second.cells) == 4
    assert sorted(c.cell.key for c in second.cells) == sorted(c.key for c in SweepConfig(
        methods=["kv-cache"], prompt_token_list=[4, 8, 12, 16], new_token_list=[3], thread_list=[1]).cells())
    for c in second.cells:  # cells measured before the interrupt are kept as they were
        if c.cell.key in complete:
            assert c.method("kv-cache").runs == complete[c.cell.key].method("kv-cache").runs


def test_resume_refuses_another_sweep_or_model(tiny_models, tmp_path, capsys):
    out = tmp_path / "s"
    base = ["sweep", "--methods", "kv-cache", "--prompt-tokens", "4", *QUICK]
    assert run_cli(*base, "--model", tiny_models["llama"], "--output", out) == 0
    folder = only_run_folder(out)
    capsys.readouterr()
    assert run_cli("sweep", "--methods", "kv-cache", "--prompt-tokens", "4,8", *QUICK,
                   "--model", tiny_models["llama"], "--resume", folder) == 2
    assert "another configuration (axes, identity" not in capsys.readouterr().err  # names fields
    assert run_cli("sweep", "--methods", "kv-cache", "--prompt-tokens", "4,8", *QUICK,
                   "--model", tiny_models["llama"], "--resume", folder) == 2
    assert "prompt_token_list differ" in capsys.readouterr().err
    assert run_cli(*base, "--model", tiny_models["gpt2"], "--resume", folder) == 2
    assert "measured another model" in capsys.readouterr().err
    assert run_cli(*base, "--model", tiny_models["llama"], "--resume", tmp_path / "nothing") == 2
    assert "results file not found" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--prompt-tokens", "8-1+1"], "reversed"),
    (["--prompt-tokens", "0"], "at least 1"),
    (["--new-tokens", "1"], "at least 2"),
    (["--depth", "100000"], "exceed"),
    (["--batch", "0"], "at least 1"),
    (["--threads", "1,100000"], "--threads must be between 1 and"),
    (["--methods", "kv-cache,warp-drive"], "unknown method"),
    (["--min-time", "inf"], "finite"),
    (["--batch", "4000000", "--new-tokens", "2", "--prompt-tokens", "1"], "would need up to"),
])
def test_bad_sweep_inputs_exit_2_with_one_line(tiny_models, args, message, tmp_path, capsys):
    assert run_cli("sweep", "--model", tiny_models["llama"], "--output", tmp_path / "s", "--quiet",
                   *args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1]
    assert not (tmp_path / "s").exists() or not os.listdir(tmp_path / "s")


def test_dry_run_lists_the_cells_and_measures_nothing(tmp_path, capsys):
    assert run_cli("sweep", "--methods", "kv-cache,onnx", "--prompt-tokens", "32,512",
                   "--depth", "0,1024", "--threads", "1", "--batch", "1,4", "--dry-run",
                   "--output", tmp_path / "s") == 0
    out = capsys.readouterr().out
    assert "pp512+tg32 @ d1024 t1 b4: kv-cache, onnx" in out and "8 cells x 2 methods" in out
    assert not (tmp_path / "s").exists()


def test_methods_take_turns_in_a_rotating_order(tiny_refs):
    """Inside a cell: an untimed first call each (the whole prompt, 2 new tokens), then one
    timed generation per method per round, the order shifted by one each round; the tokens
    every run must repeat are the first timed run's."""
    from inferlab import protocol as p
    from inferlab.config import RunConfig
    from inferlab.results import RunSample
    from inferlab.cells import CellSpec, measure_cell
    from inferlab.workload import TextTokens

    calls = []

    class Worker:
        pid = -1  # no process: the runner has nothing to wait for between methods

        def __init__(self, method):
            self.method = method

        def request(self, message, timeout_s):
            calls.append((self.method, message.timed))
            assert message.new_tokens == (3 if message.timed else 2)
            tokens = [1, 2, 3][:message.new_tokens]
            return p.Generated(sample=RunSample(0.01, 0.03, [0.01, 0.01]), tokens=tokens, sequences=[tokens],
                               cpu_s=0.0, rss_bytes=1, peak_rss_bytes=2)

    class Pool:
        def get(self, method, threads):
            return Worker(method)

    cell = Cell(4, 3, 0, 1, 1, ("a", "b", "c"))
    spec = CellSpec(tiny_refs["llama"], TextTokens(list(range(50)), "test"),
                    RunConfig(min_repeats=3, max_repeats=3, min_time_s=0))
    engines.REGISTRY.update(a="tests.fake_engines:Raising", b="tests.fake_engines:Raising",
                            c="tests.fake_engines:Raising")
    try:
        result = measure_cell(cell, spec, Pool())
    finally:
        for name in "abc":
            engines.REGISTRY.pop(name)
    assert calls[:3] == [("a", False), ("b", False), ("c", False)]
    assert [m for m, _ in calls[3:]] == list("abc" "bca" "cab")
    assert all(timed for _, timed in calls[3:])
    assert all(len(m.runs) == 3 and m.ok and m.tokens == [1, 2, 3] and m.deterministic
               for m in result.methods)


def _row(method, **figures):
    base = {"method": method, "machine": "", "n_prompt": 32, "n_gen": 32, "n_depth": 0, "n_threads": 2,
            "n_batch": 1, "e2e_ms": 100.0, "tpot_ms": 3.0}
    return {**base, **figures}


def test_crossovers_name_where_the_fastest_method_changes():
    from inferlab.derive_cells import crossovers

    rows = [_row("a", n_prompt=32, e2e_ms=100), _row("b", n_prompt=32, e2e_ms=150),
            _row("a", n_prompt=512, e2e_ms=600), _row("b", n_prompt=512, e2e_ms=450),
            _row("a", n_prompt=1024, e2e_ms=1400), _row("b", n_prompt=1024, e2e_ms=700)]
    (sentence,) = crossovers(rows, excluded=set())
    assert sentence.startswith("a is fastest end to end up to 32 prompt tokens; from 512, b")
    assert crossovers(rows, excluded={"b"}) == []  # a method that failed the gate never wins
    rows[2]["e2e_ms"] = 400  # a still wins at 512: the crossover moves
    assert crossovers(rows, excluded=set())[0].startswith("a is fastest end to end up to 512")


def test_crossovers_and_knees_never_mix_two_kinds_of_machine():
    from inferlab.derive_cells import crossovers, knees

    # a wins at 32 tokens on one machine, b at 512 on another: no crossover between machines
    rows = [_row("a", machine="box A", n_prompt=32, e2e_ms=100), _row("b", machine="box A", n_prompt=32, e2e_ms=150),
            _row("a", machine="box B", n_prompt=512, e2e_ms=600), _row("b", machine="box B", n_prompt=512, e2e_ms=450)]
    assert crossovers(rows, excluded=set()) == []
    rows += [_row("a", machine="box B", n_prompt=32, e2e_ms=100), _row("b", machine="box B", n_prompt=32, e2e_ms=150)]
    (sentence,) = crossovers(rows, excluded=set())
    assert sentence.endswith("(machine box B, n_gen 32, n_depth 0, n_threads 2, n_batch 1)")
    growth = [_row("a", machine="box A", n_batch=1, tg_tps_total=100.0),
              _row("a", machine="box B", n_batch=2, tg_tps_total=90.0)]
    assert knees(growth) == []  # batch 1 on one machine and batch 2 on another are no line
    growth += [_row("a", machine="box A", n_batch=2, tg_tps_total=190.0),
               _row("a", machine="box B", n_batch=1, tg_tps_total=50.0)]
    (sentence,) = knees(growth)  # still growing on both: each machine's rates apart
    assert "in 1 workload on box A (190-190 tok/s there)" in sentence
    assert "in 1 workload on box B (90-90 tok/s there)" in sentence


@pytest.mark.parametrize("gain, knee", [(0.099, True), (0.101, False)])
def test_the_batch_knee_is_where_the_next_batch_adds_less_than_the_threshold(gain, knee):
    from inferlab import defaults
    from inferlab.derive_cells import knees

    assert defaults.KNEE_GAIN == 0.10
    rows = [_row("a", n_batch=1, tg_tps_total=100.0), _row("a", n_batch=2, tg_tps_total=180.0),
            _row("a", n_batch=4, tg_tps_total=180.0 * (1 + gain))]
    (sentence,) = knees(rows)
    assert sentence.startswith("a: total decode throughput")
    assert ("stops growing at batch 2 at pp32 tg32 d0 t2" in sentence) == knee
    assert ("still grows at the largest batch (4) in 1 workload" in sentence) == (not knee)


def test_quality_is_judged_once_per_method_per_sweep(tiny_models, tmp_path):
    out = tmp_path / "s"
    assert run_cli("sweep", "--model", tiny_models["llama"], "--methods", "torch-int8,kv-cache",
                   "--prompt-tokens", "4,8", "--new-tokens", "3", "--repeats", "2", "--min-time", "0",
                   "--threads", "1", "--max-kl", "0.5", "--quiet", "--output", out) == 0
    r = load(os.path.join(only_run_folder(out), "results.json"))
    assert len(r.cells) == 2 and r.quality_setup["reference"] == "kv-cache"
    for m in r.methods:
        assert m.ok and m.quality.verdict in ("PASS", "FAIL") and m.quality.scored_tokens > 0
    assert r.method("kv-cache").quality.kl_mean == pytest.approx(0, abs=1e-6)
    md = open(os.path.join(only_run_folder(out), "report.md")).read()  # how quality was judged
    assert f"; {r.quality_setup['windows']} non-overlapping windows" in md and "None" not in md


def test_progress_is_a_line_per_cell_off_a_terminal_and_nothing_when_quiet():
    import io

    from inferlab.progress import SweepProgress
    from inferlab.results import CellResult, MethodResult

    def result(key_prompt, seconds, status="ok"):
        return CellResult(cell=Cell(key_prompt, 8), seconds=seconds,
                          methods=[MethodResult(method="a", status=status)])

    stream = io.StringIO()
    progress = SweepProgress(total=3, already=1, stream=stream)
    progress.advance(result(32, 10.0))
    progress.advance(result(64, 20.0, status="failed"))
    lines = stream.getvalue().splitlines()
    assert lines[0] == "cell 2/4 pp32+tg8 t1 b1: 10.0 s; ETA 20s"
    assert lines[1] == "cell 3/4 pp64+tg8 t1 b1: 20.0 s (a failed); ETA 15s"
    quiet = io.StringIO()
    SweepProgress(total=3, already=0, quiet=True, stream=quiet).advance(result(32, 1.0))
    assert quiet.getvalue() == ""


def test_a_sweep_longer_than_the_default_slots_makes_engines_reserve_enough(monkeypatch, tiny_refs):
    from types import SimpleNamespace

    monkeypatch.setattr(defaults, "KV_SLOTS", 2048)
    monkeypatch.delenv(defaults.KV_SLOTS_ENV, raising=False)
    long = SweepConfig(methods=["kv-cache"], prompt_token_list=[2048], new_token_list=[32], depth_list=[2048])
    model = SimpleNamespace(path="/nonexistent")  # no config: no context window to respect
    assert long.check_lengths(model) == 4352  # 4128 in whole 256s, for every cell and method
    assert os.environ[defaults.KV_SLOTS_ENV] == "4352"  # what the workers read
    short = SweepConfig(methods=["kv-cache"], prompt_token_list=[32], new_token_list=[8], depth_list=[0])
    assert short.check_lengths(model) == 4352  # never less than already reserved
    with pytest.raises(ValueError, match="exceed the model's context window of 256 tokens"):
        long.check_lengths(tiny_refs["llama"])
