"""Quality against the fp32 reference on the same tokens (METRICS.md "Quality"): perplexity,
KL(reference || method) of next-token distributions, top-1 agreement, greedy agreement, each
with a 95 % interval.

Every engine is scored the way it generates: the first EVAL_PREFIX tokens of a window go
through in one call (the prefill regime), the rest one token at a time with the engine's own
cache (the decode regime). The reference's log-probabilities are computed once per run the same
way and saved (float32 .npy); each method's process compares its own logits with them."""

from __future__ import annotations

import os
import numpy as np

from . import defaults
from .results import QualityResult

# --- what is evaluated (sized to a few minutes on two cores for SmolLM2) --------------------
EVAL_CONTEXT = 256  # tokens per window
EVAL_WINDOWS = 4  # non-overlapping windows: stride = context, so 4 x 255 scored positions
EVAL_PREFIX = 128  # tokens of a window processed in one call; the rest one token at a time
GREEDY_NEW_TOKENS = 24
GREEDY_PROMPTS = (
    "What is the capital of France?",
    "Write a Python function that returns the factorial of n.",
    "Explain why the sky is blue in two sentences.",
    "List three uses of a paperclip.",
    "Translate 'good morning' into Spanish and German.",
    "What is 17 multiplied by 23?",
)


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


def scored_logits(engine, window: list[int], prefix: int = EVAL_PREFIX) -> np.ndarray:
    """Logits of every position of the window that has a target (all but the last), obtained
    as the engine generates: window[:prefix] in one call, then one token at a time. An engine
    without a cache recomputes the whole sequence at every step anyway, so its one call over
    the window gives each step's logits (causal attention: row t sees tokens 0..t only)."""
    if getattr(engine, "steps_are_full_forwards", False):
        return np.asarray(engine.prefill(window[:-1], all_logits=True), dtype=np.float32)
    rows = [np.asarray(engine.prefill(window[:prefix], all_logits=True), dtype=np.float32)]
    rows += [np.asarray(engine.decode(t), dtype=np.float32)[None] for t in window[prefix:-1]]
    return np.concatenate(rows)


def save_reference(path: str, windows: list[list[int]], engine, prefix: int = EVAL_PREFIX) -> None:
    """The reference's log-probabilities for every scored position, [windows, context-1, vocab]."""
    arr = np.stack([log_softmax(scored_logits(engine, w, prefix)) for w in windows])
    tmp = path + ".tmp.npy"
    np.save(tmp, arr)
    os.replace(tmp, path)


def compare(engine, windows: list[list[int]], ref_path: str, prefix: int = EVAL_PREFIX) -> dict:
    """Per-position NLL (method and reference), KL and top-1 match of `engine` against the
    saved reference: arrays [windows, context-1]. engine None scores the reference's own saved
    distributions (the reference just computed them: a second pass would give the same arrays
    and cost as much again: 4 x 127 one-token steps, ~33 s at SmolLM2's 65 ms per step)."""
    ref = np.load(ref_path, mmap_mode="r")
    out = {"ref_nll": [], "nll": [], "kl": [], "top1": []}
    for i, window in enumerate(windows):
        r = np.asarray(ref[i])
        m = r if engine is None else log_softmax(scored_logits(engine, window, prefix))
        out["ref_nll"].append(nll(r, window))
        out["nll"].append(nll(m, window))
        out["kl"].append(kl_per_position(r, m))
        out["top1"].append(r.argmax(-1) == m.argmax(-1))
    return {k: np.stack(v) for k, v in out.items()}


def block_bootstrap(per_position: dict[str, np.ndarray], statistic, block: int,
                    seed: int = defaults.DEFAULT_SEED) -> tuple[float, float]:
    """95 % percentile interval of statistic(arrays) over resampled blocks of `block`
    consecutive positions: neighbouring positions of a text are correlated, so resampling
    single positions would give intervals that are too narrow."""
    n = next(iter(per_position.values())).size
    starts = np.arange(0, n, block)
    flat = {k: v.reshape(-1) for k, v in per_position.items()}
    blocks = {k: [v[s:s + block] for s in starts] for k, v in flat.items()}
    rng = np.random.default_rng(seed)
    stats = []
    for _ in range(defaults.BOOTSTRAP_RESAMPLES):
        pick = rng.integers(0, len(starts), len(starts))
        sample = {k: np.concatenate([b[j] for j in pick]) for k, b in blocks.items()}
        stats.append(statistic(sample))
    alpha = (1 - defaults.CONFIDENCE) / 2
    return float(np.quantile(stats, alpha)), float(np.quantile(stats, 1 - alpha))


