"""Quality against the fp32 reference on the same tokens (METRICS.md "Quality"): perplexity,
KL(reference || method) of next-token distributions, top-1 agreement, greedy agreement.

The reference's log-probabilities are computed once per run and saved (float32 .npy); each
method's process compares its own logits with them, window by window."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field

import numpy as np

from . import defaults

# --- what is evaluated (sized to a few minutes on two cores for SmolLM2) --------------------
EVAL_CONTEXT = 256  # tokens per window
EVAL_WINDOWS = 4  # non-overlapping windows: stride = context, so 4 x 255 scored tokens
GREEDY_NEW_TOKENS = 24
GREEDY_PROMPTS = (
    "What is the capital of France?",
    "Write a Python function that returns the factorial of n.",
    "Explain why the sky is blue in two sentences.",
    "List three uses of a paperclip.",
    "Translate 'good morning' into Spanish and German.",
    "What is 17 multiplied by 23?",
)

# --- the budget: a method passes only if every line holds (README, docs/METRICS.md) ----------
BUDGET = {
    "max_ppl_increase": 0.02,  # perplexity at most 2 % above the reference's
    "max_kl_mean": 0.02,  # nats per position
    "min_top1": 0.95,  # share of positions predicting the reference's next token
}


@dataclass
class QualityResult:
    meaningful: bool
    text_source: str
    context: int
    stride: int
    scored_tokens: int
    ppl: float | None = None
    ref_ppl: float | None = None
    ppl_increase: float | None = None  # ppl / ref_ppl - 1
    kl_mean: float | None = None
    kl_p99: float | None = None
    top1: float | None = None
    greedy_first_divergence: list[int] = field(default_factory=list)
    greedy_new_tokens: int = GREEDY_NEW_TOKENS
    greedy_identical_share: float | None = None
    verdict: str = "n/a"  # PASS | FAIL | not meaningful
    reasons: list[str] = field(default_factory=list)
    budget: dict = field(default_factory=lambda: dict(BUDGET))

    def to_dict(self) -> dict:
        return asdict(self)


def default_text() -> tuple[str, str]:
    """Offline English text that ships with CPython: the Python reference's topic help."""
    from pydoc_data import topics

    text = "\n\n".join(topics.topics[k] for k in sorted(topics.topics))
    return text, "CPython pydoc_data.topics (sorted keys, joined)"


def eval_windows(token_ids: list[int], context: int = EVAL_CONTEXT,
                 windows: int = EVAL_WINDOWS) -> list[list[int]]:
    """Consecutive non-overlapping windows of `context` tokens (stride = context)."""
    out = [token_ids[i:i + context] for i in range(0, len(token_ids) - context + 1, context)]
    if not out:
        raise ValueError(f"the evaluation text has {len(token_ids)} tokens; need at least {context}")
    return out[:windows]


def log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    return (x - np.log(np.exp(x).sum(axis=-1, keepdims=True))).astype(np.float32)


def nll(logprobs: np.ndarray, window: list[int]) -> np.ndarray:
    """Negative log-likelihood of each next token: position t predicts window[t+1]."""
    targets = np.asarray(window[1:])
    return -logprobs[np.arange(len(targets)), targets].astype(np.float64)


def kl_per_position(ref_logprobs: np.ndarray, logprobs: np.ndarray) -> np.ndarray:
    """KL(reference || method) in nats, one value per position."""
    p = np.exp(ref_logprobs.astype(np.float64))
    return np.maximum((p * (ref_logprobs - logprobs)).sum(axis=-1), 0.0)


def perplexity(nlls: np.ndarray) -> float:
    return float(np.exp(np.mean(nlls)))


def save_reference(path: str, windows: list[list[int]], engine) -> None:
    """The reference's log-probabilities for every window, [windows, context, vocab]."""
    arr = np.stack([log_softmax(engine.window_logits(w)) for w in windows])
    tmp = path + ".tmp.npy"
    np.save(tmp, arr)
    os.replace(tmp, path)


