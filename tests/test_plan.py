"""inferlab plan: scenarios (reading, checking, the examples, the template), the verdict's
logic on planted figures, and the command end to end on a tiny model."""

import os

import pytest

from inferlab.results import Cell, CellResult, MethodResult, QualityResult, RunResults, RunSample
from inferlab.scenario import ScenarioError, example_names, find_scenario, load_scenario, write_template
from inferlab.verdict import EXIT_MET, EXIT_NONE_MET, EXIT_ONLY_INDETERMINATE, INDETERMINATE, MET, MISSED, judge
from tests.test_cli import only_run_folder, run_cli

GOOD = '''name = "chat"
cost = "cores"

[workload]
prompt_tokens = [8]
new_tokens = 4
threads = "1-2+1"

[[requirement]]
category = "user experience"
metric = "ttft"
percentile = 95
max = 300
unit = "ms"
'''


def write(tmp_path, text, name="s.toml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_the_shipped_examples_read_and_every_scenario_has_quality_and_reliability():
    assert example_names() == ["batch-summarizer", "chat-assistant", "edge-device", "retrieval"]
    for name in example_names():
        s = load_scenario(find_scenario(name))
        assert s.requirements[-3:][0].metric == "quality"
        assert [r.metric for r in s.requirements[-2:]] == ["completes", "deterministic"]
    chat = load_scenario(find_scenario("chat-assistant"))
    assert [r.describe() for r in chat.requirements[:2]] == ["TTFT p95 <= 300 ms", "TPOT p95 <= 50 ms"]
    assert chat.workload.threads == [1, 2] and chat.requirements[0].limit == pytest.approx(0.3)


def test_a_good_scenario_reads_lists_in_every_grammar(tmp_path):
    s = load_scenario(write(tmp_path, GOOD))
    assert s.workload.threads == [1, 2] and s.workload.new_tokens == [4] and s.workload.depth == [0]
    assert s.requirements[0].line == 9  # where [[requirement]] starts


@pytest.mark.parametrize("change, message", [
    (("[workload]", "[workload"), "not valid TOML"),
    (('metric = "ttft"', 'metric = "ttfb"'), "line 11: requirement 1.metric: 'ttfb' is not one of"),
    (('category = "user experience"', 'category = "speed"'), "line 10: requirement 1.category: 'speed'"),
    (('unit = "ms"', 'unit = "MB"'), "line 14: requirement 1.unit: 'MB' is not a unit of time"),
    (("percentile = 95", "percentile = 97"), "line 12: requirement 1.percentile: 97 is not one of"),
    (("max = 300", "min = 300"), "line 13: requirement 1.min: ttft is a time: its requirement is a max"),
    (("max = 300", "max = -1"), "requirement 1.max: must be a positive number"),
    (('prompt_tokens = [8]\n', ''), "workload.prompt_tokens: missing"),
    (('threads = "1-2+1"', 'threads = "2-1+1"'), "line 7: workload.threads: "),
    (('cost = "cores"', 'cost = "cheap"'), "line 2: cost: 'cheap' is not one of"),
    (('cost = "cores"', 'costs = "cores"'), "line 2: costs: unknown key"),
    (('name = "chat"', ''), "name: missing"),
])
def test_a_bad_scenario_is_one_error_naming_the_key_and_its_line(tmp_path, change, message):
    old, new = change
    assert old in GOOD
    with pytest.raises(ScenarioError, match=message.replace("(", r"\(").replace("[", r"\[").replace("+", r"\+")):
        load_scenario(write(tmp_path, GOOD.replace(old, new)))


def test_measure_takes_counts_and_times_only(tmp_path):
    s = load_scenario(write(tmp_path, GOOD + "\n[measure]\nrepeats = 7\nmin_time_s = 0.5\n"))
    assert (s.repeats, s.min_time_s) == (7, 0.5)
    with pytest.raises(ScenarioError, match=r"line 17: measure.repeats: must be an integer of at least 1"):
        load_scenario(write(tmp_path, GOOD + "\n[measure]\nrepeats = 0\n"))


def test_a_percentile_of_a_rate_does_not_exist(tmp_path):
    text = GOOD.replace('metric = "ttft"', 'metric = "total_rate"').replace("max = 300", "min = 3") \
        .replace('unit = "ms"', 'unit = "tok/s"')
    with pytest.raises(ScenarioError, match="line 12: requirement 1.percentile: total_rate has no percentiles"):
        load_scenario(write(tmp_path, text))


def test_the_command_refuses_a_bad_scenario_before_anything_runs(tmp_path, capsys):
    assert run_cli("plan", write(tmp_path, GOOD.replace('"ttft"', '"ttfb"')), "--output", tmp_path / "r") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "requirement 1.metric" in err
    assert not (tmp_path / "r").exists()
    assert run_cli("plan", "no-such-scenario") == 2
    assert "examples shipped with inferlab: batch-summarizer" in capsys.readouterr().err


def test_new_writes_a_template_that_reads_and_never_overwrites(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert run_cli("plan", "--new", "mine") == 0
    s = load_scenario("mine.toml")
    assert s.name == "mine" and s.requirements[0].metric == "ttft"
    assert run_cli("plan", "--new", "mine") == 2
    assert "exists already" in capsys.readouterr().err
    assert write_template("other", str(tmp_path)).endswith("other.toml")


# --- the verdict on planted figures -----------------------------------------------------------
def _method(name, ttft_ms, threads, rss=100e6):
    runs = [RunSample(t / 1e3, t / 1e3 + 0.1, [0.01] * 3) for t in ttft_ms]
    return MethodResult(method=name, status="ok", runs=runs, peak_rss_bytes=int(rss), threads=threads,
                        deterministic=True)


def _results(per_threads):
    """per_threads: {threads: {method: ttft samples in ms}}"""
    cells = []
    for threads, methods in per_threads.items():
        cell = CellResult(cell=Cell(8, 4, 0, threads, 1, tuple(methods)), status="complete")
        cell.methods = [_method(m, t, threads) for m, t in methods.items()]
        cells.append(cell)
    names = sorted({m for ms in per_threads.values() for m in ms})
    return RunResults(config={}, machine={}, model={"name": "tiny"}, prompt_tokens=8, cells=cells,
                      methods=[MethodResult(method=m, status="ok", quality=QualityResult(verdict="PASS")) for m in names])


def test_met_missed_and_indeterminate_follow_the_interval_not_the_point(tmp_path):
    s = load_scenario(write(tmp_path, GOOD))
    v = judge(s, _results({1: {"fast": [100, 110, 105, 102, 108], "slow": [400, 420, 410, 415, 405],
                               "edge": [250, 350, 280, 330, 290]}}))
    status = {c.method: c.checks[0].status for c in v.configurations}
    assert status == {"fast": MET, "slow": MISSED, "edge": INDETERMINATE}
    edge = next(c for c in v.configurations if c.method == "edge")
    assert "more runs would decide" in edge.checks[0].note
    assert v.recommended.method == "fast" and v.exit_code == EXIT_MET


def test_the_cheapest_configuration_wins_and_none_met_names_the_nearest(tmp_path):
    s = load_scenario(write(tmp_path, GOOD))
    v = judge(s, _results({1: {"a": [200] * 5, "b": [100] * 5}, 2: {"a": [90] * 5, "b": [50] * 5}}))
    assert v.recommended.name == "b t1 b1"  # fewest threads, then the fastest
    assert [c.name for c in v.runners_up] == ["a t1 b1", "b t2 b1", "a t2 b1"]
    none = judge(s, _results({1: {"a": [400] * 5, "b": [330] * 5}}))
    assert none.recommended is None and none.nearest.method == "b" and none.exit_code == EXIT_NONE_MET
    unsure = judge(s, _results({1: {"a": [250, 350, 280, 330, 290]}}))
    assert unsure.exit_code == EXIT_ONLY_INDETERMINATE


def test_on_two_kinds_of_machine_a_configuration_is_a_method_on_one_of_them(tmp_path):
    s = load_scenario(write(tmp_path, GOOD))
    r = _results({1: {"a": [400] * 5, "kv-cache": [800] * 5}})  # a misses on the slow box
    fast = CellResult(cell=Cell(8, 4, 0, 1, 1, ("a", "kv-cache"), machine="k-fast"), status="complete",
                      methods=[_method("a", [100] * 5, 1), _method("kv-cache", [300] * 5, 1)])
    r.cells[0].cell = Cell(8, 4, 0, 1, 1, ("a", "kv-cache"), machine="k-slow")
    r.cells.append(fast)
    r.machines = {"k-slow": {"cpu": "Slow CPU", "usable_cpus": 2}, "k-fast": {"name": "fast box"}}
    v = judge(s, r)
    assert sorted(c.name for c in v.configurations) == [
        "a t1 b1 on Slow CPU, 2 CPUs", "a t1 b1 on fast box", "kv-cache t1 b1 on Slow CPU, 2 CPUs",
        "kv-cache t1 b1 on fast box"]
    assert v.recommended.name == "a t1 b1 on fast box"
    (speedup,) = v.speedups  # against the baseline on its own machine only: E2E 400 / 200 ms
    assert speedup.cell.endswith("on k-fast") and speedup.ratio == pytest.approx(2.0, rel=0.05)


def test_a_method_that_failed_a_run_or_the_quality_budget_misses(tmp_path):
    s = load_scenario(write(tmp_path, GOOD))
    r = _results({1: {"a": [100] * 5, "b": [100] * 5}})
    r.cells[0].methods[0].status, r.cells[0].methods[0].error = "failed", "boom"
    r.method("b").quality = QualityResult(verdict="FAIL", reasons=["KL 0.1 > 0.02 nats"])
    v = judge(s, r)
    assert v.recommended is None
    checks = {c.method: {ch.requirement.metric: ch.status for ch in c.checks} for c in v.configurations}
    assert checks["a"]["completes"] == MISSED and checks["b"]["quality"] == MISSED


# --- the command end to end --------------------------------------------------------------------
def test_plan_end_to_end_on_a_tiny_model(tiny_models, tmp_path, capsys):
    text = GOOD.replace('name = "chat"', f'name = "chat"\nmodel = "{tiny_models["llama"]}"') \
        .replace('threads = "1-2+1"', "threads = 1") + "\n[measure]\nrepeats = 3\nmin_time_s = 0\n"
    ok = write(tmp_path, text, "ok.toml")
    code = run_cli("plan", ok, "--methods", "kv-cache", "--output", tmp_path / "a", "--quiet")
    assert code == 0
    folder = only_run_folder(tmp_path / "a")
    md = open(os.path.join(folder, "verdict.md")).read()
    first = [line for line in md.splitlines() if line.strip()][1]
    assert first.startswith("> **kv-cache on 1 thread, batch 1** meets every requirement")  # the answer first
    assert "eager-nocache" in md  # the original baseline, added and compared
    assert "## Run the winner outside inferlab" in md and "AutoModelForCausalLM.from_pretrained" in md
    winner = os.path.join(folder, "winner", os.path.basename(tiny_models["llama"]))
    assert os.path.isfile(os.path.join(winner, "config.json")) and f"from_pretrained('{winner}')" in md
    assert os.path.exists(os.path.join(folder, "verdict.html"))
    assert "kv-cache on 1 thread" in capsys.readouterr().out
    impossible = write(tmp_path, text.replace("max = 300", "max = 0.001"), "no.toml")
    assert run_cli("plan", impossible, "--methods", "kv-cache", "--output", tmp_path / "b", "--quiet") == 3
    md = open(os.path.join(only_run_folder(tmp_path / "b"), "verdict.md")).read()
    assert "No configuration meets every requirement" in md and "misses TTFT p95 <= 0.001 ms by " in md and "x the limit" in md
    # the nearest one's bottleneck, from its profile and the hardware floors
    assert "- where its time goes, at pp8+tg4 t1 b1: prefill" in md
    assert "- the profiler: decode" in md and "- next to try: " in md


@pytest.mark.parametrize("method", ["kv-cache", "torch-int8", "native-int4", "onnx-int4", "openvino-int8", "ort-genai-int8"])
def test_the_winner_runs_outside_inferlab_as_its_recipe_says(tiny_refs, method):
    """The lines a verdict prints run as they are and generate what inferlab's run of the
    method generates (greedy, same prompt)."""
    import subprocess
    import sys

    from tokenizers import Tokenizer

    from inferlab.engines import engine_class
    from inferlab.harness import generate

    ref, prompt = tiny_refs["llama"], "The printing press changed"
    engine = engine_class(method)(ref, 1)
    if engine.unavailable(ref):
        pytest.skip(f"{method} cannot run here: {engine.unavailable(ref)}")
    engine.prepare()
    usage = engine.usage(prompt, 6)
    assert os.path.exists(usage.path) and usage.requires
    done = subprocess.run([sys.executable, "-c", usage.code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    engine.load()
    tokenizer = Tokenizer.from_file(os.path.join(ref.path, "tokenizer.json"))
    tokens = generate(engine, tokenizer.encode(prompt).ids, 6).tokens
    assert done.stdout.rstrip("\n") == tokenizer.decode(tokens)


def test_the_verdict_page_opens_in_a_browser_with_the_answer_on_top(tmp_path):
    """verdict.html in headless Chromium: no console error, the answer right under the title,
    before any table."""
    from inferlab.report import to_html
    from inferlab.report.verdict import render
    from tests.browser import render as open_in_browser

    s = load_scenario(write(tmp_path, GOOD))
    results = _results({1: {"a": [200] * 5, "b": [100] * 5, "c": [400] * 5}, 2: {"a": [90] * 5}})
    page = tmp_path / "verdict.html"
    page.write_text(to_html(render(judge(s, results), results)))
    dom, console = open_in_browser(str(page), str(tmp_path / "verdict.png"))
    assert console == []
    body = dom[dom.index("<body>"):]
    assert body.index("<h1>Verdict: chat</h1>") < body.index("<b>b on 1 thread, batch 1</b> meets every") \
        < body.index("<table>")
    assert "<td><b>missed</b> 400" in body and "**" not in body  # Markdown emphasis rendered, in tables too
    assert os.path.getsize(tmp_path / "verdict.png") > 10_000


def test_when_prefill_is_most_of_the_time_the_advice_is_about_prefill():
    from inferlab.plan import prefill_advice

    from inferlab.derive import derive

    rows = derive(_results({1: {"slow": [3000] * 5, "fast": [1000] * 5}})).cells
    advice = prefill_advice(rows, "slow", 0.84)
    assert advice.startswith("the prompt's prefill is most of the time at 84% of the fp32 compute roof")
    assert advice.endswith("fast prefills the prompt in 1000 ms against 3000")
    assert "prefills the prompt" not in prefill_advice(rows, "fast", None)  # already the fastest


def test_the_winner_is_a_folder_to_copy_and_its_lines_read_it_there(tmp_path):
    from inferlab.plan import export_winner

    cache = tmp_path / "cache"
    model = cache / "q4"
    model.mkdir(parents=True)
    (model / "weights.bin").write_bytes(b"w")
    tokenizer = cache / "tokenizer.json"
    tokenizer.write_text("{}")
    usage = {"path": str(model), "code": f"load({str(model)!r}, {str(tokenizer)!r})", "shell": "",
             "also": [str(tokenizer)]}
    out = export_winner(usage, str(tmp_path / "winner"))
    assert out["path"] == str(tmp_path / "winner" / "q4")
    assert (tmp_path / "winner" / "q4" / "weights.bin").read_bytes() == b"w"
    assert (tmp_path / "winner" / "tokenizer.json").exists() and str(cache) not in out["code"]


@pytest.mark.parametrize("bound, low, high, expected", [
    ("max", 0.290, 0.300, MET), ("max", 0.2995, 0.3005, INDETERMINATE), ("max", 0.3001, 0.31, MISSED),
    ("min", 100.0, 120.0, MET), ("min", 99.9, 120.0, INDETERMINATE), ("min", 80.0, 99.99, MISSED),
])
def test_a_requirement_is_judged_by_its_interval_at_the_limit(bound, low, high, expected):
    """A limit of 300 ms (max) or 100 tok/s (min): met only when the whole interval is on the
    right side, the limit itself included; missed only when the whole interval is beyond it."""
    from inferlab.scenario import Requirement
    from inferlab.verdict import Figure, judge_figure

    req = Requirement("latency", "ttft", bound, 0.300 if bound == "max" else 100.0)
    assert judge_figure(req, Figure((low + high) / 2, low, high, 5)) == expected
