"""The configuration of one run (its values default to defaults.py)."""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field

from . import defaults


# the command-line option of each RunConfig field that validate() may name
OPTION_NAMES = {"warmup": "--warmup", "min_repeats": "--repeats", "max_repeats": "--max-repeats",
                "profile_steps": "--profile-steps", "min_time_s": "--min-time",
                "timeout_s": "--timeout", "new_tokens": "--new-tokens"}


@dataclass
class RunConfig:
    model: str = defaults.DEFAULT_MODEL
    methods: list[str] = field(default_factory=lambda: list(defaults.DEFAULT_METHODS))
    prompt: str = defaults.DEFAULT_PROMPT
    chat_template: bool = True  # wrap the prompt in the model's chat template when it has one
    new_tokens: int = defaults.DEFAULT_NEW_TOKENS
    threads: int = field(default_factory=defaults.default_threads)
    warmup: int = defaults.DEFAULT_WARMUP
    min_repeats: int = defaults.DEFAULT_MIN_REPEATS
    min_time_s: float = defaults.DEFAULT_MIN_TIME_S
    max_repeats: int = defaults.DEFAULT_MAX_REPEATS
    timeout_s: float = defaults.DEFAULT_METHOD_TIMEOUT_S
    output_dir: str = defaults.RESULTS_DIR
    speed: bool = True  # time generations (off: `inferlab quality`)
    quality: bool = True  # evaluate against the reference (off: --no-quality)
    text_file: str | None = None  # perplexity text; default: CPython's pydoc_data.topics
    profile: bool = False  # a profiling pass per method, in its own process (`inferlab profile`)
    profile_steps: int = defaults.PROFILE_DECODE_STEPS
    profile_detail: bool = False  # shapes, stacks and memory in the trace (much larger files)
    sweep_lengths: list[int] = field(default_factory=lambda: list(defaults.SWEEP_CONTEXTS))
    protocol: str = defaults.DEFAULT_PROTOCOL  # interleaved | sequential (runner.py)
    max_ppl_increase: float = defaults.QUALITY_BUDGET["max_ppl_increase"]
    max_kl_mean: float = defaults.QUALITY_BUDGET["max_kl_mean"]
    min_top1: float = defaults.QUALITY_BUDGET["min_top1"]

    def budget(self) -> dict:
        """The quality budget of this run (defaults.QUALITY_BUDGET unless set on the CLI)."""
        return {k: getattr(self, k) for k in defaults.QUALITY_BUDGET}

    def validate(self) -> None:
        """Raise ValueError (one line) on values that cannot be measured."""
        from .engines import method_names

        unknown = [m for m in self.methods if m not in method_names()]
        if unknown:
            raise ValueError(
                f"unknown method(s): {', '.join(unknown)} (valid: {', '.join(method_names())})"
            )
        if not self.methods:
            raise ValueError("no method selected")
        if len(set(self.methods)) != len(self.methods):
            raise ValueError("a method is listed twice in --methods")
        if self.new_tokens < 2:
            raise ValueError("--new-tokens must be at least 2 (ITL needs two tokens)")
        cpus = os.cpu_count() or 1
        if not 1 <= self.threads <= cpus:
            raise ValueError(f"--threads must be between 1 and this machine's {cpus} CPUs "
                             f"(more threads than CPUs measures contention, not the method)")
        if self.protocol not in defaults.PROTOCOLS:
            raise ValueError(f"--protocol must be one of {', '.join(defaults.PROTOCOLS)}")
        if not (0 <= self.max_ppl_increase and 0 <= self.max_kl_mean and 0 <= self.min_top1 <= 1):
            raise ValueError("quality budget out of range: --max-ppl-increase and --max-kl >= 0, "
                             "--min-top1 between 0 and 1")
        if self.min_repeats < 1 or self.max_repeats < self.min_repeats:
            raise ValueError("--repeats must be >= 1 and --max-repeats >= --repeats")
        if self.warmup < 0 or self.min_time_s < 0 or self.timeout_s <= 0:
            raise ValueError("--warmup and --min-time must be >= 0, --timeout > 0")
        for name, limit in defaults.LIMITS.items():
            value = getattr(self, name)
            if not math.isfinite(value) or value > limit:
                raise ValueError(f"{OPTION_NAMES[name]} {value:g} is beyond what a run can finish "
                                 f"(at most {limit:g})")
        if not (self.speed or self.quality or self.profile):
            raise ValueError("nothing to do: speed, quality and profiling are all off")
        if self.profile_steps < 1:
            raise ValueError("--profile-steps must be at least 1")
        if not self.prompt.strip():
            raise ValueError("the prompt is empty")

    def to_dict(self) -> dict:
        return asdict(self)
