"""A run costs what it measures: facts about model files and the reference's tokens are kept
in the cache, and results record where a run's time went."""

import json
import os

from inferlab import content_keys, defaults
from inferlab.content_keys import content_key
from inferlab.results import RUN_PHASES, load
from tests.test_cli import FAST, only_run_folder, run_cli


def test_content_key_is_served_from_the_cache_until_the_file_changes(tmp_path, monkeypatch):
    monkeypatch.setenv("INFERLAB_CACHE", str(tmp_path / "cache"))
    f = tmp_path / "w.bin"
    f.write_bytes(b"weights")
    key = content_key([str(f)])
    memo_path = tmp_path / "cache" / content_keys.MEMO_FILE
    memo = json.loads(memo_path.read_text())
    assert list(memo.values()) == [key]
    # a planted value is served as it is: the file was not read again
    memo_path.write_text(json.dumps({k: "planted" for k in memo}))
    assert content_key([str(f)]) == "planted"
    # a rewrite changes the stamp: hashed again, and the new content gives a new key
    f.write_bytes(b"other weights")
    assert content_key([str(f)]) not in (key, "planted")
    f.write_bytes(b"weights")
    os.utime(f, ns=(1, 1))
    assert content_key([str(f)]) == key


def test_a_corrupt_memo_is_recomputed(tmp_path, monkeypatch):
    monkeypatch.setenv("INFERLAB_CACHE", str(tmp_path))
    f = tmp_path / "w.bin"
    f.write_bytes(b"x")
    (tmp_path / content_keys.MEMO_FILE).write_text("{not json")
    assert len(content_key([str(f)])) == 16


def test_reference_tokens_come_from_the_cache_the_second_time(tiny_models, tmp_path, monkeypatch):
    monkeypatch.setenv("INFERLAB_CACHE", str(tmp_path / "cache"))
    args = ["run", "--model", tiny_models["llama"], "--methods", "eager-nocache", "--no-quality",
            "--quiet", *FAST]
    assert run_cli(*args, "--output", tmp_path / "a") == 0
    first = load(os.path.join(only_run_folder(tmp_path / "a"), "results.json"))
    assert first.timings["reference"] > 0 and first.reference_tokens
    assert run_cli(*args, "--output", tmp_path / "b") == 0
    second = load(os.path.join(only_run_folder(tmp_path / "b"), "results.json"))
    assert "reference" not in second.timings
    assert second.reference_tokens == first.reference_tokens
    assert second.derived.methods["eager-nocache"].first_divergence == 6
    # every phase that ran is accounted for, and they add up to no more than the whole
    t = second.timings
    assert {"resolve", "load", "warmup", "timed", "report", "probes"} <= set(t)
    assert set(t) <= set(RUN_PHASES) | {"total"}
    assert sum(v for k, v in t.items() if k != "total") <= t["total"]


def test_a_different_thread_count_is_another_reference(tiny_models, tmp_path, monkeypatch):
    from inferlab import reference_tokens

    monkeypatch.setenv("INFERLAB_CACHE", str(tmp_path))
    reference_tokens.store("abc", [1, 2], 3, 1, [4, 5, 6])
    assert reference_tokens.load("abc", [1, 2], 3, 1) == [4, 5, 6]
    assert reference_tokens.load("abc", [1, 2], 3, 2) is None
    assert reference_tokens.load("abc", [1, 2, 3], 3, 1) is None
    assert reference_tokens.load("abd", [1, 2], 3, 1) is None
    assert reference_tokens.load("abc", [1, 2], 4, 1) is None
    assert defaults.REFERENCE_METHOD == "kv-cache"
