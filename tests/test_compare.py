"""compare, history and export: the rules at their boundaries on made-up results, then the
commands end to end on the tiny model (a method slowed on purpose must fail the gate)."""

import copy
import json
import os
import sqlite3

import pytest

from inferlab import cli, compare as cmp, engines
from inferlab.results import Cell, CellResult, save
from tests.made_up import method, results

def line(base, new, gate=cmp.Gate()):
    (only,) = cmp.compare(results(base), results(new), "base", "new", gate).lines
    return only


@pytest.mark.parametrize("ratio, low, high, gated, expected", [
    # without a gate: significant (interval excludes 1) and the median beyond the 5 % band
    (1.06, 1.01, 1.10, False, "regressed"), (1.04, 1.01, 1.07, False, "no change"),
    (1.06, 0.99, 1.10, False, "no change"), (0.94, 0.90, 0.99, False, "improved"),
    (0.96, 0.93, 0.99, False, "no change"),
    # with a gate at 5 %: the whole interval beyond 1.05 fails, crossing it is undecided
    (1.10, 1.051, 1.20, True, "regressed"), (1.10, 1.049, 1.20, True, "inconclusive"),
    (1.02, 0.98, 1.049, True, "no change"), (1.02, 0.98, 1.051, True, "inconclusive"),
])
def test_labels_at_their_boundaries(ratio, low, high, gated, expected):
    assert cmp.label(ratio, low, high, 0.05, gated) == expected


def test_runs_needed_grow_as_the_median_nears_the_threshold():
    # half-width 0.100 in logs, 0.0488 to the threshold: (0.100 / 0.0488)^2 = 4.2 times the runs
    far = cmp.runs_needed(1.0, 0.9, 1.1, 0.05, 3)
    assert far == 13
    assert cmp.runs_needed(1.02, 0.95, 1.15, 0.05, 3) == 33
    assert cmp.runs_needed(1.04, 0.95, 1.15, 0.05, 3) is None  # 298 runs: beyond what decides
    assert cmp.runs_needed(1.05, 0.95, 1.15, 0.05, 3) is None  # on the threshold: none decide


def test_a_slower_method_fails_the_gate_and_a_steady_one_passes():
    gate = cmp.Gate(slower=0.05)
    slow = line(method("a", 100), method("a", 120, seed=1), gate)
    assert slow.label == "regressed" and slow.failures and "E2E 1.20x slower" in slow.failures[0]
    same = line(method("a", 100), method("a", 100.5, seed=1), gate)
    assert same.label == "no change" and not same.failures and not same.undecided
    fast = line(method("a", 100), method("a", 50, seed=1), gate)
    assert fast.label == "improved" and abs(1 / fast.figure("e2e_s").ratio - 2) < 0.05
    assert fast.figure("e2e_s").words().endswith("x faster [1.98-2.01]")


def test_wide_intervals_leave_the_gate_undecided_and_say_how_many_runs_would_decide():
    c = cmp.compare(results(method("a", 100, spread=0.1, n=6)),
                    results(method("a", 103, spread=0.1, n=6, seed=3)), "b", "n", cmp.Gate(slower=0.05))
    assert c.outcome == "inconclusive" and c.exit_code == 3
    assert any("timed runs a side would decide" in u or "would not decide" in u for u in c.lines[0].undecided)
    assert cmp.compare(results(method("a", 100)), results(method("a", 103)), "b", "n").exit_code == 0  # no gate


def test_memory_and_quality_gates():
    bigger = line(method("a", 100, peak=100e6), method("a", 100, peak=115e6, seed=0), cmp.Gate(larger=0.10))
    assert bigger.failures == ["peak RSS 1.15x the base's: larger than the 10% allowed"]
    assert not line(method("a", 100, peak=100e6), method("a", 100, peak=109e6), cmp.Gate(larger=0.10)).failures
    # a speedup that breaks the quality budget is a regression; the gate fails only when asked
    broke = line(method("a", 100, quality="PASS"), method("a", 50, quality="FAIL"))
    assert broke.label == "regressed" and "quality FAIL" in broke.note and not broke.failures
    assert line(method("a", 100, quality="PASS"), method("a", 50, quality="FAIL"),
                cmp.Gate(quality=True)).failures == ["quality FAIL"]
    assert line(method("a", 100, quality="PASS"), method("a", 50), cmp.Gate(quality=True)).undecided


def test_another_model_is_refused_unless_forced_and_another_cpu_is_flagged():
    base, new = results(method("a", 100)), results(method("a", 100), model_hash="bbb")
    with pytest.raises(cmp.CompareError, match="not the same model"):
        cmp.compare(base, new, "b", "n")
    with pytest.raises(cmp.CompareError, match="not the same workload"):
        cmp.compare(base, results(method("a", 100), prompt=(1, 2)), "b", "n")
    forced = cmp.compare(base, new, "b", "n", force=True)
    from inferlab.report.compare import console, rows

    assert forced.warning == "not the same model" and all("not the same model" in r[-1] for r in rows(forced))
    other_cpu = cmp.compare(base, results(method("a", 100), cpu="Other CPU"), "b", "n")
    assert [d.what for d in other_cpu.differences] == ["CPU"]
    text = console(other_cpu)
    assert text.index("CPU: Test CPU -> Other CPU") < text.index("E2E")  # said first
    with pytest.raises(cmp.CompareError, match="cannot compare a run"):
        sweep = copy.deepcopy(base)
        sweep.sweep = {"axes": {}}
        cmp.compare(base, sweep, "b", "n")


