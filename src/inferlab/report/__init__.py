"""Rendering: reads a RunResults, writes report.md, report.html and charts. Never measures."""

from __future__ import annotations

import html
import os

from ..results import RunResults
from . import charts, markdown


def write_text(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def write_reports(results: RunResults, folder: str) -> list[str]:
    """Write charts, report.md and report.html into folder; returns the paths written."""
    from . import profiling, sweep

    if results.sweep:  # a sweep (perhaps interrupted before its first cell)
        drawn = sweep.draw(results, folder)
        md = sweep.render(results, drawn)
        write_text(os.path.join(folder, "report.md"), md)
        write_text(os.path.join(folder, "report.html"), to_html(md, folder))
        return [os.path.join(folder, n) for n in ["report.md", "report.html", *drawn]]
    drawn = charts.draw_all(results, folder)
    md = markdown.render(results, drawn)
    write_text(os.path.join(folder, "report.md"), md)
    write_text(os.path.join(folder, "report.html"), to_html(md, folder))
    written = ["report.md", "report.html", *drawn]
    if profiling.profiled(results):
        prof_charts = profiling.draw(results, folder)
        pmd = profiling.render(results, prof_charts)
        write_text(os.path.join(folder, "profiling_report.md"), pmd)
        write_text(os.path.join(folder, "profiling_report.html"), to_html(pmd, folder))
        written += ["profiling_report.md", "profiling_report.html", *prof_charts]
    return [os.path.join(folder, n) for n in written]


# raw HTML a report's Markdown may carry (GitHub renders it too): folded sections and a chart
# set beside its table; to_html passes these lines through as they are
PASSTHROUGH = ("<details", "</details>", "<summary", '<div class="beside">', "</div>")
STYLE = ("body{font-family:sans-serif;max-width:1250px;margin:2em auto;padding:0 1em;color:#222}"
         "pre{background:#f6f6f6;padding:8px;overflow-x:auto}"
         "table{border-collapse:collapse;margin:0.5em 0}td,th{border:1px solid #ccc;padding:3px 6px;"
         "font-size:13px;text-align:left}th{background:#eee}img{max-width:100%}"
         ".beside{display:flex;flex-wrap:wrap;gap:1.5em;align-items:flex-start}"
         ".beside>p{flex:1 1 360px;margin:0}.beside img{width:100%;max-width:640px}details{margin:0.6em 0}summary{cursor:pointer;font-weight:bold}"
         "p.answer{font-size:1.15em;background:#f3f7fb;border-left:4px solid #4c78a8;padding:0.6em 1em}")


def to_html(md: str, folder: str | None = None) -> str:
    """A minimal Markdown-to-HTML pass for our own reports (headings, tables, nested lists,
    images, fenced code, the PASSTHROUGH tags). Images found in `folder` are embedded: the page
    is one self-contained file. A quoted line ('> ') is the report's answer, set apart."""
    out, in_table, lists, code = [], False, [], None

    def close_lists(depth=0):
        while len(lists) > depth:
            out.append("</li></ul>")
            lists.pop()

    for line in md.splitlines():
        if line.startswith("```"):  # a fence opens or closes a code block, kept verbatim
            if code is None:
                out.extend(["</table>"] * in_table)
                close_lists()
                in_table = False
                code = []
            else:
                out.append("<pre><code>" + html.escape("\n".join(code)) + "</code></pre>")
                code = None
            continue
        if code is not None:
            code.append(line)
            continue
        if line.startswith("|"):
            close_lists()
            cells = [c.strip() for c in line.strip("|").split(" | ")]
            if line.startswith("|---"):
                continue
            if not in_table:
                out.append("<table>")
                tag, in_table = "th", True
            else:
                tag = "td"
            out.append("<tr>" + "".join(f"<{tag}>{_inline(c.replace(chr(92) + '|', '|'))}</{tag}>" for c in cells) + "</tr>")
            continue
        if in_table:
            out.append("</table>")
            in_table = False
        stripped = line.lstrip()
        if stripped.startswith("- "):
            depth = (len(line) - len(stripped)) // 2 + 1
            if depth > len(lists):
                while len(lists) < depth:
                    out.append("<ul><li>")
                    lists.append(True)
            else:
                close_lists(depth)
                out.append("</li><li>")
            out.append(_inline(stripped[2:]))
            continue
        close_lists()
        if line.startswith(PASSTHROUGH):
            out.append(line)
        elif line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            out.append(f"<h{level}>{html.escape(line[level:].strip())}</h{level}>")
        elif line.startswith("!["):
            src = line[line.index("(") + 1:-1]
            out.append(f'<p><img src="{_image_source(src, folder)}" alt="{html.escape(src)}"></p>')
        elif line.startswith("> "):  # a report's answer, as a quote in Markdown
            out.append(f'<p class="answer">{_inline(line[2:])}</p>')
        elif line.strip():
            out.append(f"<p>{_inline(line)}</p>")
    if in_table:
        out.append("</table>")
    close_lists()
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>inferlab report</title>"
            f"<style>{STYLE}</style></head><body>\n" + "\n".join(out) + "\n</body></html>\n")


def _image_source(src: str, folder: str | None) -> str:
    import base64

    path = os.path.join(folder, src) if folder else None
    if path and os.path.isfile(path) and src.endswith(".png"):
        with open(path, "rb") as f:
            return "data:image/png;base64," + base64.b64encode(f.read()).decode()
    return html.escape(src)


def _inline(text: str) -> str:
    import re

    text = html.escape(text)
    text = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", text)
    text = re.sub(r"(?<![*\w])\*([^*\s](?:[^*]*[^*\s])?)\*(?![*\w])", r"<i>\1</i>", text)  # *italic*
    return re.sub(r"`(.+?)`", r"<code>\1</code>", text)
