"""The Python side of the C decoder (q4_*.c): pack a Llama model's weights into its layout (once, cached
as one file), then prefill and decode through it with the KV cache kept in place.

Packed layout, per matrix W [n, k] cut into blocks of 32 along k:
- 4-bit (GGUF Q4_1's rule, blockquant.affine4): 16 bytes per block, byte j holding element j in
  its low nibble and element j + 16 in its high one; per block a scale and an offset in fp16, as
  a Q4_1 file stores them (so weights that came from one stay exact);
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
ALIGN = 64


class Mat4(C.Structure):
    _fields_ = [("n", C.c_int32), ("k", C.c_int32), ("q", C.c_void_p), ("d", C.c_void_p), ("m", C.c_void_p)]


class Mat8(C.Structure):
    _fields_ = [("n", C.c_int32), ("k", C.c_int32), ("q", C.c_void_p), ("d", C.c_void_p)]


class Layer(C.Structure):
    _fields_ = [("attn_norm", C.c_void_p), ("ffn_norm", C.c_void_p),
                ("qkv", Mat4), ("o", Mat4), ("gate_up", Mat4), ("down", Mat4)]


class Model(C.Structure):
    _fields_ = [*((name, C.c_int32) for name in ("hidden", "heads", "kv_heads", "head_dim", "inter",
                                                  "layers", "vocab", "slots", "threads")),
                ("eps", C.c_float), ("layer", C.POINTER(Layer)), ("embed", Mat8), ("head", Mat8),
                ("final_norm", C.c_void_p), ("cos", C.c_void_p), ("sin", C.c_void_p),
                ("k_cache", C.c_void_p), ("v_cache", C.c_void_p)]


def check_supported(config: dict) -> None:
    llama_arch.check_supported(config, "inferlab's native decoder", BLOCK)
    s = llama_arch.Shapes(config)
    if s.head_dim % 8 or s.heads % s.kv_heads:
        raise EngineUnsupported(f"not supported for this model: inferlab's native decoder needs a head "
                                f"size that is a multiple of 8 (has {s.head_dim}) and query heads in "
                                f"whole groups per KV head ({s.heads} / {s.kv_heads})")


# ---- packing (the build step) ------------------------------------------------------------

def _nibbles(q: Quantized) -> np.ndarray:
    levels = unpack(q.packed, 4)  # [n, nb, 32] in element order
    return (levels[..., :16] | (levels[..., 16:] << 4)).astype(np.uint8)


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

    def add4(name: str, parts: list[str], interleave: bool = False) -> None:
        # interleaved: row 2i of the first matrix's row i, row 2i + 1 the second's (gate, up)
        w = np.stack([weights[p] for p in parts], axis=1) if interleave else np.concatenate(
            [weights[p] for p in parts], axis=0)
        w = w.reshape(-1, w.shape[-1])
        q = account(_half_scales(affine4(w, BLOCK), w), len(parts))
        blob.add(name + ".q", _nibbles(q))
        blob.add(name + ".d", q.scales.astype(np.float16))
        blob.add(name + ".m", q.offsets.astype(np.float16))

    def add8(name: str, source: str) -> None:
        q = account(_half_scales(symmetric8(weights[source], BLOCK), weights[source]), 1)
        blob.add(name + ".q", _signed(q))
        blob.add(name + ".d", q.scales.astype(np.float16))

    for i in range(s.layers):
        p = f"model.layers.{i}."
        blob.add(f"{i}.attn_norm", weights[p + "input_layernorm.weight"])
        blob.add(f"{i}.ffn_norm", weights[p + "post_attention_layernorm.weight"])
        add4(f"{i}.qkv", [p + f"self_attn.{k}_proj.weight" for k in "qkv"])
        add4(f"{i}.o", [p + "self_attn.o_proj.weight"])
        add4(f"{i}.gate_up", [p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight"], interleave=True)
        add4(f"{i}.down", [p + "mlp.down_proj.weight"])
    blob.add("final_norm", weights["model.norm.weight"])
    head = llama_arch.lm_head_name(s, weights)
    add8("head", head)
    tied = head == "model.embed_tokens.weight"
    if not tied:  # the token table is only gathered from; the same 8-bit rule keeps it small
        add8("embed", "model.embed_tokens.weight")
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
    """Prefill and decode through the compiled decoder; the KV cache is one preallocated pair
    of arrays that every call extends in place."""

    def __init__(self, folder: str, threads: int, slots: int):
        self.lib = library.load()
        self.lib.forward.restype = C.c_int
        self.lib.forward.argtypes = [C.POINTER(Model), C.c_void_p, C.c_int, C.c_int, C.c_int, C.c_void_p, C.c_void_p]
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
        self.shapes, self.slots = s, slots
        cos, sin = llama_arch.rotary_tables(s, slots)
        # zeros come from calloc: slots never written never become resident memory
        self.k_cache = np.zeros((s.layers, s.kv_heads, slots, s.head_dim), np.float16)
        self.v_cache = np.zeros_like(self.k_cache)
        self.keep = [cos, sin]  # arrays the C side points into: alive as long as the decoder

        def ptr(a: np.ndarray) -> int:
            return a.ctypes.data

        def mat4(name: str) -> Mat4:
            q = arrays[name + ".q"]
            return Mat4(q.shape[0], q.shape[1] * BLOCK, ptr(q), ptr(arrays[name + ".d"]), ptr(arrays[name + ".m"]))

        def mat8(name: str) -> Mat8:
            q = arrays[name + ".q"]
            return Mat8(q.shape[0], q.shape[1] * BLOCK, ptr(q), ptr(arrays[name + ".d"]))

        self.layers = (Layer * s.layers)(*(
            Layer(ptr(arrays[f"{i}.attn_norm"]), ptr(arrays[f"{i}.ffn_norm"]),
                  mat4(f"{i}.qkv"), mat4(f"{i}.o"), mat4(f"{i}.gate_up"), mat4(f"{i}.down"))
            for i in range(s.layers)))
        head = mat8("head")
        self.model = Model(s.hidden, s.heads, s.kv_heads, s.head_dim, s.inter, s.layers, s.vocab, slots,
                           threads, s.eps, self.layers, head if self.tied else mat8("embed"), head,
                           ptr(arrays["final_norm"]), ptr(cos), ptr(sin), ptr(self.k_cache), ptr(self.v_cache))
        self.lookup_only_bytes = 0 if self.tied else sum(
            arrays[n].nbytes for n in ("embed.q", "embed.d"))
        self.scratch = np.empty(0, np.float32)
        self._scratch_floats: dict[int, int] = {}
        self.length = 0

    def _view(self, entry: dict) -> np.ndarray:
        dtype = np.dtype(entry["dtype"])
        count = int(np.prod(entry["shape"])) if entry["shape"] else 1
        raw = self.weights[entry["offset"]:entry["offset"] + count * dtype.itemsize]
        return raw.view(dtype).reshape(entry["shape"])

    def _run(self, ids: list[int], all_logits: bool) -> np.ndarray:
        n = len(ids)
        if self.length + n > self.slots:
            raise EngineError(f"sequence of {self.length + n} tokens is longer than the {self.slots} KV slots")
        if any(not 0 <= i < self.shapes.vocab for i in ids):
            raise EngineError(f"token id out of range 0..{self.shapes.vocab - 1}")
        if n not in self._scratch_floats:  # a decode step asks for the same size every time
            self._scratch_floats[n] = self.lib.scratch_floats(C.byref(self.model), n)
        if self.scratch.size < self._scratch_floats[n]:
            self.scratch = np.empty(self._scratch_floats[n], np.float32)
        logits = np.empty((n if all_logits else 1, self.shapes.vocab), np.float32)
        tokens = np.asarray(ids, dtype=np.int32)
        rc = self.lib.forward(C.byref(self.model), tokens.ctypes.data, n, self.length, int(all_logits),
                              logits.ctypes.data, self.scratch.ctypes.data)
        if rc != 0:
            raise EngineError(f"native decoder refused {n} tokens at position {self.length}")
        self.length += n
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
        self.length = 0  # the cache is overwritten from slot 0; older slots are never read
        logits = self._run(list(ids), all_logits)
        return logits if all_logits else logits[-1]

    def decode(self, token_id: int) -> np.ndarray:
        return self.append([token_id])

    def rewind(self, length: int) -> bool:
        self.length = length  # later slots are overwritten before they are read
        return True

    def append(self, ids: list[int]) -> np.ndarray:
        return self._run([int(t) for t in ids], False)[-1]
