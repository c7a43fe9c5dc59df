"""Input checks that need the file system or the model, run before anything heavy: each raises
ValueError with one line that says what is wrong (CLI: exit 2)."""

from __future__ import annotations

import errno
import os
import tempfile

from .models import ModelRef


def check_output_location(base: str) -> None:
    """The results folder must be creatable and writable: a path under /proc, under a file or
    naming a file fails here, not after minutes of measuring."""
    if os.path.exists(base) and not os.path.isdir(base):
        raise ValueError(f"--output {base} is a file, not a folder")
    try:
        os.makedirs(base, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".inferlab-write-check-", dir=base)
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        reason = "a parent is a file" if e.errno == errno.ENOTDIR else (e.strerror or str(e))
        raise ValueError(f"--output {base} cannot be written: {reason}") from None


def context_window(model: ModelRef) -> int | None:
    """The model's maximum sequence length from its config (None when it does not say)."""
    import json

    try:
        with open(os.path.join(model.path, "config.json")) as f:
            cfg = json.load(f)
    except (OSError, ValueError):
        return None
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        if isinstance(cfg.get(key), int):
            return cfg[key]
    return None


def check_lengths(model: ModelRef, prompt_tokens: int, config) -> None:
    """Prompt + new tokens, and the quality windows, must fit the model's context window."""
    limit = context_window(model)
    if limit is None:
        return
    if prompt_tokens + config.new_tokens > limit:
        raise ValueError(
            f"the prompt ({prompt_tokens} tokens) plus --new-tokens {config.new_tokens} exceed "
            f"the model's context window of {limit} tokens; use at most "
            f"--new-tokens {max(limit - prompt_tokens, 0)} or a shorter prompt")
    if config.quality:
        from .quality import EVAL_CONTEXT

        if EVAL_CONTEXT > limit:
            raise ValueError(f"the quality windows ({EVAL_CONTEXT} tokens) exceed the model's "
                             f"context window of {limit} tokens; use --no-quality")
