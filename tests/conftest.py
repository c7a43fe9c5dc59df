import os
import tempfile

import pytest

# converted models, exports and hardware figures of the tests stay apart from the user's cache
os.environ.setdefault("INFERLAB_CACHE", os.path.join(tempfile.gettempdir(), "inferlab-test-cache"))
# every run the tests make adds itself to one history per test session: set here in the
# process that starts pytest, inherited by its xdist workers (`inferlab history` lists them)
os.environ.setdefault("INFERLAB_HISTORY", os.path.join(
    tempfile.gettempdir(), "inferlab-test-history", f"session-{os.getpid()}.sqlite"))

from tests.tiny import SHARP_QK, make_model  # noqa: F401 - SHARP_QK: for the tests that read it here

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
    """The in-run probe is a process of its own that imports torch (~1 s a run). Tests marked
    real_probe run it (32 MB instead of 256); the others record fixed limits."""
    from inferlab import defaults, runner

    if request.node.get_closest_marker("real_probe"):
        monkeypatch.setattr(defaults, "PROBE_BYTES", 32 << 20)
        return

    class FixedProbe:
        def __init__(self, threads, nbytes, timeout_s):
            self.threads = threads

        def measure(self):
            return {"threads": self.threads, "bandwidth_bytes_per_s": 20e9,
                    "gemm_flops_per_s": 200e9, "method": "fixed figures (tests)"}

        def close(self):
            pass

    monkeypatch.setattr(runner, "ProbeProcess", FixedProbe)


@pytest.fixture(scope="session")
def grid_llama(tiny_models, tmp_path_factory):
    """The tiny Llama on a Q4_1 GGUF's grids (tiny.on_gguf_grids)."""
    return resolve_on_grids(tiny_models["llama"], str(tmp_path_factory.mktemp("grid-llama")))


def resolve_on_grids(source: str, folder: str, qk_scale: float = 1.0):
    from inferlab.models import resolve
    from tests.tiny import on_gguf_grids

    on_gguf_grids(source, folder, qk_scale)
    return resolve(folder)


@pytest.fixture(scope="session")
def sharp_llama(tiny_models, tmp_path_factory):
    """The tiny Llama on a Q4_1 GGUF's grids with sharp attention (SHARP_QK)."""
    return resolve_on_grids(tiny_models["llama"], str(tmp_path_factory.mktemp("sharp-llama")), SHARP_QK)
