"""A scenario: a use case in the user's words, the workload it puts on the model and the
requirements it must meet, each tagged with its category (the original study's workflow:
user experience, system capacity, resource efficiency, reliability). Read from TOML and
checked before anything runs: a bad scenario is one error naming the key and its line."""

from __future__ import annotations

import math
import os
import re
import tomllib
from dataclasses import dataclass, field

from . import defaults
from .int_lists import parse_int_list

CATEGORIES = ("user experience", "system capacity", "resource efficiency", "reliability")
# what the recommendation minimizes among the configurations that meet every requirement
COSTS = {"cores": "fewest threads", "memory": "least peak memory", "speed": "fastest end to end"}
PERCENTILES = (50, 90, 95, 99)
UNITS = {
    "time": {"ms": 1e-3, "s": 1.0},
    "rate": {"tok/s": 1.0},
    "bytes": {"B": 1, "kB": 1e3, "MB": 1e6, "GB": 1e9, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30},
    "flag": {},
}
# a time is a ceiling, a rate a floor, memory a ceiling; a flag must hold
BOUNDS = {"time": "max", "rate": "min", "bytes": "max", "flag": None}


@dataclass(frozen=True)
class MetricSpec:
    kind: str  # time | rate | bytes | flag
    meaning: str
    label: str


METRICS = {
    "ttft": MetricSpec("time", "time to the first token (the whole batch's)", "TTFT"),
    "tpot": MetricSpec("time", "time per output token: one decode step", "TPOT"),
    "e2e": MetricSpec("time", "end-to-end time of one generation", "E2E"),
    "prefill_rate": MetricSpec("rate", "prompt tokens per second, every sequence of the batch", "prefill rate"),
    "decode_rate": MetricSpec("rate", "generated tokens per second of one sequence", "decode rate per sequence"),
    "total_rate": MetricSpec("rate", "generated tokens per second, the whole batch", "total decode rate"),
    "peak_rss": MetricSpec("bytes", "peak resident memory of the method's process", "peak RSS"),
    "weights": MetricSpec("bytes", "bytes of the model files the method loads", "weights"),
    "quality": MetricSpec("flag", "the quality budget holds against the fp32 reference", "quality budget"),
    "completes": MetricSpec("flag", "the method finishes every run of every cell", "finishes every run"),
    "deterministic": MetricSpec("flag", "every run repeats the first run's tokens", "deterministic tokens"),
}
ALWAYS = ("quality", "completes", "deterministic")  # every scenario has them, written or not
TOP_KEYS = {"name", "description", "cost", "model", "methods", "text_file", "workload", "requirement",
            "quality", "measure"}
WORKLOAD_KEYS = {"prompt_tokens": None, "new_tokens": None, "threads": None, "batch": [1], "depth": [0]}
REQUIREMENT_KEYS = {"category", "metric", "max", "min", "unit", "percentile", "says"}
MEASURE_KEYS = {"repeats": (int, 1), "min_time_s": (float, 0.0), "max_repeats": (int, 1)}


class ScenarioError(ValueError):
    """A bad scenario: the message names the file, the line and the key."""


@dataclass
class Requirement:
    category: str
    metric: str
    bound: str  # "max" | "min" | "holds"
    limit: float  # in the unit's base: seconds, tokens/s, bytes (1 for a flag)
    unit: str = ""
    percentile: int | None = None  # time metrics only; None: the median
    says: str = ""  # the user's words
    line: int = 0

    @property
    def spec(self) -> MetricSpec:
        return METRICS[self.metric]

    @property
    def figure_name(self) -> str:
        """'TTFT p95'"""
        return self.spec.label + (f" p{self.percentile}" if self.percentile else "")

    def describe(self) -> str:
        """'TTFT p95 <= 300 ms'"""
        if self.bound == "holds":
            return self.spec.label
        limit = self.limit / UNITS[self.spec.kind][self.unit]
        return f"{self.figure_name} {'<=' if self.bound == 'max' else '>='} {limit:g} {self.unit}"

    def to_dict(self) -> dict:
        return {"category": self.category, "metric": self.metric, "bound": self.bound,
                "limit": self.limit, "unit": self.unit, "percentile": self.percentile,
                "says": self.says, "text": self.describe()}


