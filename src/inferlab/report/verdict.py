"""verdict.md: a plan's answer first (one sentence and the winner's figures), then every
configuration against every requirement, the baselines, the details. Formatting only."""

from __future__ import annotations

import os

from ..machine import kind_names
from ..results import RunResults
from ..scenario import COSTS, UNITS, Requirement
from ..verdict import EXIT_ONLY_INDETERMINATE, INDETERMINATE, MET, MISSED, Check, Configuration, Verdict


def number(req: Requirement, value: float) -> str:
    """A figure in the requirement's own unit, without the unit: '91.3'."""
    scaled = value / UNITS[req.spec.kind][req.unit]
    return f"{scaled:.3g}" if abs(scaled) < 100 else f"{scaled:.0f}"


def amount(req: Requirement, value: float) -> str:
    return f"{number(req, value)} {req.unit}"


def beyond(req: Requirement, value: float) -> str:
    """How far a figure is past its limit: '20 %', or '6.4x the limit' when far."""
    ratio = value / req.limit if req.bound == "max" else req.limit / value
    if ratio >= 100:
        return f"{ratio:,.0f}x the limit"
    return f"{ratio:.3g}x the limit" if ratio >= 2 else f"{abs(ratio - 1):.0%}"


def check_cell(check: Check) -> str:
    """One table cell: status, figure and interval, and what would decide."""
    req, f = check.requirement, check.figure
    label = {MET: "met", MISSED: "**missed**", INDETERMINATE: "*indeterminate*"}[check.status]
    if f is None:
        return f"{label}" + (f": {check.note}" if check.note else "")
    interval = "" if f.low == f.high else f" [{number(req, f.low)}-{number(req, f.high)}]"
    more = f"; {check.note}" if check.status == INDETERMINATE and check.note else ""
    return f"{label} {number(req, f.value)}{interval} {req.unit}{more}"


def figures_sentence(config: Configuration) -> str:
    parts = []
    for c in config.checks:
        if c.figure is not None:
            r = c.requirement
            parts.append(f"{r.figure_name} {amount(r, c.figure.value)} "
                         f"(limit {amount(r, r.limit)})")
    return ", ".join(parts)


def misses(config: Configuration) -> str:
    out = []
    for c in config.checks:
        if c.status == MET:
            continue
        r = c.requirement
        if c.figure is not None:
            how = f"by {beyond(r, c.figure.value)}" if c.status == MISSED else "perhaps (within the error)"
            out.append(f"{r.describe()} {how} ({amount(r, c.figure.value)} at {c.cell})")
        else:
            out.append(f"{r.describe()} ({c.status}{': ' + c.note if c.note else ''})")
    return "; ".join(out)


def answer(v: Verdict) -> str:
    s = v.scenario
    cost = COSTS[s.cost]
    if v.recommended is not None:
        w = v.recommended
        against = ""
        if v.speedups:
            sp = max(v.speedups, key=lambda x: x.ratio)
            against = (f"; {sp.ratio:.2f}x faster end to end than {sp.baseline} "
                       f"[{sp.low:.2f}-{sp.high:.2f}] at {sp.cell}")
        where = f" on {w.machine_name}" if w.machine else ""
        return (f"**{w.method} on {w.threads} thread{'s' * (w.threads != 1)}, batch {w.batch}{where}** meets "
                f"every requirement of \"{s.name}\" at the lowest cost ({cost}): "
                f"{figures_sentence(w)}{against}.")
    n = v.nearest
    if n is None:
        return f"**Nothing was measured for \"{s.name}\"**: every method failed or was skipped."
    if v.exit_code == EXIT_ONLY_INDETERMINATE:
        return (f"**Undecided:** no configuration meets every requirement of \"{s.name}\" for certain; "
                f"the nearest, **{n.name}**, is within the measuring error: {misses(n)}.")
    return (f"**No configuration meets every requirement of \"{s.name}\".** The nearest, "
            f"**{n.name}**, misses {misses(n)}.")


def ms(value: float) -> str:
    return f"{value:.3g} ms" if value < 1000 else f"{value:,.0f} ms"