def summarize_positions(c: dict, prefix: int, block: int = defaults.QUALITY_BLOCK) -> dict:
    """Point figures, intervals and the two regimes from compare()'s per-position arrays."""
    def ppl_increase(x):
        return float(np.exp(x["nll"].mean() - x["ref_nll"].mean()) - 1)

    kl, top1 = c["kl"], c["top1"].astype(np.float64)
    return {
        "ppl": perplexity(c["nll"].reshape(-1)),
        "ref_ppl": perplexity(c["ref_nll"].reshape(-1)),
        "ppl_increase": ppl_increase(c),
        "kl_mean": float(kl.mean()),
        "kl_p99": float(np.percentile(kl, 99)),
        "top1": float(top1.mean()),
        "scored_tokens": int(kl.size),
        "ppl_increase_ci": list(block_bootstrap(c, ppl_increase, block)),
        "kl_mean_ci": list(block_bootstrap({"kl": kl}, lambda x: float(x["kl"].mean()), block)),
        "top1_ci": list(block_bootstrap({"t": top1}, lambda x: float(x["t"].mean()), block)),
        "regimes": {
            "prefill": {"positions": int(kl[:, :prefix].size), "kl_mean": float(kl[:, :prefix].mean()),
                        "top1": float(top1[:, :prefix].mean())},
            "decode": {"positions": int(kl[:, prefix:].size),
                       "kl_mean": float(kl[:, prefix:].mean()) if kl[:, prefix:].size else None,
                       "top1": float(top1[:, prefix:].mean()) if kl[:, prefix:].size else None},
        },
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
    q.marginal = marginal_lines(q)
    return q


def marginal_lines(q: QualityResult) -> list[str]:
    """Budget lines whose 95 % interval contains the limit: the verdict could flip with
    another sample of text, so it is reported as marginal."""
    b, out = q.budget, []
    for name, ci, limit, fmt in (("perplexity increase", q.ppl_increase_ci, b["max_ppl_increase"], "{:+.2%}"),
                                 ("KL mean", q.kl_mean_ci, b["max_kl_mean"], "{:.4f}"),
                                 ("top-1", q.top1_ci, b["min_top1"], "{:.1%}")):
        if ci and ci[0] <= limit <= ci[1]:
            out.append(f"{name} interval [{fmt.format(ci[0])}, {fmt.format(ci[1])}] contains "
                       f"the limit {fmt.format(limit)}")
    return out


def greedy_tokens(engine, prompts_ids: list[list[int]], new_tokens: int) -> list[list[int]]:
    from .harness import generate

    return [generate(engine, ids, new_tokens).tokens for ids in prompts_ids]


def evaluate(engine, plan: dict, is_reference: bool) -> QualityResult:
    """Run in a method's process: plan carries the windows, prompts and reference files."""
    from .analysis import first_divergence

    prefix = plan["prefix"]
    if is_reference:
        save_reference(plan["ref_logprobs"], plan["windows"], engine, prefix)
    greedy = greedy_tokens(engine, plan["greedy_prompts"], plan["greedy_new_tokens"])
    if is_reference:
        np.save(plan["ref_greedy"], np.asarray(greedy, dtype=np.int64))
    ref_greedy = np.load(plan["ref_greedy"]).tolist()
    q = QualityResult(meaningful=plan["meaningful"], text_source=plan["text_source"],
                      context=plan["context"], stride=plan["context"], scored_tokens=0,
                      greedy_new_tokens=plan["greedy_new_tokens"], budget=plan["budget"],
                      prefix=prefix)
    q.greedy_first_divergence = [first_divergence(a, b) for a, b in zip(greedy, ref_greedy)]
    q.greedy_identical_share = float(np.mean([d >= q.greedy_new_tokens for d in q.greedy_first_divergence]))
    scored = None if is_reference else engine
    s = summarize_positions(compare(scored, plan["windows"], plan["ref_logprobs"], prefix), prefix)
    q.scored_tokens = s["scored_tokens"]
    if plan["meaningful"]:
        for key in ("ppl", "ref_ppl", "ppl_increase", "kl_mean", "kl_p99", "top1",
                    "ppl_increase_ci", "kl_mean_ci", "top1_ci", "regimes"):
            setattr(q, key, s[key])
    return judge(q)


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
        "prefix": EVAL_PREFIX,
        "text_source": text_source,
        "meaningful": meaningful,
        "greedy_prompts": prompts,
        "greedy_new_tokens": GREEDY_NEW_TOKENS,
        "budget": dict(budget or defaults.QUALITY_BUDGET),
        "ref_logprobs": os.path.join(workdir, "reference_logprobs.npy"),
        "ref_greedy": os.path.join(workdir, "reference_greedy.npy"),
        "reference": defaults.REFERENCE_METHOD,
    }
