"""`inferlab doctor` (the original study's setup check): what this machine offers a benchmark,
read in seconds without loading a model: versions, which methods can run here and why not,
the CPU, and what would make figures unstable right now, with what to change."""

from __future__ import annotations

import importlib.util
import os
import platform
import time
from dataclasses import dataclass, field
from importlib import metadata

from . import __version__, defaults, machine
from .procstat import machine_cpu_seconds

# import names the engines need, and the distribution whose version is shown
LIBRARIES = {"torch": "torch", "transformers": "transformers", "numpy": "numpy", "onnx": "onnx",
             "onnxruntime": "onnxruntime", "optimum": "optimum", "openvino": "openvino",
             "onnxruntime_genai": "onnxruntime-genai", "llama_cpp": "llama_cpp_python",
             "tokenizers": "tokenizers", "matplotlib": "matplotlib", "pandas": "pandas"}
NEEDED = ("torch", "transformers", "numpy", "tokenizers")  # without these nothing runs
SAMPLE_S = 0.5  # how long the machine's CPU counters are watched for other load and steal


@dataclass
class Diagnosis:
    sections: list[tuple[str, list[str]]] = field(default_factory=list)
    advice: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # what stops inferlab from running

    def render(self) -> str:
        out = []
        for title, lines in self.sections:
            out += [title] + [f"  {line}" for line in lines] + [""]
        out += ["what to change for stable figures"] + [f"  - {a}" for a in self.advice or ["nothing: the machine is quiet"]]
        if self.problems:
            out += ["", "problems (inferlab cannot run until they are fixed)"] + [f"  - {p}" for p in self.problems]
        return "\n".join(out)


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def libraries(d: Diagnosis) -> None:
    lines = [f"inferlab {__version__}, Python {platform.python_version()} ({platform.platform()})"]
    for name, dist in LIBRARIES.items():
        found = importlib.util.find_spec(name) is not None
        lines.append(f"{name}: {_version(dist) or '?'}" if found else f"{name}: missing")
        if not found and name in NEEDED:
            d.problems.append(f"{name} is not installed: run `make venv`")
    d.sections.append(("versions", lines))


def cpu(d: Diagnosis, threads: int) -> None:
    m = machine.describe()
    flags = [f for f in machine.INTERESTING_FLAGS if f in m["cpu_flags"]]
    lines = [f"{m['cpu']}: {m['logical_cpus']} logical CPUs, {m['usable_cpus']} usable by this process",
             f"instructions: {', '.join(flags) or 'none of ' + ', '.join(machine.INTERESTING_FLAGS)}",
             f"memory: {m['memory_bytes'] / 2**30:.1f} GiB" if m["memory_bytes"] else "memory: unknown"]
    if m["thread_env"]:
        lines.append("thread variables set: " + ", ".join(f"{k}={v}" for k, v in m["thread_env"].items()))
        d.advice.append("unset " + ", ".join(m["thread_env"]) + ": inferlab sets each engine's threads itself")
    if threads > (m["usable_cpus"] or threads):
        d.advice.append(f"--threads {threads} is more than the {m['usable_cpus']} usable CPUs: threads "
                        "would share cores and time each other")
    d.sections.append(("CPU", lines))


def governor() -> str | None:
    try:
        with open("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor") as f:
            return f.read().strip()
    except OSError:
        return None


def load_now(d: Diagnosis) -> None:
    """Other processes' CPU use and the hypervisor's steal, watched for SAMPLE_S seconds."""
    cpus = os.cpu_count() or 1
    before, t0 = machine_cpu_seconds(), time.perf_counter()
    own0 = time.process_time()
    time.sleep(SAMPLE_S)
    after, wall = machine_cpu_seconds(), time.perf_counter() - t0
    own = time.process_time() - own0
    lines = []
    conditions = machine.conditions()
    if "load_average_1m" in conditions:
        lines.append(f"load average (1 min): {conditions['load_average_1m']:.2f} on {cpus} CPUs")
    if "memory_available_bytes" in conditions:
        lines.append(f"memory available: {conditions['memory_available_bytes'] / 2**30:.1f} GiB")
    if before and after:
        busy = max(after[0] - before[0] - own, 0.0) / (wall * cpus)
        steal = max(after[1] - before[1], 0.0) / (wall * cpus)
        lines.append(f"other processes: {busy:.0%} of the CPUs; steal: {steal:.0%} (over {SAMPLE_S:g} s)")
        if busy > defaults.WARN_OTHER_CPU:
            d.advice.append(f"other processes use {busy:.0%} of the CPUs: stop them, or expect noisy figures "
                            "(each result records this load per method)")
        if steal > 0.01:
            d.advice.append(f"the hypervisor takes {steal:.0%} of the CPUs (steal): a virtual machine with "
                            "noisy neighbours; compare methods in one interleaved run, never across runs")
    gov = governor()
    if gov:
        lines.append(f"frequency governor: {gov}")
        if gov not in ("performance",):
            d.advice.append(f"the CPU frequency governor is '{gov}': 'performance' keeps clocks steady "
                            "(cpupower frequency-set -g performance)")
    else:
        lines.append("frequency governor: not visible (a virtual machine, or no cpufreq driver)")
    d.sections.append(("right now", lines))


def methods(d: Diagnosis, model_spec: str) -> None:
    from .engines import default_methods, engine_class, method_names
    from .models import ModelError, resolve

    try:
        model = resolve(model_spec)
    except ModelError as e:
        d.problems.append(f"model {model_spec}: {e}")
        d.sections.append(("methods", [f"not checked: the model {model_spec} does not resolve"]))
        return
    lines = [f"for {model.name} ({model.source}):"]
    defaults_here = default_methods(model)
    for name in method_names():
        try:
            why = engine_class(name).unavailable(model)
        except ImportError as e:
            why = f"cannot import its engine ({e})"
        mark = "*" if name in defaults_here else " "
        lines.append(f"{mark} {name}: {'can run' if why is None else why}")
        if why is not None and name in defaults_here:
            d.advice.append(f"{name} (a default method) cannot run here: {why}")
    lines.append("* = the default methods for this model")
    d.sections.append(("methods", lines))


def diagnose(model_spec: str = defaults.DEFAULT_MODEL, threads: int | None = None) -> Diagnosis:
    d = Diagnosis()
    libraries(d)
    cpu(d, threads or defaults.default_threads())
    load_now(d)
    if not d.problems:  # the engines' checks import the libraries found missing above
        methods(d, model_spec)
    return d
