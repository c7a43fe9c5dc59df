import os
import tempfile

import pytest

# converted models, exports and hardware figures of the tests stay apart from the user's cache
os.environ.setdefault("INFERLAB_CACHE", os.path.join(tempfile.gettempdir(), "inferlab-test-cache"))

from tests.tiny import make_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    base = tmp_path_factory.mktemp("models")
    return {arch: make_model(str(base / f"tiny-{arch}"), arch) for arch in ("gpt2", "llama")}


@pytest.fixture(scope="session")
def tiny_refs(tiny_models):
    from inferlab.models import resolve

    return {arch: resolve(path) for arch, path in tiny_models.items()}


@pytest.fixture(autouse=True)
def _run_from_repo(monkeypatch):
    # workers import test engines as `tests.fake_engines`: the repo root must be the cwd
    monkeypatch.chdir(REPO)


@pytest.fixture(autouse=True)
def _small_bandwidth_probe(monkeypatch):
    # the in-run probe streams 256 MB at full size; 32 MB keeps the tests' runs quick
    from inferlab import defaults

    monkeypatch.setattr(defaults, "PROBE_BYTES", 32 << 20)
