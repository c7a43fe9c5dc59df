"""llama.cpp through llama-cpp-python (built from source by the set-up, for this CPU): the GGUF
types users run. A GGUF model (the bundled SmolLM2 file, or a .gguf given with --model) runs
its own file as it is; other types are re-quantized from that file by llama.cpp's own quantizer
(`llama_model_quantize`, under a second for SmolLM2) and cached.

The low-level API is used so that a prefill computes the LM head on the last position only
(the quality pass asks for every position), the same work as the other engines, and so that
llama.cpp's own performance counters can witness the harness's clocks."""

from __future__ import annotations

import os
import shlex
from typing import ClassVar

import numpy as np

from .. import defaults, native_build
from ..fsutil import build_folder
from ..models import artifact_folder, gguf_file_type, gguf_source_path
from .base import Engine, EngineError, EngineUnsupported, Usage

CONTEXT = defaults.KV_SLOTS  # KV slots allocated up front
# llama.cpp's llama_ftype values (include/llama.h) of the types inferlab offers
FTYPES = {"Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "Q5_0": 8, "Q4_K_M": 15, "Q5_K_M": 17, "Q6_K": 18}
# bits per weight of each type's blocks, their scales aside (Q4_K_M: Q4_K blocks, a few
# tensors in Q6_K)
WEIGHT_BITS = {"Q4_0": 4, "Q4_1": 4, "Q8_0": 8, "Q5_0": 5, "Q4_K_M": 4, "Q5_K_M": 5, "Q6_K": 6}


def source_gguf(ref) -> str:
    """The model's own GGUF file; a Hugging Face folder has none."""
    path = gguf_source_path(ref)
    if path:
        return path
    raise EngineUnsupported("not supported for this model: llama.cpp runs GGUF files, and this "
                            "model is a Hugging Face folder (convert it with llama.cpp's "
                            "convert_hf_to_gguf.py and pass the .gguf to --model)")


class LlamaCpp(Engine):
    gguf_type: ClassVar[str]  # the llama.cpp type this method runs
    max_batch = 16  # sequences of one context (n_seq_max), CONTEXT slots each
    setup_in_ttft = ("llama_memory_clear without zeroing (positions forgotten; a new batch size: a new "
                     "context)")

    @classmethod
    def applies_to(cls, model) -> bool:
        return gguf_source_path(model) is not None

    @classmethod
    def unavailable(cls, model) -> str | None:
        from ..native_build import build_problem

        if not cls.applies_to(model):
            return "no GGUF for this model (llama.cpp reads the bundled model or a --model .gguf)"
        return build_problem()

    def _library(self):
        from ..native_build import build_problem

        problem = build_problem()
        if problem:
            raise EngineError(problem)
        import llama_cpp

        return llama_cpp

    def usage(self, prompt: str, new_tokens: int) -> Usage:
        path, _ = self.artifact()
        t, slots = self.threads, defaults.KV_SLOTS
        code = f"""from llama_cpp import Llama

llm = Llama(model_path={path!r}, n_threads={t}, n_ctx={slots}, verbose=False)
out = llm({prompt!r}, max_tokens={new_tokens}, temperature=0.0)
print(out["choices"][0]["text"])
"""
        shell = (f"llama-cli -m {shlex.quote(path)} -t {t} -c {slots} -n {new_tokens} --temp 0 "
                 f"-p {shlex.quote(prompt)}\n"
                 f"llama-server -m {shlex.quote(path)} -t {t} -c {slots}  # an OpenAI-compatible server")
        return Usage(path, f"llama-cpp-python (inferlab built {self._library().__version__})", code, shell,
                     "one GGUF file: copy it; llama-cli and llama-server come with a llama.cpp build")

    def artifact(self) -> tuple[str, bool]:
        """The GGUF file of this method's type: the source file when it already has that type,
        else a re-quantized copy in the cache. Returns (path, cache_hit)."""
        src = source_gguf(self.model_ref)
        if gguf_file_type(src) == self.gguf_type:
            return src, True
        lib = self._library()
        version = getattr(lib, "__version__", "unknown")
        dest = artifact_folder(self.model_ref, "llama_cpp", f"{self.gguf_type}-llama-cpp-python{version}")

        def build(tmp):
            params = lib.llama_model_quantize_default_params()
            params.ftype = FTYPES[self.gguf_type]
            params.allow_requantize = True  # the source is itself quantized (Q4_1 for SmolLM2)
            params.nthread = self.threads
            out = os.path.join(tmp, "model.gguf")
            rc = lib.llama_model_quantize(src.encode(), out.encode(), params)
            if rc != 0 or not os.path.isfile(out):
                raise EngineError(f"llama_model_quantize to {self.gguf_type} failed (code {rc})")

        return os.path.join(dest, "model.gguf"), build_folder(dest, build)

    def prepare(self) -> bool:
        return self.artifact()[1]

    def load(self) -> None:
        lib = self.lib = self._library()
        self.path, _ = self.artifact()
        lib.llama_backend_init()
        # the file memory-mapped, llama.cpp's default (reading it into memory instead measured no
        # faster: Q4_0, 512-token prefill 906 against 935-953 tok/s, decode 8.7 against 7.2-8.4 ms)
        mparams = lib.llama_model_default_params()
        self.model = lib.llama_model_load_from_file(self.path.encode(), mparams)
        if not self.model:
            raise EngineError(f"llama.cpp could not load {self.path}")
        self.n_vocab = lib.llama_vocab_n_tokens(lib.llama_model_get_vocab(self.model))
        self.ctx, self.sequences = None, 0
        self._context(1)

    def _context(self, sequences: int) -> None:
        """A context (and a llama_batch) for `sequences` sequences of CONTEXT slots each;
        made anew only when a batch needs more sequences than the one there."""
        lib = self.lib
        if self.ctx and self.sequences >= sequences:
            return
        if self.ctx:
            lib.llama_free(self.ctx)
            lib.llama_batch_free(self.batch)
        cparams = lib.llama_context_default_params()
        cparams.n_ctx = cparams.n_batch = CONTEXT * sequences
        cparams.n_seq_max = sequences
        cparams.n_threads = cparams.n_threads_batch = self.threads
        cparams.no_perf = False  # keep llama.cpp's own clocks: the witness of ours
        self.ctx = lib.llama_init_from_model(self.model, cparams)
        if not self.ctx:
            raise EngineError("llama.cpp could not create a context")
        self.batch = lib.llama_batch_init(CONTEXT * sequences, 0, 1)
        self.sequences, self.length = sequences, 0

    def _run(self, rows: list[list[int]], all_logits: bool = False) -> np.ndarray:
        """One llama_decode for every sequence (rows of equal length, sequence s = row s);
        logits [rows, vocab] of each row's last token, or [tokens, vocab] of one row's all."""
        lib, b, n = self.lib, self.batch, len(rows[0])
        if self.length + n > CONTEXT:
            raise EngineError(f"sequence longer than llama.cpp's context of {CONTEXT} tokens")
        k = 0
        for s, row in enumerate(rows):
            for i, t in enumerate(row):
                b.token[k] = int(t)
                b.pos[k] = self.length + i
                b.n_seq_id[k] = 1
                b.seq_id[k][0] = s
                b.logits[k] = all_logits or i == n - 1
                k += 1
        b.n_tokens = k
        rc = lib.llama_decode(self.ctx, b)
        if rc != 0:
            raise EngineError(f"llama_decode returned {rc}")
        self.length += n
        wanted = range(n) if all_logits else [(s + 1) * n - 1 for s in range(len(rows))]
        return np.stack([np.ctypeslib.as_array(lib.llama_get_logits_ith(self.ctx, i),
                                               shape=(self.n_vocab,)) for i in wanted])

    def _clear(self) -> None:
        # forget every cached position; the data need not be zeroed (it is overwritten before it
        # is read), and zeroing 47 MB inside the prefill's clock is work no user pays for
        self.lib.llama_memory_clear(self.lib.llama_get_memory(self.ctx), False)
        self.length = 0

    def prefill(self, token_ids, all_logits=False):
        self._clear()
        out = self._run([list(token_ids)], all_logits)
        return out if all_logits else out[0].copy()

    def decode(self, token_id):
        return self.append([token_id])

    def append(self, token_ids):
        return self._run([list(token_ids)])[0].copy()

    def rewind(self, length):
        self.lib.llama_memory_seq_rm(self.lib.llama_get_memory(self.ctx), -1, length, -1)
        self.length = length
        return True

    def prefill_batch(self, sequences):
        self._context(len(sequences))
        self._clear()
        return self._run([list(s) for s in sequences])

    def append_batch(self, sequences):
        return self._run([list(s) for s in sequences])

    def reset_counters(self) -> None:
        self.lib.llama_perf_context_reset(self.ctx)

    def counters(self) -> dict:
        """llama.cpp's own clocks of the last generation: a witness for the harness's."""
        perf = self.lib.llama_perf_context(self.ctx)
        return {"prefill_ms": perf.t_p_eval_ms, "prefill_tokens": perf.n_p_eval,
                "decode_ms": perf.t_eval_ms, "decode_tokens": perf.n_eval}

    def info(self) -> dict:
        size = os.path.getsize(self.path)
        return {
            "weight_bytes": size,
            "file_bytes": size,
            "details": {
                "dtype": f"GGUF {self.gguf_type}", "file": self.path, "threads": self.threads,
                "llama_cpp_python": getattr(self.lib, "__version__", None),
                "context_slots": CONTEXT,
                # the tied LM head reads the whole token table every step: the file is read
                "bytes_read_per_step": size,
                "kv_bytes_per_value": 2,  # llama.cpp's default f16 cache
                # its quantized types multiply against activations quantized to 8 bits (Q8)
                "weight_bits": WEIGHT_BITS[self.gguf_type], "activation_bits": 8,
                # ggml picks its kernels by the options it was compiled with (native_build)
                "instruction_set": native_build.signature(native_build.cpu_flags()),
            },
        }


class LlamaCppQ4_1(LlamaCpp):
    name = "llama-cpp-q4_1"
    summary = "llama.cpp, GGUF Q4_1 (the bundled model's own file: its reference weights exactly)"
    gguf_type = "Q4_1"


class LlamaCppQ8_0(LlamaCpp):
    name = "llama-cpp-q8_0"
    summary = "llama.cpp, GGUF Q8_0 re-quantized from the model's GGUF by llama.cpp's quantizer"
    gguf_type = "Q8_0"


class LlamaCppQ4_0(LlamaCpp):
    name = "llama-cpp-q4_0"
    summary = ("llama.cpp, GGUF Q4_0 re-quantized from the model's GGUF (the type with llama.cpp's "
               "repacked fast path on AVX2/AVX-512 CPUs)")
    gguf_type = "Q4_0"


class LlamaCppQ4_K_M(LlamaCpp):
    name = "llama-cpp-q4_k_m"
    summary = "llama.cpp, GGUF Q4_K_M re-quantized from the model's GGUF (the type most users download)"
    gguf_type = "Q4_K_M"


class LlamaCppQ5_K_M(LlamaCpp):
    name = "llama-cpp-q5_k_m"
    summary = "llama.cpp, GGUF Q5_K_M re-quantized from the model's GGUF"
    gguf_type = "Q5_K_M"


class LlamaCppQ6_K(LlamaCpp):
    name = "llama-cpp-q6_k"
    summary = "llama.cpp, GGUF Q6_K re-quantized from the model's GGUF"
    gguf_type = "Q6_K"
