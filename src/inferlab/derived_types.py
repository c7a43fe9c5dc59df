"""The types of results.json's `derived` block (derive.py computes it at every save; the
reports, compare and the exports read it). Summaries and ratios are stats.py's own types; the
roofline, the ceiling, the witness and a sweep's cell rows stay flat dicts of numbers with the
keys their producers document (profiling/roofline.py, derive_cells.py)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from .stats import Ratio, Summary


@dataclass
class Bottleneck:
    sentence: str
    next_step: str


@dataclass
class MethodFigures:
    """Everything derived for one method of a run."""

    figures: dict[str, Summary | None]  # ttft_s, tpot_s, itl_s, e2e_s, decode_tps
    prefill_tokens_per_s: float | None = None
    speedups: dict[str, Ratio] = field(default_factory=dict)  # "speedup_e2e_vs_kv-cache": ...
    other_load: float | None = None
    roofline: dict | None = None
    bottleneck: Bottleneck | None = None
    witness: dict | None = None
    first_divergence: int | None = None  # a run's greedy tokens against the reference's
    itl_by_position_ms: list[float] | None = None
    decode_parts: dict | None = None

    def figure(self, name: str) -> Summary | None:
        return self.figures.get(name)

    def median(self, name: str) -> float | None:
        f = self.figures.get(name)
        return f.median if f else None

    @classmethod
    def from_dict(cls, d: dict) -> "MethodFigures":
        d = _known(cls, d)
        d["figures"] = {k: Summary.from_dict(v) if v else None for k, v in d.get("figures", {}).items()}
        d["speedups"] = {k: Ratio.from_dict(v) for k, v in (d.get("speedups") or {}).items()}
        if d.get("bottleneck"):
            d["bottleneck"] = Bottleneck(**d["bottleneck"])
        return cls(**d)


@dataclass
class Ranked:
    method: str
    e2e_s: float
    decode_tps: float
    marginal: bool = False  # its quality verdict is marginal


@dataclass
class Ranking:
    """Methods by median E2E among those passing the quality budget (all timed ones when
    quality was not judged); a FAIL is never ranked."""

    judged: bool = False
    ranked: list[Ranked] = field(default_factory=list)
    not_ranked: list[str] = field(default_factory=list)


@dataclass
class Derived:
    methods: dict[str, MethodFigures] = field(default_factory=dict)
    ceiling: dict | None = None
    ranking: Ranking = field(default_factory=Ranking)
    versus_llama_cpp: dict | None = None
    warnings: list[str] = field(default_factory=list)
    context_sweep: dict | None = None
    # a sweep's: one row per cell and method (derive_cells.cell_rows), and the sentences
    cells: list[dict] = field(default_factory=list)
    crossovers: list[str] = field(default_factory=list)
    knees: list[str] = field(default_factory=list)

    def method(self, name: str) -> MethodFigures | None:
        return self.methods.get(name)

    def to_dict(self) -> dict:
        d = asdict(self)
        for name, m in self.methods.items():  # a ratio says whether it is significant, in the file too
            d["methods"][name]["speedups"] = {k: r.to_dict() for k, r in m.speedups.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict | None) -> "Derived":
        d = _known(cls, d or {})
        d["methods"] = {k: MethodFigures.from_dict(v) for k, v in d.get("methods", {}).items()}
        r = d.get("ranking") or {}
        d["ranking"] = Ranking(r.get("judged", False), [Ranked(**x) for x in r.get("ranked", [])],
                               list(r.get("not_ranked", [])))
        return cls(**d)


def _known(cls, d: dict) -> dict:
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in d.items() if k in names}
