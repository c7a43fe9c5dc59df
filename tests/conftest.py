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
def _quick_hardware_probe(request, monkeypatch):
    """The in-run probe is a process of its own that imports torch (~3 s, twice a run). Tests
    marked real_probe run it (32 MB instead of 256); the others record fixed limits."""
    from inferlab import defaults
    from inferlab.runner import Session

    if request.node.get_closest_marker("real_probe"):
        monkeypatch.setattr(defaults, "PROBE_BYTES", 32 << 20)
        return

    def fixed_probe(session, when):
        session.results.probes.append({"threads": session.config.threads, "when": when,
                                       "bandwidth_bytes_per_s": 20e9, "gemm_flops_per_s": 200e9,
                                       "method": "fixed figures (tests)"})
        session.save()

    monkeypatch.setattr(Session, "probe", fixed_probe)
