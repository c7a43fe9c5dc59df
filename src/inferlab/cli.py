"""Command line: `inferlab run`, `inferlab quality`, `inferlab profile`, `inferlab sweep`,
`inferlab plan`, `inferlab report`, `inferlab compare`, `inferlab history`, `inferlab export`,
`inferlab methods`, `inferlab doctor`.

Exit codes: 0 all good; 1 the run finished but a method failed; 2 bad input (model, option,
results file, scenario); 130 interrupted (results measured so far are saved); `plan`: 3 when
no configuration meets the scenario's requirements, 4 when only indeterminate ones remain;
`compare` with a gate: 1 a regression, 3 undecided (the intervals are too wide)."""

from __future__ import annotations

import argparse
import math
import os
import sys

from . import defaults
from .lean_imports import skip_unused_imports

EXIT_OK, EXIT_METHOD_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130


def _methods_arg(text: str) -> list[str]:
    from .engines import method_names

    names = [m.strip() for m in text.replace(" ", ",").split(",") if m.strip()]
    if names == ["all"]:
        return method_names()
    unknown = [m for m in names if m not in method_names()]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown method(s): {', '.join(unknown)} (valid: {', '.join(method_names())}, all)"
        )
    return names


def _number(convert, minimum, what):
    """An argparse type: `convert` the text, then require value >= minimum."""
    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not {what}: {text}") from None
        if not math.isfinite(value):  # float() takes "nan" and "inf"
            raise argparse.ArgumentTypeError(f"must be a finite number: {text}")
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}: {text}")
        return value
    return parse


_positive_int = _number(int, 1, "an integer")
_non_negative_float = _number(float, 0, "a number")


def _fraction(text: str) -> float:
    value = _non_negative_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1: {text}")
    return value


def _share(text: str) -> float:
    """'5%' or '0.05': a fraction of a figure."""
    value = _non_negative_float(text[:-1]) / 100 if text.endswith("%") else _non_negative_float(text)
    if not text.endswith("%") and value > 1:
        raise argparse.ArgumentTypeError(f"write a percentage (5%) or a fraction (0.05): {text}")
    return value


def _figure_list(text: str) -> tuple[str, ...]:
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in ("e2e", "ttft", "tpot")]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"figures are e2e, ttft, tpot: {text}")
    return tuple(f"{n}_s" for n in names)


def _method_pair(text: str) -> list[str]:
    names = _methods_arg(text)
    if len(names) not in (1, 2):
        raise argparse.ArgumentTypeError(f"one method, or two as A,B: {text}")
    return names


