"""The reports as a reader opens them: in headless Chromium, the answer first, the main table,
every image loaded from inside the page, no console error, the model's text escaped. The
screenshots stay in tests/output/ for a person to look at."""

import os
import shutil

from inferlab.derive import derive
from inferlab.report import to_html, write_reports
from inferlab.results import EngineDetails
from tests.browser import render as open_in_browser
from tests.made_up import method, results

OUTPUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "output")
# appended to a copy of the page: after loading, the body says which images rendered
IMAGE_CHECK = ("<script>window.addEventListener('load', () => document.body.setAttribute('data-images', "
               "Array.from(document.images).map(i => i.complete && i.naturalWidth > 0 ? 'ok' : "
               "'broken ' + i.alt).join(',')));</script></body>")


def opened(page: str, name: str) -> tuple[str, list[str]]:
    """The rendered body and console errors of a page; its screenshot kept as OUTPUT/name.png."""
    os.makedirs(OUTPUT, exist_ok=True)
    checked = page + ".checked.html"
    with open(page) as f:
        text = f.read()
    assert "src=\"http" not in text and "src='http" not in text  # nothing from the network
    with open(checked, "w") as f:
        f.write(text.replace("</body>", IMAGE_CHECK))
    dom, console = open_in_browser(checked, os.path.join(OUTPUT, f"{name}.png"))
    return dom[dom.index("<body"):], console


def images(body: str) -> list[str]:
    """'ok' per image that rendered, 'broken ALT' per one that did not."""
    return body.split('data-images="')[1].split('"')[0].split(",")


def run_results():
    hostile = "<script>alert('x')</script> & <b>"
    r = results(method("kv-cache", 900, quality="PASS", peak=900e6),
                method("eager-nocache", 6000, quality="PASS", peak=1000e6, seed=1),
                method("native-int4", 200, quality="PASS", peak=180e6, seed=2),
                method("torch-int8", 150, quality="FAIL", peak=1200e6, seed=3),
                name=hostile)
    for m in r.methods:
        m.text = hostile
        m.details = EngineDetails(dtype="int4", weight_bits=4, activation_bits=8, extra={"nested": {"bits": 4}})
    r.derived = derive(r)
    return r


def test_the_run_report_answers_first_in_a_browser(tmp_path):
    r = run_results()
    write_reports(r, str(tmp_path))
    body, console = opened(str(tmp_path / "report.html"), "report")
    assert console == []
    assert len(images(body)) >= 3 and set(images(body)) == {"ok"}, images(body)
    answer = body.index('<p class="answer"><b>native-int4</b> is the fastest method that passes')
    table = body.index("<th>E2E vs kv-cache [95 % CI]</th>")
    assert answer < table < body.index("<details>")  # the answer, then the key figures, then the folds
    assert "Faster but failing the quality budget: torch-int8" in body
    assert "<script>alert" not in body.replace(body[body.index("<script>window"):], "")  # escaped
    assert "&lt;script&gt;alert" in body
    assert os.path.getsize(os.path.join(OUTPUT, "report.png")) > 10_000


def test_the_comparison_and_sweep_pages_open_cleanly(tmp_path):
    from inferlab import compare as cmp
    from inferlab.report import compare as show, write_text
    from inferlab.results import Cell, CellResult

    c = cmp.compare(results(method("a", 100)), results(method("a", 130, seed=1)), "base", "new",
                    cmp.Gate(slower=0.05))
    chart = show.draw(c, str(tmp_path))
    write_text(str(tmp_path / "compare.html"), to_html(show.render(c, chart), str(tmp_path)))
    body, console = opened(str(tmp_path / "compare.html"), "compare")
    assert console == [] and images(body) == ["ok"]
    assert body.index('<p class="answer">a: 1.30x slower') < body.index("<table>")

    sweep = results()
    sweep.sweep = {"axes": {"prompt_tokens": [32, 64]}, "prompt_text": "made up"}
    sweep.cells = [CellResult(Cell(p, 4), "complete", [method("a", p * 2, seed=p), method("b", 100, seed=p + 1)])
                   for p in (32, 64)]
    sweep.methods = [method("a", 1), method("b", 1)]
    sweep.derived = derive(sweep)
    folder = tmp_path / "sweep"
    folder.mkdir()
    write_reports(sweep, str(folder))
    body, console = opened(str(folder / "report.html"), "sweep")
    assert console == [] and len(images(body)) >= 1 and set(images(body)) == {"ok"}, images(body)
    assert body.index('<p class="answer"><b>a</b> is fastest end to end in 1 of 2 cells; b in 1') < body.index("<table>")
    shutil.rmtree(tmp_path, ignore_errors=True)
