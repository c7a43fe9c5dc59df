"""The Python side of the C decoder (q4_*.c): pack a Llama model's weights into its layout (once, cached
as one file), then prefill and decode through it with the KV cache kept in place.

Packed layout, per matrix W [n, k] cut into blocks of 32 along k:
- 4-bit (GGUF Q4_1's rule, blockquant.affine4), rows in tiles of 16 (q4_common.h's Mat4): per
  tile and block 256 bytes, four vectors whose 32-bit lane r holds row r's elements 8v..8v+3
  in the low nibbles and 8v+4..8v+7 in the high ones; per row and block a scale and an offset
  in fp16, as a Q4_1 file stores them (so weights that came from one stay exact);
- 8-bit (Q8_0's rule, blockquant.symmetric8), for the LM head and the token table: 32 signed
  bytes per block and a scale in fp16, as a Q8_0 file stores it.
The KV cache (fp16) lives here too, as numpy arrays the C side writes in place."""

from __future__ import annotations

import ctypes as C
import json
import os
import time

import numpy as np

from .. import llama_arch
from ..base import EngineError, EngineUnsupported
from ..blockquant import Quantized, affine4, symmetric8, unpack
from . import library

BLOCK = 32
TILE = 16  # rows of a 4-bit matrix stored together
CALL_ROWS = 1024  # rows of one C call at most (a longer prompt or batch: several calls)
ALIGN = 64


class Mat4(C.Structure):
    _fields_ = [("n", C.c_int32), ("k", C.c_int32), ("q", C.c_void_p), ("d", C.c_void_p), ("m", C.c_void_p)]


class Mat8(C.Structure):
    _fields_ = [("n", C.c_int32), ("k", C.c_int32), ("q", C.c_void_p), ("d", C.c_void_p)]


PRODUCTS = ("qkv", "o", "up", "down")  # a block's 4-bit matrices, each with an optional bias
NORMS = ("attn_norm", "ffn_norm")  # each with a bias for LayerNorm (GPT-2)
ACT_SILU_GATED, ACT_GELU_TANH = 0, 1  # q4_common.h's ACT_*


class Layer(C.Structure):
    _fields_ = [*((n, C.c_void_p) for n in NORMS), *((n + "_bias", C.c_void_p) for n in NORMS),
                *((n, Mat4) for n in PRODUCTS), *((n + "_bias", C.c_void_p) for n in PRODUCTS)]


class Model(C.Structure):
    _fields_ = [*((name, C.c_int32) for name in ("hidden", "heads", "kv_heads", "head_dim", "inter", "layers",
                                                  "vocab", "slots", "threads", "seqs", "path", "act",
                                                  "attention")),
                ("eps", C.c_float), ("layer", C.POINTER(Layer)), ("embed", Mat8), ("head", Mat8),
                *((name, C.c_void_p) for name in ("final_norm", "final_norm_bias", "cos", "sin", "positions",
                                                  "k_cache", "v_cache"))]


def check_supported(config: dict) -> None:
    llama_arch.check_supported(config, "inferlab's native decoder", BLOCK,
                               types=(*llama_arch.LLAMA_FAMILY, "gpt2"), biases=True)
    s = llama_arch.Shapes(config)
    if s.head_dim % TILE or s.head_dim > 256 or s.heads % s.kv_heads:
        raise EngineUnsupported(f"not supported for this model: inferlab's native decoder needs a head "
                                f"size that is a multiple of {TILE} up to 256 (has {s.head_dim}) and query "
                                f"heads in whole groups per KV head ({s.heads} / {s.kv_heads})")


# ---- packing (the build step) ------------------------------------------------------------