def compare(engine, windows: list[list[int]], ref_path: str) -> dict:
    """Perplexities, KL and top-1 of `engine` against the saved reference."""
    ref = np.load(ref_path, mmap_mode="r")
    ref_nll, nlls, kls, top1 = [], [], [], []
    for i, window in enumerate(windows):
        r = np.asarray(ref[i])
        m = log_softmax(engine.window_logits(window))
        ref_nll.append(nll(r, window))
        nlls.append(nll(m, window))
        kls.append(kl_per_position(r, m))
        top1.append(r.argmax(-1) == m.argmax(-1))
    ref_nll, nlls = np.concatenate(ref_nll), np.concatenate(nlls)
    kls, top1 = np.concatenate(kls), np.concatenate(top1)
    return {
        "ppl": perplexity(nlls),
        "ref_ppl": perplexity(ref_nll),
        "kl_mean": float(kls.mean()),
        "kl_p99": float(np.percentile(kls, 99)),
        "top1": float(top1.mean()),
        "scored_tokens": int(nlls.size),
    }


def judge(q: QualityResult) -> QualityResult:
    """PASS only if every budget line holds; each failed line is a reason."""
    if not q.meaningful:
        q.verdict = "not meaningful"
        q.reasons = ["random weights: perplexity and KL mean nothing; see token agreement"]
        return q
    b, reasons = q.budget, []
    if q.ppl_increase is not None and q.ppl_increase > b["max_ppl_increase"]:
        reasons.append(f"perplexity +{q.ppl_increase:.1%} > +{b['max_ppl_increase']:.0%}")
    if q.kl_mean is not None and q.kl_mean > b["max_kl_mean"]:
        reasons.append(f"KL {q.kl_mean:.4f} > {b['max_kl_mean']} nats")
    if q.top1 is not None and q.top1 < b["min_top1"]:
        reasons.append(f"top-1 agreement {q.top1:.1%} < {b['min_top1']:.0%}")
    q.verdict, q.reasons = ("FAIL", reasons) if reasons else ("PASS", [])
    return q


def greedy_tokens(engine, prompts_ids: list[list[int]], new_tokens: int) -> list[list[int]]:
    from .harness import generate

    return [generate(engine, ids, new_tokens).tokens for ids in prompts_ids]


def evaluate(engine, plan: dict, is_reference: bool) -> dict:
    """Run in a method's process: plan carries the windows, prompts and reference files."""
    from .analysis import first_divergence

    if is_reference:
        save_reference(plan["ref_logprobs"], plan["windows"], engine)
    greedy = greedy_tokens(engine, plan["greedy_prompts"], plan["greedy_new_tokens"])
    if is_reference:
        np.save(plan["ref_greedy"], np.asarray(greedy, dtype=np.int64))
    ref_greedy = np.load(plan["ref_greedy"]).tolist()
    q = QualityResult(meaningful=plan["meaningful"], text_source=plan["text_source"],
                      context=plan["context"], stride=plan["context"], scored_tokens=0,
                      greedy_new_tokens=plan["greedy_new_tokens"], budget=plan["budget"])
    q.greedy_first_divergence = [first_divergence(a, b) for a, b in zip(greedy, ref_greedy)]
    q.greedy_identical_share = float(np.mean([d >= q.greedy_new_tokens for d in q.greedy_first_divergence]))
    c = compare(engine, plan["windows"], plan["ref_logprobs"])
    q.scored_tokens = c["scored_tokens"]
    if plan["meaningful"]:
        q.ppl, q.ref_ppl = c["ppl"], c["ref_ppl"]
        q.ppl_increase = c["ppl"] / c["ref_ppl"] - 1
        q.kl_mean, q.kl_p99, q.top1 = c["kl_mean"], c["kl_p99"], c["top1"]
    return judge(q).to_dict()


def make_plan(tokenizer, text: str, text_source: str, meaningful: bool, workdir: str,
              chat_template: bool, budget: dict | None = None) -> dict:
    """Tokenize once in the parent, so every method scores exactly the same tokens."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    windows = eval_windows(ids)
    from .prompts import encode_prompt

    prompts = [encode_prompt(tokenizer, p, chat_template)[0] for p in GREEDY_PROMPTS]
    return {
        "windows": windows,
        "context": EVAL_CONTEXT,
        "text_source": text_source,
        "meaningful": meaningful,
        "greedy_prompts": prompts,
        "greedy_new_tokens": GREEDY_NEW_TOKENS,
        "budget": dict(budget or BUDGET),
        "ref_logprobs": os.path.join(workdir, "reference_logprobs.npy"),
        "ref_greedy": os.path.join(workdir, "reference_greedy.npy"),
        "reference": defaults.REFERENCE_METHOD,
    }
