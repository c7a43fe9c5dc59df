"""Integer lists as llama-bench writes them: `1,2,4`; `1-8+1` (from 1 to 8 in steps of 1);
`1-64*2` (from 1 to 64, doubling); parts joined by commas (`1,8-32*2`)."""

from __future__ import annotations

import re

PART = re.compile(r"^(\d+)(?:-(\d+)([+*])(\d+))?$")
MAX_VALUES = 10_000  # a range that long is a typo, not a sweep


def parse_int_list(text: str) -> list[int]:
    """The values in order, duplicates dropped. Raises ValueError with what is wrong."""
    values: list[int] = []
    parts = [p.strip() for p in text.split(",")]
    if not text.strip() or any(not p for p in parts):
        raise ValueError(f"empty list or list item: '{text}'")
    for part in parts:
        m = PART.match(part)
        if not m:
            raise ValueError(f"'{part}' is not a number or a range like 1-8+1 or 1-64*2")
        first = int(m.group(1))
        if m.group(2) is None:
            values.append(first)
            continue
        last, op, step = int(m.group(2)), m.group(3), int(m.group(4))
        if last < first:
            raise ValueError(f"range {part} is reversed (it would be empty)")
        if (op == "+" and step < 1) or (op == "*" and (step < 2 or first < 1)):
            raise ValueError(f"range {part} never reaches {last}: "
                             "use a step of at least 1 (+) or a factor of at least 2 from 1 (*)")
        value = first
        while value <= last:
            values.append(value)
            if len(values) > MAX_VALUES:
                raise ValueError(f"range {part} has more than {MAX_VALUES} values")
            value = value + step if op == "+" else value * step
    return list(dict.fromkeys(values))
