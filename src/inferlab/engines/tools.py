"""Conversion tools that run as processes of their own (optimum-cli, the GenAI model builder):
one timeout rule and one way to say why they failed."""

from __future__ import annotations

import subprocess

from .base import EngineError

TOOL_TIMEOUT_S = 900


def run_tool(cmd: list[str], what: str, env: dict | None = None) -> tuple[subprocess.CompletedProcess, str]:
    """Run a converter; returns (the finished process, the last line of its stderr). A run past
    the timeout is an EngineError; judging the exit code is the caller's (some tools say
    "unsupported" on stderr)."""
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=TOOL_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise EngineError(f"{what} took over {TOOL_TIMEOUT_S} s") from None
    return done, (done.stderr.strip().splitlines() or ["no output"])[-1]
