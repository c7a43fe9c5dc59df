"""Quality metrics on hand-checkable cases and tiny models."""

import math

import numpy as np
import pytest
import torch

from inferlab import quality
from inferlab.engines import engine_class
from tests.tiny import make_tokenizer


def test_perplexity_of_a_known_distribution():
    # uniform over 4 tokens: every target has p = 1/4, so perplexity is exactly 4
    logits = np.zeros((5, 4), dtype=np.float32)
    window = [0, 1, 2, 3, 0, 1]
    lp = quality.log_softmax(logits)
    assert quality.perplexity(quality.nll(lp[:5], window)) == pytest.approx(4.0)
    # p(target) = 0.5 at every step: NLL = ln 2, perplexity 2
    logits = np.log(np.array([[0.5, 0.25, 0.25]] * 2, dtype=np.float32))
    lp = quality.log_softmax(logits)
    assert quality.perplexity(quality.nll(lp, [9, 0, 0])) == pytest.approx(2.0, rel=1e-6)


def test_kl_by_hand():
    p = np.log(np.array([[0.5, 0.5]]))
    q = np.log(np.array([[0.9, 0.1]]))
    expected = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
    assert quality.kl_per_position(p, q)[0] == pytest.approx(expected)
    assert quality.kl_per_position(p, p)[0] == pytest.approx(0.0)


def test_eval_windows_are_consecutive_and_bounded():
    w = quality.eval_windows(list(range(1000)), context=256, windows=3)
    assert [x[0] for x in w] == [0, 256, 512] and all(len(x) == 256 for x in w)
    with pytest.raises(ValueError, match="need at least"):
        quality.eval_windows(list(range(10)), context=256)


def test_default_text_is_long_offline_english():
    text, source = quality.default_text()
    assert len(text) > 100_000 and "pydoc_data" in source


def _plan(tmp_path, tokenizer, meaningful=True):
    text, source = quality.default_text()
    return quality.make_plan(tokenizer, text[:20000], source, meaningful, str(tmp_path),
                             chat_template=False)


class Damaged:
    """Wraps an engine and adds noise to its logits, as damaged weights would."""

    def __init__(self, engine, scale):
        self.engine, self.scale = engine, scale
        self.rng = np.random.default_rng(0)

    def window_logits(self, ids):
        x = self.engine.window_logits(ids)
        return x + self.scale * self.rng.standard_normal(x.shape).astype(np.float32)

    def prefill(self, ids):
        return torch.as_tensor(self.window_logits(ids)[-1])

    def decode(self, t):
        raise NotImplementedError


@pytest.fixture(scope="module")
def ref_engine(tiny_refs):
    e = engine_class("kv-cache")(tiny_refs["llama"], threads=1)
    e.load()
    return e


def test_reference_against_itself_and_a_damaged_engine(ref_engine, tiny_models, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_models["llama"])
    plan = _plan(tmp_path, tok)
    own = quality.evaluate(ref_engine, plan, is_reference=True)
    assert own["kl_mean"] == pytest.approx(0.0, abs=1e-9)
    assert own["ppl"] == pytest.approx(own["ref_ppl"]) and own["top1"] == 1.0
    assert own["verdict"] == "PASS"
    assert own["greedy_identical_share"] == 1.0
    # same model through another engine: the no-cache path gives the same distributions
    nocache = engine_class("eager-nocache")(ref_engine.model_ref, threads=1)
    nocache.load()
    same = quality.evaluate(nocache, plan, is_reference=False)
    assert same["kl_mean"] < 1e-6 and same["verdict"] == "PASS"
    # a damaged engine: noise in the logits
    damaged = Damaged(ref_engine, scale=2.0)
    q = quality.compare(damaged, plan["windows"], plan["ref_logprobs"])
    result = quality.judge(quality.QualityResult(
        meaningful=True, text_source="t", context=plan["context"], stride=plan["context"],
        scored_tokens=q["scored_tokens"], ppl=q["ppl"], ref_ppl=q["ref_ppl"],
        ppl_increase=q["ppl"] / q["ref_ppl"] - 1, kl_mean=q["kl_mean"], kl_p99=q["kl_p99"],
        top1=q["top1"]))
    assert result.verdict == "FAIL" and any("KL" in r for r in result.reasons)


def test_random_weights_are_not_judged(ref_engine, tiny_models, tmp_path):
    from transformers import AutoTokenizer

    plan = _plan(tmp_path, AutoTokenizer.from_pretrained(tiny_models["llama"]), meaningful=False)
    q = quality.evaluate(ref_engine, plan, is_reference=True)
    assert q["verdict"] == "not meaningful" and q["ppl"] is None and q["kl_mean"] is None
    assert q["greedy_identical_share"] == 1.0  # token equality stays valid
