"""The fp32 reference's greedy tokens for a prompt, kept in the cache.

Every timed method's tokens are compared with the reference's (first divergence). Producing
them costs a reference process: about 12 s for 272 tokens of SmolLM2 at kv-cache's speed, more
than a small run measures. They depend on the model's content, the prompt's ids, the number of
new tokens, the thread count (reduction order) and the libraries that compute them; under that
key they are computed once."""

from __future__ import annotations

import hashlib
import json
import os
from importlib import metadata

from . import defaults
from .fsutil import write_json_atomic


def _path(content_hash: str, prompt_ids: list[int], new_tokens: int, threads: int) -> str:
    key = json.dumps({"model": content_hash, "prompt_ids": prompt_ids, "new_tokens": new_tokens,
                      "threads": threads, "method": defaults.REFERENCE_METHOD,
                      "torch": metadata.version("torch"),
                      "transformers": metadata.version("transformers")})
    name = hashlib.sha256(key.encode()).hexdigest()[:24]
    return os.path.join(defaults.cache_dir(), "reference-tokens", f"{name}.json")


def load(content_hash: str, prompt_ids: list[int], new_tokens: int, threads: int) -> list[int] | None:
    try:
        with open(_path(content_hash, prompt_ids, new_tokens, threads)) as f:
            tokens = json.load(f)["tokens"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    ok = isinstance(tokens, list) and len(tokens) == new_tokens and all(isinstance(t, int) for t in tokens)
    return tokens if ok else None


def store(content_hash: str, prompt_ids: list[int], new_tokens: int, threads: int,
          tokens: list[int]) -> None:
    path = _path(content_hash, prompt_ids, new_tokens, threads)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_json_atomic(path, {"tokens": tokens})
