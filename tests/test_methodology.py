"""docs/methodology.md is exactly its template with the figures of the runs kept beside it:
a figure edited by hand, or a run replaced without writing the document again, fails here."""

import os
import shutil

import pytest

from inferlab.report.methodology import MethodologyError, read_runs, render, write
from tests.test_cli import run_cli

DOCS = os.path.join(os.path.dirname(__file__), "..", "docs")


def test_the_methodology_document_is_its_template_with_its_runs_figures():
    with open(os.path.join(DOCS, "methodology.template.md"), encoding="utf-8") as f:
        expected = render(f.read(), read_runs(DOCS))
    with open(os.path.join(DOCS, "methodology.md"), encoding="utf-8") as f:
        assert f.read() == expected, "docs/methodology.md is stale: run `inferlab report --methodology`"
    assert "{{" not in expected and "x [" in expected  # every placeholder filled, speedups with intervals


def test_a_placeholder_that_names_nothing_is_one_error(tmp_path):
    runs = read_runs(DOCS)
    alias = next(iter(runs))
    for bad, message in (("{{nope:e2e_ms:kv-cache}}", "no run 'nope'"),
                         (f"{{{{{alias}:speed:kv-cache}}}}", "unknown figure 'speed'"),
                         (f"{{{{{alias}:e2e_ms:no-such-method}}}}", "no-such-method has no successful record")):
        with pytest.raises(MethodologyError, match=message):
            render(f"x {bad} y", runs)


def test_the_command_keeps_a_new_run_and_writes_the_document_again(tmp_path, capsys):
    docs = tmp_path / "docs"
    shutil.copytree(DOCS, docs, ignore=shutil.ignore_patterns("*.png"))
    (docs / "methodology.md").write_text("stale")
    alias = sorted(os.listdir(docs / "runs"))[0]
    source = tmp_path / "elsewhere"
    shutil.copytree(docs / "runs" / alias, source)
    assert run_cli("report", "--methodology", f"{alias}={source}", "--docs", docs) == 0
    assert (docs / "methodology.md").read_text() != "stale"
    assert run_cli("report", "--methodology", "nonsense", "--docs", docs) == 2
    assert "write ALIAS=RESULTS" in capsys.readouterr().err
    assert write(str(docs)).endswith("methodology.md")
