"""`inferlab export RESULTS --format csv|jsonl|sqlite`: one row per method and cell with the
history's columns (records.py), or with --per-token one row per generated token of every timed
run. Written to a temporary file beside the target, then renamed: never half a file."""

from __future__ import annotations

import csv
import json
import os
import sqlite3

from .records import COLUMNS, NAMES, TOKEN_COLUMNS, records, token_records

FORMATS = ("csv", "jsonl", "sqlite")


class ExportError(RuntimeError):
    """The export cannot be written (CLI: one line, exit 2)."""


def export(results, results_path: str, fmt: str, target: str, per_token: bool = False) -> int:
    """Write the rows to `target`; returns how many."""
    if per_token:
        rows, columns = token_records(results, results_path), TOKEN_COLUMNS
    else:
        rows, columns = records(results, results_path), tuple((n, t) for n, t, _ in COLUMNS)
    tmp = f"{target}.tmp-{os.getpid()}"
    try:
        if fmt == "csv":
            with open(tmp, "w", newline="", encoding="utf-8") as f:
                w = csv.DictWriter(f, fieldnames=[n for n, _ in columns])
                w.writeheader()
                w.writerows(rows)
        elif fmt == "jsonl":
            with open(tmp, "w", encoding="utf-8") as f:
                for row in rows:
                    f.write(json.dumps(row) + "\n")
        else:
            table = "tokens" if per_token else "records"
            db = sqlite3.connect(tmp)
            try:
                with db:
                    db.execute(f"CREATE TABLE {table} ({', '.join(f'{n} {t}' for n, t in columns)})")
                    names = [n for n, _ in columns]
                    db.executemany(f"INSERT INTO {table} VALUES ({', '.join('?' * len(names))})",
                                   [tuple(r[n] for n in names) for r in rows])
            finally:
                db.close()
        os.replace(tmp, target)
    except (OSError, sqlite3.Error) as e:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise ExportError(f"cannot write {target}: {e}") from None
    return len(rows)


__all__ = ["FORMATS", "NAMES", "ExportError", "export"]
