"""Tokenizer access shared by the run (prompt, generated text) and the quality plan."""

from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=4)
def load_tokenizer(path: str):
    """The model folder's tokenizer, loaded once per process. Raises ModelError."""
    from transformers import AutoTokenizer

    from .models import ModelError, _first_line

    try:
        return AutoTokenizer.from_pretrained(path)
    except Exception as e:  # noqa: BLE001
        raise ModelError(f"no usable tokenizer in {path}: {_first_line(e)}") from e


def encode_prompt(tokenizer, prompt: str, chat_template: bool) -> tuple[list[int], bool]:
    """Prompt ids, and whether the model's chat template was applied (instruct models answer
    a raw prompt oddly: SmolLM2 starts with an end-of-turn token)."""
    if chat_template and getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                            add_generation_prompt=True, tokenize=True)
        return [int(i) for i in ids], True
    return list(tokenizer(prompt, add_special_tokens=True)["input_ids"]), False
