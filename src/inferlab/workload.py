"""A sweep's prompts: exactly N tokens each, cut deterministically from one text (the quality
text, CPython's pydoc_data.topics, or --text-file), so every method and every run of a cell
reads the same ids. Raw text tokens, no chat template: the length is the point."""

from __future__ import annotations

from dataclasses import dataclass

from .results import Cell


@dataclass
class TextTokens:
    ids: list[int]
    source: str

    def cut(self, start: int, n: int) -> list[int]:
        """n ids from position `start`, wrapping around at the text's end."""
        size = len(self.ids)
        return [self.ids[(start + i) % size] for i in range(n)]

    def sequence(self, cell: Cell, index: int = 0) -> tuple[list[int], list[int]]:
        """(context ids, prompt ids) of the cell's sequence `index`: the context (depth) and
        the prompt are one continuous passage; each sequence of a batch starts where the one
        before it ended, so the sequences of a batch differ."""
        start = index * (cell.depth + cell.prompt_tokens)
        return self.cut(start, cell.depth), self.cut(start + cell.depth, cell.prompt_tokens)


def text_tokens(tokenizer, text: str, source: str) -> TextTokens:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(f"the prompt text ({source}) has no tokens")
    return TextTokens([int(i) for i in ids], source)