@dataclass
class Workload:
    prompt_tokens: list[int]
    new_tokens: list[int]
    threads: list[int]
    batch: list[int] = field(default_factory=lambda: [1])
    depth: list[int] = field(default_factory=lambda: [0])


@dataclass
class Scenario:
    name: str
    description: str
    path: str
    workload: Workload
    requirements: list[Requirement]
    cost: str = "cores"
    model: str = defaults.DEFAULT_MODEL
    methods: list[str] | None = None
    text_file: str | None = None
    budget: dict = field(default_factory=lambda: dict(defaults.QUALITY_BUDGET))
    repeats: int = defaults.PLAN_MIN_REPEATS
    min_time_s: float = defaults.PLAN_MIN_TIME_S
    max_repeats: int = defaults.DEFAULT_MAX_REPEATS

    def to_dict(self) -> dict:
        return {"name": self.name, "description": self.description, "path": self.path,
                "cost": self.cost, "model": self.model, "methods": self.methods,
                "workload": vars(self.workload), "budget": self.budget,
                "requirements": [r.to_dict() for r in self.requirements]}


class _Lines:
    """Where each key of the file is written: (table, key) -> line, a table being a name
    ('workload') or a name and an index for arrays of tables (('requirement', 2)). TOML's
    reader does not say; a scan of the text does, for the error messages."""

    HEADER = re.compile(r"^\s*\[(\[)?\s*([A-Za-z0-9_.-]+)\s*\]")
    KEY = re.compile(r'^\s*("[^"]*"|[A-Za-z0-9_-]+)\s*=')

    def __init__(self, text: str):
        self.lines: dict[tuple, int] = {}
        self.tables: dict[object, int] = {}
        counts: dict[str, int] = {}
        table: object = None
        for number, line in enumerate(text.splitlines(), 1):
            if m := self.HEADER.match(line):
                name = m.group(2)
                if m.group(1):  # [[name]]: the next element of an array of tables
                    counts[name] = counts.get(name, 0) + 1
                    table = (name, counts[name])
                else:
                    table = name
                self.tables.setdefault(table, number)
            elif m := self.KEY.match(line):
                self.lines.setdefault((table, m.group(1).strip('"')), number)

    def of(self, table, key: str | None = None) -> int:
        if key is not None and (table, key) in self.lines:
            return self.lines[(table, key)]
        return self.tables.get(table, 0)


