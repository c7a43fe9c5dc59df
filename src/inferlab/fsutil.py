"""Files and folders that are either complete or absent: never half-written."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile

COMPLETE_MARK = ".complete"


def is_complete(folder: str) -> bool:
    return os.path.isfile(os.path.join(folder, COMPLETE_MARK))


def build_folder(dest: str, build) -> bool:
    """Make dest complete: when it is not, run build(tmp) in a sibling temporary folder, then
    rename that to dest. Returns True when dest was already complete (a cache hit).

    Builds of one folder are serialized by a lock file beside it: a second process (a second
    inferlab run, a parallel test) waits, then finds the folder complete and builds nothing,
    instead of replacing files the first one may already be reading."""
    if is_complete(dest):  # the common case, without touching a lock
        return True
    os.makedirs(os.path.dirname(os.path.abspath(dest)), exist_ok=True)
    with open(f"{dest}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if is_complete(dest):
            return True
        tmp = f"{dest}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        try:
            build(tmp)
            open(os.path.join(tmp, COMPLETE_MARK), "w").close()
            shutil.rmtree(dest, ignore_errors=True)  # an incomplete leftover of a killed build
            os.replace(tmp, dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return False


def write_json_atomic(path: str, data: dict) -> None:
    """Write to a temporary file in the same folder, then rename: never a half-written file."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=folder)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, allow_nan=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
