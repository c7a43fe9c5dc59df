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
        the prompt are one continuous passage. A batch's sequences start at evenly spaced points
        of the text, so they differ; where a sequence starts depends on neither the prompt's
        length nor the depth, so cells that differ only in prompt length share their contexts
        (a worker cuts its cache back to them instead of filling it again)."""
        start = index * max(1, len(self.ids) // cell.batch)
        return self.cut(start, cell.depth), self.cut(start + cell.depth, cell.prompt_tokens)


def text_tokens(tokenizer, text: str, source: str) -> TextTokens:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(f"the prompt text ({source}) has no tokens")
    return TextTokens([int(i) for i in ids], source)