def _nibbles(q: Quantized) -> np.ndarray:
    """The levels [n, nb, 32] as tiles [n/16, nb, 4, 16, 4]: vector v, row r, byte i holds
    element 8v + i (low nibble) and 8v + 4 + i (high nibble)."""
    levels = unpack(q.packed, 4)  # [n, nb, 32] in element order
    n, nb, _ = levels.shape
    g = levels.reshape(n // TILE, TILE, nb, 4, 2, 4)  # tile, row, block, v, low/high, i
    return np.ascontiguousarray((g[..., 0, :] | (g[..., 1, :] << 4)).transpose(0, 2, 3, 1, 4).astype(np.uint8))


def _tiled(a: np.ndarray) -> np.ndarray:
    """Per-row, per-block values [n, nb] as [n/16, nb, 16]: a tile's rows side by side."""
    n, nb = a.shape
    return np.ascontiguousarray(a.reshape(n // TILE, TILE, nb).transpose(0, 2, 1))


def _half_scales(q: Quantized, w: np.ndarray) -> Quantized:
    """q with its scales (and offsets) rounded to fp16, as a GGUF stores them, and its error
    measured again: exact when w came from such a file."""
    q.scales = q.scales.astype(np.float16).astype(np.float32)
    if q.offsets is not None:
        q.offsets = q.offsets.astype(np.float16).astype(np.float32)
    q.max_error = float(np.abs(q.dequantize() - w).max(initial=0.0))
    return q


def _signed(q: Quantized) -> np.ndarray:
    return (q.packed.astype(np.int16) - 128).astype(np.int8)


class _Blob:
    """Arrays laid end to end in one file, each at a 64-byte boundary, with an index."""

    def __init__(self):
        self.parts, self.index, self.size = [], {}, 0

    def add(self, name: str, array: np.ndarray) -> None:
        array = np.ascontiguousarray(array)
        pad = -self.size % ALIGN
        if pad:
            self.parts.append(np.zeros(pad, np.uint8))
            self.size += pad
        self.index[name] = {"offset": self.size, "dtype": array.dtype.str, "shape": list(array.shape)}
        self.parts.append(array.reshape(-1).view(np.uint8))
        self.size += array.nbytes

    def save(self, folder: str, meta: dict) -> None:
        with open(os.path.join(folder, "weights.bin"), "wb") as f:
            f.writelines(p.tobytes() for p in self.parts)
        with open(os.path.join(folder, "index.json"), "w") as f:
            json.dump({"arrays": self.index, **meta}, f)


def _interleaved(a: np.ndarray | None, b: np.ndarray | None) -> np.ndarray | None:
    """Rows (or values) of a and b alternating: a's i-th at 2i, b's at 2i + 1 (gate, up)."""
    if a is None:
        return None
    return np.stack([a, b], axis=1).reshape(-1, *a.shape[1:])


def _gpt2_prefix(weights: dict) -> str:
    return "transformer." if any(k.startswith("transformer.") for k in weights) else ""


def _block(s: llama_arch.Shapes, weights: dict, i: int) -> dict:
    """Block i's arrays in the decoder's terms (PRODUCTS as [out, in] fp32, their biases, NORMS
    and their biases), None where the model has none."""
    if s.gpt2:  # Conv1D layers store [in, out]; c_attn's outputs are q, k, v
        p = f"{_gpt2_prefix(weights)}h.{i}."
        w = {k: weights[p + k] for k in ("ln_1.weight", "ln_1.bias", "ln_2.weight", "ln_2.bias")}
        out = {"attn_norm": w["ln_1.weight"], "ffn_norm": w["ln_2.weight"],
               "attn_norm_bias": w["ln_1.bias"], "ffn_norm_bias": w["ln_2.bias"]}
        for name, layer in zip(PRODUCTS, ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")):
            out[name] = np.ascontiguousarray(weights[p + layer + ".weight"].T)
            out[name + "_bias"] = weights[p + layer + ".bias"]
        return out
    p = f"model.layers.{i}."

    def get(name):
        return weights.get(p + name)

    qkv = [get(f"self_attn.{k}_proj.weight") for k in "qkv"]
    qkv_bias = [get(f"self_attn.{k}_proj.bias") for k in "qkv"]
    return {"attn_norm": get("input_layernorm.weight"), "ffn_norm": get("post_attention_layernorm.weight"),
            "attn_norm_bias": None, "ffn_norm_bias": None,
            "qkv": np.concatenate(qkv), "qkv_bias": None if qkv_bias[0] is None else np.concatenate(qkv_bias),
            "o": get("self_attn.o_proj.weight"), "o_bias": get("self_attn.o_proj.bias"),
            "up": _interleaved(get("mlp.gate_proj.weight"), get("mlp.up_proj.weight")),
            "up_bias": _interleaved(get("mlp.gate_proj.bias"), get("mlp.up_proj.bias")),
            "down": get("mlp.down_proj.weight"), "down_bias": get("mlp.down_proj.bias")}


def _top(s: llama_arch.Shapes, weights: dict) -> dict:
    """The arrays outside the blocks: final norm (and bias), learned positions, the LM head and
    the token table (None when the head is the table)."""
    if s.gpt2:
        p = _gpt2_prefix(weights)
        return {"final_norm": weights[p + "ln_f.weight"], "final_norm_bias": weights[p + "ln_f.bias"],
                "positions": weights[p + "wpe.weight"], "head": weights[p + "wte.weight"], "embed": None}
    head = llama_arch.lm_head_name(s, weights)
    return {"final_norm": weights["model.norm.weight"], "final_norm_bias": None, "positions": None,
            "head": weights[head], "embed": None if head == "model.embed_tokens.weight" else weights["model.embed_tokens.weight"]}


def pack_model(model_folder: str, out_folder: str) -> dict:
    """Quantize and lay out a model's weights for the decoder; returns the build report
    {matrices, exact, max_relative_error}."""
    config = llama_arch.read_config(model_folder)
    check_supported(config)
    s = llama_arch.Shapes(config)
    weights = llama_arch.load_weights(model_folder)
    blob = _Blob()
    report = {"matrices": 0, "exact": 0, "max_relative_error": 0.0}

    def account(q: Quantized, count: int) -> Quantized:
        report["matrices"] += count
        report["exact"] += count if q.exact else 0
        report["max_relative_error"] = max(report["max_relative_error"], q.max_error / max(q.max_abs, 1e-30))
        return q

    def add4(name: str, w: np.ndarray, count: int) -> None:
        q = account(_half_scales(affine4(w, BLOCK), w), count)
        blob.add(name + ".q", _nibbles(q))
        blob.add(name + ".d", _tiled(q.scales.astype(np.float16)))
        blob.add(name + ".m", _tiled(q.offsets.astype(np.float16)))

    def add8(name: str, w: np.ndarray) -> None:
        q = account(_half_scales(symmetric8(w, BLOCK), w), 1)
        blob.add(name + ".q", _signed(q))
        blob.add(name + ".d", q.scales.astype(np.float16))

    for i in range(s.layers):
        for name, array in _block(s, weights, i).items():
            if name in PRODUCTS:
                # matrices the model has: Llama's q, k, v and gate, up are one product here each
                add4(f"{i}.{name}", array, count=1 if s.gpt2 else {"qkv": 3, "up": 2}.get(name, 1))
            elif array is not None:  # norms and biases, in fp32
                blob.add(f"{i}.{name}", array)
    top = _top(s, weights)
    for name in ("final_norm", "final_norm_bias", "positions"):
        if top[name] is not None:
            blob.add(name, top[name])
    add8("head", top["head"])
    tied = top["embed"] is None
    if not tied:  # the token table is only gathered from; the same 8-bit rule keeps it small
        add8("embed", top["embed"])
    blob.save(out_folder, {"config": config, "tied": tied, "build": report})
    return report


# ---- running -------------------------------------------------------------------------------

HUGE_PAGE = 2 << 20


def _read_into_huge_pages(path: str) -> np.ndarray:
    """The file's bytes in anonymous memory that the kernel is asked to back with 2 MiB pages.
    Each decode step streams every weight once: with 4 KiB pages that is one TLB miss per
    4 KiB (~25,000 a step for SmolLM2); with 2 MiB pages about fifty. Measured A/B in one
    process, 6 rounds: 0.95x the step time of plain pages."""
    import mmap

    size = os.path.getsize(path)
    region = mmap.mmap(-1, size + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    start = -np.frombuffer(region, np.uint8, count=1).ctypes.data % HUGE_PAGE  # 2 MiB-aligned start
    if hasattr(mmap, "MADV_HUGEPAGE"):
        region.madvise(mmap.MADV_HUGEPAGE, start, size - size % HUGE_PAGE)
    view = np.frombuffer(region, np.uint8, count=size, offset=start)
    with open(path, "rb") as f:
        if f.readinto(memoryview(view)) != size:
            raise OSError(f"{path}: short read")
    return view


class NativeDecoder:
    """Prefill and decode through the compiled decoder, one sequence or a batch of them; the KV
    cache is one preallocated pair of arrays (`slots` positions per sequence) that every call
    extends in place. `path` names the 4-bit kernel's instruction sets (library.PATHS), `attention`
    attention's arithmetic (library.ATTENTIONS): the best this CPU has by default."""

    def __init__(self, folder: str, threads: int, slots: int, sequences: int = 1, path: str | None = None,
                 attention: str | None = None):
        self.path = path or library.best_path()
        if missing := library.path_missing(self.path):
            raise EngineUnsupported(f"the {self.path} kernel needs {', '.join(missing)}, which this CPU lacks")
        self.attention = attention or library.best_attention()
        if missing := library.attention_missing(self.attention):
            raise EngineUnsupported(f"{self.attention} attention needs {', '.join(missing)}, which this CPU lacks")
        self.lib = library.load()
        self.lib.forward.restype = C.c_int
        self.lib.forward.argtypes = [C.POINTER(Model), *[C.c_void_p] * 3, C.c_int, C.c_int, C.c_void_p, C.c_void_p]
        self.lib.scratch_floats.restype = C.c_size_t
        self.lib.scratch_floats.argtypes = [C.POINTER(Model), C.c_int]
        self.lib.phase_names.restype = C.c_char_p
        self.lib.phase_seconds.argtypes = [C.c_void_p, C.c_int]
        self.lib.record_spans.argtypes = [C.c_int]
        self.lib.read_spans.restype = C.c_int
        self.lib.read_spans.argtypes = [C.c_void_p, C.c_void_p, C.c_void_p, C.c_int]
        self.lib.clock_seconds.restype = C.c_double
        self.phase_names = self.lib.phase_names().decode().split(",")
        self._phases = np.zeros(len(self.phase_names), np.float64)
        with open(os.path.join(folder, "index.json")) as f:
            index = json.load(f)
        self.config, self.build_report, self.tied = index["config"], index["build"], index["tied"]
        self.weights = _read_into_huge_pages(os.path.join(folder, "weights.bin"))
        arrays = {name: self._view(a) for name, a in index["arrays"].items()}
        self.weight_bytes = int(self.weights.nbytes)
        s = llama_arch.Shapes(self.config)
        if s.max_positions:  # learned positions: none beyond the table
            slots = min(slots, s.max_positions)
        self.shapes, self.slots = s, slots
        # the keys are cached in blocks of 8 or 16 positions (q4_attention*.c): room for whole blocks
        room = -(-slots // 16) * 16
        cos, sin = (None, None) if s.gpt2 else llama_arch.rotary_tables(s, room)
        self.keep = [cos, sin]  # arrays the C side points into: alive as long as the decoder

        def ptr(a: np.ndarray | None) -> int | None:
            return None if a is None else a.ctypes.data

        def mat4(name: str) -> Mat4:
            q = arrays[name + ".q"]
            return Mat4(q.shape[0] * TILE, q.shape[1] * BLOCK, ptr(q), ptr(arrays[name + ".d"]), ptr(arrays[name + ".m"]))

        def mat8(name: str) -> Mat8:
            q = arrays[name + ".q"]
            return Mat8(q.shape[0], q.shape[1] * BLOCK, ptr(q), ptr(arrays[name + ".d"]))

        def layer(i: int) -> Layer:
            return Layer(*(ptr(arrays[f"{i}.{n}"]) for n in NORMS), *(ptr(arrays.get(f"{i}.{n}_bias")) for n in NORMS),
                         *(mat4(f"{i}.{n}") for n in PRODUCTS), *(ptr(arrays.get(f"{i}.{n}_bias")) for n in PRODUCTS))

        self.layers = (Layer * s.layers)(*(layer(i) for i in range(s.layers)))
        head = mat8("head")
        act = ACT_GELU_TANH if s.gpt2 else ACT_SILU_GATED
        self.model = Model(s.hidden, s.heads, s.kv_heads, s.head_dim, s.inter, s.layers, s.vocab, room,
                           threads, 0, library.path_index(self.path), act,
                           library.attention_index(self.attention), s.eps, self.layers,
                           head if self.tied else mat8("embed"), head,
                           ptr(arrays["final_norm"]), ptr(arrays.get("final_norm_bias")), ptr(cos), ptr(sin),
                           ptr(arrays.get("positions")), None, None)
        self.lookup_only_bytes = 0 if self.tied else sum(
            arrays[n].nbytes for n in ("embed.q", "embed.d"))
        self.scratch = np.empty(0, np.float32)
        self._scratch_floats: dict[int, int] = {}
        self.lengths: list[int] = []  # each sequence's tokens in the cache
        self._hold(sequences)
        self._one = np.zeros(3, np.int32)  # a decode step's token, sequence and position
        self.batch = 1  # sequences of the current batch

    def _hold(self, sequences: int) -> None:
        """Room in the cache for `sequences` sequences (kept when there is already room)."""
        if sequences <= self.model.seqs:
            return
        s = self.shapes
        # numpy backs a large array with 2 MiB pages, and every (sequence, layer, KV head) starts
        # a 256 KiB region of it: the whole cache becomes resident at the first position (a
        # reservation, as llama.cpp's n_ctx x n_seq cache is; batch 8: 377 MB). 4 KiB pages (RSS
        # then grows with the positions) and a layout by chunks of positions measured 6.2-6.3 ms
        # a step at 2048 positions against 4.9-6.0 for this one, inside the machine's drift
        # between sittings: not decided, kept as it was
        # fp16 or bf16 (the attention's), 16 bits either way
        self.k_cache = np.zeros((sequences, s.layers, s.kv_heads, self.model.slots, s.head_dim), np.uint16)
        self.v_cache = np.zeros_like(self.k_cache)
        self.model.k_cache, self.model.v_cache = self.k_cache.ctypes.data, self.v_cache.ctypes.data
        self.model.seqs = sequences
        self.lengths = [0] * sequences

    def _view(self, entry: dict) -> np.ndarray:
        dtype = np.dtype(entry["dtype"])
        count = int(np.prod(entry["shape"])) if entry["shape"] else 1
        raw = self.weights[entry["offset"]:entry["offset"] + count * dtype.itemsize]
        return raw.view(dtype).reshape(entry["shape"])

    def _run(self, ids: np.ndarray, seqs: np.ndarray, positions: np.ndarray, kept: int) -> np.ndarray:
        """Rows (token, sequence, position) through the model; the logits [kept, vocab] of the
        last `kept` rows (none: no LM head). The callers have checked the token ids (before narrowing them to int32)."""
        n = len(ids)
        if positions.max() >= self.slots:
            raise EngineError(f"sequence of {int(positions.max()) + 1} tokens is longer than the {self.slots} KV slots")
        if n not in self._scratch_floats:  # a decode step asks for the same size every time
            self._scratch_floats[n] = self.lib.scratch_floats(C.byref(self.model), n)
        if self.scratch.size < self._scratch_floats[n]:
            self.scratch = np.empty(self._scratch_floats[n], np.float32)
        logits = np.empty((kept, self.shapes.vocab), np.float32)
        rc = self.lib.forward(C.byref(self.model), ids.ctypes.data, seqs.ctypes.data, positions.ctypes.data, n, kept,
                              logits.ctypes.data, self.scratch.ctypes.data)
        if rc != 0:
            raise EngineError(f"native decoder refused {n} tokens at positions {int(positions.min())}..{int(positions.max())}")
        return logits

    def _rows(self, sequences: list[list[int]], starts: list[int], kept: int) -> np.ndarray:
        """Each sequence's tokens from its start position: rows position by position (a batch's
        last rows are then each sequence's last token)."""
        batch, length = len(sequences), len(sequences[0])
        if any(len(seq) != length for seq in sequences) or length == 0:
            raise EngineError("a batch's sequences must be non-empty and of one length")
        ids = np.asarray(sequences, np.int64).T.reshape(-1)
        if ids.min() < 0 or ids.max() >= self.shapes.vocab:
            raise EngineError(f"token id out of range 0..{self.shapes.vocab - 1}")
        seqs = np.tile(np.arange(batch, dtype=np.int32), length)
        positions = (np.asarray(starts, np.int32)[None, :] + np.arange(length, dtype=np.int32)[:, None]).reshape(-1)
        ids, n = ids.astype(np.int32), len(ids)
        # at most CALL_ROWS rows a call: the scratch grows with a call's rows (8 contexts of 2048
        # in one call took 600 MB), and the logits are the same bits however the rows are cut
        # (a row attends to positions that earlier rows, in this call or an earlier one, cached)
        parts = []
        for at in range(0, n, CALL_ROWS):
            end = min(at + CALL_ROWS, n)
            want = max(0, end - max(at, n - kept))  # of the last `kept` rows, those in this call
            out = self._run(ids[at:end], seqs[at:end], positions[at:end], want)
            if want:
                parts.append(out)
        logits = parts[0] if len(parts) == 1 else np.concatenate(parts)
        for i in range(batch):
            self.lengths[i] = starts[i] + length
        return logits

    def record_spans(self, on: bool) -> None:
        """Start (dropping what was recorded) or stop recording the clock's spans."""
        self.lib.record_spans(int(on))

    def spans(self, limit: int = 1 << 15) -> list[tuple[str, float, float]]:
        """The spans recorded: (phase, start, end), in time.perf_counter's seconds: one per
        phase per layer, thread 0's view (a span after a barrier includes the wait)."""
        phase, start, end = np.zeros(limit, np.int32), np.zeros(limit), np.zeros(limit)
        n = self.lib.read_spans(phase.ctypes.data, start.ctypes.data, end.ctypes.data, limit)
        offset = time.perf_counter() - self.lib.clock_seconds()  # the C clock to Python's
        return [(self.phase_names[p], s + offset, e + offset)
                for p, s, e in zip(phase[:n].tolist(), start[:n].tolist(), end[:n].tolist())]

    def phase_seconds(self) -> dict[str, float]:
        """Seconds per phase inside the C forward passes since the last time this was asked.
        Read on demand, not after every call: Python runs on cold caches after a decode step
        has streamed the weights, and dropping the read from each step narrowed the gap between
        decode() and the C clock from 0.16 to 0.12-0.15 ms (measured, SmolLM2)."""
        self.lib.phase_seconds(self._phases.ctypes.data, 1)
        return dict(zip(self.phase_names, self._phases.tolist()))

    def prefill(self, ids: list[int], all_logits: bool = False) -> np.ndarray:
        """Start one sequence (the cache is overwritten from slot 0; older slots are never
        read): the last position's logits, or every position's."""
        self.batch = 1
        n = len(ids)
        logits = self._rows([list(ids)], [0], n if all_logits else 1)
        return logits if all_logits else logits[-1]

    def append(self, ids: list[int]) -> np.ndarray:
        return self._rows([[int(t) for t in ids]], [self.lengths[0]], 1)[-1]

    def decode(self, token_id: int) -> np.ndarray:
        """One step of one sequence, without _rows' arrays (every step's Python cost shows)."""
        if not 0 <= token_id < self.shapes.vocab:
            raise EngineError(f"token id out of range 0..{self.shapes.vocab - 1}")
        one = self._one
        one[0], one[1], one[2] = token_id, 0, self.lengths[0]
        logits = self._run(one[0:1], one[1:2], one[2:3], 1)
        self.lengths[0] += 1
        return logits[0]

    def prefill_batch(self, sequences: list[list[int]]) -> np.ndarray:
        """Start len(sequences) sequences of one length at once: each one's last logits."""
        self._hold(len(sequences))
        self.batch = len(sequences)
        return self._rows(sequences, [0] * self.batch, self.batch)

    def append_batch(self, sequences: list[list[int]]) -> np.ndarray:
        """Continue each sequence of the batch with its row of tokens: each one's last logits."""
        if len(sequences) != self.batch:
            raise EngineError(f"the batch holds {self.batch} sequences, not {len(sequences)}")
        return self._rows(sequences, self.lengths[:self.batch], self.batch)

    def rewind(self, length: int) -> bool:
        """Keep the first `length` tokens of every sequence (later slots are overwritten before
        they are read)."""
        self.lengths = [min(n, length) for n in self.lengths]
        return True