def load_scenario(path: str) -> Scenario:
    """Read and check a scenario file. Raises ScenarioError with one line."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise ScenarioError(f"cannot read scenario {path}: {e}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:  # its message gives the line and column
        raise ScenarioError(f"scenario {path}: not valid TOML: {e}") from None
    return _Reader(path, data, _Lines(text)).scenario()


class _Reader:
    def __init__(self, path: str, data: dict, lines: _Lines):
        self.path, self.data, self.lines = path, data, lines

    def fail(self, table, key: str | None, message: str):
        where = table if isinstance(table, str) else (f"requirement {table[1]}" if table else "")
        name = ".".join(x for x in (where, key) if x)
        line = self.lines.of(table, key)
        raise ScenarioError(f"scenario {self.path}, line {line}: {name}: {message}")

    def unknown_keys(self, table, given: dict, allowed) -> None:
        for key in given:
            if key not in allowed:
                self.fail(table, key, f"unknown key (expected one of {', '.join(sorted(allowed))})")

    def scenario(self) -> Scenario:
        d = self.data
        self.unknown_keys(None, d, TOP_KEYS)
        for key in ("name", "workload", "requirement"):
            if key not in d:
                self.fail(None, key, "missing (every scenario names itself, its workload and "
                                     "at least one [[requirement]])")
        name = self.text(None, "name", d["name"])
        cost = d.get("cost", "cores")
        if cost not in COSTS:
            self.fail(None, "cost", f"'{cost}' is not one of {', '.join(COSTS)}")
        methods = d.get("methods")
        if methods is not None:
            methods = self.method_list(methods)
        requirements = d["requirement"]
        if not isinstance(requirements, list) or not requirements:
            self.fail(None, "requirement", "write each requirement as a [[requirement]] table")
        reqs = [self.requirement(i + 1, r) for i, r in enumerate(requirements)]
        for metric in ALWAYS:
            if not any(r.metric == metric for r in reqs):
                reqs.append(Requirement("reliability", metric, "holds", 1.0,
                                        says="every scenario: " + METRICS[metric].meaning))
        scenario = Scenario(name=name, description=self.text(None, "description", d.get("description", "")),
                            path=self.path, workload=self.workload(d["workload"]), requirements=reqs,
                            cost=cost, methods=methods,
                            model=self.text(None, "model", d.get("model", defaults.DEFAULT_MODEL)),
                            text_file=d.get("text_file"), budget=self.budget(d.get("quality", {})))
        for key, value in self.measure(d.get("measure", {})).items():
            setattr(scenario, key, value)
        return scenario

    def text(self, table, key: str, value) -> str:
        if not isinstance(value, str):
            self.fail(table, key, f"must be text in quotes, not {value!r}")
        return value

    def table(self, name: str, value) -> dict:
        if not isinstance(value, dict):
            self.fail(None, name, f"must be a table ([{name}])")
        return value

    def measure(self, value) -> dict:
        """[measure]: the timed runs per method and cell."""
        value = self.table("measure", value)
        self.unknown_keys("measure", value, MEASURE_KEYS)
        out = {}
        for key, v in value.items():
            kind, minimum = MEASURE_KEYS[key]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or (kind is int and not isinstance(v, int)) \
                    or not math.isfinite(v) or v < minimum:
                self.fail("measure", key, f"must be {'an integer' if kind is int else 'a number'} "
                                          f"of at least {minimum}, not {v!r}")
            out[key] = kind(v)
        return out

    def method_list(self, value) -> list[str]:
        from .engines import method_names

        if not isinstance(value, list) or not all(isinstance(m, str) for m in value) or not value:
            self.fail(None, "methods", "must be a list of method names")
        unknown = [m for m in value if m not in method_names()]
        if unknown:
            self.fail(None, "methods", f"unknown method(s) {', '.join(unknown)} (valid: "
                                       f"{', '.join(method_names())})")
        return list(value)

    def workload(self, value) -> Workload:
        value = self.table("workload", value)
        self.unknown_keys("workload", value, WORKLOAD_KEYS)
        out = {}
        for key, default in WORKLOAD_KEYS.items():
            if key not in value:
                if default is None:
                    self.fail("workload", key, "missing")
                out[key] = list(default)
                continue
            out[key] = self.int_list(key, value[key], minimum=0 if key == "depth" else 1)
        return Workload(**out)

    def int_list(self, key: str, value, minimum: int) -> list[int]:
        """An integer, a list of them, or llama-bench's grammar in quotes ('1-8*2')."""
        try:
            if isinstance(value, str):
                values = parse_int_list(value)
            elif isinstance(value, int) and not isinstance(value, bool):
                values = [value]
            elif isinstance(value, list) and value and all(isinstance(v, int) and not isinstance(v, bool)
                                                           for v in value):
                values = list(value)
            else:
                raise ValueError(f"must be an integer or a list of integers, not {value!r}")
        except ValueError as e:
            self.fail("workload", key, str(e))
        if min(values) < minimum:
            self.fail("workload", key, f"must be at least {minimum}: {min(values)}")
        return values

    def budget(self, value) -> dict:
        value = self.table("quality", value)
        self.unknown_keys("quality", value, defaults.QUALITY_BUDGET)
        budget = dict(defaults.QUALITY_BUDGET)
        for key, v in value.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0 \
                    or (key == "min_top1" and v > 1):
                self.fail("quality", key, f"must be a number{' between 0 and 1' if key == 'min_top1' else ' >= 0'}, "
                                          f"not {v!r}")
            budget[key] = float(v)
        return budget

    def requirement(self, index: int, r) -> Requirement:
        table = ("requirement", index)
        if not isinstance(r, dict):
            self.fail(table, None, "must be a table")
        self.unknown_keys(table, r, REQUIREMENT_KEYS)
        for key in ("category", "metric"):
            if key not in r:
                self.fail(table, key, "missing")
        category, metric = r["category"], r["metric"]
        if category not in CATEGORIES:
            self.fail(table, "category", f"'{category}' is not one of: {', '.join(CATEGORIES)}")
        if metric not in METRICS:
            self.fail(table, "metric", f"'{metric}' is not one of: {', '.join(METRICS)}")
        spec = METRICS[metric]
        says = self.text(table, "says", r.get("says", ""))
        if spec.kind == "flag":
            for key in ("max", "min", "unit", "percentile"):
                if key in r:
                    self.fail(table, key, f"{metric} holds or not: it takes no {key}")
            return Requirement(category, metric, "holds", 1.0, says=says, line=self.lines.of(table))
        bounds = [k for k in ("max", "min") if k in r]
        if len(bounds) != 1:
            self.fail(table, None, f"give exactly one of max or min ({metric} is a "
                                   f"{spec.kind}: a {BOUNDS[spec.kind]})")
        bound = bounds[0]
        if bound != BOUNDS[spec.kind]:
            self.fail(table, bound, f"{metric} is a {spec.kind}: its requirement is a "
                                    f"{BOUNDS[spec.kind]}, not a {bound}")
        limit = r[bound]
        if isinstance(limit, bool) or not isinstance(limit, (int, float)) or not math.isfinite(limit) or limit <= 0:
            self.fail(table, bound, f"must be a positive number, not {limit!r}")
        unit = r.get("unit")
        if unit is None:
            self.fail(table, "unit", f"missing (for a {spec.kind}: {', '.join(UNITS[spec.kind])})")
        if unit not in UNITS[spec.kind]:
            self.fail(table, "unit", f"'{unit}' is not a unit of {spec.kind} ({', '.join(UNITS[spec.kind])})")
        percentile = r.get("percentile")
        if percentile is not None:
            if spec.kind != "time":
                self.fail(table, "percentile", f"{metric} has no percentiles (only ttft, tpot and "
                                               "e2e, which vary from run to run or token to token)")
            if percentile not in PERCENTILES:
                self.fail(table, "percentile", f"{percentile!r} is not one of "
                                               f"{', '.join(map(str, PERCENTILES))}")
        return Requirement(category, metric, bound, float(limit) * UNITS[spec.kind][unit], unit,
                           percentile, says, self.lines.of(table))


