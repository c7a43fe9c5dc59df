"""What `compare` and `export` accept for a results set: a folder, a results.json, an id from the
history (`12` or `#12`), or `last` (the newest earlier run of the other side's configuration)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from .history import HistoryError, find, history_path, last_before
from .results import ResultsError, RunResults, load


def results_file(path: str) -> str:
    return os.path.join(path, "results.json") if os.path.isdir(path) else path


@dataclass
class Side:
    results: RunResults
    path: str  # its results.json
    name: str  # what a reader sees: the path, and the history id when it came from there


def load_side(text: str, like: Side | None = None) -> Side:
    """`like`: the other side, which `last` needs. Raises ResultsError with one line."""
    if os.path.exists(text):
        path = results_file(text)
        return Side(load(path), path, path)
    try:
        if re.fullmatch(r"#?\d+", text):
            row = find(history_path(), int(text.lstrip("#")))
        elif text == "last":
            if like is None:
                raise ResultsError("'last' means the run before NEW: give NEW as a folder, file or id")
            row = last_before(history_path(), like.results, like.path)
        else:
            raise ResultsError(f"results not found: {text} (a folder, a results.json, a history id, or 'last')")
    except HistoryError as e:
        raise ResultsError(str(e)) from None
    return Side(load(row["results_path"]), row["results_path"], f"{row['results_path']} (history #{row['id']})")
