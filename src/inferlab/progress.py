"""A sweep's progress: one live line on a terminal (tqdm), with cells done of total, the
current cell and an ETA from the cells measured so far; a plain line per cell when the output
is not a terminal; nothing when quiet."""

from __future__ import annotations

import sys

from .results import Cell, CellResult


def duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def node_name(node: dict) -> str:
    """A cluster node as progress lines and reports name it: its hostname and id's start."""
    return f"{node.get('hostname') or node.get('host')} ({str(node.get('id', ''))[:8]})"


class SweepProgress:
    def __init__(self, total: int, already: int, quiet: bool = False, stream=None):
        self.stream = stream or sys.stderr
        self.total, self.already, self.done, self.seconds = total, already, 0, 0.0
        self.quiet = quiet
        self.bar = None
        if not quiet and self.stream.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total + already, initial=already, file=self.stream, unit="cell",
                            dynamic_ncols=True, bar_format="{n}/{total} cells |{bar:20}| {desc}")

    def eta(self) -> str:
        if not self.done:
            return "ETA after the first cell"
        return "ETA " + duration(self.seconds / self.done * (self.total - self.done))

    def starting(self, cell: Cell, where: str = "") -> None:
        """`where`: the node a cluster sends the cell to (nothing here)."""
        if self.bar is not None:
            self.bar.set_description_str(f"now {cell.key}{f' on {where}' if where else ''}; {self.eta()}")

    def advance(self, result: CellResult) -> None:
        self.done += 1
        self.seconds += result.seconds or 0.0
        states = ", ".join(f"{m.method} {m.status}" for m in result.methods if m.status != "ok")
        note = f" ({states})" if states else ""
        if result.node.get("id", "local") != "local":
            note = f" on {node_name(result.node)}{note}"
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_description_str(f"done {result.cell.key}{note}; {self.eta()}")
        elif not self.quiet:
            print(f"cell {self.already + self.done}/{self.already + self.total} {result.cell.key}: "
                  f"{result.seconds or 0:.1f} s{note}; {self.eta()}", file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
