"""Tokenizer access shared by the run (prompt, generated text) and the quality plan.

Importing transformers costs the runner about 3 s, more than a small run measures: a prompt's
ids are kept per tokenizer files and prompt (content_keys.remembered), and generated ids are
turned into text by the `tokenizers` library alone when the folder has a tokenizer.json."""

from __future__ import annotations

import hashlib
import os
from functools import lru_cache

from .content_keys import remembered

# the files a Hugging Face tokenizer is read from: a change in any of them re-tokenizes
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "chat_template.jinja", "vocab.json", "merges.txt", "tokenizer.model")


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


def tokenize_prompt(model_path: str, prompt: str, chat_template: bool) -> tuple[list[int], bool]:
    """encode_prompt with the model's tokenizer, kept per tokenizer files and prompt."""
    files = [os.path.join(model_path, f) for f in TOKENIZER_FILES
             if os.path.isfile(os.path.join(model_path, f))]
    digest = hashlib.sha256(prompt.encode()).hexdigest()[:16]
    ids, templated = remembered(f"prompt ids {digest} template={chat_template}", files,
                                lambda: encode_prompt(load_tokenizer(model_path), prompt, chat_template))
    return list(ids), bool(templated)


@lru_cache(maxsize=4)
def _fast_tokenizer(path: str):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(os.path.join(path, "tokenizer.json"))


def decode_text(model_path: str, tokens: list[int]) -> str:
    """Generated ids as text, special tokens kept; "" when the ids are not the tokenizer's
    (gpt2-random draws ids outside its borrowed vocabulary's meaning)."""
    try:
        if os.path.isfile(os.path.join(model_path, "tokenizer.json")):
            return _fast_tokenizer(model_path).decode(tokens, skip_special_tokens=False)
        return load_tokenizer(model_path).decode(tokens, skip_special_tokens=False)
    except Exception:  # noqa: BLE001 - ids outside the vocabulary
        return ""