def test_sweeps_pair_cells_and_methods_pair_inside_one_results():
    def sweep(factor):
        r = results()
        r.sweep = {"axes": {"batch": [1, 4]}, "prompt_text": "t"}
        r.cells = [CellResult(Cell(32, 4, batch=b), "complete", [method("a", 100 * b * factor), method("b", 50 * b)])
                   for b in (1, 4)]
        return r
    c = cmp.compare(sweep(1), sweep(1.5), "b", "n")
    by = {(x.cell, x.method): x.label for x in c.lines}
    assert by == {("pp32+tg4 t1 b1", "a"): "regressed", ("pp32+tg4 t1 b1", "b"): "no change",
                  ("pp32+tg4 t1 b4", "a"): "regressed", ("pp32+tg4 t1 b4", "b"): "no change"}
    one = sweep(1)
    pair = cmp.compare(one, one, "r", "r", methods=("a", "b"))
    assert [x.method for x in pair.lines] == ["a -> b"] * 2 and all(x.label == "improved" for x in pair.lines)


# --- the commands on the tiny model ---------------------------------------------------------

FAST = ["--new-tokens", "6", "--repeats", "8", "--min-time", "0", "--warmup", "1", "--threads", "1",
        "--no-quality", "--quiet"]


def run_cli(*args):
    try:
        return cli.main([str(a) for a in args])
    except SystemExit as e:
        return e.code


def test_compare_history_and_export_end_to_end(tiny_models, tmp_path, monkeypatch, capsys):
    import pandas as pd

    monkeypatch.setenv("INFERLAB_HISTORY", str(tmp_path / "history.sqlite"))
    out = tmp_path / "results"
    assert run_cli("run", "--model", tiny_models["llama"], "--methods", "kv-cache,native-int4", "--output", out, *FAST) == 0
    monkeypatch.setitem(engines.REGISTRY, "kv-cache", "tests.fake_torch_engines:SlowedKVCache")
    assert run_cli("run", "--model", tiny_models["llama"], "--methods", "kv-cache,native-int4", "--output", out, *FAST) == 0
    base, new = sorted(os.path.join(out, d) for d in os.listdir(out) if d[0].isdigit())
    capsys.readouterr()

    # the slowed method fails the gate (exit 1); `last` finds the base in the history
    assert run_cli("compare", "last", new, "--fail-if-slower", "10%", "--output", tmp_path / "c") == 1
    text = capsys.readouterr().out
    assert "(history #1)" in text and "gate FAILS" in text
    assert "kv-cache [pp" in text and "FAILS: TPOT" in text  # 20 ms a step against a fraction of one
    (folder,) = os.listdir(tmp_path / "c")
    page = open(tmp_path / "c" / folder / "compare.html").read()
    assert "data:image/png;base64," in page and "gate FAILS" in page
    saved = json.load(open(tmp_path / "c" / folder / "compare.json"))
    assert saved["outcome"] == "regression" and saved["exit_code"] == 1

    # two methods of one run: the speedup with its interval, no gate
    assert run_cli("compare", base, "--methods", "kv-cache,native-int4", "--output", tmp_path / "c") == 0
    assert "native-int4 against kv-cache: " in capsys.readouterr().out

    # the history lists both runs; filters narrow it
    assert run_cli("history", "--method", "native") == 0
    listed = capsys.readouterr().out
    assert "2 result sets" in listed and base in listed and new in listed
    assert run_cli("history", "--model", "no-such-model") == 0 and "0 result sets" in capsys.readouterr().out

    # exports: pandas reads them as they are, with the history's columns
    assert run_cli("export", new, "--format", "csv") == 0
    assert run_cli("export", "2", "--format", "jsonl") == 0
    assert run_cli("export", new, "--format", "sqlite") == 0
    csv_rows = pd.read_csv(os.path.join(new, "records.csv"))
    jsonl_rows = pd.read_json(os.path.join(new, "records.jsonl"), lines=True)
    db = sqlite3.connect(tmp_path / "history.sqlite")
    history_columns = [r[1] for r in db.execute("PRAGMA table_info(records)")][1:]  # after run_id
    assert list(csv_rows.columns) == list(jsonl_rows.columns) == history_columns
    assert sorted(csv_rows["method"]) == ["kv-cache", "native-int4"] and (csv_rows["runs"] >= 8).all()
    kv = csv_rows[csv_rows["method"] == "kv-cache"].iloc[0]
    assert kv["tpot_ms"] > 20 and kv["samples"].endswith("results.json#/methods/0/runs")
    assert db.execute("SELECT count(*) FROM records").fetchone()[0] == 4
    assert run_cli("export", new, "--per-token") == 0
    tokens = pd.read_csv(os.path.join(new, "tokens.csv"))
    assert len(tokens) == 6 * csv_rows["runs"].sum()
    assert (tokens[tokens["token"] > 0]["itl_ms"] > 0).all()


