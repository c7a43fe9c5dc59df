"""inferlab's native decoder: the C products against numpy, packing, refusals, the build cache
keyed by the CPU, and where it does not apply (against the fp32 reference: test_exact_4bit.py)."""

import ctypes as C

import numpy as np
import pytest

from inferlab.engines import EngineUnsupported, engine_class
from inferlab.engines.blockquant import affine4, symmetric8
from inferlab.engines.native import decoder as nd
from inferlab.engines.native import library
from tests.tiny import on_q4_1_grid

pytestmark = pytest.mark.skipif(bool(library.missing_cpu_flags()), reason="the native kernels need AVX2, FMA and F16C")


@pytest.fixture(scope="module")
def lib():
    lib = library.load()
    lib.product4.argtypes = [C.c_void_p, C.c_void_p, C.c_int, C.c_void_p, C.c_void_p, C.c_int]
    lib.product8.argtypes = [C.c_void_p, C.c_void_p, C.c_int, C.c_void_p, C.c_void_p]
    return lib


def runnable(path: str):
    """A kernel path as a test parameter, skipped with its reason where this CPU lacks it."""
    missing = library.path_missing(path)
    return pytest.param(path, marks=pytest.mark.skipif(
        bool(missing), reason=f"the {path} kernel needs {', '.join(missing)}, which this CPU lacks"))


PATHS = [runnable(name) for name, _ in library.PATHS]


def runnable_attention(name: str):
    """Attention's arithmetic as a test parameter, skipped with its reason where this CPU lacks it."""
    missing = library.attention_missing(name)
    return pytest.param(name, marks=pytest.mark.skipif(
        bool(missing), reason=f"{name} attention needs {', '.join(missing)}, which this CPU lacks"))


ATTENTIONS = [runnable_attention(name) for name, _ in library.ATTENTIONS]


def int8_activations(x: np.ndarray):
    """What the kernels multiply: x rounded per block of 32 to int8 (scale max|x| / 127), and
    each block's exact sum minus the sum of the rounded values."""
    b = x.reshape(x.shape[0], -1, 32)
    d = (np.abs(b).max(-1, keepdims=True) / np.float32(127)).astype(np.float32)
    xq = np.rint(b / d).astype(np.float32) * d
    return xq.reshape(x.shape), (b.sum(-1) - xq.sum(-1))


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("k, tokens", [(128, 3), (160, 7)])  # 7 tokens: a call of 4 and one of 3
def test_4bit_product_is_the_q4_1_dot_product_with_exact_offsets(lib, path, k, tokens):
    rng = np.random.default_rng(k)
    # 3 tiles of 16 rows: 512-bit vectors take a pair and one alone, 256-bit ones three pairs of halves
    w = on_q4_1_grid((48, k), seed=k)
    x = rng.normal(0, 1, (tokens, k)).astype(np.float32)
    q = nd._half_scales(affine4(w), w)
    assert q.exact
    nib, d, m = nd._nibbles(q), nd._tiled(q.scales.astype(np.float16)), nd._tiled(q.offsets.astype(np.float16))
    mat = nd.Mat4(48, k, nib.ctypes.data, d.ctypes.data, m.ctypes.data)
    y, scratch = np.zeros((tokens, 48), np.float32), np.zeros(4096, np.float32)
    lib.product4(C.byref(mat), x.ctypes.data, tokens, y.ctypes.data, scratch.ctypes.data, library.path_index(path))
    # sum(w x) = w . x_int8 + (m + 8 d) * (each block's rounding of its sum): the offsets meet
    # the exact sum of x, so only the centred part sees the int8 rounding
    xq, err = int8_activations(x)
    expected = xq @ w.T + err @ (q.offsets + 8 * q.scales).T
    assert np.abs(y - expected).max() < 1e-5 * np.abs(expected).max()
    assert np.abs(y - x @ w.T).max() < 0.02 * np.abs(x @ w.T).max()  # and near the fp32 product