# --- the examples shipped with inferlab, and the template of --new ----------------------------
EXAMPLES_DIR = os.path.join(os.path.dirname(__file__), "scenarios")


def example_names() -> list[str]:
    return sorted(f[:-5] for f in os.listdir(EXAMPLES_DIR) if f.endswith(".toml") and f != "template.toml")


def find_scenario(spec: str) -> str:
    """A scenario file's path: the path given, or the name of a shipped example."""
    if os.path.exists(spec):
        return spec
    example = os.path.join(EXAMPLES_DIR, spec.removesuffix(".toml") + ".toml")
    if spec.removesuffix(".toml") in example_names():
        return example
    raise ScenarioError(f"no scenario file {spec} (examples shipped with inferlab: "
                        f"{', '.join(example_names())})")


def write_template(name: str, folder: str = ".") -> str:
    """`inferlab plan --new NAME`: a commented template as NAME.toml; never overwrites."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name.removesuffix(".toml")):
        raise ScenarioError(f"--new {name}: use letters, digits, '-', '_' or '.' for the name")
    path = os.path.join(folder, name.removesuffix(".toml") + ".toml")
    with open(os.path.join(EXAMPLES_DIR, "template.toml"), encoding="utf-8") as f:
        text = f.read().replace("{name}", name.removesuffix(".toml"))
    try:
        with open(path, "x", encoding="utf-8") as f:
            f.write(text)
    except FileExistsError:
        raise ScenarioError(f"--new {name}: {path} exists already (not overwritten)") from None
    return path