def test_history_that_is_corrupt_locked_or_read_only(tmp_path, monkeypatch, capsys):
    from inferlab import history

    r = results(method("a", 100))
    path = str(tmp_path / "run" / "results.json")
    os.makedirs(os.path.dirname(path))
    save(r, path)
    db = str(tmp_path / "h.sqlite")
    assert history.add(r, path, path=db) == 1 and history.add(r, path, path=db) == 1  # refreshed, not doubled
    assert len(history.run_records(db, 1)) == 1

    locker = sqlite3.connect(db)
    locker.execute("BEGIN EXCLUSIVE")
    monkeypatch.setattr(history, "LOCK_WAIT_S", 0.1)
    with pytest.raises(history.HistoryError, match="is locked"):
        history.add(r, path, path=db)
    locker.rollback()
    locker.close()
    assert len(history.run_records(db, 1)) == 1  # nothing written half

    corrupt = tmp_path / "corrupt.sqlite"
    corrupt.write_bytes(b"not a database at all" * 100)
    monkeypatch.setenv("INFERLAB_HISTORY", str(corrupt))
    assert run_cli("history") == 2
    assert "is corrupt" in capsys.readouterr().err.strip().splitlines()[-1]

    # unwritable: a folder that is a file (any user), a read-only file (where permissions bind)
    with pytest.raises(history.HistoryError, match="cannot be written"):
        history.add(r, path, path=str(corrupt / "h.sqlite"))
    os.chmod(db, 0o444)
    if not os.access(db, os.W_OK):
        with pytest.raises(history.HistoryError, match="cannot be written"):
            history.add(r, str(tmp_path / "other.json"), path=db)
    # a run whose history cannot be written keeps its results and says so in one line
    monkeypatch.setenv("INFERLAB_HISTORY", str(corrupt))
    assert cli.add_to_history(r, os.path.dirname(path), "run") == ""
    assert capsys.readouterr().err.startswith("inferlab: warning: not added to the history: ")


def test_bad_inputs_of_compare_and_export_exit_2(tmp_path, capsys):
    r = results(method("a", 100))
    good = str(tmp_path / "good")
    os.makedirs(good)
    save(r, os.path.join(good, "results.json"))
    truncated = tmp_path / "truncated.json"
    truncated.write_text(open(os.path.join(good, "results.json")).read()[:200])
    other = tmp_path / "other"
    os.makedirs(other)
    save(results(method("a", 100), model_hash="zzz"), str(other / "results.json"))
    cases = [(["compare", good, truncated], "corrupt"), (["compare", good, other], "not the same model"),
             (["compare", good, tmp_path / "missing"], "results not found"),
             (["compare", good], "give BASE and NEW"),
             (["compare", good, good, "--fail-if-slower", "5"], "write a percentage"),
             (["export", good, "--output", tmp_path / "no" / "dir" / "x.csv"], "cannot write")]
    for args, message in cases:
        assert run_cli(*args, *(["--output", tmp_path / "c"] if args[0] == "compare" and "--output" not in args else [])) == 2, args
        assert message in capsys.readouterr().err.strip().splitlines()[-1], args
    assert not os.path.exists(tmp_path / "no")
    assert [f for f in os.listdir(good) if ".tmp" in f] == []


def test_the_gate_judges_only_the_figures_asked():
    base, new = method("a", 100), method("a", 100, seed=1)
    for run in new.runs:  # a prefill twice as slow inside an unchanged E2E (a faster decode)
        run.ttft_s *= 2
    assert line(base, new, cmp.Gate(slower=0.05)).failures[0].startswith("TTFT")
    assert not line(base, new, cmp.Gate(slower=0.05, figures=("e2e_s",))).failures
    assert run_cli("compare", "x", "--figures", "e2e,latency") == 2


def test_one_method_named_is_compared_alone(tmp_path, capsys):
    for name, factor in (("base", 1.0), ("new", 1.5)):
        os.makedirs(tmp_path / name)
        save(results(method("kv-cache", 100 * factor), method("native-int4", 100, seed=1)),
             str(tmp_path / name / "results.json"))
    assert run_cli("compare", tmp_path / "base", tmp_path / "new", "--methods", "native-int4", "--output",
                   tmp_path / "c", "--fail-if-slower", "10%") == 0  # kv-cache, 1.5x slower, not looked at
    (folder,) = os.listdir(tmp_path / "c")
    saved = json.load(open(tmp_path / "c" / folder / "compare.json"))
    assert [x["new_method"] for x in saved["lines"]] == ["native-int4"] and saved["gate"]["slower"] == 0.1
    assert run_cli("compare", tmp_path / "base", tmp_path / "new", "--output", tmp_path / "c",
                   "--fail-if-slower", "10%") == 1
