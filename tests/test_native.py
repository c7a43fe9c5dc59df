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
    for f in (lib.product4, lib.product8):
        f.argtypes = [C.c_void_p, C.c_void_p, C.c_int, C.c_void_p, C.c_void_p]
    return lib


def int8_activations(x: np.ndarray):
    """What the kernels multiply: x rounded per block of 32 to int8 (scale max|x| / 127), and
    each block's exact sum minus the sum of the rounded values."""
    b = x.reshape(x.shape[0], -1, 32)
    d = (np.abs(b).max(-1, keepdims=True) / np.float32(127)).astype(np.float32)
    xq = np.rint(b / d).astype(np.float32) * d
    return xq.reshape(x.shape), (b.sum(-1) - xq.sum(-1))


@pytest.mark.parametrize("k", [128, 160])  # 160: an odd number of blocks (a last unpaired one)
def test_4bit_product_is_the_q4_1_dot_product_with_exact_offsets(lib, k):
    rng = np.random.default_rng(k)
    w = on_q4_1_grid((41, k), seed=k)  # 41 rows: one left after the two-row streams
    x = rng.normal(0, 1, (3, k)).astype(np.float32)
    q = nd._half_scales(affine4(w), w)
    assert q.exact
    nib, d, m = nd._nibbles(q), q.scales.astype(np.float16), q.offsets.astype(np.float16)
    mat = nd.Mat4(41, k, nib.ctypes.data, d.ctypes.data, m.ctypes.data)
    y, scratch = np.zeros((3, 41), np.float32), np.zeros(4096, np.float32)
    lib.product4(C.byref(mat), x.ctypes.data, 3, y.ctypes.data, scratch.ctypes.data)
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


def test_native_method_is_skipped_without_avx2_or_on_other_architectures(monkeypatch, tiny_refs, grid_llama):
    cls = engine_class("native-int4")
    assert cls.applies_to(grid_llama) and not cls.applies_to(tiny_refs["gpt2"])
    with pytest.raises(EngineUnsupported, match="architecture 'gpt2'"):
        cls(tiny_refs["gpt2"], threads=1).prepare()
    monkeypatch.setattr(library, "cpu_flags", lambda: {"sse2"})
    assert not cls.applies_to(grid_llama)
    with pytest.raises(EngineUnsupported, match="lacks avx2, fma, f16c"):
        cls(grid_llama, threads=1).prepare()


def test_native_decoder_gives_the_same_logits_on_any_thread_count(grid_llama, tmp_path):
    # rows split differently between threads (three: the q/k/v split lands inside the k heads
    # and is moved to a head's edge), attention's positions too (the first token has fewer
    # positions than threads): only the order of attention's float sums may differ
    nd.pack_model(grid_llama.path, str(tmp_path))
    prompt, steps = [5, 17, 42, 99, 3, 250, 7], [11, 12, 13]
    runs = []
    for threads in (1, 2, 3):
        dec = nd.NativeDecoder(str(tmp_path), threads, slots=16)
        runs.append(np.stack([dec.prefill(prompt), *(dec.decode(t) for t in steps)]))
    scale = np.abs(runs[0]).max()
    for other in runs[1:]:
        assert np.abs(other - runs[0]).max() < 1e-4 * scale