def bottleneck_lines(b: dict | None) -> list[str]:
    """The nearest configuration's bottleneck: phase, distance to the hardware floors, the
    profiler's verdict and what to try next."""
    if not b:
        return []
    out = []
    if b.get("prefill_share") is not None:
        out.append(f"- where its time goes, at {b['cell']}: prefill {b['prefill_share']:.0%} of the "
                   f"end-to-end time, decode {1 - b['prefill_share']:.0%}")
    floors = []
    if b.get("decode_efficiency"):
        floors.append(f"decode at {b['decode_efficiency']:.0%} of the memory-bandwidth floor "
                      f"({ms(b['decode_floor_ms'])} a step at {b['bandwidth_gb_s']:.1f} GB/s)")
    if b.get("prefill_efficiency"):
        floors.append(f"prefill at {b['prefill_efficiency']:.0%} of the compute roof "
                      f"({ms(b['prefill_floor_ms'])} at {b['compute_roof_gops']:.0f} GOPS, the probed "
                      f"{b['compute_roof']} peak)")
    if floors:
        out.append("- against the hardware: " + "; ".join(floors))
    if b.get("verdict"):
        out += [f"- the profiler: {b['verdict']}", f"- next to try: {b['next']}"]
    elif b.get("profile_error"):
        out.append(f"- not profiled: {b['profile_error']}")
    return out


def usage_section(v: Verdict) -> list[str]:
    if v.recommended is None:
        return []
    lines = ["", "## Run the winner outside inferlab", ""]
    u = v.usage
    if not u:
        return lines + [f"inferlab has no recipe for running {v.recommended.method} outside it (its engine "
                        "gives none: `inferlab methods` says what it builds); the runners-up may have one."]
    if "error" in u:
        return lines + [f"Its engine could not say ({u['error']})."]
    lines += [f"Copy the folder `{os.path.dirname(u['path'])}`: it holds the model files (hard links into "
              f"inferlab's cache where the file system allows, else copies), and the lines below read "
              f"them there. Needs: {u['requires']}."]
    if u.get("note"):
        lines += ["", u["note"][0].upper() + u["note"][1:] + "."]
    lines += ["", "```python", u["code"].rstrip(), "```"]
    if u.get("shell"):
        lines += ["", "From a shell:", "", "```sh", u["shell"].rstrip(), "```"]
    return lines


def render(v: Verdict, results: RunResults) -> str:
    s = v.scenario
    machine = results.measuring_machine()
    where = (f"machines {'; '.join(kind_names(results.machines).values())}" if len(results.machines) > 1 else
             f"machine {machine.get('cpu', '?')}, {machine.get('logical_cpus', '?')} logical CPUs")
    lines = [f"# Verdict: {s.name}", "", f"> {answer(v)}", ""] + ([s.description, ""] if s.description else []) + [
             f"Model {results.model.get('name')}; {where}; scenario `{s.path}`; "
             f"cost: {s.cost}. Exit code {v.exit_code} (0 met, 3 none meets, 4 only indeterminate).",
             "", "## Requirements", "", "| # | category | requirement | in the user's words |",
             "|---|---|---|---|"]
    for i, r in enumerate(s.requirements, 1):
        lines.append(f"| {i} | {r.category} | {r.describe()} | {r.says} |")
    lines += ["", "## Every configuration against every requirement", "",
              "Met or missed only when the 95 % interval lies wholly on one side of the limit; "
              "indeterminate when it straddles it. A configuration's figure is its worst cell's.", "",
              "| configuration | verdict | " + " | ".join(r.describe() for r in s.requirements) + " |",
              "|---|---|" + "---|" * len(s.requirements)]
    order = {MET: 0, INDETERMINATE: 1, MISSED: 2}
    for c in sorted(v.configurations, key=lambda c: (order[c.status], c.miss(), c.name)):
        lines.append(f"| {c.name} | {c.status} | " + " | ".join(check_cell(ch) for ch in c.checks) + " |")
    lines += ["", "## Recommendation", ""]
    if v.recommended:
        lines.append(f"- **{v.recommended.name}**: {figures_sentence(v.recommended)}")
        lines += [f"- runner-up {c.name}: {figures_sentence(c)}" for c in v.runners_up]
    elif v.nearest:
        lines.append(f"- none meets every requirement; nearest **{v.nearest.name}**: {misses(v.nearest)}")
        lines += bottleneck_lines(v.bottleneck)
    if v.speedups:
        lines += ["", "## Against the original study's baselines", "",
                  "| baseline | cell | the winner's speedup, end to end [95 % CI] |", "|---|---|---|"]
        lines += [f"| {sp.baseline} | {sp.cell} | {sp.ratio:.2f}x [{sp.low:.2f}-{sp.high:.2f}] |"
                  for sp in v.speedups]
    lines += usage_section(v)
    lines += ["", "The cells, quality and charts behind these figures: report.md; definitions: METRICS.md.", ""]
    return "\n".join(lines)