def test_8bit_product_is_the_q8_0_dot_product(lib):
    rng = np.random.default_rng(1)
    w = rng.normal(0, 0.05, (33, 96)).astype(np.float32)  # 33 rows: one left after the row pairs
    x = rng.normal(0, 1, (2, 96)).astype(np.float32)
    q = nd._half_scales(symmetric8(w), w)
    s8, d = nd._signed(q), q.scales.astype(np.float16)
    mat = nd.Mat8(33, 96, s8.ctypes.data, d.ctypes.data)
    y, scratch = np.zeros((2, 33), np.float32), np.zeros(4096, np.float32)
    lib.product8(C.byref(mat), x.ctypes.data, 2, y.ctypes.data, scratch.ctypes.data)
    expected = int8_activations(x)[0] @ q.dequantize().T
    assert np.abs(y - expected).max() < 1e-5 * np.abs(expected).max()


def test_packing_keeps_q4_1_grid_weights_exact_and_fp16_scales_are_measured():
    w = on_q4_1_grid((8, 64))
    assert nd._half_scales(affine4(w), w).exact
    off_grid = np.random.default_rng(0).normal(0, 0.05, (8, 64)).astype(np.float32)
    q = nd._half_scales(affine4(off_grid), off_grid)
    assert not q.exact and q.max_error > 0  # the fp16 rounding is counted, not hidden


def test_native_decoder_refuses_tokens_out_of_range_and_beyond_its_slots(grid_llama, tmp_path):
    from inferlab.engines import EngineError

    nd.pack_model(grid_llama.path, str(tmp_path))
    dec = nd.NativeDecoder(str(tmp_path), 1, slots=8)
    with pytest.raises(EngineError, match="8 KV slots"):
        dec.prefill(list(range(9)))
    with pytest.raises(EngineError, match="out of range"):
        dec.prefill([10**6])
    dec.prefill(list(range(8)))  # exactly full is fine


def test_library_cache_is_keyed_by_the_cpu(monkeypatch):
    here = library._build_key(library.compiler())
    monkeypatch.setattr(library, "cpu_flags", lambda: {"avx2", "fma", "f16c", "avx512f"})
    assert library._build_key(library.compiler()) != here  # a build for other flags is never loaded


def test_native_method_is_skipped_without_avx2_or_on_other_architectures(monkeypatch, tmp_path, tiny_refs, grid_llama):
    import json
    from types import SimpleNamespace

    cls = engine_class("native-int4")
    assert cls.applies_to(grid_llama) and cls.applies_to(tiny_refs["gpt2"])
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "falcon"}))
    falcon = SimpleNamespace(path=str(tmp_path))
    assert "architecture 'falcon'" in cls.unavailable(falcon)
    monkeypatch.setattr(library, "cpu_flags", lambda: {"sse2"})
    assert not cls.applies_to(grid_llama)
    with pytest.raises(EngineUnsupported, match="lacks avx2, fma, f16c"):
        cls(grid_llama, threads=1).prepare()


@pytest.mark.parametrize("attention", ATTENTIONS)
def test_native_decoder_gives_the_same_logits_on_any_thread_count(sharp_pack, attention):
    # rows split differently between threads (three: the q/k/v split lands inside the k heads
    # and is moved to a head's edge), attention's chunks too: the same arithmetic, bit for bit
    runs = [forward_trace(nd.NativeDecoder(sharp_pack, threads, slots=600, attention=attention))
            for threads in (1, 2, 3)]
    for other in runs[1:]:
        for mine, theirs in zip(other, runs[0]):
            assert np.array_equal(mine, theirs)


@pytest.fixture(scope="module")
def sharp_pack(sharp_llama, tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("grid-pack"))
    nd.pack_model(sharp_llama.path, folder)
    return folder


def forward_trace(decoder: nd.NativeDecoder) -> list[np.ndarray]:
    """Logits of every kind of call: a prompt (every position), decode steps, a batch's prefill
    and its decode step, and steps beyond one chunk of attention's positions."""
    prompt = [(7 * i + 3) % 300 for i in range(37)]  # 37 rows: calls of 4 tokens and a rest of 1
    out = [decoder.prefill(prompt, all_logits=True), decoder.decode(5)]
    long = [(5 * i + 1) % 300 for i in range(530)]  # three chunks of 256 positions
    out += [decoder.prefill(long), decoder.decode(7), decoder.decode(8)]
    batch = [prompt[:9], prompt[9:18], prompt[18:27]]
    out += [decoder.prefill_batch(batch), decoder.append_batch([[1], [2], [3]])]
    return out