def _int_list(minimum: int):
    """An argparse type: a llama-bench list (`1,2,4`, `1-8+1`, `1-64*2`), each value >= minimum."""
    def parse(text: str) -> list[int]:
        from .int_lists import parse_int_list

        try:
            values = parse_int_list(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
        if min(values) < minimum:
            raise argparse.ArgumentTypeError(f"every value must be at least {minimum}: {text}")
        return values
    return parse


def add_cluster_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("where the cells run (default: here, one after another)")
    g.add_argument("--cluster", metavar="ADDRESS",
                   help="a Ray cluster: 'auto' (the one this machine belongs to), ray://HOST:PORT, "
                        "HOST:PORT (its GCS), or local:N (N simulated nodes on this machine); each "
                        "cell runs on one node, never two at once on one host")
    g.add_argument("--nodes", metavar="FILTER",
                   help="only the cluster's nodes with every term: LABEL=VALUE or a resource name "
                        "(comma-separated)")


def add_sweep_axes(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("the sweep's axes (lists: 1,2,4 or 1-8+1 or 1-64*2; every combination runs)")
    g.add_argument("--prompt-tokens", type=_int_list(1), default=list(defaults.SWEEP_PROMPT_TOKENS),
                   help="prompts of exactly these many tokens, cut from --text-file or CPython's "
                        "pydoc_data.topics (default "
                        f"{','.join(map(str, defaults.SWEEP_PROMPT_TOKENS))})")
    g.add_argument("--new-tokens", type=_int_list(2), default=[defaults.SWEEP_NEW_TOKENS],
                   help=f"generated tokens (default {defaults.SWEEP_NEW_TOKENS})")
    g.add_argument("--depth", type=_int_list(0), default=[0],
                   help="tokens already in the cache before the prompt, filled untimed (llama-bench's "
                        "'@ d1024'; default 0)")
    g.add_argument("--threads", type=_int_list(1), default=[defaults.default_threads()],
                   help="thread counts (default: usable cores); each method loads once per count")
    g.add_argument("--batch", type=_int_list(1), default=[1],
                   help="sequences decoded together (default 1); a method that cannot batch "
                        "is skipped in those cells, with the reason")
    g.add_argument("--dry-run", action="store_true",
                   help="print the cells, their count and an estimated time; measure nothing")
    g.add_argument("--resume", metavar="FOLDER",
                   help="measure only the cells missing from this sweep's folder (same options)")


def add_measure_options(p: argparse.ArgumentParser, with_quality_switch: bool = True,
                        with_profile_switch: bool = True, sweep: bool = False) -> None:
    g = p.add_argument_group("model and methods")
    g.add_argument("--model", default=defaults.DEFAULT_MODEL,
                   help="bundled 'smollm2-135m' (default), 'gpt2-random', 'llama-1b-random' "
                        "(Llama-3.2-1B's shape, random weights, made on first use), a local Hugging "
                        "Face folder, a .gguf file, or a Hugging Face model id")
    g.add_argument("--methods", type=_methods_arg, default=list(defaults.DEFAULT_METHODS),
                   help="comma-separated methods, or 'all' (default: "
                        f"{','.join(defaults.DEFAULT_METHODS)}: the reference, the original "
                        "baseline and the best of each engine family; see `inferlab methods`)")
    if sweep:
        add_sweep_axes(p)
    else:
        g = p.add_argument_group("workload")
        src = g.add_mutually_exclusive_group()
        src.add_argument("--prompt", default=defaults.DEFAULT_PROMPT, help="prompt text")
        src.add_argument("--prompt-file", help="read the prompt from this text file")
        g.add_argument("--no-chat-template", action="store_true",
                       help="feed the prompt as raw text even if the tokenizer has a chat template")
        g.add_argument("--new-tokens", type=_positive_int, default=defaults.DEFAULT_NEW_TOKENS,
                       help=f"exactly this many generated tokens (default {defaults.DEFAULT_NEW_TOKENS})")
        g.add_argument("--threads", type=_positive_int, default=defaults.default_threads(),
                       help="intra-op threads for every engine (default: usable cores)")
    g = p.add_argument_group("measuring protocol")
    g.add_argument("--warmup", type=_number(int, 0, "an integer"), default=defaults.DEFAULT_WARMUP,
                   help=f"untimed generations before timing (default {defaults.DEFAULT_WARMUP})")
    repeats = defaults.SWEEP_MIN_REPEATS if sweep else defaults.DEFAULT_MIN_REPEATS
    min_time = defaults.SWEEP_MIN_TIME_S if sweep else defaults.DEFAULT_MIN_TIME_S
    g.add_argument("--repeats", type=_positive_int, default=repeats,
                   help=f"minimum timed runs{' per cell' if sweep else ''} (default {repeats})")
    g.add_argument("--max-repeats", type=_positive_int, default=defaults.DEFAULT_MAX_REPEATS,
                   help=f"cap on timed runs (default {defaults.DEFAULT_MAX_REPEATS})")
    g.add_argument("--min-time", type=_non_negative_float, default=min_time,
                   help=f"minimum timed seconds per method{' and cell' if sweep else ''} "
                        f"(default {min_time:g})")
    if not sweep:  # a sweep's cells always interleave their methods (cells.py)
        g.add_argument("--protocol", choices=defaults.PROTOCOLS, default=defaults.DEFAULT_PROTOCOL,
                       help="interleaved (default): every method stays loaded and the methods take "
                            "turns, one timed run each, so the machine's drift spreads over all; "
                            "sequential: one method after the other")
    g.add_argument("--timeout", type=_non_negative_float, default=defaults.DEFAULT_METHOD_TIMEOUT_S,
                   help="seconds before a method's process is killed "
                        f"(default {defaults.DEFAULT_METHOD_TIMEOUT_S:g})")
    g = p.add_argument_group("quality (against the fp32 reference)")
    if with_quality_switch:
        g.add_argument("--no-quality", action="store_true",
                       help="skip the quality evaluation (speed only, faster)")
    b = defaults.QUALITY_BUDGET
    g.add_argument("--max-ppl-increase", type=_non_negative_float, default=b["max_ppl_increase"],
                   help=f"budget: perplexity increase, a fraction (default {b['max_ppl_increase']:g})")
    g.add_argument("--max-kl", type=_non_negative_float, default=b["max_kl_mean"],
                   help=f"budget: mean KL in nats (default {b['max_kl_mean']:g})")
    g.add_argument("--min-top1", type=_fraction, default=b["min_top1"],
                   help=f"budget: top-1 agreement, a fraction (default {b['min_top1']:g})")
    g.add_argument("--text-file",
                   help="UTF-8 text for perplexity and KL (default: CPython's pydoc_data.topics)")
    if not sweep:
        g = p.add_argument_group("profiling (a separate pass, never timed with the benchmark)")
        if with_profile_switch:
            g.add_argument("--profile", action="store_true",
                           help="add a profiling pass per method: operator/phase breakdown, traces, "
                                "roofline (profiling_report.md)")
        g.add_argument("--profile-steps", type=_positive_int, default=defaults.PROFILE_DECODE_STEPS,
                       help=f"decode steps profiled after the prefill (default {defaults.PROFILE_DECODE_STEPS})")
        g.add_argument("--profile-detail", action="store_true",
                       help="record shapes, stacks and memory in the traces (much larger files)")
    p.add_argument("--output", default=defaults.RESULTS_DIR,
                   help="folder under which each run gets a new folder (default results/)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="inferlab", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="benchmark methods and write results, report and charts")
    add_measure_options(p)
    p = sub.add_parser("quality", help="only the quality evaluation (no timing): perplexity, "
                                       "KL, top-1 and greedy agreement with PASS/FAIL")
    add_measure_options(p, with_quality_switch=False, with_profile_switch=False)
    p = sub.add_parser("profile", help="only the profiling pass: where time goes per operator, "
                                       "phase and model part, and the distance to the hardware limit")
    add_measure_options(p, with_quality_switch=False, with_profile_switch=False)
    p = sub.add_parser("sweep", help="benchmark methods over every combination of prompt length, "
                                     "new tokens, context depth, threads and batch (cells)")
    add_measure_options(p, with_profile_switch=False, sweep=True)
    add_cluster_options(p)
    p = sub.add_parser("plan", help="a scenario (use case and requirements, TOML) in; the "
                                    "measurements it needs, a verdict and a recommendation out")
    p.add_argument("scenario", nargs="?",
                   help="a scenario file, or the name of an example shipped with inferlab "
                        "(chat-assistant, retrieval, batch-summarizer, edge-device)")
    p.add_argument("--new", metavar="NAME", help="write a commented scenario template NAME.toml here")
    p.add_argument("--methods", type=_methods_arg,
                   help="comma-separated methods (default: the scenario's, else one per engine "
                        "family); the fp32 reference and the original baseline are added")
    p.add_argument("--timeout", type=_non_negative_float, default=defaults.DEFAULT_METHOD_TIMEOUT_S,
                   help=f"seconds before a method's process is killed (default {defaults.DEFAULT_METHOD_TIMEOUT_S:g})")
    p.add_argument("--output", default=defaults.RESULTS_DIR,
                   help="folder under which each plan gets a new folder (default results/)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    add_cluster_options(p)
    p = sub.add_parser("report", help="derive every figure again and redraw report.md, report.html and "
                                      "charts from a results.json (saved again in this version's schema)")
    p.add_argument("results", nargs="?", help="path to a results.json (or its folder)")
    p.add_argument("--methodology", nargs="*", metavar="ALIAS=RESULTS",
                   help="write docs/methodology.md again from its template and its runs "
                        "(docs/runs/ALIAS), first keeping each RESULTS given as run ALIAS")
    p.add_argument("--docs", default="docs", help="the docs folder for --methodology (default docs)")
    p = sub.add_parser("compare", help="two results (runs, sweeps, history ids) or two methods of "
                                       "one: ratios with intervals, quality side by side, a CI gate")
    p.add_argument("base", help="the base: a results folder or results.json, a history id (see "
                                "`inferlab history`), or 'last' (the last earlier run of NEW's "
                                "configuration in the history)")
    p.add_argument("new", nargs="?", help="the new results (same forms); omit it with --methods "
                                          "A,B to compare two methods of BASE")
    p.add_argument("--methods", type=_method_pair,
                   help="A,B: method A of BASE against method B of NEW (or of BASE); one name: "
                        "only that method")
    p.add_argument("--fail-if-slower", type=_share, metavar="PCT",
                   help="exit 1 when a method is slower (E2E, TTFT or TPOT) by more than this, "
                        "e.g. 5%%, with 95 %% confidence; exit 3 when the intervals cannot tell")
    p.add_argument("--figures", type=_figure_list, default=("e2e_s", "ttft_s", "tpot_s"),
                   help="the timed figures that decide the label and the gate: e2e, ttft, tpot "
                        "(default all three; a short prompt's TTFT is the noisiest)")
    p.add_argument("--fail-if-larger", type=_share, metavar="PCT",
                   help="exit 1 when a method's peak RSS grew by more than this, e.g. 10%%")
    p.add_argument("--fail-on-quality", action="store_true",
                   help="exit 1 when a method of NEW fails the quality budget")
    p.add_argument("--force", action="store_true",
                   help="compare results of different models or workloads anyway (every line marked)")
    p.add_argument("--output", default=os.path.join(defaults.RESULTS_DIR, "comparisons"),
                   help="folder under which the comparison gets a new folder (default results/comparisons/)")
    p = sub.add_parser("history", help="list past runs, sweeps and plans (the SQLite history every "
                                       "one adds itself to), newest first")
    p.add_argument("--model", help="only results whose model name contains this")
    p.add_argument("--method", help="only results that measured this method")
    p.add_argument("--machine", help="only results whose CPU model or hostname contains this")
    p.add_argument("--kind", choices=("run", "sweep", "plan"), help="only this kind of results")
    p.add_argument("--limit", type=_positive_int, help="at most this many")
    p.add_argument("--output", default=defaults.RESULTS_DIR,
                   help="the results folder whose history.sqlite to read (default results/; "
                        "INFERLAB_HISTORY names another file)")
    p = sub.add_parser("export", help="a results set as CSV, JSON lines or SQLite: one row per method "
                                      "and cell (the history's columns), or per generated token")
    p.add_argument("results", help="a results folder or results.json, or a history id")
    p.add_argument("--format", choices=("csv", "jsonl", "sqlite"), default="csv", help="default csv")
    p.add_argument("--per-token", action="store_true",
                   help="one row per generated token of every timed run (its inter-token latency)")
    p.add_argument("--output", help="the file to write (default: records.FORMAT, or tokens.FORMAT "
                                    "with --per-token, beside the results)")
    sub.add_parser("methods", help="list the methods")
    p = sub.add_parser("doctor", help="check this machine in seconds: versions, which methods can run "
                                      "here and why not, the CPU, and what would make figures unstable")
    p.add_argument("--model", default=defaults.DEFAULT_MODEL, help="the model to check the methods against")
    p.add_argument("--threads", type=_positive_int, default=defaults.default_threads(),
                   help="the thread count you mean to run with (default: usable cores)")
    return parser


def config_from_args(args):
    from .config import RunConfig

    prompt = args.prompt
    if args.prompt_file:
        try:
            with open(args.prompt_file, encoding="utf-8") as f:
                prompt = f.read()
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"cannot read --prompt-file {args.prompt_file}: {e}") from None
    return RunConfig(
        model=args.model, methods=args.methods, prompt=prompt,
        chat_template=not args.no_chat_template, new_tokens=args.new_tokens,
        threads=args.threads, warmup=args.warmup, min_repeats=args.repeats,
        max_repeats=args.max_repeats, min_time_s=args.min_time, timeout_s=args.timeout,
        output_dir=args.output, speed=args.command == "run",
        quality=args.command == "quality" or (args.command == "run" and not args.no_quality),
        text_file=args.text_file,
        profile=args.command == "profile" or getattr(args, "profile", False),
        profile_steps=args.profile_steps, profile_detail=args.profile_detail,
        protocol=args.protocol,
        max_ppl_increase=args.max_ppl_increase, max_kl_mean=args.max_kl, min_top1=args.min_top1,
    )


def cmd_run(args) -> int:
    from .models import ModelError
    from .report.markdown import console_table
    from .report.tables import time_line
    from .runner import Display, run

    try:
        config = config_from_args(args)
        config.validate()
    except ValueError as e:
        return _fail(str(e))
    interrupt_on_termination()
    display = Display(quiet=args.quiet)
    try:
        results, folder = run(config, display)
    except (ModelError, ValueError) as e:
        return _fail(str(e))
    finally:
        display.finish()
    write_reports_timed(results, folder)
    entry = add_to_history(results, folder, "run")
    print(console_table(results))
    print(f"\n{time_line(results)}")
    print(f"results: {os.path.join(folder, 'results.json')}{entry}\nreport:  {os.path.join(folder, 'report.md')}")
    if os.path.exists(os.path.join(folder, "profiling_report.md")):
        print(f"profile: {os.path.join(folder, 'profiling_report.md')}")
    if results.status == "interrupted":
        print("inferlab: interrupted; the results measured so far are saved", file=sys.stderr)
        return EXIT_INTERRUPTED
    return EXIT_OK if all(m.status in ("ok", "skipped") for m in results.methods) else EXIT_METHOD_FAILED


def sweep_config_from_args(args):
    from .sweep import SweepConfig

    return SweepConfig(
        model=args.model, methods=args.methods, warmup=args.warmup, min_repeats=args.repeats,
        max_repeats=args.max_repeats, min_time_s=args.min_time, timeout_s=args.timeout,
        output_dir=args.output, quality=not args.no_quality, text_file=args.text_file,
        max_ppl_increase=args.max_ppl_increase, max_kl_mean=args.max_kl,
        min_top1=args.min_top1, prompt_token_list=args.prompt_tokens, new_token_list=args.new_tokens,
        depth_list=args.depth, thread_list=args.threads, batch_list=args.batch, resume=args.resume,
        cluster=args.cluster, nodes=args.nodes)


def cmd_sweep(args) -> int:
    from .models import ModelError
    from .progress import SweepProgress, duration
    from .report.sweep import console_cells
    from .report.tables import time_line
    from .runner import Display
    from .sweep import estimate_seconds, run_sweep

    try:
        config = sweep_config_from_args(args)
        config.validate()
    except ValueError as e:
        return _fail(str(e))
    if args.dry_run:
        cells = config.cells()
        for cell in cells:
            print(f"{cell.key}: {', '.join(cell.methods)}")
        print(f"{len(cells)} cell{'s' * (len(cells) != 1)} x {len(config.methods)} "
              f"method{'s' * (len(config.methods) != 1)}; estimated "
              f"{duration(estimate_seconds(config, cells))} (a rough figure: it assumes "
              "SmolLM2-like speeds)" + (", once on each kind of machine of the cluster" if config.cluster else ""))
        return EXIT_OK
    interrupt_on_termination()
    try:
        results, folder = run_sweep(config, Display(quiet=args.quiet),
                                    lambda todo, done: SweepProgress(todo, done, args.quiet))
    except (ModelError, ValueError) as e:
        return _fail(str(e))
    write_reports_timed(results, folder)
    entry = add_to_history(results, folder, "sweep")
    print(console_cells(results))
    print(f"\n{time_line(results)}")
    print(f"results: {os.path.join(folder, 'results.json')}{entry}\ncells:   {os.path.join(folder, 'cells.csv')}"
          f"\nreport:  {os.path.join(folder, 'report.md')}")
    if results.status == "interrupted":
        print(f"inferlab: interrupted; the cells measured so far are saved (resume with --resume {folder})",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    statuses = [m.status for c in results.cells for m in c.methods]
    return EXIT_OK if all(s in ("ok", "skipped") for s in statuses) else EXIT_METHOD_FAILED


def cmd_plan(args) -> int:
    from .models import ModelError
    from .plan import plan_config, plan_methods, run_plan
    from .progress import SweepProgress
    from .report import to_html, write_text
    from .report.verdict import answer, render
    from .runner import Display
    from .scenario import ScenarioError, find_scenario, load_scenario, write_template

    if args.new:
        try:
            print(f"wrote {write_template(args.new)}: edit it, then `inferlab plan {args.new}.toml`")
        except (ScenarioError, OSError) as e:
            return _fail(str(e))
        return EXIT_OK
    if not args.scenario:
        return _fail("plan: give a scenario file (or an example's name), or --new NAME")
    display = Display(quiet=args.quiet)
    try:
        scenario = load_scenario(find_scenario(args.scenario))
        methods = plan_methods(scenario, args.methods, display)
        config = plan_config(scenario, methods, args.output, args.timeout, args.cluster, args.nodes)
        config.validate()
    except (ScenarioError, ModelError, ValueError) as e:
        return _fail(str(e))
    interrupt_on_termination()
    try:
        results, folder, verdict = run_plan(scenario, config, display,
                                            lambda todo, done: SweepProgress(todo, done, args.quiet))
    except (ModelError, ValueError) as e:
        return _fail(str(e))
    except KeyboardInterrupt:  # after the cells (the profile, the recipe): they are saved
        print("inferlab: interrupted after the measurements; no verdict written", file=sys.stderr)
        return EXIT_INTERRUPTED
    write_reports_timed(results, folder)
    entry = add_to_history(results, folder, "plan")
    if verdict is None:
        print(f"inferlab: interrupted; the cells measured so far are saved in {folder}", file=sys.stderr)
        return EXIT_INTERRUPTED
    md = render(verdict, results)
    write_text(os.path.join(folder, "verdict.md"), md)
    write_text(os.path.join(folder, "verdict.html"), to_html(md, folder))
    print(answer(verdict).replace("**", ""))
    print(f"verdict: {os.path.join(folder, 'verdict.md')}\nreport:  {os.path.join(folder, 'report.md')}{entry}")
    return verdict.exit_code


def cmd_compare(args) -> int:
    from .compare import CompareError, Gate, compare
    from .report import to_html, write_text
    from .report import compare as show
    from .results import ResultsError
    from .runner import new_results_folder
    from .sides import load_side

    # one name: that method on both sides; two: A of BASE against B of NEW (or of BASE)
    pair = (tuple(args.methods) * 2)[:2] if args.methods else None
    if args.new is None and not (args.methods and len(args.methods) == 2):
        return _fail("compare: give BASE and NEW, or one results with --methods A,B")
    try:
        new = load_side(args.new or args.base)
        base = load_side(args.base, like=new) if args.new else new
        gate = Gate(args.fail_if_slower, args.fail_if_larger, args.fail_on_quality, args.figures)
        c = compare(base.results, new.results, base.name, new.name, gate, pair, args.force)
    except (ResultsError, CompareError) as e:
        return _fail(str(e))
    try:
        folder = new_results_folder(args.output, "compare")
    except OSError as e:
        return _fail(f"cannot write under --output {args.output}: {e}")
    from .fsutil import write_json_atomic

    chart = show.draw(c, folder)
    md = show.render(c, chart)
    write_text(os.path.join(folder, "compare.md"), md)
    write_text(os.path.join(folder, "compare.html"), to_html(md, folder))
    write_json_atomic(os.path.join(folder, "compare.json"), c.to_dict())
    print(show.console(c))
    print(f"comparison: {os.path.join(folder, 'compare.md')}")
    return c.exit_code


def cmd_history(args) -> int:
    from .history import RUN_COLUMNS, HistoryError, history_path, runs

    path = history_path(args.output)
    try:
        found = runs(path, args.model, args.method, args.machine, args.kind, args.limit)
    except HistoryError as e:
        return _fail(str(e))
    shown = [c for c in RUN_COLUMNS if c not in ("configuration", "workload", "hostname", "inferlab_version")]
    table = [[str(r[c] if r[c] is not None else "-") for c in shown] for r in found]
    widths = [max(len(x) for x in [c] + [row[i] for row in table]) for i, c in enumerate(shown)]
    for row in [shown, ["-" * w for w in widths], *table]:
        print("  ".join(x.ljust(w) for x, w in zip(row, widths)).rstrip())
    print(f"{len(found)} result set{'s' * (len(found) != 1)} in {path}")
    return EXIT_OK


def cmd_export(args) -> int:
    from .export import ExportError, export
    from .results import ResultsError
    from .sides import load_side

    try:
        side = load_side(args.results)
    except ResultsError as e:
        return _fail(str(e))
    target = args.output or os.path.join(os.path.dirname(side.path),
                                         f"{'tokens' if args.per_token else 'records'}.{args.format}")
    try:
        n = export(side.results, side.path, args.format, target, args.per_token)
    except ExportError as e:
        return _fail(str(e))
    print(f"wrote {n} row{'s' * (n != 1)} to {target}")
    return EXIT_OK


def add_to_history(results, folder: str, kind: str) -> str:
    """The results with their reports' time, in the history (runner and sweep added them when
    they finished; this refreshes the row and gives its kind). Returns ' (history #N)'."""
    from .history import record

    run_id = record(results, folder, kind)
    return f" (history #{run_id})" if run_id else ""


def cmd_doctor(args) -> int:
    """Exit 1 when something inferlab needs to run is missing."""
    from .doctor import diagnose

    d = diagnose(args.model, args.threads)
    print(d.render())
    return EXIT_METHOD_FAILED if d.problems else EXIT_OK


def write_reports_timed(results, folder: str) -> None:
    """Write the reports, then save results.json again with the time they took."""
    import time

    from .report import write_reports
    from .results import save

    t0 = time.perf_counter()
    write_reports(results, folder)
    spent = time.perf_counter() - t0
    results.timings["report"] = spent
    results.timings["total"] = results.timings.get("total", 0.0) + spent
    save(results, os.path.join(folder, "results.json"))


def interrupt_on_termination() -> None:
    """SIGTERM (a `timeout`, a service manager) and SIGHUP (a closed terminal) stop a run the
    way Ctrl-C does: the methods measured so far are saved and reported."""
    import signal

    def stop(signum, frame):
        raise KeyboardInterrupt(signal.Signals(signum).name)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, stop)


def cmd_report(args) -> int:
    from .report import write_reports
    from .report.markdown import console_table
    from .report.sweep import console_cells
    from .results import ResultsError, load, save
    from .sides import results_file

    if args.methodology is not None:
        return _methodology(args)
    if not args.results:
        return _fail("report: give a results.json (or its folder), or --methodology")
    path = results_file(args.results)
    try:
        results = load(path)
    except ResultsError as e:
        return _fail(str(e))
    # derived again by this version, and saved in its schema: a fix to a figure reaches old folders
    results.schema_version = defaults.SCHEMA_VERSION
    save(results, path)
    written = write_reports(results, os.path.dirname(os.path.abspath(path)))
    print(console_cells(results) if results.sweep else console_table(results))
    print("\nwrote: " + ", ".join(written))
    return EXIT_OK


def _methodology(args) -> int:
    from .report.methodology import MethodologyError, write
    from .results import ResultsError

    runs = {}
    for item in args.methodology:
        alias, sep, path = item.partition("=")
        if not sep or not alias or not path:
            return _fail(f"--methodology {item}: write ALIAS=RESULTS (e.g. gpt2=results/2026.../)")
        runs[alias] = path
    if not os.path.isfile(os.path.join(args.docs, "methodology.template.md")):
        return _fail(f"no {args.docs}/methodology.template.md here: run it from inferlab's checkout, or give --docs")
    try:
        print(f"wrote {write(args.docs, runs)}")
    except (MethodologyError, ResultsError, OSError) as e:
        return _fail(str(e))
    return EXIT_OK


def cmd_methods(args) -> int:
    from .engines import engine_class, method_names

    width = max(map(len, method_names()))
    for name in method_names():
        print(f"{name:{width}s}  {engine_class(name).summary}")
    return EXIT_OK


def _fail(message: str) -> int:
    print(f"inferlab: error: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT


def main(argv: list[str] | None = None) -> int:
    skip_unused_imports()
    args = build_parser().parse_args(argv)
    handler = {"run": cmd_run, "quality": cmd_run, "profile": cmd_run, "sweep": cmd_sweep,
               "plan": cmd_plan, "report": cmd_report, "compare": cmd_compare,
               "history": cmd_history, "export": cmd_export, "methods": cmd_methods,
               "doctor": cmd_doctor}[args.command]
    try:
        return handler(args)
    except BrokenPipeError:  # the reader left (`inferlab methods | head`): nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit's flush
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
