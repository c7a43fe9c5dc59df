"""The local history of runs: a SQLite file with one row per results set (`runs`) and one per
method and cell (`records`, the columns of records.py). Every run, sweep and plan adds itself;
`inferlab history` lists and filters; `compare` takes its ids. Each write is one transaction:
a killed process leaves the file as it was."""

from __future__ import annotations

import os
import sqlite3

from . import defaults
from .records import COLUMNS, NAMES, configuration, model_key, records, workload
from .results import RunResults

HISTORY_FILE = "history.sqlite"
LOCK_WAIT_S = 5.0  # another inferlab writing: wait this long before saying the file is locked
RUN_COLUMNS = ("id", "created", "kind", "status", "model", "configuration", "workload", "cpu",
               "hostname", "inferlab_version", "methods", "results_path")


class HistoryError(RuntimeError):
    """The history file cannot be read or written (locked, corrupt, read-only): one line."""


def history_path(results_dir: str | None = None) -> str:
    """INFERLAB_HISTORY, else history.sqlite beside the results (in the --output folder)."""
    return os.environ.get("INFERLAB_HISTORY") or os.path.join(results_dir or defaults.RESULTS_DIR, HISTORY_FILE)


def _connect(path: str, create: bool) -> sqlite3.Connection:
    if not create and not os.path.exists(path):
        raise HistoryError(f"no history at {path} (runs add themselves to it; INFERLAB_HISTORY moves it)")
    try:
        if create:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        db = sqlite3.connect(path, timeout=LOCK_WAIT_S)
        db.row_factory = sqlite3.Row
        if create:
            with db:
                db.execute(f"CREATE TABLE IF NOT EXISTS runs ({', '.join(c + (' INTEGER PRIMARY KEY' if c == 'id' else '') for c in RUN_COLUMNS)}, UNIQUE(results_path))")
                db.execute(f"CREATE TABLE IF NOT EXISTS records (run_id INTEGER REFERENCES runs(id), "
                           f"{', '.join(f'{n} {t}' for n, t, _ in COLUMNS)})")
        else:
            db.execute("SELECT count(*) FROM runs").fetchone()
    except (sqlite3.Error, OSError) as e:
        raise HistoryError(_why(path, e)) from None
    return db


def _why(path: str, e: Exception) -> str:
    text = str(e)
    if "locked" in text:
        return f"history {path} is locked by another process (waited {LOCK_WAIT_S:g} s): {text}"
    if "not a database" in text or "malformed" in text:
        return f"history {path} is corrupt ({text}): move it away and a new one is started"
    if "readonly" in text or "read-only" in text or isinstance(e, OSError):
        return f"history {path} cannot be written ({text}): set INFERLAB_HISTORY to a writable file"
    return f"history {path}: {text}"


def add(results: RunResults, results_path: str, kind: str | None = None, path: str | None = None) -> int:
    """Add (or refresh: a resumed sweep) a results set; returns its id. Raises HistoryError."""
    path = path or history_path(os.path.dirname(os.path.dirname(os.path.abspath(results_path))))
    results_path = os.path.abspath(results_path)
    rows = records(results, results_path)
    db = _connect(path, create=True)
    try:
        with db:  # one transaction: all of it or nothing
            old = db.execute("SELECT id FROM runs WHERE results_path = ?", (results_path,)).fetchone()
            if old:
                db.execute("DELETE FROM records WHERE run_id = ?", (old["id"],))
            values = {"created": results.created, "kind": kind or ("sweep" if results.sweep else "run"),
                      "status": results.status, "model": model_key(results),
                      "configuration": configuration(results), "workload": workload(results),
                      "cpu": _cpu(results), "hostname": results.measuring_machine().get("hostname"),
                      "inferlab_version": results.inferlab_version,
                      "methods": ",".join(m.method for m in results.methods), "results_path": results_path}
            if old:
                run_id = old["id"]
                db.execute(f"UPDATE runs SET {', '.join(f'{k} = ?' for k in values)} WHERE id = ?",
                           (*values.values(), run_id))
            else:
                run_id = db.execute(f"INSERT INTO runs ({', '.join(values)}) VALUES ({', '.join('?' * len(values))})",
                                    tuple(values.values())).lastrowid
            db.executemany(f"INSERT INTO records (run_id, {', '.join(NAMES)}) VALUES (?{', ?' * len(NAMES)})",
                           [(run_id, *(row[n] for n in NAMES)) for row in rows])
    except sqlite3.Error as e:
        raise HistoryError(_why(path, e)) from None
    finally:
        db.close()
    return run_id


def record(results: RunResults, folder: str, kind: str | None = None) -> int | None:
    """Add a finished (or interrupted) results set from its folder; a history that cannot be
    written (locked, corrupt, read-only) costs a one-line warning, never the results."""
    import sys

    try:
        return add(results, os.path.join(folder, "results.json"), kind)
    except HistoryError as e:
        print(f"inferlab: warning: not added to the history: {e}", file=sys.stderr)
        return None


def _query(path: str, sql: str, args=()) -> list[dict]:
    """Rows of a read-only query on an existing history; HistoryError with the reason."""
    db = _connect(path, create=False)
    try:
        return [dict(r) for r in db.execute(sql, args)]
    except sqlite3.Error as e:
        raise HistoryError(_why(path, e)) from None
    finally:
        db.close()


def runs(path: str, model: str | None = None, method: str | None = None, machine: str | None = None,
         kind: str | None = None, limit: int | None = None) -> list[dict]:
    """Past results sets, newest first; filters match part of the text (case-insensitive)."""
    where, args = [], []
    for column, value in (("model", model), ("cpu || ' ' || hostname", machine), ("kind", kind)):
        if value:
            where.append(f"{column} LIKE ?")
            args.append(f"%{value}%")
    if method:
        where.append("id IN (SELECT run_id FROM records WHERE method LIKE ?)")
        args.append(f"%{method}%")
    sql = "SELECT * FROM runs" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY created DESC, id DESC"
    if limit:
        sql += f" LIMIT {int(limit)}"
    return _query(path, sql, args)


def run_records(path: str, run_id: int) -> list[dict]:
    return _query(path, "SELECT * FROM records WHERE run_id = ?", (run_id,))


def find(path: str, run_id: int) -> dict:
    found = _query(path, "SELECT * FROM runs WHERE id = ?", (run_id,))
    if not found:
        raise HistoryError(f"no run {run_id} in the history {path} (`inferlab history` lists them)")
    return found[0]


def last_before(path: str, results: RunResults, results_path: str) -> dict:
    """The newest earlier results set of the same configuration as `results`."""
    found = _query(path, "SELECT * FROM runs WHERE configuration = ? AND results_path != ? AND created <= ? "
                         "ORDER BY created DESC, id DESC LIMIT 1",
                   (configuration(results), os.path.abspath(results_path), results.created))
    if not found:
        raise HistoryError(f"no earlier run of this configuration in the history {path}")
    return found[0]


def _cpu(results) -> str | None:
    """The CPU that measured; a sweep over several kinds of machine names each (records.py
    gives each record its own)."""
    from .machine import kind_names

    if len(results.machines) > 1:
        return "; ".join(sorted(kind_names(results.machines).values()))
    return results.measuring_machine().get("cpu")
