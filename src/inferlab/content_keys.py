"""Facts about files (their content key, what a model folder holds, a GGUF's type) computed
once per version of the files and kept in the cache.

Hashing SmolLM2's 538 MB of float32 weights and its 98 MB GGUF took about 5 s of every run,
checking the folder's config 3 s (importing transformers), reading the GGUF's type 2.7 s. A
fact is kept under the files' paths, sizes and modification times and computed again only when
one of those changed: a file rewritten in place gets a new mtime."""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Callable

from . import defaults
from .fsutil import write_json_atomic

MEMO_FILE = "file-facts.json"


def _stamp(path: str) -> list:
    st = os.stat(path)
    return [os.path.abspath(path), st.st_size, st.st_mtime_ns]


def remembered(kind: str, paths: list[str], compute: Callable[[], Any]) -> Any:
    """compute()'s JSON-able result, served from the cache while every file of `paths` keeps
    its size and modification time. A compute() that raises is not remembered."""
    stamps = [_stamp(p) for p in paths]
    memo_path = os.path.join(defaults.cache_dir(), MEMO_FILE)
    key = json.dumps([kind, stamps])
    memo = _read(memo_path)
    if key in memo:
        return memo[key]
    value = compute()
    if [_stamp(p) for p in paths] == stamps:  # not rewritten while it was read
        memo = _read(memo_path)  # another process may have added facts meanwhile
        memo[key] = value
        os.makedirs(os.path.dirname(memo_path), exist_ok=True)
        write_json_atomic(memo_path, memo)
    return value


def content_key(paths: list[str], named: bool = True) -> str:
    """sha256 (first 16 hex) over the files in this order, each preceded by its name when
    `named`."""
    def compute() -> str:
        h = hashlib.sha256()
        for path in paths:
            if named:
                h.update(os.path.basename(path).encode())
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 22), b""):
                    h.update(block)
        return h.hexdigest()[:16]

    return remembered("sha256-named" if named else "sha256", paths, compute)


def _read(path: str) -> dict:
    try:
        with open(path) as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):  # absent or corrupt: facts are computed again
        return {}