@pytest.mark.parametrize("path", [p for p in PATHS if p.values[0] != "avx2"])
def test_every_kernel_path_gives_the_avx2_paths_logits(sharp_pack, path):
    # the integer sums are exact on every path and the float steps after them the same: equal bits
    reference = forward_trace(nd.NativeDecoder(sharp_pack, 2, slots=600, path="avx2"))
    for mine, theirs in zip(forward_trace(nd.NativeDecoder(sharp_pack, 2, slots=600, path=path)), reference):
        assert np.array_equal(mine, theirs)


@pytest.mark.skipif(bool(library.attention_missing("bf16")), reason="bf16 attention needs AVX-512 BF16, which this CPU lacks")
def test_bf16_attention_gives_nearly_the_logits_of_fp32_attention(sharp_pack):
    # bf16 keys, values, queries and weights (8 bits of mantissa), fp32 sums: on the sharp model
    # (scores that matter) within 1 % of the logits' range, the same greedy token nearly always
    fp32 = forward_trace(nd.NativeDecoder(sharp_pack, 2, slots=600, attention="fp32"))
    bf16 = forward_trace(nd.NativeDecoder(sharp_pack, 2, slots=600, attention="bf16"))
    for mine, theirs in zip(bf16, fp32):
        scale = np.abs(theirs).max()
        assert not np.array_equal(mine, theirs)  # the arithmetic did change
        assert np.abs(mine - theirs).max() < 0.01 * scale, np.abs(mine - theirs).max() / scale
    agree = np.concatenate([(a.argmax(-1) == b.argmax(-1)).ravel() for a, b in zip(bf16, fp32)])
    assert agree.mean() >= 0.9


@pytest.mark.parametrize("attention", ATTENTIONS)
def test_a_prompt_in_one_call_gives_the_logits_of_token_by_token(sharp_pack, attention):
    # and cut into calls anywhere (a sweep's depth: a context, then the prompt): bit for bit
    dec = nd.NativeDecoder(sharp_pack, 2, slots=600, attention=attention)
    prompt = [(11 * i + 2) % 300 for i in range(300)]  # beyond one chunk of attention's positions
    whole = dec.prefill(prompt, all_logits=True)
    steps = [dec.prefill(prompt[:1])] + [dec.decode(t) for t in prompt[1:]]
    assert np.array_equal(whole, np.stack(steps))
    dec.prefill(prompt[:270])
    assert np.array_equal(dec.append(prompt[270:]), whole[-1])


@pytest.mark.parametrize("attention", ATTENTIONS)
def test_long_prompts_and_batches_run_in_several_calls_with_the_same_logits(sharp_pack, monkeypatch, attention):
    dec = nd.NativeDecoder(sharp_pack, 2, slots=600, attention=attention)
    prompt = [(13 * i + 4) % 300 for i in range(300)]
    batch = [prompt[i:i + 40] for i in range(0, 200, 40)]
    whole, together = dec.prefill(prompt, all_logits=True), dec.prefill_batch(batch)
    monkeypatch.setattr(nd, "CALL_ROWS", 64)  # a prompt in 5 calls, the batch in 4 (cut inside a position)
    assert np.array_equal(dec.prefill(prompt, all_logits=True), whole)
    assert np.array_equal(dec.prefill(prompt), whole[-1])
    assert np.array_equal(dec.prefill_batch(batch), together)


@pytest.mark.parametrize("attention", ATTENTIONS)
def test_a_batch_decodes_each_sequence_as_alone(sharp_pack, attention):
    from inferlab.harness import generate, generate_batch

    class Engine:  # the harness's view of an engine, on the decoder itself
        def __init__(self, decoder):
            self.prefill, self.decode = decoder.prefill, decoder.decode
            self.prefill_batch, self.append_batch = decoder.prefill_batch, decoder.append_batch

    dec = nd.NativeDecoder(sharp_pack, 2, slots=64, attention=attention)
    prompts = [[(p * 13 + i * 7) % 300 for i in range(11)] for p in range(5)]
    alone = [np.stack([dec.prefill(p), dec.decode(3), dec.decode(4)]) for p in prompts]
    batch = np.stack([dec.prefill_batch(prompts), dec.append_batch([[3]] * 5), dec.append_batch([[4]] * 5)], 1)
    assert np.array_equal(batch, np.stack(alone))
    tokens = [generate(Engine(dec), p, 12).tokens for p in prompts]
    assert generate_batch(Engine(dec), prompts, 12).sequences == tokens
    with pytest.raises(Exception, match="holds 5 sequences"):
        dec.append_batch([[1], [2]])
