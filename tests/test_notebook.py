"""notebooks/analysis.ipynb runs top to bottom (nbclient) on a run and a sweep the test makes."""

import os

import nbformat
from nbclient import NotebookClient

from tests.test_cli import only_run_folder, run_cli
from tests.test_sweep import QUICK

NOTEBOOK = os.path.join(os.path.dirname(__file__), "..", "notebooks", "analysis.ipynb")


def test_the_analysis_notebook_runs_top_to_bottom(tiny_models, tmp_path, monkeypatch):
    model = tiny_models["llama"]
    assert run_cli("run", "--model", model, "--methods", "kv-cache,eager-nocache", "--new-tokens", "4",
                   "--repeats", "2", "--min-time", "0", "--warmup", "1", "--threads", "1",
                   "--no-quality", "--quiet", "--output", tmp_path / "r") == 0
    assert run_cli("sweep", "--model", model, "--methods", "kv-cache", "--prompt-tokens", "4",
                   "--batch", "1,2", "--output", tmp_path / "s", *QUICK) == 0
    monkeypatch.setenv("INFERLAB_RUN", only_run_folder(tmp_path / "r") + "/results.json")
    monkeypatch.setenv("INFERLAB_SWEEP", only_run_folder(tmp_path / "s") + "/results.json")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()  # raises on an error
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    pngs = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(pngs) == 2  # the main charts (one figure) and the sweep chart
    tables = [o["data"]["text/html"] for o in outputs if "text/html" in o.get("data", {})]
    assert any("eager-nocache" in t for t in tables) and any("pp4+tg3 t1 b2" in t for t in tables)
